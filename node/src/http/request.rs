//! The decisions of a static request, as pure functions: which manifest
//! path a URL names, which encoding to send, whether a conditional request
//! gets 304, which byte range to send. No I/O here.

use std::borrow::Cow;
use std::time::SystemTime;

use percent_encoding::percent_decode_str;

/// Longest path (after the host) we look at; longer gets 414.
pub const MAX_PATH: usize = 4096;

/// Why a path cannot name a file of a site.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadPath {
    /// 414.
    TooLong,
    /// 400: `..` or `.` segments, encoded slashes or backslashes, NUL or
    /// other control characters, invalid UTF-8, not starting with `/`.
    Malformed,
}

/// What a request path asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target<'a> {
    /// A manifest path, exactly (`about/index.html`); `dir` is set when the
    /// URL ended in `/` (so only an index file answers it). Borrowed from
    /// the URL when it needs no decoding (most do not).
    File { key: Cow<'a, str>, dir: bool },
}

/// Turns the path of a URL (without the query) into a manifest key.
/// Percent-decoding happens per segment, after splitting on `/`, so an
/// encoded slash can never act as a separator, and a decoded segment that
/// is `.`/`..`, or holds `/`, `\`, NUL or a control character, is refused
/// rather than normalised: a hostile path never reaches a lookup.
pub fn target(path: &str) -> Result<Target<'_>, BadPath> {
    if path.len() > MAX_PATH {
        return Err(BadPath::TooLong);
    }
    let rest = path.strip_prefix('/').ok_or(BadPath::Malformed)?;
    let dir = rest.is_empty() || rest.ends_with('/');
    let bad = |seg: &str| {
        seg == "." || seg == ".." || seg.chars().any(|c| c == '/' || c == '\\' || c.is_control())
    };
    // Nothing to decode and no empty segment: the key is the path itself.
    let plain = rest.strip_suffix('/').unwrap_or(rest);
    if !plain.contains('%') && plain.split('/').all(|seg| !seg.is_empty()) {
        if plain.split('/').any(bad) {
            return Err(BadPath::Malformed);
        }
        return Ok(Target::File {
            key: Cow::Borrowed(plain),
            dir,
        });
    }
    let mut key = String::with_capacity(rest.len());
    for raw in rest.split('/') {
        if raw.is_empty() {
            continue;
        }
        let seg = percent_decode_str(raw)
            .decode_utf8()
            .map_err(|_| BadPath::Malformed)?;
        if bad(&seg) {
            return Err(BadPath::Malformed);
        }
        if !key.is_empty() {
            key.push('/');
        }
        key.push_str(&seg);
    }
    Ok(Target::File {
        key: Cow::Owned(key),
        dir,
    })
}

/// Content codings we prepare, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Coding {
    Br,
    Zstd,
    Gzip,
}

impl Coding {
    pub const ALL: [Coding; 3] = [Coding::Br, Coding::Zstd, Coding::Gzip];

    /// The `Content-Encoding` token.
    pub fn token(self) -> &'static str {
        match self {
            Coding::Br => "br",
            Coding::Zstd => "zstd",
            Coding::Gzip => "gzip",
        }
    }

    /// The file-name suffix of a prepared variant.
    pub fn suffix(self) -> &'static str {
        match self {
            Coding::Br => "br",
            Coding::Zstd => "zst",
            Coding::Gzip => "gz",
        }
    }
}

