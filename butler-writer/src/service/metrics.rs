//! Prometheus metrics, all named `butler_writer_*`, served at `/metrics`.

use app_metrics::PublishCounters;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use service_kit::metrics::{CommonMetrics, Exposition, Labels, render};

use super::batch::Batch;
use crate::outcome::{BatchOutcome, RejectReason};

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
    /// Readiness, consumer lag and retries by stage (`database`, `batch_file`, `kafka`).
    pub common: CommonMetrics,
    /// From a batch closing to its commit to Kafka.
    pub batch_seconds: Histogram,
    /// The registry engine's time for one batch.
    pub database_seconds: Histogram,
    /// From a message's Kafka timestamp to the commit of its batch.
    pub produce_to_commit_seconds: Histogram,
    /// Messages in a batch.
    pub batch_messages: Histogram,
    /// 1 while the circuit breaker holds consumption.
    pub breaker_open: Gauge,
    /// Application metrics events sent to Sasquatch, and dropped.
    pub app_events: PublishCounters,
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
            common: CommonMetrics::default(),
            batch_seconds: seconds(),
            database_seconds: seconds(),
            produce_to_commit_seconds: seconds(),
            batch_messages: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            breaker_open: Gauge::default(),
            app_events: PublishCounters::default(),
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
        metrics
            .common
            .register(&mut registry, "database, batch_file, kafka");
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
            "breaker_open",
            "1 while the circuit breaker holds consumption",
            metrics.breaker_open.clone(),
        );
        metrics.app_events.register(&mut registry);
        Self {
            registry,
            ..metrics
        }
    }

    /// Counts a retry at `stage`.
    pub fn retry(&self, stage: &'static str) {
        self.common.retry(stage);
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

    /// Counts a batch whose results reached Kafka (`now_ms`: the time, for the latency from each
    /// message's Kafka timestamp).
    pub fn announced(&self, batch: &Batch, outcome: &BatchOutcome, now_ms: i64) {
        self.batch("committed");
        self.datasets_ingested.inc_by(outcome.ingested.len() as u64);
        self.datasets_already_present
            .inc_by(outcome.already_present.len() as u64);
        for rejection in &outcome.rejected {
            self.rejected(rejection.reason);
        }
        #[allow(clippy::cast_precision_loss)]
        self.batch_messages.observe(batch.messages.len() as f64);
        self.batch_seconds
            .observe(batch.closed_at.elapsed().as_secs_f64());
        for message in &batch.messages {
            if let Some(ts) = message.timestamp_ms {
                #[allow(clippy::cast_precision_loss)]
                self.produce_to_commit_seconds
                    .observe((now_ms - ts).max(0) as f64 / 1000.0);
            }
        }
    }
}

impl Exposition for Metrics {
    fn common(&self) -> &CommonMetrics {
        &self.common
    }

    fn render(&self) -> String {
        render(&self.registry)
    }
}
