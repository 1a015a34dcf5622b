//! Decoding errors that say what went wrong and where.
//!
//! The writer dead-letters a message with this error's text in a header, so the text must let an
//! operator find the fault without the original parser: the JSON path of the bad field, the line
//! and column, and for another message type its name.

use crate::value::FieldError;

/// Why bytes did not decode into one of the message types.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The bytes are not JSON (or are truncated, or have trailing data).
    #[error("{what} is not valid JSON: {message} (line {line}, column {column})")]
    Syntax {
        /// The type being decoded, such as "pp-output message".
        what: &'static str,
        /// serde_json's description, without its position suffix.
        message: String,
        /// 1-based line of the fault.
        line: usize,
        /// 1-based column of the fault.
        column: usize,
    },
    /// Valid JSON of the wrong shape: a missing or mistyped field, a bad UUID.
    #[error("{what} is invalid at `{path}`: {message} (line {line}, column {column})")]
    Invalid {
        /// The type being decoded.
        what: &'static str,
        /// Dotted JSON path of the fault, such as `datasets[0].refs.<uuid>.run`; `.` for the root.
        path: String,
        /// What was wrong there.
        message: String,
        /// 1-based line of the fault.
        line: usize,
        /// 1-based column of the fault.
        column: usize,
    },
    /// A well-formed message of another type on the same topic, such as the `day-end` signal
    /// Prompt Processing will send. Not a corrupt message: a consumer may route it elsewhere.
    #[error("message type `{found}` is not `{expected}`")]
    OtherMessageType {
        /// The `type` the message carries.
        found: String,
        /// The `type` this decoder handles.
        expected: &'static str,
    },
    /// A field whose JSON was fine but whose content does not decode (a region, a timespan).
    #[error("{what} is invalid at `{path}`: {source}")]
    Field {
        /// The type being decoded.
        what: &'static str,
        /// Where the field is, such as `dimension_records[7](visit_detector_region).record.region`.
        path: String,
        /// What was wrong with it.
        #[source]
        source: FieldError,
    },
}

impl DecodeError {
    /// True for [`DecodeError::OtherMessageType`]: the bytes are a valid message, just not ours.
    pub fn is_other_message_type(&self) -> bool {
        matches!(self, Self::OtherMessageType { .. })
    }

    pub(crate) fn from_json(
        what: &'static str,
        error: serde_path_to_error::Error<serde_json::Error>,
    ) -> Self {
        let path = error.path().to_string();
        let inner = error.into_inner();
        Self::from_serde(what, path, &inner)
    }

    pub(crate) fn from_serde(what: &'static str, path: String, inner: &serde_json::Error) -> Self {
        let (line, column) = (inner.line(), inner.column());
        let message = strip_position(&inner.to_string());
        match inner.classify() {
            serde_json::error::Category::Data => Self::Invalid {
                what,
                path,
                message,
                line,
                column,
            },
            _ => Self::Syntax {
                what,
                message,
                line,
                column,
            },
        }
    }
}

/// serde_json appends " at line L column C" to its messages; we report the position separately.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message.to_owned(),
    }
}
