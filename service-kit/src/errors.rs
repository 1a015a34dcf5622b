//! Errors every service shares: a configuration that cannot be used, and the one-line form of
//! any error with its causes.

use std::error::Error;
use std::fmt;

/// A setting that cannot be used. The message names the setting (its environment variable) and
/// what to change; a cause, when there is one, is its source.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ConfigError {
    message: String,
    #[source]
    source: Option<Box<dyn Error + Send + Sync>>,
}

impl ConfigError {
    /// A setting refused for the reason `message` says.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            source: None,
        }
    }

    /// A setting refused because of `source` (a path that does not parse, a file that cannot be
    /// read).
    pub fn caused_by(
        message: impl Into<String>,
        source: impl Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }
}

/// An error and its causes on one line, `outer: inner: root`, for an operator (exit messages,
/// readiness problems, log fields). A cause whose text the line already holds is left out, since
/// many libraries repeat their cause in their own message.
#[derive(Debug, Clone, Copy)]
pub struct Chain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut line = self.0.to_string();
        let mut cause = self.0.source();
        while let Some(error) = cause {
            let text = error.to_string();
            if !text.is_empty() && !line.contains(&text) {
                line.push_str(": ");
                line.push_str(&text);
            }
            cause = error.source();
        }
        f.write_str(&line)
    }
}

/// [`Chain`] as a `String`.
pub fn chain(error: &(dyn Error + 'static)) -> String {
    Chain(error).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("opening the registry")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn the_chain_is_one_line_without_repeats() {
        let error = Outer(std::io::Error::other("connection refused"));
        assert_eq!(chain(&error), "opening the registry: connection refused");
        let config = ConfigError::caused_by(
            "KAFKA_CA_FILE: cannot read it",
            Outer(std::io::Error::other("x")),
        );
        assert_eq!(
            chain(&config),
            "KAFKA_CA_FILE: cannot read it: opening the registry: x"
        );
        let repeated = ConfigError::caused_by(
            "bad: connection refused",
            std::io::Error::other("connection refused"),
        );
        assert_eq!(chain(&repeated), "bad: connection refused");
    }
}