/// The coding to send, given `Accept-Encoding` and the variants that exist:
/// the one with the highest q-value (ties go to the better compressor),
/// none when identity is preferred or nothing acceptable exists. An absent
/// header means identity (RFC 9110 §12.5.3 allows any; identity is safest).
pub fn choose_coding(accept: Option<&str>, available: &[Coding]) -> Option<Coding> {
    let accept = accept?;
    let mut best: Option<(u16, Coding)> = None;
    let mut star: Option<u16> = None;
    let mut listed = [None::<u16>; 3];
    for item in accept.split(',') {
        let mut parts = item.split(';');
        let name = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .or_else(|| p.trim().strip_prefix("Q="))
            })
            .find_map(parse_q)
            .unwrap_or(1000);
        match name.as_str() {
            "*" => star = Some(q),
            n => {
                if let Some(c) = Coding::ALL
                    .iter()
                    .position(|c| c.token() == n || (n == "x-gzip" && *c == Coding::Gzip))
                {
                    listed[c] = Some(q);
                }
            }
        }
    }
    for &c in available {
        let q = listed[c as usize].or(star).unwrap_or(0);
        if q > 0 && best.is_none_or(|(bq, bc)| q > bq || (q == bq && c < bc)) {
            best = Some((q, c));
        }
    }
    best.map(|(_, c)| c)
}

/// A q-value in thousandths.
fn parse_q(s: &str) -> Option<u16> {
    let v: f32 = s.trim().parse().ok()?;
    (0.0..=1.0)
        .contains(&v)
        .then(|| (v * 1000.0).round() as u16)
}

/// Does `If-None-Match` match `etag` (weak comparison, RFC 9110 §13.1.2)?
pub fn none_match(header: &str, etag: &str) -> bool {
    let bare = |t: &str| t.trim().trim_start_matches("W/").to_owned();
    let ours = bare(etag);
    header
        .split(',')
        .any(|t| t.trim() == "*" || bare(t) == ours)
}

/// Is the resource unmodified since `If-Modified-Since`?
pub fn not_modified_since(header: &str, last_modified: SystemTime) -> bool {
    match httpdate::parse_http_date(header.trim()) {
        // HTTP dates have whole seconds.
        Ok(since) => seconds(last_modified) <= seconds(since),
        Err(_) => false,
    }
}

