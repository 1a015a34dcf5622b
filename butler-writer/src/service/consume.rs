//! The consume loop: one thread that owns the consumer's polling, closes batches at N messages
//! or T milliseconds, hands them to the pipeline, and keeps polling whatever the pipeline is
//! doing, so that a long database retry never costs the writer its place in the group.
//!
//! # Back-pressure
//! The pipeline takes batches through a small channel. When it is full, the loop keeps the batch
//! in hand and waits; if the wait grows past a couple of seconds (a database outage), it pauses
//! every assigned partition (librdkafka then stops fetching) and goes back to polling, which
//! serves rebalances, statistics and errors; it resumes once the batch is handed over. Memory is bounded by the channel, the batch in hand and librdkafka's fetch queue.
//!
//! # Rebalances
//! The group uses an eager assignor (range, round-robin): a rebalance revokes every partition,
//! and the new assignment starts from the committed offsets. So a batch that is not committed
//! when its partitions are revoked is simply abandoned: its messages come again, to whichever
//! writer owns them next. Each batch carries the assignment generation it was read in; the
//! revoke callback bumps the generation under the commit gate, which the commit stage holds while
//! it commits, so a batch's offsets are committed either before the revoke completes or not at
//! all.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use super::health::Health;
use super::metrics::Metrics;

/// One message read from the input topic.
#[derive(Debug, Clone)]
pub struct InputMessage {
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Its key, if any (kept for the dead-letter record).
    pub key: Option<Vec<u8>>,
    /// Its value (empty for a null value).
    pub value: Vec<u8>,
    /// Its Kafka timestamp, milliseconds since the epoch.
    pub timestamp_ms: Option<i64>,
}

/// A batch of messages read in one assignment generation.
#[derive(Debug)]
pub struct Batch {
    /// Sequence number, for logs.
    pub number: u64,
    /// The assignment generation its messages were read in.
    pub generation: u64,
    /// The messages, in the order read.
    pub messages: Vec<InputMessage>,
    /// When the batch closed.
    pub closed_at: Instant,
}

/// Callbacks from librdkafka: rebalances, statistics, errors, logs.
#[derive(Debug)]
pub struct WriterContext {
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    /// Bumped on every revoke; batches of an older generation are not committed.
    generation: AtomicU64,
    /// Held by the commit stage while it commits a batch, and by a revoke while it bumps the
    /// generation.
    gate: Arc<tokio::sync::Mutex<()>>,
    /// An error that should stop the process (authentication, authorization).
    fatal: Mutex<Option<String>>,
    input_topic: String,
}

impl WriterContext {
    /// A context for a writer reading `input_topic`.
    pub fn new(
        health: Arc<Health>,
        metrics: Arc<Metrics>,
        gate: Arc<tokio::sync::Mutex<()>>,
        input_topic: String,
    ) -> Self {
        Self {
            health,
            metrics,
            generation: AtomicU64::new(0),
            gate,
            fatal: Mutex::new(None),
            input_topic,
        }
    }

    /// The current assignment generation.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// A fatal error reported by librdkafka, if any.
    pub fn fatal(&self) -> Option<String> {
        self.fatal.lock().ok().and_then(|f| f.clone())
    }

    /// Makes every batch read so far stale, once no commit is in progress. The callback may run
    /// on the consume loop's thread or, when the consumer is closed, on whichever thread drops
    /// it (possibly a runtime worker), so it polls the gate rather than blocking on it; a commit
    /// holds the gate for at most one Kafka round, bounded by the client's timeouts.
    fn bump_generation(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(_gate) = self.gate.try_lock() {
                self.generation.fetch_add(1, Ordering::SeqCst);
                return;
            }
            if Instant::now() > deadline {
                warn!("a commit held the gate for a minute; abandoning in-flight batches anyway");
                self.generation.fetch_add(1, Ordering::SeqCst);
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn set_fatal(&self, message: String) {
        if let Ok(mut slot) = self.fatal.lock()
            && slot.is_none()
        {
            *slot = Some(message);
        }
    }
}

/// Errors that no retry will heal: the credentials or the ACLs are wrong.
pub fn is_fatal_code(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::Authentication
            | RDKafkaErrorCode::SaslAuthenticationFailed
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::GroupAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed
            | RDKafkaErrorCode::TransactionalIdAuthorizationFailed
            | RDKafkaErrorCode::UnsupportedSASLMechanism
            | RDKafkaErrorCode::IllegalSASLState
            | RDKafkaErrorCode::InvalidConfig
            | RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::Fenced
    )
}

impl ClientContext for WriterContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                error!(target: "librdkafka", facility = fac, "{log_message}")
            }
            RDKafkaLogLevel::Warning => {
                warn!(target: "librdkafka", facility = fac, "{log_message}")
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                info!(target: "librdkafka", facility = fac, "{log_message}");
            }
            RDKafkaLogLevel::Debug => debug!(target: "librdkafka", facility = fac, "{log_message}"),
        }
    }

    fn stats(&self, statistics: Statistics) {
        report_statistics(
            &statistics,
            &self.input_topic,
            |up, problem| self.health.set_broker(up, problem),
            &self.metrics.consumer_lag,
        );
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        if code.is_some_and(is_fatal_code) {
            error!(%error, reason, "Kafka refused the writer's credentials or permissions");
            self.set_fatal(format!("Kafka: {reason} ({error})"));
        } else if code == Some(RDKafkaErrorCode::AllBrokersDown) {
            warn!(reason, "every broker is down");
            self.health
                .set_broker(false, Some(format!("Kafka: {reason}")));
        } else {
            warn!(%error, reason, "Kafka client error");
        }
    }
}

