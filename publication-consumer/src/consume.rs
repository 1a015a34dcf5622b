//! The consume loop: one task owns the Kafka consumer and handles one event at a time, as the
//! Python PPS does; an event's offset is committed only once its outcome is stored.
//!
//! What happens to an event:
//! - a batch seen before (replay, duplicate event): nothing, the offset is committed;
//! - malformed JSON, another `type`, an origin not accepted, an unusable batch file name, a batch
//!   file that is not a batch file or names another batch: recorded in `failed_event` and skipped
//!   at once, since no retry can heal them;
//! - a batch file not there (yet): retried with backoff for `batch_file_wait`, then recorded in
//!   `failed_event` and skipped; transient storage errors are retried for ever;
//! - the state database or the registry unavailable: retried for ever, readiness false.
//!
//! Rebalance callbacks only do bookkeeping (readiness, lag). A revoked partition's event in hand
//! is still stored; its commit may fail, and the next owner finds the batch recorded.

use std::sync::Arc;
use std::time::{Duration, Instant};

use butler_repository::{DatabaseError, ErrorClass};
use chrono::Utc;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use resources::ResourcePath;
use schema::{BatchIngestedEvent, DatasetBatch, DecodeError};
use service_kit::context::{KafkaContext, KafkaRefused};
use service_kit::health::Dependency;
use service_kit::kafka::is_fatal_code;
use service_kit::retry::sleep_unless_cancelled;
use service_kit::{Backoff, CancellationToken, Chain, Health};
use tracing::{error, info, warn};

use crate::metrics::Metrics;
use crate::model;
use crate::policy::Origin;
use crate::registry::{APPLICATION_NAME, RegistryReader};
use crate::sasquatch::{ConsumerEvents, EventFailed, EventRecorded};
use crate::settings::Settings;
use crate::store::{BatchInfo, EventPlace, FailedEvent, Store};

/// The consumer.
pub type EventsConsumer = rdkafka::consumer::StreamConsumer<KafkaContext>;

/// Why the consume loop stopped: a reason no retry heals.
#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    /// Kafka refused the credentials or permissions.
    #[error(transparent)]
    Kafka(#[from] KafkaRefused),
    /// A database refused the consumer for good (a revoked grant, a table or column gone).
    #[error("the {stage} refused the consumer")]
    Database {
        /// `database` (the state) or `registry`.
        stage: &'static str,
        /// The refusal.
        #[source]
        source: DatabaseError,
    },
    /// librdkafka refused to create or subscribe the consumer.
    #[error("cannot {doing}")]
    Client {
        /// What was being done.
        doing: String,
        /// Why.
        #[source]
        source: KafkaError,
    },
}

/// Creates the consumer and subscribes it to the events topic.
pub fn create_consumer(
    settings: &Settings,
    health: &Arc<Health>,
    metrics: &Arc<Metrics>,
) -> Result<EventsConsumer, ConsumeError> {
    // Waiting for a late batch file must not cost the group membership, or the wait would start
    // over after every rejoin: allow the whole wait plus a margin between polls.
    let max_poll_ms = (settings.batch_file_wait + Duration::from_secs(300))
        .as_millis()
        .clamp(300_000, 86_400_000)
        .to_string();
    let mut config = settings.kafka.client_config(
        APPLICATION_NAME,
        &[
            ("group.id", &settings.group_id),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", "earliest"),
            // Only events of committed writer transactions (the deployed writer is transactional).
            ("isolation.level", "read_committed"),
            ("max.poll.interval.ms", &max_poll_ms),
            ("statistics.interval.ms", "5000"),
        ],
    );
    config.set_log_level(RDKafkaLogLevel::Warning);
    let context = KafkaContext::new(
        Arc::clone(health),
        metrics.common.consumer_lag.clone(),
        settings.topic.clone(),
        (),
    );
    let consumer: EventsConsumer =
        config
            .create_with_context(context)
            .map_err(|source| ConsumeError::Client {
                doing: "create the Kafka consumer".to_owned(),
                source,
            })?;
    consumer
        .subscribe(&[&settings.topic])
        .map_err(|source| ConsumeError::Client {
            doing: format!("subscribe to {}", settings.topic),
            source,
        })?;
    Ok(consumer)
}

/// What handling an event came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// Stored (recorded, duplicate, or failed and skipped): commit its offset.
    Done,
    /// A shutdown interrupted it before anything was stored: do not commit.
    Interrupted,
}

/// Why an event is skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Skip {
    reason: &'static str,
    detail: String,
}

