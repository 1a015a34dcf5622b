//! What happens to a batch after the consume loop closes it.
//!
//! 1. **Ingest** (up to `db_concurrency` batches at once, each on its own connection): the
//!    registry engine writes and commits the batch to the database, then its batch file is
//!    written. Database and storage outages are retried with backoff, indefinitely, the batch
//!    intact. A batch that writes a dataset an earlier batch still in the database also writes
//!    waits for it ([`super::order`]), so the earlier of two conflicting copies wins.
//! 2. **Announce** (one batch at a time, in the order read): the circuit breaker judges the
//!    batch's rejections; then its `batch-ingested` event, its dead letters and its offsets go to
//!    Kafka ([`super::delivery`]). Offsets never move before the database commit, because
//!    announcing starts after ingesting ends.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::Consumer;
use resources::ResourcePath;
use schema::{BatchIngestedEvent, DatasetBatch};
use service_kit::health::Dependency;
use service_kit::retry::sleep_unless_cancelled;
use service_kit::{Backoff, CancellationToken, Chain, Health};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};
use uuid::Uuid;

use super::ServiceError;
use super::batch::Batch;
use super::breaker::{Breaker, Decision};
use super::consume::WriterConsumer;
use super::delivery::{Delivery, DeliveryFailure, OutRecord, dead_letter_record, offsets_after};
use super::faults::FaultInjector;
use super::metrics::Metrics;
use super::order::{BatchTurns, Turn};
use super::sasquatch::{BatchCommitted, BreakerTrip, WriterEvents};
use super::settings::DeliveryMode;
use super::settings::Settings;
use crate::error::EngineError;
use crate::outcome::BatchOutcome;
use crate::registry::Registry;
use crate::registry::order::{BatchOrder, Unordered};

/// The readiness hold the circuit breaker sets.
pub const BREAKER_HOLD: &str = "breaker_open";

/// A batch that is in the database and has its file.
#[derive(Debug)]
pub struct Ingested {
    batch: Batch,
    outcome: BatchOutcome,
    batch_id: Uuid,
    file_name: String,
    /// Seconds in the engine and writing the file (with retries), for the batch's metrics event.
    engine_seconds: f64,
    file_seconds: f64,
}

/// A finished ingest task: the batch, or `None` when it was abandoned.
type IngestTask = JoinHandle<Result<Option<Ingested>, ServiceError>>;

/// Committing a batch's offsets says "every message before these is done". Once a batch is
/// abandoned (held by the breaker at shutdown, revoked, refused by the group), no later batch
/// read under the same assignment may be announced: its commit would step over the abandoned
/// messages, which are then neither ingested nor dead-lettered. They all come again, from the
/// last committed offset, to whoever holds the partitions next.
#[derive(Debug, Default)]
struct CommitGap {
    /// The assignment generation in which a batch was abandoned.
    generation: Option<u64>,
}

impl CommitGap {
    /// May a batch read under `generation` be announced?
    fn allows(&self, generation: u64) -> bool {
        self.generation != Some(generation)
    }

    /// A batch read under `generation` was abandoned.
    fn opened(&mut self, generation: u64) {
        self.generation = Some(generation);
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
    /// Fires when a shutdown is requested: the breaker stops waiting.
    pub(super) shutdown: CancellationToken,
    pub(super) faults: Arc<dyn FaultInjector>,
    /// The events sent to Sasquatch.
    pub(super) events: Arc<WriterEvents>,
    /// The order of batches in the database, where they write the same datasets.
    pub(super) turns: BatchTurns,
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
    pub async fn run(self: Arc<Self>, batches: mpsc::Receiver<Batch>) -> Result<(), ServiceError> {
        let (ingesting, ingested) = mpsc::channel::<IngestTask>(self.settings.db_concurrency);
        let dispatcher = tokio::spawn(Arc::clone(&self).dispatch(batches, ingesting));
        let result = self.announce_in_order(ingested).await;
        dispatcher.abort();
        result
    }

    /// Stage 1: starts each batch's ingest as a task as soon as a connection is free.
    async fn dispatch(
        self: Arc<Self>,
        mut batches: mpsc::Receiver<Batch>,
        ingesting: mpsc::Sender<IngestTask>,
    ) {
        let permits = Arc::new(Semaphore::new(self.settings.db_concurrency));
        while let Some(batch) = batches.recv().await {
            // Taken in the order batches were read, before any of them can claim.
            let turn = self.turns.next_turn();
            let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                break;
            };
            let pipeline = Arc::clone(&self);
            let task = tokio::spawn(async move {
                let result = pipeline.ingest(batch, turn).await;
                drop(permit);
                result
            });
            if ingesting.send(task).await.is_err() {
                break;
            }
        }
    }

