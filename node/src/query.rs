//! A point in history as typed after `--at`: a time or an event id prefix.
//! (The `log` request and its lines are protocol types:
//! `makiatto_protocol::log`.)

use makiatto_events::Hlc;

/// A point in history as typed: an RFC 3339 time or an event id prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Point {
    Time(Hlc),
    IdPrefix(String),
}

impl Point {
    pub fn parse(text: &str) -> Result<Point, String> {
        if let Ok(ts) = text.parse::<jiff::Timestamp>() {
            let millis = u64::try_from(ts.as_millisecond())
                .map_err(|_| format!("{text:?} is before 1970, when no event can exist"))?;
            return Ok(Point::Time(Hlc::end_of_millis(millis)));
        }
        let hex = text.to_ascii_lowercase();
        if hex.len() >= 4 && hex.len() <= 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(Point::IdPrefix(hex));
        }
        Err(format!(
            "{text:?} is neither an RFC 3339 time (such as 2026-11-25T13:00:00Z) nor an event id prefix (4 or more hex characters)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_are_times_or_id_prefixes() {
        assert_eq!(
            Point::parse("2026-11-25T13:00:00Z"),
            Ok(Point::Time(Hlc::end_of_millis(1_795_611_600_000)))
        );
        assert_eq!(Point::parse("ABCD12"), Ok(Point::IdPrefix("abcd12".into())));
        assert!(Point::parse("abc").is_err());
        assert!(Point::parse("yesterday").is_err());
    }
}