/// Everything the loop needs.
#[derive(Debug)]
pub struct Processor {
    /// The state database.
    pub store: Store,
    /// The registry.
    pub registry: RegistryReader,
    /// The settings.
    pub settings: Arc<Settings>,
    /// Where batch files are.
    pub batch_directory: ResourcePath,
    /// Readiness.
    pub health: Arc<Health>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Fires when a shutdown is requested.
    pub shutdown: CancellationToken,
    /// The events sent to Sasquatch.
    pub events: Arc<ConsumerEvents>,
}

/// Payloads longer than this are cut before they are stored with a failed event.
const PAYLOAD_CAP: usize = 4096;

impl Processor {
    /// Runs until a shutdown is requested, then commits what was stored; stops with the reason
    /// when Kafka refuses the credentials or permissions, or a database refuses for good.
    pub async fn run(self, consumer: Arc<EventsConsumer>) -> Result<(), ConsumeError> {
        let result = self.consume(&consumer).await;
        // Everything committed asynchronously so far, flushed before the consumer closes.
        let consumer_for_commit = Arc::clone(&consumer);
        let flushed = tokio::task::spawn_blocking(move || {
            consumer_for_commit.commit_consumer_state(CommitMode::Sync)
        })
        .await;
        if let Ok(Err(e)) = flushed
            && !matches!(e.rdkafka_error_code(), Some(RDKafkaErrorCode::NoOffset))
        {
            warn!(error = %e, "the final offset commit failed");
        }
        result
    }

    /// The loop: one event at a time, its offset committed once its outcome is stored.
    async fn consume(&self, consumer: &EventsConsumer) -> Result<(), ConsumeError> {
        let mut broker_backoff = Backoff::new(self.settings.retry);
        loop {
            self.health.beat();
            if let Some(refused) = consumer.context().fatal().get() {
                return Err(refused.into());
            }
            let received = tokio::select! {
                received = tokio::time::timeout(Duration::from_secs(1), consumer.recv()) => received,
                () = self.shutdown.cancelled() => return Ok(()),
            };
            let message = match received {
                Err(_) => continue, // idle: beat and look at the shutdown and fatal flags again
                Ok(Err(e)) => {
                    if e.rdkafka_error_code().is_some_and(is_fatal_code) {
                        consumer.context().fatal().report("consumer's request", e);
                        continue;
                    }
                    warn!(error = %e, "cannot read events; waiting");
                    self.health
                        .set(Dependency::Broker, false, Some(e.to_string()));
                    broker_backoff.wait(&self.shutdown).await;
                    continue;
                }
                Ok(Ok(message)) => message.detach(),
            };
            broker_backoff = Backoff::new(self.settings.retry);
            let started = Instant::now();
            if self.handle(&message).await? == Handled::Interrupted {
                return Ok(());
            }
            commit(consumer, &message);
            self.metrics
                .event_seconds
                .observe(started.elapsed().as_secs_f64());
            if let Some(ms) = message.timestamp().to_millis() {
                let age = (Utc::now().timestamp_millis() - ms).max(0);
                self.metrics
                    .event_age_seconds
                    .observe(Duration::from_millis(age.unsigned_abs()).as_secs_f64());
            }
        }
    }

    /// Sleeps for `wait`, or less when a shutdown is requested.
    async fn sleep(&self, wait: Duration) {
        sleep_unless_cancelled(wait, &self.shutdown).await;
    }

