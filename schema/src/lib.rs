//! The wire contract between the Rust services and the Python side of Prompt Processing.
//!
//! Prompt Processing's workers (Python) send `pp-output` messages to the `butler-writer` topic; the
//! Prompt Publication Service (Python) reads `batch-ingested` events. Both sides speak compact
//! Pydantic JSON, so every type here serializes byte for byte as Pydantic does: fields in declared
//! order, no spaces, floats printed the way `pydantic_core` prints them, non-finite floats as `null`,
//! UUIDs lowercase and hyphenated.
//!
//! This crate does no I/O: no Kafka, no SQL, no files.
//!
//! # Layout
//! - [`message`]: `PromptProcessingOutputEvent` and its parts, `BatchIngestedEvent`, `DatasetBatch`.
//! - [`value`]: the column values of a dimension record, kept as the JSON carried them.
//! - [`json`]: the Pydantic-compatible JSON writer every type serializes through.
//! - [`error`]: decoding errors that say what went wrong and where.
//! - [`region`]: sphgeom's binary region encoding (hex in messages, base64 in the registry).
//! - [`htm`]: the HTM pixelization and its envelope of a region, equal to `lsst.sphgeom`'s.
//! - [`timespan`]: TAI-nanosecond timespans and the registry's `int8range` form.
//! - [`topics`]: the topics the messages travel on and the headers of a dead letter.

pub mod error;
pub mod htm;
pub mod json;
pub mod message;
pub mod region;
pub mod timespan;
pub mod topics;
pub mod value;

pub use error::DecodeError;
pub use htm::{HtmError, HtmPixelization};
pub use message::{
    BatchIngestedEvent, DataId, DataIdValue, DatasetBatch, PromptProcessingOutputEvent,
    SerializedDatasetRef, SerializedDatasetType, SerializedDimensionRecord, SerializedFileDataset,
};
pub use region::{ConvexPolygon, Region, RegionError, UnitVector3d};
pub use timespan::Timespan;
pub use value::{Record, RecordValue};
