//! The consume loop: one thread that owns the consumer's polling, fills batches
//! ([`BatchBuilder`]), hands them to the pipeline, and keeps polling whatever the pipeline is
//! doing, so that a long database retry never costs the writer its place in the group.
//!
//! # Back-pressure
//! The pipeline takes batches through a small channel. When it is full, the loop keeps the batch
//! in hand and waits for room; if the wait grows past a couple of seconds (a database outage), it
//! pauses every assigned partition (librdkafka then stops fetching) and goes back to polling,
//! which serves rebalances, statistics and errors; it resumes once the batch is handed over.
//! Memory is bounded by the channel, the batch in hand and librdkafka's fetch queue.
//!
//! # Rebalances
//! The group uses an eager assignor (range, round-robin): a rebalance revokes every partition,
//! and the new assignment starts from the committed offsets. So a batch that is not committed
//! when its partitions are revoked is simply abandoned: its messages come again, to whichever
//! writer owns them next. Each batch carries the assignment generation it was read in; the
//! revoke callback bumps the generation under the commit gate, which the announce stage holds
//! while it commits, so a batch's offsets are committed either before the revoke completes or not
//! at all.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::Message;
use service_kit::context::{KafkaContext, RebalanceHooks};
use service_kit::kafka::is_fatal_code;
use service_kit::{CancellationToken, Health};
use tokio::sync::mpsc;
use tracing::{debug, error, warn};

use super::batch::{Batch, BatchBuilder, InFlight, InputMessage};
use super::metrics::Metrics;

/// The writer's consumer.
pub type WriterConsumer = BaseConsumer<KafkaContext<Generations>>;

/// The writer's rebalance bookkeeping: the assignment generation every batch is stamped with,
/// and the gate the announce stage holds while it commits.
#[derive(Debug)]
pub struct Generations {
    /// Bumped on every revoke; batches of an older generation are not committed.
    current: AtomicU64,
    /// Held by the announce stage while it commits a batch, and by a revoke while it bumps the
    /// generation.
    gate: Arc<tokio::sync::Mutex<()>>,
}

impl Generations {
    /// Generation 0, with the commit gate the announce stage shares.
    pub fn new(gate: Arc<tokio::sync::Mutex<()>>) -> Self {
        Self {
            current: AtomicU64::new(0),
            gate,
        }
    }

    /// The current assignment generation.
    pub fn current(&self) -> u64 {
        self.current.load(Ordering::SeqCst)
    }