    fn stopping(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    /// Handles one event to the point where its outcome is stored.
    pub async fn handle(&self, message: &OwnedMessage) -> Result<Handled, ConsumeError> {
        let place = EventPlace {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
        };
        let payload = message.payload().unwrap_or_default();
        let event = match decode(payload, &self.settings.origins) {
            Ok(event) => event,
            Err(skip) => return self.skip(&place, &skip, None, payload).await,
        };
        let Some(done) = self
            .retry("database", || self.store.has_batch(event.batch_id))
            .await?
        else {
            return Ok(Handled::Interrupted);
        };
        if done {
            self.metrics.events_duplicate.inc();
            info!(batch_id = %event.batch_id, partition = place.partition, offset = place.offset, "batch already recorded; event skipped");
            return Ok(Handled::Done);
        }
        let read_started = Instant::now();
        let batch = match self.read_batch(&event).await {
            Ok(Some(batch)) => batch,
            Ok(None) => return Ok(Handled::Interrupted),
            Err(skip) => return self.skip(&place, &skip, Some(&event), payload).await,
        };
        let read_seconds = read_started.elapsed().as_secs_f64();
        self.record(
            &event,
            &batch,
            &place,
            read_seconds,
            message.timestamp().to_millis(),
        )
        .await
    }

    /// Looks a batch's datasets up in the registry and records them with the batch.
    async fn record(
        &self,
        event: &BatchIngestedEvent,
        batch: &DatasetBatch,
        place: &EventPlace,
        read_seconds: f64,
        event_timestamp_ms: Option<i64>,
    ) -> Result<Handled, ConsumeError> {
        let lookup_started = Instant::now();
        let Some(found) = self
            .retry("registry", || self.registry.lookup(&batch.datasets))
            .await?
        else {
            return Ok(Handled::Interrupted);
        };
        let lookup_seconds = lookup_started.elapsed().as_secs_f64();
        // `decode` let only accepted origins through, and settings accept only known ones.
        let origin = Origin::from_name(&event.origin).unwrap_or(Origin::PromptProcessing);
        let records = model::records(&batch.datasets, &found, &self.settings.policy, origin);
        if !records.unknown.is_empty() {
            warn!(batch_id = %event.batch_id, unknown = records.unknown.len(), "dataset ids the registry does not know; recorded as unknown");
        }
        let info = BatchInfo {
            batch_id: event.batch_id,
            origin: &event.origin,
            batch_file: &event.batch_file,
            place,
        };
        let now = self.settings.clock.now();
        let store_started = Instant::now();
        let Some(recorded) = self
            .retry("database", || self.store.record_batch(&info, &records, now))
            .await?
        else {
            return Ok(Handled::Interrupted);
        };
        #[allow(clippy::cast_precision_loss)]
        self.metrics
            .batch_datasets
            .observe(batch.datasets.len() as f64);
        self.metrics.datasets_recorded.inc_by(recorded.datasets);
        self.metrics.unknown_datasets.inc_by(recorded.unknown);
        if recorded.new_batch {
            self.metrics.events_processed.inc();
        } else {
            self.metrics.events_duplicate.inc();
        }
        info!(
            batch_id = %event.batch_id,
            partition = place.partition,
            offset = place.offset,
            datasets = batch.datasets.len(),
            recorded = recorded.datasets,
            unknown = records.unknown.len(),
            read_ms = (read_seconds * 1000.0).round(),
            lookup_ms = (lookup_seconds * 1000.0).round(),
            store_ms = store_started.elapsed().as_millis(),
            "batch recorded"
        );
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        #[allow(clippy::cast_precision_loss)]
        let age_seconds = event_timestamp_ms.map_or(0.0, |ms| {
            (Utc::now().timestamp_millis() - ms).max(0) as f64 / 1000.0
        });
        self.events.recorded.publish(&EventRecorded {
            batch_id: event.batch_id.to_string(),
            origin: event.origin.clone(),
            datasets: count(batch.datasets.len()),
            recorded: i64::try_from(recorded.datasets).unwrap_or(i64::MAX),
            unknown: count(records.unknown.len()),
            new_batch: recorded.new_batch,
            read_seconds,
            lookup_seconds,
            store_seconds: store_started.elapsed().as_secs_f64(),
            age_seconds,
        });
        Ok(Handled::Done)
    }

    /// Reads the event's batch file, waiting for it while it is missing; `Ok(None)` when a
    /// shutdown interrupted the wait.
    async fn read_batch(&self, event: &BatchIngestedEvent) -> Result<Option<DatasetBatch>, Skip> {
        let path = batch_path(&self.batch_directory, &event.batch_file).map_err(|e| Skip {
            reason: "batch_file_name",
            detail: Chain(&e).to_string(),
        })?;
        let started = Instant::now();
        let mut backoff = Backoff::new(self.settings.retry);
        let bytes = loop {
            self.health.beat();
            match path.read().await {
                Ok(bytes) => {
                    self.health.set(Dependency::Storage, true, None);
                    self.metrics.batch_file_waiting_seconds.set(0);
                    break bytes;
                }
                Err(e) if e.is_transient() => {
                    let wait = backoff.next_wait();
                    warn!(error = %e, file = %path, wait_ms = wait.as_millis(), "storage is unavailable; waiting");
                    self.health
                        .set(Dependency::Storage, false, Some(e.to_string()));
                    self.metrics.retry("batch_file");
                    self.sleep(wait).await;
                }
                Err(e) => {
                    let missing = e.is_not_found();
                    // The event is held, and the events behind it with it: not ready, and the
                    // wait in a gauge, until the file is there or the wait is over.
                    self.health.set(
                        Dependency::Storage,
                        false,
                        Some(format!(
                            "batch file {path} of batch {} not readable for {:.0} s: {e}",
                            event.batch_id,
                            started.elapsed().as_secs_f64()
                        )),
                    );
                    self.metrics
                        .batch_file_waiting_seconds
                        .set(i64::try_from(started.elapsed().as_secs()).unwrap_or(i64::MAX));
                    if started.elapsed() >= self.settings.batch_file_wait {
                        self.health.set(Dependency::Storage, true, None);
                        self.metrics.batch_file_waiting_seconds.set(0);
                        return Err(Skip {
                            reason: if missing {
                                "batch_file_missing"
                            } else {
                                "batch_file_unreadable"
                            },
                            detail: format!(
                                "{e} (after waiting {:.0} s)",
                                started.elapsed().as_secs_f64()
                            ),
                        });
                    }
                    let wait = backoff
                        .next_wait()
                        .min(
                            self.settings
                                .batch_file_wait
                                .saturating_sub(started.elapsed()),
                        )
                        .max(Duration::from_millis(10));
                    info!(error = %e, file = %path, wait_ms = wait.as_millis(), "batch file not readable yet; waiting");
                    self.metrics.retry("batch_file");
                    self.sleep(wait).await;
                }
            }
            if self.stopping() {
                return Ok(None);
            }
        };
        let batch = DatasetBatch::from_json(&bytes).map_err(|e| Skip {
            reason: "batch_file_invalid",
            detail: format!("{path}: {e}"),
        })?;
        if batch.batch_id != event.batch_id {
            return Err(Skip {
                reason: "batch_id_mismatch",
                detail: format!(
                    "{path} holds batch {} but the event announces batch {}",
                    batch.batch_id, event.batch_id
                ),
            });
        }
        Ok(Some(batch))
    }

    /// Records a skipped event; `Interrupted` if a shutdown came while the database was down.
    async fn skip(
        &self,
        place: &EventPlace,
        skip: &Skip,
        event: Option<&BatchIngestedEvent>,
        payload: &[u8],
    ) -> Result<Handled, ConsumeError> {
        error!(
            reason = skip.reason,
            detail = %skip.detail,
            partition = place.partition,
            offset = place.offset,
            "event skipped and recorded as failed"
        );
        let mut text = String::from_utf8_lossy(payload).into_owned();
        if text.len() > PAYLOAD_CAP {
            let mut cut = PAYLOAD_CAP;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
        }
        let failed = FailedEvent {
            place,
            reason: skip.reason,
            detail: &skip.detail,
            batch_id: event.map(|e| e.batch_id),
            batch_file: event.map(|e| e.batch_file.as_str()),
            payload: Some(text),
        };
        let now = self.settings.clock.now();
        let stored = self
            .retry("database", || self.store.record_failed(&failed, now))
            .await?;
        Ok(match stored {
            Some(_) => {
                let retried = matches!(skip.reason, "batch_file_missing" | "batch_file_unreadable");
                self.metrics.failed(skip.reason, retried);
                self.events.failed.publish(&EventFailed {
                    reason: skip.reason.to_owned(),
                    batch_id: event.map(|e| e.batch_id.to_string()),
                    partition: place.partition,
                    offset: place.offset,
                });
                Handled::Done
            }
            None => Handled::Interrupted,
        })
    }

    /// Runs `op` until it succeeds, waiting with backoff; `Ok(None)` when a shutdown
    /// interrupted. Failures mark the stage's dependency unavailable (readiness false) until it
    /// answers; a failure retrying cannot heal (a revoked grant, a table or column gone) stops
    /// the consumer with the reason instead of looping on it.
    async fn retry<T, F, Fut>(
        &self,
        stage: &'static str,
        mut op: F,
    ) -> Result<Option<T>, ConsumeError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, DatabaseError>>,
    {
        let mut backoff = Backoff::new(self.settings.retry);
        let mut failing = false;
        loop {
            match op().await {
                Ok(value) => {
                    if failing {
                        info!(stage, "available again");
                    }
                    self.set_stage(stage, true, None);
                    return Ok(Some(value));
                }
                Err(error) if error.class() == ErrorClass::Stop => {
                    return Err(ConsumeError::Database {
                        stage,
                        source: error,
                    });
                }
                Err(error) => {
                    failing = true;
                    let wait = backoff.next_wait();
                    let text = Chain(&error).to_string();
                    warn!(stage, error = %text, wait_ms = wait.as_millis(), "unavailable; retrying");
                    self.set_stage(stage, false, Some(format!("{stage}: {text}")));
                    self.metrics.retry(stage);
                    self.health.beat();
                    self.sleep(wait).await;
                    if self.stopping() {
                        return Ok(None);
                    }
                }
            }
        }
    }

    fn set_stage(&self, stage: &str, ok: bool, problem: Option<String>) {
        let dependency = match stage {
            "registry" => Dependency::Registry,
            _ => Dependency::Database,
        };
        self.health.set(dependency, ok, problem);
    }
}

/// Commits the offset after `message`. Asynchronous: the state is already stored, so a lost
/// commit only means the event comes back and is found recorded.
fn commit(consumer: &EventsConsumer, message: &OwnedMessage) {
    let mut offsets = TopicPartitionList::new();
    if let Err(e) = offsets.add_partition_offset(
        message.topic(),
        message.partition(),
        Offset::Offset(message.offset() + 1),
    ) {
        warn!(error = %e, "cannot name the offset to commit");
        return;
    }
    if let Err(e) = consumer.commit(&offsets, CommitMode::Async) {
        warn!(error = %e, offset = message.offset(), "the offset commit failed; the event will be seen again");
    }
}

/// The event in a Kafka value, or why it is skipped.
fn decode(payload: &[u8], origins: &[String]) -> Result<BatchIngestedEvent, Skip> {
    if payload.is_empty() {
        return Err(Skip {
            reason: "malformed",
            detail: "the message has no value".to_owned(),
        });
    }
    let event = BatchIngestedEvent::from_json(payload).map_err(|e| match e {
        DecodeError::OtherMessageType { found, .. } => Skip {
            reason: "unknown_type",
            detail: format!("unknown event type {found:?}"),
        },
        other => Skip {
            reason: "malformed",
            detail: other.to_string(),
        },
    })?;
    if !origins.contains(&event.origin) {
        return Err(Skip {
            reason: "unknown_origin",
            detail: format!(
                "unknown dataset origin {:?} (accepted: {})",
                event.origin,
                origins.join(", ")
            ),
        });
    }
    Ok(event)
}

/// An event's batch file name that does not name a file.
#[derive(Debug, thiserror::Error)]
pub enum BatchPathError {
    /// The name is empty.
    #[error("the event names no batch file")]
    Empty,
    /// The name is not a usable location.
    #[error("batch file {0:?}")]
    Invalid(String, #[source] resources::Error),
}

/// Where an event's batch file is: its `batch_file` relative to the batch directory, or itself
/// when it is an absolute path or a URI.
pub fn batch_path(
    directory: &ResourcePath,
    batch_file: &str,
) -> Result<ResourcePath, BatchPathError> {
    if batch_file.is_empty() {
        return Err(BatchPathError::Empty);
    }
    let absolute = batch_file.starts_with('/') || batch_file.contains("://");
    let path = if absolute {
        ResourcePath::parse(batch_file)
    } else {
        directory.join(batch_file)
    };
    path.map_err(|e| BatchPathError::Invalid(batch_file.to_owned(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origins() -> Vec<String> {
        vec!["prompt_processing".to_owned()]
    }

    #[test]
    fn events_decode_or_say_why_not() {
        let good = br#"{"type":"batch-ingested","batch_id":"5f0c1d7e-3b2a-4c51-9a8e-0d1f2e3a4b5c","origin":"prompt_processing","batch_file":"f.json"}"#;
        assert!(decode(good, &origins()).is_ok());
        let other = br#"{"type":"day-end","instrument":"LSSTCam"}"#;
        assert_eq!(
            decode(other, &origins()).err().map(|s| s.reason),
            Some("unknown_type")
        );
        let origin = br#"{"type":"batch-ingested","batch_id":"5f0c1d7e-3b2a-4c51-9a8e-0d1f2e3a4b5c","origin":"elsewhere","batch_file":"f.json"}"#;
        assert_eq!(
            decode(origin, &origins()).err().map(|s| s.reason),
            Some("unknown_origin")
        );
        for bad in [&b"not json"[..], b"", br#"{"type":"batch-ingested"}"#] {
            assert_eq!(
                decode(bad, &origins()).err().map(|s| s.reason),
                Some("malformed")
            );
        }
    }

    #[test]
    fn batch_files_are_relative_to_the_directory_unless_absolute()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = ResourcePath::parse("/data/batches/")?.as_dir();
        assert_eq!(
            batch_path(&dir, "a.json")?.to_string(),
            "/data/batches/a.json"
        );
        assert_eq!(
            batch_path(&dir, "/elsewhere/b.json")?.to_string(),
            "/elsewhere/b.json"
        );
        assert!(batch_path(&dir, "").is_err());
        Ok(())
    }
}
