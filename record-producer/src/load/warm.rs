//! The load generator's producer, made ready before the first timed send.
//!
//! A new idempotent producer holds its first messages until the broker has given it a producer
//! id: about 0.5 s against nisshi (measured with a fresh librdkafka producer: first delivery
//! 0.50 s, the next 0.006 s; 0.006 s once the id was assigned before the first send). Prompt
//! Processing's worker pods keep their producers for the night and paid that long before the
//! first visit, so a load test that counted it would show the pipeline a cold-start spike that is
//! the generator's own. The producer's state comes from librdkafka's statistics.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::Statistics;
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::util::Timeout;
use tracing::{debug, warn};

/// The producer the load test sends with.
pub(crate) type LoadProducer = FutureProducer<ProducerState>;

/// Statistics often enough to see the producer id arrive.
pub(crate) const PRODUCER_PROPERTIES: [(&str, &str); 1] = [("statistics.interval.ms", "50")];

/// How long the warm-up waits at most before sending anyway.
const WARM_UP_AT_MOST: Duration = Duration::from_secs(10);

/// What librdkafka's statistics said about the producer.
/// Clones share the state: one goes to the producer, one to [`warm_up`].
#[derive(Debug, Default, Clone)]
pub(crate) struct ProducerState {
    ready: Arc<AtomicBool>,
}

impl ProducerState {
    /// Whether the producer would deliver at once: it has its producer id, or is not idempotent.
    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

impl ClientContext for ProducerState {
    fn stats(&self, statistics: Statistics) {
        let ready = statistics
            .eos
            .as_ref()
            .is_none_or(|eos| eos.idemp_state == "Assigned");
        self.ready.store(ready, Ordering::SeqCst);
    }
}

/// Connects to the cluster, reads `topic`'s metadata and waits for the producer id, at most
/// [`WARM_UP_AT_MOST`]; a producer still not ready then sends anyway (its first messages are
/// late, which the report shows).
pub(crate) async fn warm_up(producer: &LoadProducer, state: &ProducerState, topic: &str) {
    let started = Instant::now();
    let metadata = tokio::task::spawn_blocking({
        let producer = producer.clone();
        let topic = topic.to_owned();
        move || {
            producer
                .client()
                .fetch_metadata(Some(&topic), Timeout::After(WARM_UP_AT_MOST))
                .map(|_| ())
        }
    })
    .await;
    if let Ok(Err(error)) = metadata {
        warn!(%error, "cannot read the topic's metadata before sending");
    }
    while !state.is_ready() {
        if started.elapsed() >= WARM_UP_AT_MOST {
            warn!(
                waited_s = started.elapsed().as_secs_f64(),
                "the producer has no producer id yet; sending anyway"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    debug!(
        waited_s = started.elapsed().as_secs_f64(),
        "the producer is ready"
    );
}
