//! What one batch did: the datasets now in the registry and the messages that were turned away.
//!
//! The batch file lists `ingested` and `already_present` (never rejected ids), the dead-letter
//! topic receives the rejected messages with their reason, and the metrics count all three.

use std::fmt;

use serde::Serialize;
use uuid::Uuid;

/// Why a message was not ingested. Each class tells an operator where to look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// Its datasets conflict with the registry or with an earlier message of the batch: same
    /// data ID with another UUID (two pods on one image), or a UUID known with another type, run
    /// or data ID. daf_butler's `ConflictingDefinitionError`.
    Conflict,
    /// It does not decode, or does not match the repository's dimension universe, or refers to
    /// dimension records the registry does not have.
    Invalid,
    /// One of its datasets has a dataset type that is not registered.
    UnknownDatasetType,
    /// Valid, but uses something the writer cannot store exactly as daf_butler would (a region
    /// other than a convex polygon, a dimension element without a table).
    Unsupported,
    /// A well-formed message of another type (the coming `day-end` signal).
    OtherMessageType,
}

impl RejectReason {
    /// The snake_case name, as in headers, JSON and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Conflict => "conflict",
            Self::Invalid => "invalid",
            Self::UnknownDatasetType => "unknown_dataset_type",
            Self::Unsupported => "unsupported",
            Self::OtherMessageType => "other_message_type",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A message that was not ingested.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rejection {
    /// Position of the message in the batch given to the engine.
    pub index: usize,
    /// The class of fault.
    pub reason: RejectReason,
    /// What exactly was wrong, for the dead-letter header and the log.
    pub error: String,
}

/// The result of one batch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BatchOutcome {
    /// Datasets this batch added to the registry.
    pub ingested: Vec<Uuid>,
    /// Datasets of this batch that were in the registry already (a redelivery, a retry).
    pub already_present: Vec<Uuid>,
    /// Messages turned away, by position.
    pub rejected: Vec<Rejection>,
}

impl BatchOutcome {
    /// Every dataset of the batch that is in the registry now: what the batch file lists.
    pub fn datasets(&self) -> impl Iterator<Item = &Uuid> {
        self.ingested.iter().chain(&self.already_present)
    }

    /// The rejection of message `index`, if it was rejected.
    pub fn rejection(&self, index: usize) -> Option<&Rejection> {
        self.rejected.iter().find(|r| r.index == index)
    }
}
