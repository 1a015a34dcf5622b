//! The record producer: a load generator that behaves like Prompt Processing's LSSTCam worker
//! fleet (`prompt-keda-lsstcam`), and the load-test report of the pipeline behind it.
//!
//! It sends one `pp-output` message per visit and detector, with the dimension records and
//! datasets real workers send (realistic sphgeom regions, UUIDv7 ids, templated paths), on a
//! night's schedule or as fast as the broker takes them; injects the faults operators see
//! (redelivered messages, two pods on one image, malformed messages); checks every delivery report
//! (the real workers do not); reads the writer's `batch-ingested` events and dead letters back,
//! accounts for every dataset and measures end-to-end latency.
//!
//! # Layout
//! - [`focal_plane`]: LSSTCam's 189 science detectors on the sky, as sphgeom polygons.
//! - [`schedule`]: a night of visits and when each worker finishes.
//! - [`messages`]: the `pp-output` message of one visit and detector.
//! - [`tracker`]: what happened to every message and dataset.
//! - [`load`]: one load test against a broker: send, read back, settle.
//! - [`report`]: the table, JSON and plot.
//! - [`cli`]: the command line.

pub mod cli;
pub mod focal_plane;
pub mod load;
pub mod messages;
pub mod report;
pub mod schedule;
pub mod tracker;

pub use load::{Faults, LoadSettings, MetricsCheck, Mode, create_topics, run};
pub use report::Report;
