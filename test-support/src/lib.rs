//! What a test needs from the outside world, in one call each: a Kafka-protocol broker, a
//! PostgreSQL server, a fresh daf_butler registry made by the real `butler create`, and fresh
//! topics with unique names.
//!
//! Services come from the environment when it names them (`KAFKA_BOOTSTRAP_SERVERS`,
//! `DATABASE_URL`; `eval "$(deploy/local/stack env)"` sets both, and CI does), and from
//! testcontainers otherwise (an Apache Kafka and a Postgres image), which needs a Docker engine. A
//! test that can get neither fails with a message naming the variables to set: no test that needs
//! a service passes without it.
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! let env = test_support::TestEnv::start().await?;
//! let registry = env.fresh_registry().await?;
//! let topics = env.fresh_topics(1).await?;
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - [`services`]: where the broker and the database come from (environment or containers).
//! - [`kafka`]: topics with unique names, client configuration, reading a topic back.
//! - [`registry`]: fresh registries through `deploy/local/bootstrap_registry.py`.
//! - [`proxy`]: a TCP proxy a test can cut, to take a service away from one client.
//! - [`s3`]: a moto S3 server of the test's own, with a bucket and enforced credentials.
//! - [`sasl`]: a nisshi broker of the test's own that requires SCRAM-SHA-512.

pub mod kafka;
pub mod proxy;
pub mod registry;
pub mod s3;
pub mod sasl;
pub mod services;

use std::path::PathBuf;

pub use kafka::TestTopics;
pub use registry::TestRegistry;
pub use s3::TestS3;
pub use services::{BrokerKind, TestEnv};

/// The workspace root (where `deploy/` and `.venv` live).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The team's reference folder: `$PROMPT_KAFKA_REFERENCE`, or `../shared/reference` beside the
/// workspace.
pub fn reference_dir() -> PathBuf {
    std::env::var_os("PROMPT_KAFKA_REFERENCE").map_or_else(
        || workspace_root().join("../shared/reference"),
        PathBuf::from,
    )
}

/// A name no other test run uses: `prefix` and 12 random hex digits, lowercase, valid as a topic,
/// a Postgres identifier and a consumer group.
pub fn unique_name(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}_{}", &id[..12])
}
