//! What happens to a batch after the consume loop closes it.
//!
//! 1. **Ingest** (up to `db_concurrency` batches at once, each on its own connection): the
//!    registry engine, then the batch file. Database and storage outages are retried with
//!    backoff, indefinitely, the batch intact.
//! 2. **Commit** (one batch at a time, in the order read): the circuit breaker looks at the
//!    batch's rejections; then the event, the dead-letter records and the offsets go to Kafka.
//!    Offsets never move before the database commit, because step 2 starts after step 1 ends.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::Consumer;
use resources::ResourcePath;
use schema::{BatchIngestedEvent, DatasetBatch};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};
use uuid::Uuid;

use super::ServiceError;
use super::consumer::{Batch, WriterConsumer};
use super::delivery::{Delivery, DeliveryError, OutRecord, dead_letter_record, offsets_after};
use super::health::Health;
use super::metrics::Metrics;
use super::settings::{BreakerSettings, RetrySettings, Settings};
use crate::error::EngineError;
use crate::outcome::{BatchOutcome, RejectReason};
use crate::registry::Registry;

/// Capped exponential backoff with jitter: each wait is between half and all of the current
/// step, and the step doubles up to the cap.
#[derive(Debug)]
pub struct Backoff {
    step: Duration,
    settings: RetrySettings,
}

impl Backoff {
    /// Starts at `settings.initial`.
    pub fn new(settings: RetrySettings) -> Self {
        Self {
            step: settings.initial,
            settings,
        }
    }

    /// The next wait.
    pub fn next_wait(&mut self) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(self.settings.max);
        let half = step / 2;
        half + half.mul_f64(fastrand::f64())
    }
}

/// A batch that went through the database and has its file.
#[derive(Debug)]
pub struct Ingested {
    batch: Batch,
    outcome: BatchOutcome,
    batch_id: Uuid,
    file_name: String,
}

/// The circuit breaker's memory: whether each recent committed message was rejected for a
/// reason that points at the set-up (invalid, unknown dataset type, unsupported) rather than
/// at one message (a conflict, a message of another type).
#[derive(Debug)]
pub struct Breaker {
    settings: BreakerSettings,
    recent: VecDeque<bool>,
    open: bool,
}

impl Breaker {
    /// A closed breaker with an empty window.
    pub fn new(settings: BreakerSettings) -> Self {
        Self {
            settings,
            recent: VecDeque::with_capacity(settings.window),
            open: false,
        }
    }

    /// Whether a rejection of this kind counts against the set-up.
    pub fn is_systemic(reason: RejectReason) -> bool {
        matches!(
            reason,
            RejectReason::Invalid | RejectReason::UnknownDatasetType | RejectReason::Unsupported
        )
    }

    /// Would committing a batch with these verdicts leave nearly all of the window rejected?
    pub fn would_trip(&self, verdicts: &[bool]) -> bool {
        if self.settings.min_messages == 0 {
            return false;
        }
        let window = self.settings.window;
        let from_batch = verdicts.len().min(window);
        let from_recent = (window - from_batch).min(self.recent.len());
        let considered = from_batch + from_recent;
        if considered < self.settings.min_messages {
            return false;
        }
        let bad = verdicts[verdicts.len() - from_batch..]
            .iter()
            .chain(self.recent.iter().rev().take(from_recent))
            .filter(|b| **b)
            .count();
        #[allow(clippy::cast_precision_loss)]
        let fraction = bad as f64 / considered as f64;
        fraction >= self.settings.threshold
    }

    /// Remembers a committed batch's verdicts.
    pub fn record(&mut self, verdicts: &[bool]) {
        for verdict in verdicts {
            if self.recent.len() == self.settings.window {
                self.recent.pop_front();
            }
            self.recent.push_back(*verdict);
        }
    }
}

/// Everything the two stages share.
pub struct Pipeline {
    pub(super) registry: Arc<Registry>,
    pub(super) settings: Arc<Settings>,
    pub(super) output_directory: ResourcePath,
    pub(super) delivery: Delivery,
    pub(super) consumer: Arc<WriterConsumer>,
    pub(super) gate: Arc<tokio::sync::Mutex<()>>,
    pub(super) health: Arc<Health>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("output_directory", &self.output_directory)
            .finish_non_exhaustive()
    }
}

