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
//! - [`proxy`]: a TCP proxy a test can cut, to take a service away from one client, or delay, to
//!   put it further away.
//! - [`s3`]: a moto S3 server of the test's own, with a bucket and enforced credentials.
//! - [`sasl`]: a nisshi broker of the test's own that requires SCRAM-SHA-512.
//! - [`schema_registry`]: a schema registry for application metrics events.
//! - [`fixtures`]: the message files and HTM vectors `deploy/local/stack up` generates.
//! - [`messages`]: realistic pp-output messages for as many new visits as a test needs.
//! - [`pipeline`]: a writer's surroundings ([`pipeline::Fixture`]) and what it left, read back.
//! - [`writer`]: a real Butler Writer, started in-process with test settings.
//! - [`copy_floor`]: the rows a writer wrote, loaded with COPY into a clone: the benchmarks'
//!   yardstick.
//! - [`service_bench`]: what the benchmarks of the whole writer share: a backlog on a topic,
//!   `butler-writer serve` draining it, its figures, the reconciliation.
//! - [`database`]: empty databases of a test's own; [`cleanup`]: how what a test made on the
//!   services (databases, topics) is removed when the test ends.

pub mod cleanup;
pub mod copy_floor;
pub mod database;
pub mod fixtures;
pub mod kafka;
pub mod messages;
pub mod pipeline;
pub mod proxy;
pub mod registry;
pub mod s3;
pub mod sasl;
pub mod schema_registry;
pub mod service_bench;
pub mod services;
pub mod writer;

use std::path::PathBuf;

pub use database::TestDatabase;
pub use fixtures::{fixture_lines, fixtures_dir};
pub use kafka::TestTopics;
pub use pipeline::{Fixture, fixture};
pub use registry::TestRegistry;
pub use s3::TestS3;
pub use services::{BrokerKind, TestEnv};

/// The workspace root (where `deploy/` and `.venv` live).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A name no other test run uses: `prefix` and 12 random hex digits, lowercase, valid as a topic,
/// a Postgres identifier and a consumer group.
pub fn unique_name(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}_{}", &id[..12])
}