    /// Makes every batch read so far stale, once no commit is in progress. The callback may run
    /// on the consume loop's thread or, when the consumer is closed, on whichever thread drops
    /// it (possibly a runtime worker, where blocking on an async lock panics), so it tries the
    /// gate rather than blocking on it; a commit holds the gate for at most one Kafka round,
    /// bounded by the client's timeouts.
    fn bump(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(_gate) = self.gate.try_lock() {
                self.current.fetch_add(1, Ordering::SeqCst);
                return;
            }
            if Instant::now() > deadline {
                warn!("a commit held the gate for a minute; abandoning in-flight batches anyway");
                self.current.fetch_add(1, Ordering::SeqCst);
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl RebalanceHooks for Generations {
    fn revoking(&self) {
        // Wait for a commit in progress, then make every batch read so far stale.
        self.bump();
        debug!("batches not yet committed are abandoned");
    }
}

/// How long a closed batch may wait for the pipeline before the consume loop pauses the
/// partitions and goes back to polling. Well under `max.poll.interval.ms` (300 s), and long
/// enough that a pipeline keeping up never causes a pause (which discards prefetched messages).
const PAUSE_AFTER: Duration = Duration::from_secs(2);

/// The longest a poll waits, so that a stop is seen and the heartbeat beats.
const POLL_AT_MOST: Duration = Duration::from_millis(100);

/// What the loop does next after trying to hand the held batch over.
enum Next {
    /// Poll the consumer.
    Poll,
    /// Start the next turn at once.
    Turn,
    /// The pipeline is gone: leave.
    Leave,
}

/// The consume loop and its state.
pub struct ConsumeLoop {
    consumer: Arc<WriterConsumer>,
    /// Where closed batches go; dropped once the last batch is handed over at a stop, which ends
    /// the pipeline.
    batches: Option<mpsc::Sender<Batch>>,
    builder: BatchBuilder,
    /// A closed batch the pipeline has not taken yet.
    held: Option<Batch>,
    /// The generation whose partitions the loop paused, while paused.
    paused: Option<u64>,
    stopping: bool,
    /// Fires to stop fetching: the batch in hand is handed over, then the loop waits for
    /// `close`.
    shutdown: CancellationToken,
    /// Fires when the pipeline has finished (or must be left): the loop leaves the group.
    close: CancellationToken,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    /// Waits for room in the channel happen on the runtime, from this thread.
    runtime: tokio::runtime::Handle,
    /// Batches handed over and not yet done with.
    in_flight: InFlight,
    /// Eager closing: a batch closes as soon as no more messages are waiting while fewer than
    /// this many batches are in flight. `None`: batches close only when full or due.
    eager_below: Option<usize>,
}

impl std::fmt::Debug for ConsumeLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumeLoop")
            .field("builder", &self.builder)
            .field("stopping", &self.stopping)
            .finish_non_exhaustive()
    }
}

/// What the consume loop is given.
#[allow(missing_debug_implementations)]
pub struct ConsumeParts {
    /// The consumer, shared with the announce stage.
    pub consumer: Arc<WriterConsumer>,
    /// Where closed batches go.
    pub batches: mpsc::Sender<Batch>,
    /// How batches are filled.
    pub builder: BatchBuilder,
    /// Fires to stop fetching.
    pub shutdown: CancellationToken,
    /// Fires to leave the group.
    pub close: CancellationToken,
    /// Liveness and readiness.
    pub health: Arc<Health>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// The runtime to wait on.
    pub runtime: tokio::runtime::Handle,
    /// Batches handed over and not yet done with (the pipeline drops them).
    pub in_flight: InFlight,
    /// Close a batch as soon as no more messages are waiting while fewer than this many batches
    /// are in flight (the database concurrency); `None` to close only when full or due.
    pub eager_below: Option<usize>,
}

impl ConsumeLoop {
    /// The loop, not yet running.
    pub fn new(parts: ConsumeParts) -> Self {
        Self {
            consumer: parts.consumer,
            batches: Some(parts.batches),
            builder: parts.builder,
            held: None,
            paused: None,
            stopping: false,
            shutdown: parts.shutdown,
            close: parts.close,
            health: parts.health,
            metrics: parts.metrics,
            runtime: parts.runtime,
            in_flight: parts.in_flight,
            eager_below: parts.eager_below,
        }
    }

    /// Runs until `close` fires, then leaves the group. Polls at least every 100 ms.
    pub fn run(mut self) {
        loop {
            self.health.beat();
            if self.close.is_cancelled() {
                break;
            }
            let generation = self.consumer.context().hooks().current();
            self.drop_stale(generation);
            if !self.stopping && self.shutdown.is_cancelled() {
                self.begin_stop();
            }
            match self.hand_over(generation) {
                Next::Leave => break,
                Next::Turn => continue,
                Next::Poll => {}
            }
            if self.stopping && self.held.is_none() {
                // Nothing more to hand over: close the channel, keep serving callbacks until the
                // pipeline has committed what it holds. Messages polled now are not committed
                // and come again after the restart.
                self.batches = None;
                let _ = self.consumer.poll(POLL_AT_MOST);
                continue;
            }
            let room = self.pipeline_has_room();
            let arrived = self.poll_once(room);
            let now = Instant::now();
            // Eager: the pipeline could start this batch now and nothing more is waiting.
            let eager = room && !arrived && !self.builder.is_empty();
            if self.held.is_none() && (eager || self.builder.is_due(now)) {
                self.held = self.builder.take(now);
            }
        }
        // Leave the group now rather than when the last reference goes.
        self.consumer.unsubscribe();
        debug!("consume loop ended");
    }

    /// Batches of an older generation will be redelivered: drop them.
    fn drop_stale(&mut self, generation: u64) {
        if self
            .held
            .as_ref()
            .is_some_and(|b| b.generation != generation)
        {
            self.held = None;
        }
        self.builder.discard_stale(generation);
    }