impl Pipeline {
    /// Runs both stages until the consume loop closes its channel, or a fatal error.
    pub async fn run(
        self: Arc<Self>,
        mut batches: mpsc::Receiver<Batch>,
    ) -> Result<(), ServiceError> {
        let concurrency = self.settings.db_concurrency;
        let permits = Arc::new(Semaphore::new(concurrency));
        let (ingesting, mut ingested) =
            mpsc::channel::<JoinHandle<Result<Option<Ingested>, ServiceError>>>(concurrency);
        // Stage 1: start each batch's ingest as a task as soon as a connection is free.
        let dispatcher = {
            let pipeline = Arc::clone(&self);
            tokio::spawn(async move {
                while let Some(batch) = batches.recv().await {
                    let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                        break;
                    };
                    let pipeline = Arc::clone(&pipeline);
                    let task = tokio::spawn(async move {
                        let result = pipeline.ingest(batch).await;
                        drop(permit);
                        result
                    });
                    if ingesting.send(task).await.is_err() {
                        break;
                    }
                }
            })
        };
        // Stage 2: commit in order.
        let mut breaker = Breaker::new(self.settings.breaker);
        let mut committed = 0_u64;
        let result = async {
            while let Some(task) = ingested.recv().await {
                let joined = task
                    .await
                    .map_err(|e| ServiceError::Fatal(format!("an ingest task failed: {e}")))?;
                let Some(batch) = joined? else { continue };
                if self
                    .settings
                    .faults
                    .crash_before_kafka_commit
                    .is_some_and(|n| committed >= n)
                {
                    return Err(ServiceError::InjectedCrash);
                }
                if self.commit(batch, &mut breaker).await? {
                    committed += 1;
                }
            }
            Ok(())
        }
        .await;
        dispatcher.abort();
        result
    }

    /// The generation of the current assignment.
    fn generation(&self) -> u64 {
        self.consumer.context().generation()
    }

    /// Stage 1 for one batch: `None` when the batch was abandoned (its partitions were revoked).
    async fn ingest(&self, batch: Batch) -> Result<Option<Ingested>, ServiceError> {
        let Some(outcome) = self.run_engine(&batch).await? else {
            return Ok(None);
        };
        let batch_id = Uuid::new_v4();
        let file_name = format!(
            "{}-{batch_id}.json",
            chrono::Utc::now().format("%Y-%m-%dT%H-%M-%S-%6f")
        );
        let ingested = Ingested {
            batch,
            outcome,
            batch_id,
            file_name,
        };
        if self.write_batch_file(&ingested).await? {
            Ok(Some(ingested))
        } else {
            Ok(None)
        }
    }

    /// Runs the registry engine on a batch until it succeeds; `None` if the batch went stale
    /// while the database was away.
    async fn run_engine(&self, batch: &Batch) -> Result<Option<BatchOutcome>, ServiceError> {
        let values: Vec<&[u8]> = batch.messages.iter().map(|m| m.value.as_slice()).collect();
        let mut backoff = Backoff::new(self.settings.retry);
        loop {
            if batch.generation != self.generation() {
                return Ok(None);
            }
            let started = Instant::now();
            match self.registry.ingest_values(&values).await {
                Ok(outcome) => {
                    self.metrics
                        .database_seconds
                        .observe(started.elapsed().as_secs_f64());
                    self.health.set_database(true, None);
                    return Ok(Some(outcome));
                }
                Err(EngineError::Retry(error)) => {
                    let wait = backoff.next_wait();
                    let text = crate::error::describe(&error);
                    warn!(batch = batch.number, error = %text, wait_ms = wait.as_millis(), "database unavailable; the batch will be tried again");
                    self.health
                        .set_database(false, Some(format!("database: {text}")));
                    self.metrics.retry("database");
                    tokio::time::sleep(wait).await;
                }
                Err(EngineError::Stop(message)) => return Err(ServiceError::Fatal(message)),
            }
        }
    }

    /// Writes the batch file (ingested and already-present ids); `false` if the batch went stale
    /// while storage was away.
    async fn write_batch_file(&self, ingested: &Ingested) -> Result<bool, ServiceError> {
        let location = self
            .output_directory
            .join(&ingested.file_name)
            .map_err(|e| ServiceError::Fatal(format!("batch file location: {e}")))?;
        let mut seen = std::collections::HashSet::new();
        let contents = DatasetBatch {
            batch_id: ingested.batch_id,
            datasets: ingested
                .outcome
                .datasets()
                .filter(|id| seen.insert(**id))
                .copied()
                .collect(),
        }
        .to_json();
        let mut backoff = Backoff::new(self.settings.retry);
        loop {
            if ingested.batch.generation != self.generation() {
                return Ok(false);
            }
            match location.write(contents.clone()).await {
                Ok(()) => {
                    debug!(file = %location, "wrote the batch file");
                    return Ok(true);
                }
                Err(error) if error.is_transient() => {
                    let wait = backoff.next_wait();
                    warn!(file = %location, %error, wait_ms = wait.as_millis(), "cannot write the batch file; trying again");
                    self.metrics.retry("batch_file");
                    tokio::time::sleep(wait).await;
                }
                Err(error) => {
                    return Err(ServiceError::Fatal(format!(
                        "cannot write batch files to {}: {error}",
                        self.output_directory
                    )));
                }
            }
        }
    }

    /// Stage 2 for one batch; `true` when it was committed.
    async fn commit(
        &self,
        mut ingested: Ingested,
        breaker: &mut Breaker,
    ) -> Result<bool, ServiceError> {
        // The breaker: hold the batch while nearly everything is rejected for set-up reasons.
        loop {
            let verdicts = verdicts(&ingested);
            if !breaker.would_trip(&verdicts) {
                breaker.record(&verdicts);
                if breaker.open {
                    breaker.open = false;
                    self.metrics.breaker_open.set(0);
                    self.health.set_breaker(false, None);
                    info!(
                        batch = ingested.batch.number,
                        "circuit breaker closed: the held batch now goes through"
                    );
                }
                break;
            }
            if !breaker.open {
                breaker.open = true;
                self.metrics.breaker_open.set(1);
                let example = ingested
                    .outcome
                    .rejected
                    .iter()
                    .find(|r| Breaker::is_systemic(r.reason))
                    .map(|r| format!("{}: {}", r.reason, r.error))
                    .unwrap_or_default();
                error!(
                    batch = ingested.batch.number,
                    rejected = ingested.outcome.rejected.len(),
                    messages = ingested.batch.messages.len(),
                    example = %example,
                    "circuit breaker open: nearly every recent message is rejected, which points at the writer's set-up (universe, dataset types, registry); consumption stops and nothing is dead-lettered until the held batch goes through"
                );
                self.health.set_breaker(
                    true,
                    Some(format!(
                        "circuit breaker open: nearly every message is rejected ({example})"
                    )),
                );
            }
            let deadline = Instant::now() + self.settings.breaker.cooldown;
            while Instant::now() < deadline {
                if self.stop.load(Ordering::SeqCst) {
                    return Ok(false);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            info!(
                batch = ingested.batch.number,
                "circuit breaker: trying the held batch again"
            );
            let Some(outcome) = self.run_engine(&ingested.batch).await? else {
                self.metrics.batch("abandoned");
                return Ok(false);
            };
            ingested.outcome = outcome;
            if !self.write_batch_file(&ingested).await? {
                self.metrics.batch("abandoned");
                return Ok(false);
            }
        }

        let records = self.records(&ingested);
        let offsets = offsets_after(&self.settings.input_topic, &ingested.batch.messages);
        let mut delivered = vec![false; records.len()];
        let mut backoff = Backoff::new(self.settings.retry);
        loop {
            let gate = self.gate.lock().await;
            if ingested.batch.generation != self.generation() {
                drop(gate);
                info!(
                    batch = ingested.batch.number,
                    "batch abandoned: its partitions were revoked; its messages will come again"
                );
                self.metrics.batch("abandoned");
                return Ok(false);
            }
            let result = self
                .delivery
                .deliver(&records, &mut delivered, &offsets)
                .await;
            drop(gate);
            match result {
                Ok(()) => break,
                Err(DeliveryError::Retry(text)) => {
                    let wait = backoff.next_wait();
                    warn!(batch = ingested.batch.number, error = %text, wait_ms = wait.as_millis(), "cannot deliver the batch's results to Kafka; trying again");
                    self.health
                        .set_broker(false, Some(format!("Kafka: {text}")));
                    self.metrics.retry("kafka");
                    tokio::time::sleep(wait).await;
                }
                Err(DeliveryError::Abandon(text)) => {
                    info!(batch = ingested.batch.number, error = %text, "batch abandoned: the group moved on; its messages will come again");
                    self.metrics.batch("abandoned");
                    return Ok(false);
                }
                Err(DeliveryError::Stop(text)) => return Err(ServiceError::Fatal(text)),
            }
        }
        self.health.set_broker(true, None);
        self.account(&ingested);
        Ok(true)
    }

    /// The event, then a dead-letter record per rejected message.
    fn records(&self, ingested: &Ingested) -> Vec<OutRecord> {
        let event =
            BatchIngestedEvent::prompt_processing(ingested.batch_id, ingested.file_name.clone());
        let mut records = vec![OutRecord {
            topic: self.settings.output_topic.clone(),
            key: None,
            value: event.to_json(),
            headers: Vec::new(),
        }];
        for rejection in &ingested.outcome.rejected {
            if let Some(message) = ingested.batch.messages.get(rejection.index) {
                records.push(dead_letter_record(
                    &self.settings.dead_letter_topic,
                    &self.settings.input_topic,
                    message,
                    rejection,
                ));
            }
        }
        records
    }

    /// Metrics and the log line of a committed batch.
    fn account(&self, ingested: &Ingested) {
        let outcome = &ingested.outcome;
        let metrics = &self.metrics;
        metrics.batch("committed");
        metrics
            .datasets_ingested
            .inc_by(outcome.ingested.len() as u64);
        metrics
            .datasets_already_present
            .inc_by(outcome.already_present.len() as u64);
        for rejection in &outcome.rejected {
            metrics.rejected(rejection.reason);
            if let Some(message) = ingested.batch.messages.get(rejection.index) {
                warn!(
                    partition = message.partition,
                    offset = message.offset,
                    reason = %rejection.reason,
                    error = %rejection.error,
                    "message dead-lettered"
                );
            }
        }
        #[allow(clippy::cast_precision_loss)]
        metrics
            .batch_messages
            .observe(ingested.batch.messages.len() as f64);
        metrics
            .batch_seconds
            .observe(ingested.batch.closed_at.elapsed().as_secs_f64());
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        for message in &ingested.batch.messages {
            if let Some(ts) = message.timestamp_ms {
                #[allow(clippy::cast_precision_loss)]
                metrics
                    .produce_to_commit_seconds
                    .observe((now_ms - ts).max(0) as f64 / 1000.0);
            }
        }
        info!(
            batch = ingested.batch.number,
            batch_id = %ingested.batch_id,
            messages = ingested.batch.messages.len(),
            ingested = outcome.ingested.len(),
            already_present = outcome.already_present.len(),
            rejected = outcome.rejected.len(),
            batch_file = %ingested.file_name,
            "batch committed"
        );
    }
}

/// Per message of the batch: rejected for a set-up reason?
fn verdicts(ingested: &Ingested) -> Vec<bool> {
    let mut verdicts = vec![false; ingested.batch.messages.len()];
    for rejection in &ingested.outcome.rejected {
        if Breaker::is_systemic(rejection.reason)
            && let Some(v) = verdicts.get_mut(rejection.index)
        {
            *v = true;
        }
    }
    verdicts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(window: usize, min_messages: usize) -> Breaker {
        Breaker::new(BreakerSettings {
            window,
            min_messages,
            threshold: 0.9,
            cooldown: Duration::from_secs(1),
        })
    }

    #[test]
    fn the_breaker_trips_only_on_a_full_enough_window_of_rejections() {
        let mut b = breaker(10, 5);
        // Too few messages to judge.
        assert!(!b.would_trip(&[true; 4]));
        // Enough, all bad.
        assert!(b.would_trip(&[true; 5]));
        // Nine good ones in the window dilute a bad batch.
        b.record(&[false; 9]);
        assert!(!b.would_trip(&[true; 1]));
        // A large bad batch fills the window on its own.
        assert!(b.would_trip(&[true; 10]));
        // Disabled.
        assert!(!breaker(10, 0).would_trip(&[true; 10]));
    }

    #[test]
    fn the_window_keeps_only_the_most_recent_messages() {
        let mut b = breaker(4, 4);
        b.record(&[false, false, false, false, true, true, true]);
        assert_eq!(b.recent.len(), 4);
        // [false, true, true, true] + [true] -> last 4 are all bad.
        assert!(b.would_trip(&[true]));
    }

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let mut backoff = Backoff::new(RetrySettings {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(800),
        });
        let waits: Vec<Duration> = (0..6).map(|_| backoff.next_wait()).collect();
        for (wait, step) in waits.iter().zip([100, 200, 400, 800, 800, 800]) {
            let step = Duration::from_millis(step);
            assert!(
                *wait >= step / 2 && *wait <= step,
                "{wait:?} for a step of {step:?}"
            );
        }
    }
}
