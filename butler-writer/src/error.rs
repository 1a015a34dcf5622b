//! Errors at the engine's boundary, classified by what the caller must do.
//!
//! - **Retry**: the database is unreachable, restarting, overloaded, or lost a race (a
//!   serialization failure, a deadlock, a row another writer inserted first). The batch is intact:
//!   run it again after a backoff. Nothing was committed that a retry would not repeat
//!   identically.
//! - **Reject**: a message is bad (invalid, conflicting, of an unknown dataset type). These are
//!   not errors of the batch: they are [`crate::outcome::Rejection`]s in its outcome, and the rest
//!   of the batch lands.
//! - **Stop**: configuration, authentication, privileges, or a registry this writer does not
//!   support. Retrying cannot help; the process should exit with one clear line.

use sqlx::error::DatabaseError;

/// What the caller must do about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Try the same batch again after a backoff.
    Retry,
    /// The offending message is bad; the batch can go on without it.
    Reject,
    /// Stop the process: nothing will change by retrying.
    Stop,
}

/// An error that ends an ingest call without an outcome.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Transient: try again.
    #[error("transient database error (will retry): {0}")]
    Retry(#[source] sqlx::Error),
    /// Permanent: stop.
    #[error("{0}")]
    Stop(String),
}

impl EngineError {
    /// The class of this error ([`ErrorClass::Retry`] or [`ErrorClass::Stop`]).
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Retry(_) => ErrorClass::Retry,
            Self::Stop(_) => ErrorClass::Stop,
        }
    }

    /// Wraps a database error according to [`classify`]; a `Reject`-class error that reaches here
    /// was not attributable to one message, so it is retried (the prechecks will find the culprit
    /// on the next pass).
    pub fn from_sqlx(error: sqlx::Error) -> Self {
        match classify(&error) {
            ErrorClass::Stop => Self::Stop(describe(&error)),
            ErrorClass::Retry | ErrorClass::Reject => Self::Retry(error),
        }
    }
}

impl From<sqlx::Error> for EngineError {
    fn from(error: sqlx::Error) -> Self {
        Self::from_sqlx(error)
    }
}

/// The SQLSTATE of a database error, if the server sent one.
pub fn sqlstate(error: &sqlx::Error) -> Option<String> {
    error
        .as_database_error()
        .and_then(DatabaseError::code)
        .map(|c| c.into_owned())
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
        // operator intervention (shutdown, crash recovery, "cannot connect now"), system errors.
        c if c.starts_with("08")
            || c.starts_with("40")
            || c.starts_with("53")
            || c.starts_with("57")
            || c.starts_with("58") =>
        {
            ErrorClass::Retry
        }
        // Anything else (a statement timeout, an internal error) may be transient; a retry loop
        // with backoff and readiness reporting is the safe default.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_are_classified_by_what_the_caller_must_do() {
        for code in [
            "08006", "08001", "40001", "40P01", "53300", "57P01", "57P03", "58030", "XX000",
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
}
