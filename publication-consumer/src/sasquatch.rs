//! The consumer's application metrics events for Sasquatch (the `app-metrics` crate sends them):
//! one per `batch-ingested` event recorded, one per event skipped and recorded as failed. Flat,
//! durations in seconds.

use apache_avro::AvroSchema;
use app_metrics::{AppEvent, EventPublisher, Events, SchemaError};
use serde::Serialize;

/// The consumer's application name in Sasquatch (an Avro name: no dashes).
pub const APPLICATION: &str = "publicationconsumer";

/// A `batch-ingested` event whose datasets are recorded in the state database.
#[derive(Debug, Clone, Serialize, AvroSchema)]
pub struct EventRecorded {
    /// The batch's id.
    pub batch_id: String,
    /// The event's origin.
    pub origin: String,
    /// Datasets the batch file lists.
    pub datasets: i64,
    /// Datasets newly recorded (0 for a batch seen before).
    pub recorded: i64,
    /// Listed datasets the registry does not know.
    pub unknown: i64,
    /// Whether the batch was new (false: a repeated event).
    pub new_batch: bool,
    /// Reading the batch file, with its waits while it was missing.
    pub read_seconds: f64,
    /// Looking the datasets up in the registry.
    pub lookup_seconds: f64,
    /// Storing the records.
    pub store_seconds: f64,
    /// From the event's Kafka timestamp to its datasets' recording.
    pub age_seconds: f64,
}

impl AppEvent for EventRecorded {
    const NAME: &'static str = "event_recorded";
}

/// An event skipped and recorded as failed (bad payload, batch file missing or unusable).
#[derive(Debug, Clone, Serialize, AvroSchema)]
pub struct EventFailed {
    /// Why: `malformed`, `batch_file_missing`...
    pub reason: String,
    /// The batch's id, when the event could be read.
    pub batch_id: Option<String>,
    /// The event's partition.
    pub partition: i32,
    /// The event's offset.
    pub offset: i64,
}

impl AppEvent for EventFailed {
    const NAME: &'static str = "event_failed";
}

/// The consumer's publishers.
#[derive(Debug)]
pub struct ConsumerEvents {
    /// The sending side, closed at shutdown.
    pub events: Events,
    /// One per event recorded.
    pub recorded: EventPublisher<EventRecorded>,
    /// One per event skipped.
    pub failed: EventPublisher<EventFailed>,
}

impl ConsumerEvents {
    /// Publishers on `events` (checked flat here, at start-up).
    pub fn new(events: Events) -> Result<Self, SchemaError> {
        Ok(Self {
            recorded: events.publisher()?,
            failed: events.publisher()?,
            events,
        })
    }

    /// Publishers that do nothing (metrics off).
    pub fn disabled() -> Result<Self, SchemaError> {
        Self::new(Events::disabled())
    }
}