impl ConsumerContext for WriterContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(partitions) => {
                // Wait for a commit in progress, then make every batch read so far stale.
                self.bump_generation();
                self.health.set_assignment(None);
                info!(
                    partitions = partitions.count(),
                    "partitions revoked; batches not yet committed are abandoned"
                );
            }
            Rebalance::Assign(partitions) => {
                self.health.set_assignment(Some(partitions.count()));
                self.metrics.consumer_lag.clear();
                let list: Vec<String> = partitions
                    .elements()
                    .iter()
                    .map(|e| format!("{}[{}]", e.topic(), e.partition()))
                    .collect();
                info!(partitions = ?list, "partitions assigned");
            }
            Rebalance::Error(error) => {
                self.bump_generation();
                warn!(%error, "rebalance error");
            }
        }
    }
}

/// How long a closed batch may wait for the pipeline before the consume loop pauses the
/// partitions and goes back to polling. Well under `max.poll.interval.ms` (300 s), and long
/// enough that a pipeline keeping up never causes a pause (which discards prefetched messages).
const PAUSE_AFTER: Duration = Duration::from_secs(2);

/// The writer's consumer.
pub type WriterConsumer = BaseConsumer<WriterContext>;

/// What the consume loop needs.
pub struct ConsumeLoop {
    /// The consumer, shared with the commit stage.
    pub consumer: Arc<WriterConsumer>,
    /// Where closed batches go.
    pub batches: mpsc::Sender<Batch>,
    /// Messages per batch at most.
    pub max_messages: usize,
    /// How long a batch stays open after its first message.
    pub max_wait: Duration,
    /// Set to stop fetching: the batch in hand is handed over, then the loop waits for `closed`.
    pub stop: Arc<AtomicBool>,
    /// Set when the pipeline has finished (or must be left): the loop closes the consumer.
    pub closed: Arc<AtomicBool>,
    /// Readiness and liveness.
    pub health: Arc<Health>,
    /// Counters.
    pub metrics: Arc<Metrics>,
}

impl std::fmt::Debug for ConsumeLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumeLoop")
            .field("max_messages", &self.max_messages)
            .field("max_wait", &self.max_wait)
            .finish_non_exhaustive()
    }
}