    /// A stop: no more fetching; the open batch is handed over if nothing else is held.
    fn begin_stop(&mut self) {
        self.stopping = true;
        set_paused(&self.consumer, true);
        if let Some(batch) = self.builder.take(Instant::now()) {
            if self.held.is_none() {
                self.held = Some(batch);
            } else {
                // Two batches in hand at a stop: the pipeline will not reach the second within
                // the grace period anyway; it will be redelivered.
                debug!("dropping the open batch at shutdown; it will be redelivered");
            }
        }
    }

    /// Hands the held batch over, or waits a little for room, or keeps the partitions paused
    /// until there is room.
    fn hand_over(&mut self, generation: u64) -> Next {
        let Some(batch) = self.held.take() else {
            return Next::Poll;
        };
        let Some(sender) = self.batches.clone() else {
            return Next::Leave;
        };
        let mut batch = batch;
        batch.in_flight = Some(self.in_flight.enter());
        match sender.try_send(batch) {
            Ok(()) => {
                if self.paused.take().is_some() && !self.stopping {
                    set_paused(&self.consumer, false);
                }
                Next::Poll
            }
            Err(mpsc::error::TrySendError::Full(mut batch)) => {
                batch.in_flight = None;
                let waited = batch.closed_at.elapsed();
                self.held = Some(batch);
                if self.paused == Some(generation) || self.stopping {
                    // Paused: poll to serve callbacks.
                    Next::Poll
                } else if waited < PAUSE_AFTER {
                    // The pipeline usually frees a slot within one batch time. Wait without
                    // polling: pausing would drop librdkafka's prefetched messages, which it
                    // would then fetch again.
                    self.wait_for_room(&sender, PAUSE_AFTER - waited);
                    Next::Turn
                } else {
                    set_paused(&self.consumer, true);
                    self.paused = Some(generation);
                    Next::Poll
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Next::Leave,
        }
    }

    /// Blocks until the channel has room, `at_most` passes, or the loop must close.
    fn wait_for_room(&self, sender: &mpsc::Sender<Batch>, at_most: Duration) {
        let close = self.close.clone();
        self.runtime.block_on(async {
            tokio::select! {
                // The permit is dropped at once: the next turn sends the batch.
                _ = sender.reserve() => {}
                () = close.cancelled() => {}
                () = tokio::time::sleep(at_most) => {}
            }
        });
    }

    /// Whether the pipeline could start a batch at once (eager closing only).
    fn pipeline_has_room(&self) -> bool {
        self.eager_below
            .is_some_and(|limit| self.held.is_none() && self.in_flight.count() < limit)
    }

    /// Polls once and adds what arrived to the batch; `true` if a message arrived. Waits at most
    /// until the open batch is due, and not at all when `room` and a batch is open: only
    /// messages already fetched join it then.
    fn poll_once(&mut self, room: bool) -> bool {
        let timeout = if room && !self.builder.is_empty() {
            Duration::ZERO
        } else {
            self.builder.time_left(Instant::now(), POLL_AT_MOST)
        };
        match self.consumer.poll(timeout) {
            Some(Ok(message)) => {
                self.metrics.messages_consumed.inc();
                let generation = self.consumer.context().hooks().current();
                let input = InputMessage {
                    partition: message.partition(),
                    offset: message.offset(),
                    key: message.key().map(<[u8]>::to_vec),
                    value: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                    timestamp_ms: message.timestamp().to_millis(),
                };
                self.builder.push(generation, input, Instant::now());
                return true;
            }
            Some(Err(error)) => {
                let code = error.rdkafka_error_code();
                if code.is_some_and(is_fatal_code) {
                    error!(%error, "the consumer was refused");
                    self.consumer
                        .context()
                        .fatal()
                        .report("consumer's request", error);
                } else if code == Some(RDKafkaErrorCode::PartitionEOF) {
                    // Not enabled, but harmless.
                } else {
                    warn!(%error, "consumer error");
                }
            }
            None => {}
        }
        false
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
