//! Prometheus metrics, all named `butler_writer_*`, served at `/metrics`.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::outcome::RejectReason;

/// A metric's labels: name and value pairs.
type Labels = Vec<(&'static str, String)>;

/// Every metric of the writer.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Batches, by result (`committed`, `abandoned`).
    pub batches: Family<Labels, Counter>,
    /// Messages taken from the input topic.
    pub messages_consumed: Counter,
    /// Datasets a batch added to the registry.
    pub datasets_ingested: Counter,
    /// Datasets that were already in the registry.
    pub datasets_already_present: Counter,
    /// Messages dead-lettered, by reason.
    pub messages_rejected: Family<Labels, Counter>,
    /// Retries, by stage (`database`, `batch_file`, `kafka`).
    pub retries: Family<Labels, Counter>,
    /// From a batch closing to its commit to Kafka.
    pub batch_seconds: Histogram,
    /// The registry engine's time for one batch.
    pub database_seconds: Histogram,
    /// From a message's Kafka timestamp to the commit of its batch.
    pub produce_to_commit_seconds: Histogram,
    /// Messages in a batch.
    pub batch_messages: Histogram,
    /// Messages behind the end of each assigned partition, as librdkafka last reported it.
    pub consumer_lag: Family<Labels, Gauge>,
    /// 1 while the circuit breaker holds consumption.
    pub breaker_open: Gauge,
    /// 1 while `/readyz` says ready.
    pub ready: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("butler_writer");
        let seconds = || Histogram::new(exponential_buckets(0.005, 2.0, 14));
        let metrics = Self {
            batches: Family::default(),
            messages_consumed: Counter::default(),
            datasets_ingested: Counter::default(),
            datasets_already_present: Counter::default(),
            messages_rejected: Family::default(),
            retries: Family::default(),
            batch_seconds: seconds(),
            database_seconds: seconds(),
            produce_to_commit_seconds: seconds(),
            batch_messages: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            consumer_lag: Family::default(),
            breaker_open: Gauge::default(),
            ready: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "batches",
            "Batches, by result: committed, or abandoned after its partitions were revoked",
            metrics.batches.clone(),
        );
        registry.register(
            "messages_consumed",
            "Messages read from the input topic",
            metrics.messages_consumed.clone(),
        );
        registry.register(
            "datasets_ingested",
            "Datasets added to the registry",
            metrics.datasets_ingested.clone(),
        );
        registry.register(
            "datasets_already_present",
            "Datasets of a batch that were in the registry already",
            metrics.datasets_already_present.clone(),
        );
        registry.register(
            "messages_rejected",
            "Messages sent to the dead-letter topic, by reason",
            metrics.messages_rejected.clone(),
        );
        registry.register(
            "retries",
            "Retries after a transient failure, by stage: database, batch_file, kafka",
            metrics.retries.clone(),
        );
        registry.register(
            "batch_seconds",
            "From a batch closing to its commit to Kafka",
            metrics.batch_seconds.clone(),
        );
        registry.register(
            "database_seconds",
            "Registry engine time for one batch",
            metrics.database_seconds.clone(),
        );
        registry.register(
            "produce_to_commit_seconds",
            "From a message's Kafka timestamp to the commit of its batch",
            metrics.produce_to_commit_seconds.clone(),
        );
        registry.register(
            "batch_messages",
            "Messages per batch",
            metrics.batch_messages.clone(),
        );
        registry.register(
            "consumer_lag",
            "Messages behind the end of each assigned partition",
            metrics.consumer_lag.clone(),
        );
        registry.register(
            "breaker_open",
            "1 while the circuit breaker holds consumption",
            metrics.breaker_open.clone(),
        );
        registry.register(
            "ready",
            "1 while the writer is ready",
            metrics.ready.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }

    /// Counts a retry at `stage`.
    pub fn retry(&self, stage: &'static str) {
        self.retries
            .get_or_create(&vec![("stage", stage.to_owned())])
            .inc();
    }

    /// Counts a batch by result.
    pub fn batch(&self, result: &'static str) {
        self.batches
            .get_or_create(&vec![("result", result.to_owned())])
            .inc();
    }

    /// Counts a dead-lettered message.
    pub fn rejected(&self, reason: RejectReason) {
        self.messages_rejected
            .get_or_create(&vec![("reason", reason.as_str().to_owned())])
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}
