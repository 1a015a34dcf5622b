//! Application metrics events for Sasquatch, Rubin's metrics platform, as Rubin's own services
//! send them (Safir's app-metrics convention):
//!
//! - one topic per application, `<prefix>.<application>` (prefix `lsst.square.metrics.events`);
//! - each event an Avro record named after the event, in the namespace of the topic, registered
//!   in a Confluent-compatible schema registry under the subject `<topic>.<event>` with
//!   compatibility NONE;
//! - flat records (InfluxDB stores no nested field), durations as doubles in seconds, and the
//!   metadata `id`, `application`, `timestamp` and `timestamp_ns` in every event;
//! - the Confluent wire format (magic byte 0, the 4-byte schema id, the Avro binary body), no key.
//!
//! # Layout
//! - [`event`]: the metadata, the [`AppEvent`] trait and the joined, checked schema.
//! - [`registry`]: the schema-registry calls.
//! - [`publisher`]: the bounded queue and the task that registers and sends, never blocking the
//!   service.
//! - [`reader`]: the events topic read back and decoded (load-test reports, tests).
//! - [`settings`]: `METRICS_*`, `SCHEMA_MANAGER_*` and the metrics broker's `METRICS_KAFKA_*`.

pub mod event;
pub mod publisher;
pub mod reader;
pub mod registry;
pub mod settings;

pub use event::{AppEvent, EventMetadata, EventSchema, SchemaError, decode, frame, unframe};
pub use publisher::{EventPublisher, Events, PublishCounters, StartError};
pub use registry::{RegistryError, SchemaRegistry};
pub use settings::{MetricsArgs, MetricsSettings};
