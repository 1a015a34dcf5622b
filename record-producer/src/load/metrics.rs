//! The writer's application metrics events at the end of a run: read from their topic, decoded
//! with the schemas in the registry, and counted against the batches the run saw announced.

use std::time::{Duration, Instant};

use app_metrics::SchemaRegistry;
use app_metrics::reader::{decode_all, read_all};
use service_kit::{Chain, KafkaSettings};
use tracing::warn;

use crate::report::MetricsEvents;

/// Where the writer's metrics events are.
#[derive(Debug, Clone)]
pub struct MetricsCheck {
    /// The events topic.
    pub topic: String,
    /// The schema registry.
    pub registry_url: String,
}

/// The events on `check.topic`, once there are as many `batch` events as `batches` (or after
/// 30 s, as they stand).
pub(super) async fn count(
    kafka: &KafkaSettings,
    check: &MetricsCheck,
    batches: u64,
) -> MetricsEvents {
    let registry = SchemaRegistry::new(&check.registry_url);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let counted = once(kafka, check, &registry, batches).await;
        let done = counted.error.is_none() && counted.batch_events >= batches;
        if done || Instant::now() >= deadline {
            if let Some(error) = &counted.error {
                warn!(error, topic = %check.topic, "cannot count the writer's metrics events");
            }
            return counted;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn once(
    kafka: &KafkaSettings,
    check: &MetricsCheck,
    registry: &SchemaRegistry,
    batches: u64,
) -> MetricsEvents {
    let mut counted = MetricsEvents {
        topic: check.topic.clone(),
        batches,
        ..MetricsEvents::default()
    };
    let (kafka, topic) = (kafka.clone(), check.topic.clone());
    let values = match tokio::task::spawn_blocking(move || read_all(&kafka, &topic)).await {
        Ok(Ok(values)) => values,
        Ok(Err(e)) => {
            counted.error = Some(Chain(&e).to_string());
            return counted;
        }
        Err(e) => {
            counted.error = Some(e.to_string());
            return counted;
        }
    };
    let decoded = match decode_all(registry, &values).await {
        Ok(decoded) => decoded,
        Err(e) => {
            counted.error = Some(Chain(&e).to_string());
            return counted;
        }
    };
    let as_u64 = |n: Option<i64>| n.and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
    for event in decoded {
        match event {
            Ok(event) if event.name == "batch" => {
                counted.batch_events += 1;
                counted.messages += as_u64(event.long("messages"));
                counted.datasets += as_u64(event.long("datasets_ingested"))
                    + as_u64(event.long("datasets_already_present"));
            }
            Ok(_) => counted.other_events += 1,
            Err(_) => counted.undecodable += 1,
        }
    }
    counted
}
