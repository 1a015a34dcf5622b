//! The librdkafka context every service's consumer runs with: librdkafka's log lines through
//! `tracing`, its statistics into readiness and the consumer-lag gauge, its errors sorted into
//! "wait" (every broker down) and "stop" (credentials or permissions refused), and rebalances
//! recorded in readiness, with a [`RebalanceHooks`] for the service's own bookkeeping.
//!
//! Callbacks only do bookkeeping: they run on librdkafka's threads or inside `poll`, and must
//! never wait on the service's work.

use std::sync::{Arc, Mutex};

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use rdkafka::TopicPartitionList;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::statistics::Statistics;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::health::{Dependency, Health};
use crate::kafka::is_fatal_code;
use crate::metrics::Labels;

/// Kafka refused something no retry will heal.
#[derive(Debug, Clone, thiserror::Error)]
#[error("Kafka refused the {what}")]
pub struct KafkaRefused {
    /// What was refused, and where ("consumer's credentials or permissions: <reason>").
    pub what: String,
    /// librdkafka's error.
    #[source]
    pub source: KafkaError,
}

/// The first fatal Kafka error a client reported, and a token that fires when it does.
#[derive(Debug, Default)]
pub struct Fatal {
    first: Mutex<Option<KafkaRefused>>,
    reported: CancellationToken,
}

impl Fatal {
    /// Records `error` (only the first is kept) and fires [`wait`](Self::wait).
    pub fn report(&self, what: impl Into<String>, source: KafkaError) {
        if let Ok(mut slot) = self.first.lock()
            && slot.is_none()
        {
            *slot = Some(KafkaRefused {
                what: what.into(),
                source,
            });
        }
        self.reported.cancel();
    }

    /// The fatal error, if one was reported.
    pub fn get(&self) -> Option<KafkaRefused> {
        self.first.lock().ok().and_then(|f| f.clone())
    }

    /// Waits until a fatal error is reported and returns it.
    pub async fn wait(&self) -> KafkaRefused {
        self.reported.cancelled().await;
        self.get().unwrap_or_else(|| KafkaRefused {
            what: "client (no detail was kept)".to_owned(),
            source: KafkaError::Canceled,
        })
    }
}

/// A service's own bookkeeping on rebalances (the writer abandons the batches of revoked
/// partitions). Called from the consumer's poll; must return quickly and never block on work.
pub trait RebalanceHooks: Send + Sync + 'static {
    /// Partitions are about to be revoked (or the rebalance failed): work read under the old
    /// assignment must not be committed.
    fn revoking(&self) {}
    /// Partitions were assigned.
    fn assigned(&self, _partitions: &TopicPartitionList) {}
}

/// No bookkeeping of one's own.
impl RebalanceHooks for () {}

/// The context of a service's Kafka consumer; see the module documentation.
#[derive(Debug)]
pub struct KafkaContext<H = ()> {
    health: Arc<Health>,
    consumer_lag: Family<Labels, Gauge>,
    topic: String,
    fatal: Arc<Fatal>,
    hooks: H,
}

impl<H: RebalanceHooks> KafkaContext<H> {
    /// A context for a consumer of `topic` that reports to `health` and `consumer_lag`.
    pub fn new(
        health: Arc<Health>,
        consumer_lag: Family<Labels, Gauge>,
        topic: impl Into<String>,
        hooks: H,
    ) -> Self {
        Self {
            health,
            consumer_lag,
            topic: topic.into(),
            fatal: Arc::new(Fatal::default()),
            hooks,
        }
    }

    /// Where the first fatal error goes (also for errors the service sees in its own calls).
    pub fn fatal(&self) -> &Arc<Fatal> {
        &self.fatal
    }

    /// The service's hooks.
    pub fn hooks(&self) -> &H {
        &self.hooks
    }
}

impl<H: RebalanceHooks> ClientContext for KafkaContext<H> {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                error!(target: "librdkafka", facility = fac, "{log_message}");
            }
            RDKafkaLogLevel::Warning => {
                warn!(target: "librdkafka", facility = fac, "{log_message}");
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                info!(target: "librdkafka", facility = fac, "{log_message}");
            }
            RDKafkaLogLevel::Debug => debug!(target: "librdkafka", facility = fac, "{log_message}"),
        }
    }

    fn stats(&self, statistics: Statistics) {
        report_statistics(&statistics, &self.topic, &self.health, &self.consumer_lag);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        if code.is_some_and(is_fatal_code) {
            error!(%error, reason, "Kafka refused the client's credentials or permissions");
            self.fatal.report(
                format!("client's credentials or permissions: {reason}"),
                error,
            );
        } else if code == Some(RDKafkaErrorCode::AllBrokersDown) {
            warn!(reason, "every broker is down");
            self.health
                .set(Dependency::Broker, false, Some(format!("Kafka: {reason}")));
        } else {
            warn!(%error, reason, "Kafka client error");
        }
    }
}

impl<H: RebalanceHooks> ConsumerContext for KafkaContext<H> {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(partitions) => {
                self.hooks.revoking();
                self.health.set_assignment(None);
                info!(partitions = partitions.count(), "partitions revoked");
            }
            Rebalance::Assign(partitions) => {
                self.health.set_assignment(Some(partitions.count()));
                self.consumer_lag.clear();
                self.hooks.assigned(partitions);
                let list: Vec<String> = partitions
                    .elements()
                    .iter()
                    .map(|e| format!("{}[{}]", e.topic(), e.partition()))
                    .collect();
                info!(partitions = ?list, "partitions assigned");
            }
            Rebalance::Error(error) => {
                self.hooks.revoking();
                warn!(%error, "rebalance error");
            }
        }
    }
}

/// What librdkafka's statistics tell operators: whether a broker connection is up, and each
/// partition's consumer lag on `topic` (labelled by topic and partition).
pub fn report_statistics(
    statistics: &Statistics,
    topic: &str,
    health: &Health,
    consumer_lag: &Family<Labels, Gauge>,
) {
    let up = statistics
        .brokers
        .values()
        .any(|b| b.nodeid >= 0 && b.state == "UP");
    health.set(
        Dependency::Broker,
        up,
        (!up).then(|| "no broker connection is up".to_owned()),
    );
    if let Some(stats) = statistics.topics.get(topic) {
        for (partition, stats) in &stats.partitions {
            if *partition >= 0 && stats.consumer_lag >= 0 {
                consumer_lag
                    .get_or_create(&vec![
                        ("topic", topic.to_owned()),
                        ("partition", partition.to_string()),
                    ])
                    .set(stats.consumer_lag);
            }
        }
    }
}