fn seconds(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The answer to a `Range` header for a representation of `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ranged {
    /// Send it all (no Range, one we ignore, or If-Range not matching).
    Full,
    /// 206 with these inclusive bounds.
    Part(u64, u64),
    /// 416.
    Unsatisfiable,
}

/// One `bytes=` range (several ranges are answered with the whole
/// representation, which RFC 9110 §14.2 allows; syntax we do not read is
/// ignored the same way). `if_range` must match the strong ETag or equal
/// the Last-Modified date for the range to apply.
pub fn range(
    header: Option<&str>,
    if_range: Option<&str>,
    etag: &str,
    last_modified: SystemTime,
    len: u64,
) -> Ranged {
    let Some(h) = header else { return Ranged::Full };
    if let Some(cond) = if_range {
        let cond = cond.trim();
        let ok = if cond.starts_with('"') {
            cond == etag
        } else {
            httpdate::parse_http_date(cond).is_ok_and(|d| seconds(d) == seconds(last_modified))
        };
        if !ok {
            return Ranged::Full;
        }
    }
    let Some(spec) = h.trim().strip_prefix("bytes=") else {
        return Ranged::Full;
    };
    if spec.contains(',') {
        return Ranged::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Ranged::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    let num = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (a.is_empty(), num(a), num(b)) {
        // bytes=-N: the last N bytes.
        (true, _, Some(n)) => {
            if n == 0 || len == 0 {
                Ranged::Unsatisfiable
            } else {
                Ranged::Part(len.saturating_sub(n), len - 1)
            }
        }
        (false, Some(start), end) if b.is_empty() || end.is_some() => {
            if start >= len {
                return Ranged::Unsatisfiable;
            }
            let end = end.map_or(len - 1, |e| e.min(len - 1));
            if end < start {
                return Ranged::Full; // invalid: ignore
            }
            Ranged::Part(start, end)
        }
        _ => Ranged::Full,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn file(key: &str, dir: bool) -> Result<Target<'_>, BadPath> {
        Ok(Target::File {
            key: key.into(),
            dir,
        })
    }

    #[test]
    fn paths_map_to_manifest_keys_and_hostile_ones_are_refused() {
        assert_eq!(target("/"), file("", true));
        assert_eq!(target("/about/"), file("about", true));
        assert_eq!(target("/css/style.css"), file("css/style.css", false));
        assert_eq!(target("/a%20b.txt"), file("a b.txt", false));
        assert_eq!(target("//css//style.css"), file("css/style.css", false));
        assert_eq!(target("/css/"), file("css", true));
        assert_eq!(target("/css//"), file("css", true));
        assert!(matches!(
            target("/css/style.css"),
            Ok(Target::File {
                key: Cow::Borrowed(_),
                ..
            })
        ));
        for bad in [
            "/../etc/passwd",
            "/css/../../x",
            "/%2e%2e/etc/passwd",
            "/%2E%2E%2Fetc%2Fpasswd",
            "/a%2fb",
            "/a%5cb",
            "/a\\b",
            "/a%00b",
            "/./x",
            "/x/.",
            "/x/./",
            "/x/../",
            "/..",
            "/a\u{7f}b",
            "/%ff",
            "relative",
        ] {
            assert_eq!(target(bad), Err(BadPath::Malformed), "{bad}");
        }
        assert_eq!(
            target(&format!("/{}", "a".repeat(MAX_PATH))),
            Err(BadPath::TooLong)
        );
    }

    #[test]
    fn the_best_acceptable_coding_wins() {
        let all = Coding::ALL;
        assert_eq!(
            choose_coding(Some("gzip, deflate, br, zstd"), &all),
            Some(Coding::Br)
        );
        assert_eq!(choose_coding(Some("gzip"), &all), Some(Coding::Gzip));
        assert_eq!(
            choose_coding(Some("br;q=0.5, gzip"), &all),
            Some(Coding::Gzip)
        );
        assert_eq!(choose_coding(Some("br;q=0, *"), &all), Some(Coding::Zstd));
        assert_eq!(choose_coding(Some("identity"), &all), None);
        assert_eq!(choose_coding(None, &all), None);
        assert_eq!(choose_coding(Some("br"), &[Coding::Gzip]), None);
        assert_eq!(choose_coding(Some("*;q=0"), &all), None);
    }

    #[test]
    fn conditionals_compare_as_rfc_9110_says() {
        assert!(none_match("\"abc\"", "\"abc\""));
        assert!(none_match("W/\"abc\", \"x\"", "\"abc\""));
        assert!(none_match("*", "\"abc\""));
        assert!(!none_match("\"abd\"", "\"abc\""));
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_500);
        assert!(not_modified_since("Tue, 14 Nov 2023 22:13:20 GMT", t));
        assert!(!not_modified_since("Tue, 14 Nov 2023 22:13:19 GMT", t));
        assert!(!not_modified_since("yesterday", t));
    }

    #[test]
    fn ranges_follow_rfc_9110() {
        let t = SystemTime::UNIX_EPOCH;
        let r = |h: &str| range(Some(h), None, "\"e\"", t, 100);
        assert_eq!(r("bytes=0-9"), Ranged::Part(0, 9));
        assert_eq!(r("bytes=90-"), Ranged::Part(90, 99));
        assert_eq!(r("bytes=-10"), Ranged::Part(90, 99));
        assert_eq!(r("bytes=-200"), Ranged::Part(0, 99));
        assert_eq!(r("bytes=50-500"), Ranged::Part(50, 99));
        assert_eq!(r("bytes=100-"), Ranged::Unsatisfiable);
        assert_eq!(r("bytes=-0"), Ranged::Unsatisfiable);
        assert_eq!(r("bytes=0-1,5-6"), Ranged::Full);
        assert_eq!(r("bytes=9-1"), Ranged::Full);
        assert_eq!(r("items=0-1"), Ranged::Full);
        assert_eq!(r("bytes=x-1"), Ranged::Full);
        assert_eq!(
            range(Some("bytes=0-1"), Some("\"e\""), "\"e\"", t, 100),
            Ranged::Part(0, 1)
        );
        assert_eq!(
            range(Some("bytes=0-1"), Some("\"old\""), "\"e\"", t, 100),
            Ranged::Full
        );
        assert_eq!(range(None, None, "\"e\"", t, 100), Ranged::Full);
    }
}
