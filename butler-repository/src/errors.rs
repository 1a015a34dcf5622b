//! Database errors, classified by what the caller must do. Every service acts on this one
//! classification, so a code the writer retries is retried by the publication consumer too, and a
//! code that stops one stops the other.
//!
//! - **Retry**: the database is unreachable, restarting, overloaded, or lost a race (a
//!   serialization failure, a deadlock). The work is intact: run it again after a backoff.
//! - **Reject**: a row's data broke a constraint or a type. For the writer that is one bad
//!   message, to be dead-lettered while the rest of its batch lands; a caller with no message to
//!   blame retries instead.
//! - **Stop**: credentials, privileges, or a database that is not the one configured (a table or
//!   column gone). Retrying cannot help; the process exits with one clear line.

use std::borrow::Cow;

/// What the caller must do about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Try the same work again after a backoff.
    Retry,
    /// The data of one message is bad; the rest can go on without it.
    Reject,
    /// Stop the process: nothing will change by retrying.
    Stop,
}

impl ErrorClass {
    /// The class of an error met while opening (reading the layout, creating a schema): no
    /// message is to blame then, so a refused row means the database is not what was expected,
    /// and retrying cannot help.
    pub fn at_startup(self) -> Self {
        match self {
            Self::Reject => Self::Stop,
            other => other,
        }
    }
}

/// The SQLSTATE of a database error, if the server sent one.
pub fn sqlstate(error: &sqlx::Error) -> Option<String> {
    error
        .as_database_error()
        .and_then(|db| db.code())
        .map(Cow::into_owned)
}

/// Classifies a database error by what the caller must do (PostgreSQL error codes, appendix A of
/// its manual).
pub fn classify(error: &sqlx::Error) -> ErrorClass {
    match error {
        sqlx::Error::Database(db) => classify_sqlstate(db.code().as_deref().unwrap_or("")),
        // The connection broke, the pool is exhausted or timed out, the server went away in the
        // middle of a message: all heal when the server is back.
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => ErrorClass::Retry,
        // A bad URL or TLS configuration does not heal.
        sqlx::Error::Configuration(_) => ErrorClass::Stop,
        // Decoding a row we selected failed: the schema is not what we read at start-up.
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::TypeNotFound { .. }
        | sqlx::Error::Decode(_) => ErrorClass::Stop,
        _ => ErrorClass::Retry,
    }
}

/// Classifies a SQLSTATE code.
pub fn classify_sqlstate(code: &str) -> ErrorClass {
    match code {
        // Authentication and authorization: a wrong password or a revoked grant.
        c if c.starts_with("28") => ErrorClass::Stop,
        "42501" => ErrorClass::Stop, // insufficient_privilege
        // The database or a table or column we read at start-up is gone: the registry is not the
        // one we were configured for.
        "3D000" | "3F000" | "42P01" | "42703" | "42883" => ErrorClass::Stop,
        // A message's data broke a constraint or a type: that message is bad.
        c if c.starts_with("23") || c.starts_with("22") => ErrorClass::Reject,
        // Connection exceptions, serialization failures and deadlocks, insufficient resources,
        // operator intervention (shutdown, crash recovery, "cannot connect now", a statement
        // timeout), system errors.
        c if c.starts_with("08")
            || c.starts_with("40")
            || c.starts_with("53")
            || c.starts_with("57")
            || c.starts_with("58") =>
        {
            ErrorClass::Retry
        }
        // Anything else (an internal error) may be transient; a retry loop with backoff and
        // readiness reporting is the safe default.
        _ => ErrorClass::Retry,
    }
}

/// A one-line description of a database error with its SQLSTATE, for logs and exit messages.
pub fn describe(error: &sqlx::Error) -> String {
    match error.as_database_error() {
        Some(db) => match db.code() {
            Some(code) => format!("{} (SQLSTATE {code})", db.message()),
            None => db.message().to_owned(),
        },
        None => error.to_string(),
    }
}

/// A database error and what was being done when it happened. Its text is what was being done
/// and the SQLSTATE; the driver's message is its source (print the chain for one line with both).
#[derive(Debug, thiserror::Error)]
#[error("{doing}{}", sqlstate(.source).map(|c| format!(" (SQLSTATE {c})")).unwrap_or_default())]
pub struct DatabaseError {
    /// What the caller was doing ("recording datasets").
    pub doing: Cow<'static, str>,
    /// The driver's error.
    pub source: sqlx::Error,
}

impl DatabaseError {
    /// Wraps `source`, saying what was being done.
    pub fn new(doing: impl Into<Cow<'static, str>>, source: sqlx::Error) -> Self {
        Self {
            doing: doing.into(),
            source,
        }
    }

    /// What the caller must do about it.
    pub fn class(&self) -> ErrorClass {
        classify(&self.source)
    }

    /// The SQLSTATE, if the server sent one.
    pub fn sqlstate(&self) -> Option<String> {
        sqlstate(&self.source)
    }
}

/// `.doing("what")` on a database result: the error says what was being done, as `anyhow`'s
/// `.context()` would, but stays typed and classifiable.
pub trait Doing<T> {
    /// Wraps the error in a [`DatabaseError`] naming what was being done.
    fn doing(self, what: impl Into<Cow<'static, str>>) -> Result<T, DatabaseError>;
}

impl<T> Doing<T> for Result<T, sqlx::Error> {
    fn doing(self, what: impl Into<Cow<'static, str>>) -> Result<T, DatabaseError> {
        self.map_err(|source| DatabaseError::new(what, source))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_are_classified_by_what_the_caller_must_do() {
        for code in [
            "08006", "08001", "40001", "40P01", "53300", "57P01", "57P03", "57014", "58030",
            "XX000",
        ] {
            assert_eq!(classify_sqlstate(code), ErrorClass::Retry, "{code}");
        }
        for code in ["23505", "23503", "23502", "22001", "22P02"] {
            assert_eq!(classify_sqlstate(code), ErrorClass::Reject, "{code}");
        }
        for code in [
            "28P01", "28000", "42501", "3D000", "42P01", "42703", "3F000",
        ] {
            assert_eq!(classify_sqlstate(code), ErrorClass::Stop, "{code}");
        }
    }

    #[test]
    fn a_database_error_says_what_was_being_done() {
        let error = Err::<(), _>(sqlx::Error::PoolTimedOut)
            .doing("recording datasets")
            .unwrap_err();
        assert_eq!(error.class(), ErrorClass::Retry);
        assert_eq!(error.to_string(), "recording datasets");
        assert!(std::error::Error::source(&error).is_some());
    }
}
