//! The metrics every service has (readiness, consumer lag, retries by stage) and the Prometheus
//! text exposition. Each service registers its own metrics beside these in one registry with its
//! prefix (`butler_writer_*`, `publication_consumer_*`).

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// A metric's labels: name and value pairs.
pub type Labels = Vec<(&'static str, String)>;

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Metrics every service has.
#[derive(Debug, Clone, Default)]
pub struct CommonMetrics {
    /// 1 while `/readyz` says ready.
    pub ready: Gauge,
    /// Messages behind the end of each assigned partition, as librdkafka last reported it.
    pub consumer_lag: Family<Labels, Gauge>,
    /// Retries after a transient failure, by stage.
    pub retries: Family<Labels, Counter>,
}

impl CommonMetrics {
    /// Registers the metrics in `registry`; `stages` names the retry stages for the help text.
    pub fn register(&self, registry: &mut Registry, stages: &str) {
        registry.register(
            "retries",
            format!("Retries after a transient failure, by stage: {stages}"),
            self.retries.clone(),
        );
        registry.register(
            "consumer_lag",
            "Messages behind the end of each assigned partition",
            self.consumer_lag.clone(),
        );
        registry.register("ready", "1 while the service is ready", self.ready.clone());
    }

    /// Counts a retry at `stage`.
    pub fn retry(&self, stage: &'static str) {
        self.retries
            .get_or_create(&vec![("stage", stage.to_owned())])
            .inc();
    }
}

/// The Prometheus text exposition of `registry`.
pub fn render(registry: &Registry) -> String {
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = encode(&mut text, registry);
    text
}

/// What the operations endpoints need of a service's metrics.
pub trait Exposition: Send + Sync + std::fmt::Debug {
    /// The metrics every service has.
    fn common(&self) -> &CommonMetrics;
    /// The text exposition.
    fn render(&self) -> String;
}
