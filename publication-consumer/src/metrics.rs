//! Prometheus metrics, all named `publication_consumer_*`, served at `/metrics`.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use service_kit::metrics::{CommonMetrics, Exposition, Labels, render};

/// Every metric of the consumer.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Events recorded (a batch seen for the first time).
    pub events_processed: Counter,
    /// Events whose batch had been recorded before (replays, duplicates).
    pub events_duplicate: Counter,
    /// Events no retry can heal (malformed, unknown type or origin, a bad batch file), skipped
    /// at once and recorded in `failed_event`, by reason.
    pub events_skipped: Family<Labels, Counter>,
    /// Events given up on after retrying (a batch file that never appeared or stayed
    /// unreadable), recorded in `failed_event`, by reason.
    pub events_failed: Family<Labels, Counter>,
    /// Datasets added to the state.
    pub datasets_recorded: Counter,
    /// Dataset ids the registry did not know, recorded in `unknown_dataset`.
    pub unknown_datasets: Counter,
    /// Readiness, consumer lag and retries after a transient failure, by stage.
    pub common: CommonMetrics,
    /// From receiving an event to its offset commit.
    pub event_seconds: Histogram,
    /// From an event's Kafka timestamp to its offset commit.
    pub event_age_seconds: Histogram,
    /// Datasets per batch file.
    pub batch_datasets: Histogram,
    /// Seconds the event in hand has waited for its batch file; 0 when not waiting.
    pub batch_file_waiting_seconds: Gauge,
    /// Application metrics events sent to Sasquatch, and dropped.
    pub app_events: app_metrics::PublishCounters,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("publication_consumer");
        let metrics = Self {
            events_processed: Counter::default(),
            events_duplicate: Counter::default(),
            events_skipped: Family::default(),
            events_failed: Family::default(),
            datasets_recorded: Counter::default(),
            unknown_datasets: Counter::default(),
            common: CommonMetrics::default(),
            event_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            event_age_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 16)),
            batch_datasets: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            batch_file_waiting_seconds: Gauge::default(),
            app_events: app_metrics::PublishCounters::default(),
            registry: Registry::default(),
        };
        registry.register(
            "events_processed",
            "Events whose batch was recorded",
            metrics.events_processed.clone(),
        );
        registry.register(
            "events_duplicate",
            "Events whose batch had been recorded before (replays, duplicates)",
            metrics.events_duplicate.clone(),
        );
        registry.register(
            "events_skipped",
            "Events no retry can heal, skipped at once and recorded as failed, by reason",
            metrics.events_skipped.clone(),
        );
        registry.register(
            "events_failed",
            "Events given up on after retrying, recorded as failed, by reason",
            metrics.events_failed.clone(),
        );
        registry.register(
            "datasets_recorded",
            "Datasets added to the state",
            metrics.datasets_recorded.clone(),
        );
        registry.register(
            "unknown_datasets",
            "Dataset ids of batch files that the registry does not know",
            metrics.unknown_datasets.clone(),
        );
        metrics
            .common
            .register(&mut registry, "batch_file, registry, database");
        registry.register(
            "event_seconds",
            "From receiving an event to committing its offset",
            metrics.event_seconds.clone(),
        );
        registry.register(
            "event_age_seconds",
            "From an event's Kafka timestamp to committing its offset",
            metrics.event_age_seconds.clone(),
        );
        registry.register(
            "batch_datasets",
            "Datasets per batch file",
            metrics.batch_datasets.clone(),
        );
        registry.register(
            "batch_file_waiting_seconds",
            "Seconds the event in hand has waited for its batch file (0: not waiting); the events behind it wait too",
            metrics.batch_file_waiting_seconds.clone(),
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

    /// Counts an event recorded as failed: given up on after retries when `retried`, skipped
    /// at once otherwise.
    pub fn failed(&self, reason: &str, retried: bool) {
        let family = if retried {
            &self.events_failed
        } else {
            &self.events_skipped
        };
        family
            .get_or_create(&vec![("reason", reason.to_owned())])
            .inc();
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