    /// Stage 2: announces the ingested batches in the order they were read.
    async fn announce_in_order(
        &self,
        mut ingested: mpsc::Receiver<IngestTask>,
    ) -> Result<(), ServiceError> {
        let mut breaker = Breaker::new(self.settings.breaker);
        let mut announced = 0_u64;
        let mut gap = CommitGap::default();
        while let Some(task) = ingested.recv().await {
            let joined = task.await.map_err(service_kit::TaskFailed)?;
            let Some(batch) = joined? else { continue };
            let generation = batch.batch.generation;
            if !gap.allows(generation) {
                info!(
                    batch = batch.batch.number,
                    "batch abandoned: an earlier batch of this assignment was; its messages will come again"
                );
                self.metrics.batch("abandoned");
                continue;
            }
            self.faults.before_announce(announced)?;
            if self.announce(batch, &mut breaker).await? {
                announced += 1;
            } else {
                gap.opened(generation);
            }
        }
        Ok(())
    }

    /// The generation of the current assignment.
    fn generation(&self) -> u64 {
        self.consumer.context().hooks().current()
    }

    /// Stage 1 for one batch: `None` when the batch was abandoned (its partitions were revoked).
    async fn ingest(&self, batch: Batch, turn: Turn) -> Result<Option<Ingested>, ServiceError> {
        let started = Instant::now();
        let Some(outcome) = self.run_engine(&batch, &turn).await? else {
            return Ok(None);
        };
        // Committed: later batches that write the same datasets may go on.
        drop(turn);
        let engine_seconds = started.elapsed().as_secs_f64();
        let batch_id = Uuid::new_v4();
        let file_name = format!(
            "{}-{batch_id}.json",
            chrono::Utc::now().format("%Y-%m-%dT%H-%M-%S-%6f")
        );
        let mut ingested = Ingested {
            batch,
            outcome,
            batch_id,
            file_name,
            engine_seconds,
            file_seconds: 0.0,
        };
        let started = Instant::now();
        if self.write_batch_file(&ingested).await? {
            ingested.file_seconds = started.elapsed().as_secs_f64();
            Ok(Some(ingested))
        } else {
            Ok(None)
        }
    }

    /// Runs the registry engine on a batch until it succeeds; `None` if the batch went stale
    /// while the database was away.
    async fn run_engine<O: BatchOrder>(
        &self,
        batch: &Batch,
        order: &O,
    ) -> Result<Option<BatchOutcome>, ServiceError> {
        let values: Vec<&[u8]> = batch.messages.iter().map(|m| m.value.as_slice()).collect();
        let mut backoff = Backoff::new(self.settings.retry);
        loop {
            if batch.generation != self.generation() {
                return Ok(None);
            }
            let started = Instant::now();
            match self.registry.ingest_values_in_order(&values, order).await {
                Ok(outcome) => {
                    self.metrics
                        .database_seconds
                        .observe(started.elapsed().as_secs_f64());
                    self.health.set(Dependency::Database, true, None);
                    return Ok(Some(outcome));
                }
                Err(EngineError::Retry(error)) => {
                    let wait = backoff.next_wait();
                    let text = Chain(&error).to_string();
                    warn!(batch = batch.number, error = %text, wait_ms = wait.as_millis(), "database unavailable; the batch will be tried again");
                    self.health.set(
                        Dependency::Database,
                        false,
                        Some(format!("database: {text}")),
                    );
                    self.metrics.retry("database");
                    tokio::time::sleep(wait).await;
                }
                Err(stop @ EngineError::Stop(_)) => return Err(stop.into()),
            }
        }
    }