impl ConsumeLoop {
    /// Runs until `closed` is set. Polls at least every 100 ms.
    pub fn run(self) {
        let consumer = &*self.consumer;
        let context = consumer.context();
        let mut open: Option<Batch> = None;
        let mut opened_at = Instant::now();
        let mut held: Option<Batch> = None;
        let mut paused_generation: Option<u64> = None;
        let mut number = 0_u64;
        let mut stopping = false;
        // Dropped once the last batch is handed over at a stop, which ends the pipeline.
        let mut batches = Some(self.batches);
        loop {
            self.health.beat();
            if self.closed.load(Ordering::SeqCst) {
                break;
            }
            let generation = context.generation();
            // Batches of an older generation will be redelivered: drop them.
            if held.as_ref().is_some_and(|b| b.generation != generation) {
                held = None;
            }
            if open.as_ref().is_some_and(|b| b.generation != generation) {
                open = None;
            }
            if !stopping && self.stop.load(Ordering::SeqCst) {
                stopping = true;
                set_paused(consumer, true);
                if let Some(batch) = open.take() {
                    if held.is_none() {
                        held = Some(batch);
                    } else {
                        // Two batches in hand at a stop: the pipeline will not reach the second
                        // within the grace period anyway; it will be redelivered.
                        debug!("dropping the open batch at shutdown; it will be redelivered");
                    }
                }
            }
            // Hand the held batch over, or keep the partitions paused until we can.
            if let Some(batch) = held.take() {
                let Some(sender) = &batches else { break };
                match sender.try_send(batch) {
                    Ok(()) => {
                        if paused_generation.take().is_some() && !stopping {
                            set_paused(consumer, false);
                        }
                    }
                    Err(mpsc::error::TrySendError::Full(batch)) => {
                        let waited = batch.closed_at.elapsed();
                        held = Some(batch);
                        if paused_generation == Some(generation) || stopping {
                            // Paused: poll below to serve callbacks.
                        } else if waited < PAUSE_AFTER {
                            // The pipeline usually frees a slot within one batch time. Wait
                            // without polling: pausing would drop librdkafka's prefetched
                            // messages, which it would then fetch again.
                            std::thread::sleep(Duration::from_millis(2));
                            continue;
                        } else {
                            set_paused(consumer, true);
                            paused_generation = Some(generation);
                        }
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => break,
                }
            }
            if stopping && held.is_none() {
                // Nothing more to hand over: close the channel, keep serving callbacks until the
                // pipeline has committed what it holds. Messages polled now are not committed
                // and come again after the restart.
                batches = None;
                let _ = consumer.poll(Duration::from_millis(100));
                continue;
            }
            let timeout = match &open {
                Some(_) => self
                    .max_wait
                    .saturating_sub(opened_at.elapsed())
                    .min(Duration::from_millis(100)),
                None => Duration::from_millis(100),
            };
            match consumer.poll(timeout) {
                Some(Ok(message)) => {
                    self.metrics.messages_consumed.inc();
                    let generation = context.generation();
                    if open.as_ref().is_some_and(|b| b.generation != generation) {
                        open = None;
                    }
                    let batch = open.get_or_insert_with(|| {
                        opened_at = Instant::now();
                        number += 1;
                        Batch {
                            number,
                            generation,
                            messages: Vec::with_capacity(self.max_messages.min(1024)),
                            closed_at: opened_at,
                        }
                    });
                    batch.messages.push(InputMessage {
                        partition: message.partition(),
                        offset: message.offset(),
                        key: message.key().map(<[u8]>::to_vec),
                        value: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                        timestamp_ms: message.timestamp().to_millis(),
                    });
                }
                Some(Err(error)) => {
                    let code = error.rdkafka_error_code();
                    if code.is_some_and(is_fatal_code) {
                        error!(%error, "the consumer was refused");
                        context.set_fatal(format!("Kafka consumer: {error}"));
                    } else if code == Some(RDKafkaErrorCode::PartitionEOF) {
                        // Not enabled, but harmless.
                    } else {
                        warn!(%error, "consumer error");
                    }
                }
                None => {}
            }
            // Close the open batch when it is full or old enough, if nothing is held.
            let due = open.as_ref().is_some_and(|b| {
                b.messages.len() >= self.max_messages || opened_at.elapsed() >= self.max_wait
            });
            if due
                && held.is_none()
                && let Some(mut batch) = open.take()
            {
                batch.closed_at = Instant::now();
                held = Some(batch);
            }
        }
        // Leave the group now rather than when the last reference goes.
        consumer.unsubscribe();
        debug!("consume loop ended");
    }
}

/// Pauses (`true`) or resumes every assigned partition.
fn set_paused(consumer: &WriterConsumer, paused: bool) {
    let assignment = match consumer.assignment() {
        Ok(assignment) if assignment.count() > 0 => assignment,
        Ok(_) => return,
        Err(error) => {
            warn!(%error, "cannot read the assignment");
            return;
        }
    };
    let result = if paused {
        consumer.pause(&assignment)
    } else {
        consumer.resume(&assignment)
    };
    match result {
        Ok(()) => debug!(paused, "assigned partitions paused or resumed"),
        Err(error) => warn!(%error, paused, "cannot pause or resume the assigned partitions"),
    }
}

/// What librdkafka's statistics tell operators, for any of the services: whether a broker
/// connection is up (to `set_broker`), and each partition's consumer lag on `topic` (to `lag`,
/// labelled by topic and partition).
pub fn report_statistics(
    statistics: &Statistics,
    topic: &str,
    set_broker: impl FnOnce(bool, Option<String>),
    lag: &prometheus_client::metrics::family::Family<
        Vec<(&'static str, String)>,
        prometheus_client::metrics::gauge::Gauge,
    >,
) {
    let up = statistics
        .brokers
        .values()
        .any(|b| b.nodeid >= 0 && b.state == "UP");
    set_broker(up, (!up).then(|| "no broker connection is up".to_owned()));
    if let Some(stats) = statistics.topics.get(topic) {
        for (partition, stats) in &stats.partitions {
            if *partition >= 0 && stats.consumer_lag >= 0 {
                lag.get_or_create(&vec![
                    ("topic", topic.to_owned()),
                    ("partition", partition.to_string()),
                ])
                .set(stats.consumer_lag);
            }
        }
    }
}
