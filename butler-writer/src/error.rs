//! Errors at the registry engine's boundary, classified by what the caller must do
//! (`butler_repository::errors` has the classification of database errors every service shares).
//!
//! - **Retry** ([`EngineError::Retry`]): the database is unreachable, restarting, overloaded, or
//!   lost a race. The batch is intact: run it again after a backoff. Nothing was committed that a
//!   retry would not repeat identically.
//! - **Reject**: a message is bad (invalid, conflicting, of an unknown dataset type). These are
//!   not errors of the batch: they are [`crate::outcome::Rejection`]s in its outcome, and the rest
//!   of the batch lands.
//! - **Stop** ([`EngineError::Stop`]): credentials, privileges, or a registry that is no longer
//!   the one read at start-up. Retrying cannot help; the process should exit with one clear line.

use butler_repository::{DatabaseError, ErrorClass};

/// An error that ends an ingest call without an outcome.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Transient: try again.
    #[error("transient database error (will retry)")]
    Retry(#[source] DatabaseError),
    /// Permanent: stop.
    #[error("the registry database refused the writer")]
    Stop(#[source] DatabaseError),
}

impl EngineError {
    /// The class of this error ([`ErrorClass::Retry`] or [`ErrorClass::Stop`]).
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Retry(_) => ErrorClass::Retry,
            Self::Stop(_) => ErrorClass::Stop,
        }
    }

    /// The database error behind it.
    pub fn database_error(&self) -> &DatabaseError {
        match self {
            Self::Retry(e) | Self::Stop(e) => e,
        }
    }
}

impl From<DatabaseError> for EngineError {
    /// A `Reject`-class error that reaches here was not attributable to one message, so it is
    /// retried (the prechecks will find the culprit on the next pass).
    fn from(error: DatabaseError) -> Self {
        match error.class() {
            ErrorClass::Stop => Self::Stop(error),
            ErrorClass::Retry | ErrorClass::Reject => Self::Retry(error),
        }
    }
}
