//! The Butler Writer: `pp-output` messages from Prompt Processing's workers in, the Embargo
//! Butler's registry rows out, exactly as daf_butler would have written them.
//!
//! # Layout
//! - [`repository`]: the repository's `butler.yaml` (registry database, namespace, datastores).
//! - [`db_auth`]: database credentials from the URL, `PGPASSWORD` or a `db-auth.yaml` file.
//! - [`universe`]: the dimension universe the registry stores, which every check is built from.
//! - [`registry`]: the engine: prepares a batch, inserts dimension records and datasets set-based,
//!   isolates bad messages.
//! - [`outcome`]: what a batch did (ingested, already present, rejected with a reason).
//! - [`error`]: errors classified as retry, reject or stop.
//! - [`service`]: the Kafka service (`butler-writer serve`): batches in, events out.
//! - [`replay`]: `butler-writer replay`, re-reading the input topic from a point in time.
//! - [`redrive`]: `butler-writer redrive`, dead letters back onto the input topic after a fix.
//! - [`cli`]: the command line (`butler-writer serve`, `butler-writer ingest`, `butler-writer replay`).

pub mod cli;
pub mod db_auth;
pub mod error;
pub mod outcome;
pub mod redrive;
pub mod registry;
pub mod replay;
pub mod repository;
pub mod service;
pub mod universe;

pub use outcome::{BatchOutcome, RejectReason, Rejection};
pub use registry::{OpenOptions, Registry, StartupError};
pub use repository::ButlerConfig;

/// This build's version, as `--version` and the dead-letter headers report it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
