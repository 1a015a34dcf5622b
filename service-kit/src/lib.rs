//! What the three services (the Butler Writer, the publication consumer, the record producer)
//! share, so that no service depends on another and each piece of chassis exists once.
//!
//! # Layout
//! - [`kafka`]: where the broker is and how to authenticate ([`KafkaSettings`]), a client's
//!   configuration with its own `client.id`, the error codes no retry heals.
//! - [`context`]: the consumer's librdkafka context: logs, statistics (broker up, consumer lag),
//!   fatal errors, rebalance bookkeeping.
//! - [`retry`]: capped exponential backoff with jitter.
//! - [`health`]: liveness (a heartbeat) and readiness (dependencies, assignment, holds).
//! - [`http`]: the `/`, `/healthz`, `/readyz` and `/metrics` endpoints and their server.
//! - [`metrics`]: the metrics every service has and the Prometheus exposition.
//! - [`lifecycle`]: one shutdown (a cancellation token), the main work run to its end with a
//!   grace period, the handle a service's `start` returns, the termination signal.
//! - [`logging`], [`cli`]: logging set-up, command-line parsers and the broker flags.
//! - [`errors`]: configuration errors and the one-line form of an error with its causes.

pub mod cli;
pub mod context;
pub mod errors;
pub mod health;
pub mod http;
pub mod kafka;
pub mod lifecycle;
pub mod logging;
pub mod metrics;
pub mod retry;

pub use errors::{Chain, ConfigError, chain};
pub use health::{Dependency, Health};
pub use kafka::{KafkaSettings, KafkaVariables, SecurityProtocol};
pub use lifecycle::{Running, ServiceHandle, TaskFailed, termination};
pub use retry::{Backoff, RetrySettings};
pub use tokio_util::sync::CancellationToken;
