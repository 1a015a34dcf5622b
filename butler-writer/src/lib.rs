//! The Butler Writer: `pp-output` messages from Prompt Processing's workers in, the Embargo
//! Butler's registry rows out, exactly as daf_butler would have written them.
//!
//! # Layout
//! - [`universe`]: the dimension universe the registry stores, which every check is built from.
//! - [`registry`]: the engine: prepares a batch, inserts dimension records and datasets set-based,
//!   isolates bad messages.
//! - [`outcome`]: what a batch did (ingested, already present, rejected with a reason).
//! - [`error`]: the engine's errors, classified as retry or stop.
//! - [`service`]: the Kafka service (`butler-writer serve`): batches in, events out.
//! - [`replay`]: `butler-writer replay`, re-reading the input topic from a point in time.
//! - [`redrive`]: `butler-writer redrive`, dead letters back onto the input topic after a fix.
//! - [`cli`]: the command line (`butler-writer serve`, `ingest`, `replay`, `redrive`).
//!
//! The repository's `butler.yaml`, credentials and the classification of database errors are the
//! `butler-repository` crate's; Kafka settings, health, the HTTP endpoints, retries and the
//! lifecycle are the `service-kit` crate's, shared with the other services.

pub mod cli;
pub mod error;
pub mod outcome;
pub mod redrive;
pub mod registry;
pub mod replay;
pub mod service;
pub mod universe;

pub use outcome::{BatchOutcome, RejectReason, Rejection};
pub use registry::{Registry, StartupError};

/// This build's version, as `--version` and the dead-letter headers report it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
