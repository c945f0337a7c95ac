//! One answer per request: `{"ok": …}` or `{"error": "…", "code": "…"}`.
//!
//! The error's text is for people; its [`ErrorCode`] is for programs, so
//! no caller ever matches on English. A protocol-1 daemon sends no code:
//! its errors read as [`ErrorCode::Failed`].

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// What kind of failure an error answer reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorCode {
    /// The request was understood and failed (the message says why).
    #[default]
    Failed,
    /// The line is not a request of any version (bad JSON, bad fields).
    Malformed,
    /// A request this side does not serve: the other side is newer.
    Unsupported,
    /// Only the running daemon answers this (health, manifest-put), and
    /// none runs.
    NeedsDaemon,
    /// The request is larger than a daemon accepts.
    TooLarge,
}

/// An error answer, as both sides see it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ControlError {
    pub code: ErrorCode,
    pub message: String,
}

impl ControlError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ControlError {
        ControlError {
            code,
            message: message.into(),
        }
    }

    /// A request that was understood and failed.
    pub fn failed(message: impl ToString) -> ControlError {
        ControlError::new(ErrorCode::Failed, message.to_string())
    }
}

/// One answer line.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Ok(serde_json::Value),
    Error(ControlError),
}

/// How an answer is read: `ok` may be `null` (a feed with no event),
/// which reads as missing; an answer is an error exactly when it has one.
#[derive(Deserialize)]
struct Wire {
    #[serde(default)]
    ok: Option<serde_json::Value>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    code: Option<ErrorCode>,
}

impl Serialize for Answer {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            // `{"ok": null}` stays a field (a feed with no event).
            Answer::Ok(v) => {
                let mut map = s.serialize_map(Some(1))?;
                map.serialize_entry("ok", v)?;
                map.end()
            }
            Answer::Error(e) => {
                let mut map = s.serialize_map(Some(2))?;
                map.serialize_entry("error", &e.message)?;
                map.serialize_entry("code", &e.code)?;
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Answer {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let wire = Wire::deserialize(d)?;
        Ok(match wire.error {
            Some(message) => Answer::Error(ControlError {
                code: wire.code.unwrap_or_default(),
                message,
            }),
            None => Answer::Ok(wire.ok.unwrap_or(serde_json::Value::Null)),
        })
    }
}

impl Answer {
    /// The answer to a request whose output is `result`.
    pub fn of<T: Serialize>(result: Result<T, ControlError>) -> Answer {
        match result.map(|v| serde_json::to_value(v)) {
            Ok(Ok(v)) => Answer::Ok(v),
            Ok(Err(e)) => Answer::Error(ControlError::failed(format!(
                "the answer cannot be encoded: {e}"
            ))),
            Err(e) => Answer::Error(e),
        }
    }

    /// The output it carries, as the type the request promised.
    pub fn decode<T: DeserializeOwned>(self) -> Result<T, ControlError> {
        match self {
            Answer::Ok(v) => serde_json::from_value(v).map_err(|e| {
                ControlError::new(
                    ErrorCode::Malformed,
                    format!("the answer does not have the expected shape: {e}"),
                )
            }),
            Answer::Error(e) => Err(e),
        }
    }

    /// One JSON line (without the newline).
    pub fn to_line(&self) -> String {
        // An `Answer` always encodes: its values are JSON already.
        serde_json::to_string(self).unwrap_or_else(|e| {
            format!(r#"{{"error":"the answer cannot be encoded: {e}","code":"failed"}}"#)
        })
    }

    /// Reads one answer line.
    pub fn from_line(line: &str) -> Result<Answer, ControlError> {
        serde_json::from_str(line).map_err(|e| {
            ControlError::new(
                ErrorCode::Malformed,
                format!("unreadable answer {line:?}: {e}"),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_keep_their_shape_on_the_wire() {
        let ok = Answer::Ok(serde_json::json!([1, 2]));
        assert_eq!(ok.to_line(), r#"{"ok":[1,2]}"#);
        assert_eq!(
            Answer::Ok(serde_json::Value::Null).to_line(),
            r#"{"ok":null}"#
        );
        let err = Answer::Error(ControlError::new(ErrorCode::Unsupported, "upgrade"));
        assert_eq!(err.to_line(), r#"{"error":"upgrade","code":"unsupported"}"#);
        for a in [ok, err, Answer::Ok(serde_json::Value::Null)] {
            assert_eq!(Answer::from_line(&a.to_line()), Ok(a));
        }
    }

    #[test]
    fn a_protocol_one_error_has_no_code_and_reads_as_failed() {
        let a = Answer::from_line(r#"{"error":"no such domain"}"#).unwrap();
        assert_eq!(
            a,
            Answer::Error(ControlError::new(ErrorCode::Failed, "no such domain"))
        );
        assert!(Answer::from_line("not json").is_err());
    }

    #[test]
    fn an_answer_of_the_wrong_shape_is_an_error_not_a_default() {
        let a = Answer::Ok(serde_json::json!({"stored": "many"}));
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Stored {
            stored: usize,
        }
        let e = a.decode::<Stored>().unwrap_err();
        assert_eq!(e.code, ErrorCode::Malformed);
    }
}