    /// Writes the batch file (ingested and already-present ids); `false` if the batch went stale
    /// while storage was away.
    async fn write_batch_file(&self, ingested: &Ingested) -> Result<bool, ServiceError> {
        let location = self
            .output_directory
            .join(&ingested.file_name)
            .map_err(|source| self.batch_file_error(source))?;
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
                Err(error) => return Err(self.batch_file_error(error)),
            }
        }
    }

    fn batch_file_error(&self, source: resources::Error) -> ServiceError {
        ServiceError::BatchFiles {
            directory: self.output_directory.to_string(),
            source,
        }
    }

    /// Stage 2 for one batch; `true` when it was announced and its offsets committed.
    async fn announce(
        &self,
        mut ingested: Ingested,
        breaker: &mut Breaker,
    ) -> Result<bool, ServiceError> {
        if !self.pass_breaker(&mut ingested, breaker).await? {
            self.metrics.batch("abandoned");
            return Ok(false);
        }
        let announce_started = Instant::now();
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
            let Err(error) = result else { break };
            match error.failure {
                DeliveryFailure::Retry => {
                    let wait = backoff.next_wait();
                    let text = Chain(&error).to_string();
                    warn!(batch = ingested.batch.number, error = %text, wait_ms = wait.as_millis(), "cannot deliver the batch's results to Kafka; trying again");
                    self.health
                        .set(Dependency::Broker, false, Some(format!("Kafka: {text}")));
                    self.metrics.retry("kafka");
                    tokio::time::sleep(wait).await;
                }
                DeliveryFailure::Abandon => {
                    info!(batch = ingested.batch.number, error = %Chain(&error), "batch abandoned: the group moved on; its messages will come again");
                    self.metrics.batch("abandoned");
                    return Ok(false);
                }
                DeliveryFailure::Stop => return Err(ServiceError::Delivery(error)),
            }
        }
        self.health.set(Dependency::Broker, true, None);
        let now = now_ms();
        self.metrics
            .announced(&ingested.batch, &ingested.outcome, now);
        self.publish_batch_event(&ingested, announce_started, now);
        for rejection in &ingested.outcome.rejected {
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
        info!(
            batch = ingested.batch.number,
            batch_id = %ingested.batch_id,
            messages = ingested.batch.messages.len(),
            ingested = ingested.outcome.ingested.len(),
            already_present = ingested.outcome.already_present.len(),
            rejected = ingested.outcome.rejected.len(),
            batch_file = %ingested.file_name,
            "batch committed"
        );
        Ok(true)
    }

    /// Holds the batch while the breaker is open, trying it again (engine and file) after each
    /// cooldown; `false` when it went stale or a shutdown came first.
    async fn pass_breaker(
        &self,
        ingested: &mut Ingested,
        breaker: &mut Breaker,
    ) -> Result<bool, ServiceError> {
        loop {
            match breaker.judge(ingested.batch.messages.len(), &ingested.outcome) {
                Decision::Pass { closed } => {
                    if closed {
                        self.metrics.breaker_open.set(0);
                        self.health.set_hold(BREAKER_HOLD, false, None);
                        info!(
                            batch = ingested.batch.number,
                            "circuit breaker closed: the held batch now goes through"
                        );
                    }
                    return Ok(true);
                }
                Decision::Hold { opened } => {
                    if opened {
                        self.breaker_opened(ingested);
                    }
                }
            }
            if !sleep_unless_cancelled(breaker.cooldown(), &self.shutdown).await {
                return Ok(false);
            }
            info!(
                batch = ingested.batch.number,
                "circuit breaker: trying the held batch again"
            );
            // Every later batch is held behind this one at the announce stage: no order to keep.
            let Some(outcome) = self.run_engine(&ingested.batch, &Unordered).await? else {
                return Ok(false);
            };
            ingested.outcome = outcome;
            if !self.write_batch_file(ingested).await? {
                return Ok(false);
            }
        }
    }

    /// The batch's event for Sasquatch (queued; never waits).
    fn publish_batch_event(&self, ingested: &Ingested, announce_started: Instant, now_ms: i64) {
        let oldest = ingested
            .batch
            .messages
            .iter()
            .filter_map(|m| m.timestamp_ms)
            .min();
        #[allow(clippy::cast_precision_loss)]
        let lag_seconds = oldest.map_or(0.0, |t| (now_ms - t).max(0) as f64 / 1000.0);
        let event = BatchCommitted {
            engine_seconds: ingested.engine_seconds,
            file_seconds: ingested.file_seconds,
            announce_seconds: announce_started.elapsed().as_secs_f64(),
            batch_seconds: ingested.batch.closed_at.elapsed().as_secs_f64(),
            lag_seconds,
            delivery: match self.settings.delivery {
                DeliveryMode::Transactional => "transactional",
                DeliveryMode::Idempotent => "idempotent",
            }
            .to_owned(),
            ..BatchCommitted::counts(
                ingested.batch_id,
                ingested.batch.messages.len(),
                &ingested.outcome,
            )
        };
        self.events.batch.publish(&event);
    }

    /// Says loudly why consumption stopped.
    fn breaker_opened(&self, ingested: &Ingested) {
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
        self.events.breaker_trip.publish(&BreakerTrip {
            messages: i64::try_from(ingested.batch.messages.len()).unwrap_or(i64::MAX),
            rejected: i64::try_from(ingested.outcome.rejected.len()).unwrap_or(i64::MAX),
            example: example.clone(),
            cooldown_seconds: self.settings.breaker.cooldown.as_secs_f64(),
        });
        self.health.set_hold(
            BREAKER_HOLD,
            true,
            Some(format!(
                "circuit breaker open: nearly every message is rejected ({example})"
            )),
        );
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
}

/// Milliseconds since the epoch, now.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::CommitGap;

    #[test]
    fn after_an_abandoned_batch_no_later_batch_of_its_assignment_is_announced() {
        let mut gap = CommitGap::default();
        assert!(gap.allows(3), "nothing abandoned yet");
        gap.opened(3);
        assert!(
            !gap.allows(3),
            "a later batch of the same assignment would skip the gap"
        );
        assert!(
            gap.allows(4),
            "a new assignment starts again from the committed offsets"
        );
    }
}
