//! The writer's application metrics events for Sasquatch (the `app-metrics` crate sends them):
//! one per committed batch and one per circuit-breaker trip, flat, durations in seconds.

use apache_avro::AvroSchema;
use app_metrics::{AppEvent, EventPublisher, Events, SchemaError};
use serde::Serialize;

use crate::outcome::{BatchOutcome, RejectReason};

/// The writer's application name in Sasquatch (an Avro name: no dashes).
pub const APPLICATION: &str = "butlerwriter";

/// A batch whose datasets are in the registry and whose event, dead letters and offsets reached
/// Kafka.
#[derive(Debug, Clone, Serialize, AvroSchema)]
pub struct BatchCommitted {
    /// The batch's id, as in its `batch-ingested` event and its file name.
    pub batch_id: String,
    /// Messages in the batch.
    pub messages: i64,
    /// Datasets the batch added to the registry.
    pub datasets_ingested: i64,
    /// Datasets of the batch already in the registry.
    pub datasets_already_present: i64,
    /// Messages turned away, all reasons (each went to the dead-letter topic).
    pub rejected: i64,
    /// ... because they conflict with the registry or the batch.
    pub rejected_conflict: i64,
    /// ... because they do not decode or do not match the universe.
    pub rejected_invalid: i64,
    /// ... because a dataset type is not registered.
    pub rejected_unknown_dataset_type: i64,
    /// ... because the writer cannot store them as daf_butler would.
    pub rejected_unsupported: i64,
    /// ... because they are another message type.
    pub rejected_other_message_type: i64,
    /// Dead-letter records sent with the batch.
    pub dead_lettered: i64,
    /// The registry engine's time for the batch, with its retries while the database was away.
    pub engine_seconds: f64,
    /// Writing the batch file, with its retries.
    pub file_seconds: f64,
    /// Delivering the event, the dead letters and the offsets to Kafka, with its retries.
    pub announce_seconds: f64,
    /// From the batch closing to its offsets' commit.
    pub batch_seconds: f64,
    /// From the oldest message's Kafka timestamp to the commit: how far behind its input topic
    /// the writer is, in time.
    pub lag_seconds: f64,
    /// `transactional` or `idempotent`.
    pub delivery: String,
}

impl AppEvent for BatchCommitted {
    const NAME: &'static str = "batch";
}

impl BatchCommitted {
    /// The counts of `outcome`; the caller fills in the times.
    pub fn counts(batch_id: uuid::Uuid, messages: usize, outcome: &BatchOutcome) -> Self {
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        let rejected = |reason| {
            count(
                outcome
                    .rejected
                    .iter()
                    .filter(|r| r.reason == reason)
                    .count(),
            )
        };
        Self {
            batch_id: batch_id.to_string(),
            messages: count(messages),
            datasets_ingested: count(outcome.ingested.len()),
            datasets_already_present: count(outcome.already_present.len()),
            rejected: count(outcome.rejected.len()),
            rejected_conflict: rejected(RejectReason::Conflict),
            rejected_invalid: rejected(RejectReason::Invalid),
            rejected_unknown_dataset_type: rejected(RejectReason::UnknownDatasetType),
            rejected_unsupported: rejected(RejectReason::Unsupported),
            rejected_other_message_type: rejected(RejectReason::OtherMessageType),
            dead_lettered: count(outcome.rejected.len()),
            engine_seconds: 0.0,
            file_seconds: 0.0,
            announce_seconds: 0.0,
            batch_seconds: 0.0,
            lag_seconds: 0.0,
            delivery: String::new(),
        }
    }
}

/// The circuit breaker opened: nearly every recent message was rejected, consumption holds.
#[derive(Debug, Clone, Serialize, AvroSchema)]
pub struct BreakerTrip {
    /// Messages in the held batch.
    pub messages: i64,
    /// Of which rejected.
    pub rejected: i64,
    /// One rejection, `reason: error`, for the dashboard.
    pub example: String,
    /// How long the breaker waits before trying the held batch again.
    pub cooldown_seconds: f64,
}

impl AppEvent for BreakerTrip {
    const NAME: &'static str = "breaker_trip";
}

/// The writer's publishers.
#[derive(Debug)]
pub struct WriterEvents {
    /// The sending side, closed at shutdown.
    pub events: Events,
    /// One event per committed batch.
    pub batch: EventPublisher<BatchCommitted>,
    /// One event per breaker trip.
    pub breaker_trip: EventPublisher<BreakerTrip>,
}

impl WriterEvents {
    /// Publishers on `events` (checked flat here, at start-up).
    pub fn new(events: Events) -> Result<Self, SchemaError> {
        Ok(Self {
            batch: events.publisher()?,
            breaker_trip: events.publisher()?,
            events,
        })
    }
}
