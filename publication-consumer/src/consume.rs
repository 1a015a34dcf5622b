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

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use butler_writer::service::consumer::is_fatal_code;
use butler_writer::service::pipeline::Backoff;
use chrono::Utc;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use resources::ResourcePath;
use schema::{BatchIngestedEvent, DatasetBatch, DecodeError};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::health::Health;
use crate::metrics::Metrics;
use crate::model;
use crate::registry::RegistryReader;
use crate::settings::Settings;
use crate::store::{BatchInfo, EventPlace, FailedEvent, Store};

/// The consumer's context: logging, lag and readiness; no work in callbacks.
#[derive(Debug)]
pub struct EventsContext {
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    topic: String,
    /// Set when Kafka refuses the credentials or permissions: no retry heals that.
    fatal: Mutex<Option<String>>,
}

impl EventsContext {
    /// Why the consumer must stop, if it must.
    pub fn fatal(&self) -> Option<String> {
        self.fatal.lock().ok().and_then(|f| f.clone())
    }

    fn set_fatal(&self, message: String) {
        if let Ok(mut slot) = self.fatal.lock() {
            slot.get_or_insert(message);
        }
    }
}

impl ClientContext for EventsContext {
    fn error(&self, error: KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        if code.is_some_and(is_fatal_code) {
            error!(%error, reason, "Kafka refused the consumer's credentials or permissions");
            self.set_fatal(format!("Kafka: {reason} ({error})"));
        } else if code == Some(RDKafkaErrorCode::AllBrokersDown) {
            warn!(reason, "every broker is down");
            self.health
                .set_broker(false, Some(format!("Kafka: {reason}")));
        } else {
            warn!(%error, reason, "Kafka client error");
        }
    }

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
            _ => debug!(target: "librdkafka", facility = fac, "{log_message}"),
        }
    }

    fn stats(&self, statistics: Statistics) {
        butler_writer::service::consumer::report_statistics(
            &statistics,
            &self.topic,
            |up, problem| self.health.set_broker(up, problem),
            &self.metrics.consumer_lag,
        );
    }
}

impl ConsumerContext for EventsContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(partitions) => {
                self.health.set_assignment(None);
                info!(partitions = partitions.count(), "partitions revoked");
            }
            Rebalance::Assign(partitions) => {
                self.health.set_assignment(Some(partitions.count()));
                self.metrics.consumer_lag.clear();
                info!(partitions = partitions.count(), "partitions assigned");
            }
            Rebalance::Error(error) => warn!(%error, "rebalance error"),
        }
    }
}

/// The consumer.
pub type EventsConsumer = rdkafka::consumer::StreamConsumer<EventsContext>;

/// Creates the consumer and subscribes it to the events topic.
pub fn create_consumer(
    settings: &Settings,
    health: &Arc<Health>,
    metrics: &Arc<Metrics>,
) -> Result<EventsConsumer, String> {
    // Waiting for a late batch file must not cost the group membership, or the wait would start
    // over after every rejoin: allow the whole wait plus a margin between polls.
    let max_poll_ms = (settings.batch_file_wait + Duration::from_secs(300))
        .as_millis()
        .clamp(300_000, 86_400_000)
        .to_string();
    let mut config = settings.kafka.client_config(&[
        ("client.id", "publication-consumer"),
        ("group.id", &settings.group_id),
        ("enable.auto.commit", "false"),
        ("enable.auto.offset.store", "false"),
        ("auto.offset.reset", "earliest"),
        // Only events of committed writer transactions (the deployed writer is transactional).
        ("isolation.level", "read_committed"),
        ("max.poll.interval.ms", &max_poll_ms),
        ("statistics.interval.ms", "5000"),
    ]);
    config.set_log_level(RDKafkaLogLevel::Warning);
    let consumer: EventsConsumer = config
        .create_with_context(EventsContext {
            health: Arc::clone(health),
            metrics: Arc::clone(metrics),
            topic: settings.topic.clone(),
            fatal: Mutex::new(None),
        })
        .map_err(|e| format!("cannot create the Kafka consumer: {e}"))?;
    consumer
        .subscribe(&[&settings.topic])
        .map_err(|e| format!("cannot subscribe to {}: {e}", settings.topic))?;
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
    /// Becomes true when a shutdown is requested.
    pub stop: watch::Receiver<bool>,
}

/// Payloads longer than this are cut before they are stored with a failed event.
const PAYLOAD_CAP: usize = 4096;

impl Processor {
    /// Runs until a shutdown is requested, then commits what was stored; stops with the reason
    /// when Kafka refuses the credentials or permissions.
    pub async fn run(self, consumer: Arc<EventsConsumer>) -> Result<(), String> {
        let mut broker_backoff = Backoff::new(self.settings.retry);
        let mut result = Ok(());
        loop {
            self.health.beat();
            if *self.stop.borrow() {
                break;
            }
            if let Some(fatal) = consumer.context().fatal() {
                result = Err(fatal);
                break;
            }
            let mut stop = self.stop.clone();
            let received = tokio::select! {
                received = tokio::time::timeout(Duration::from_secs(1), consumer.recv()) => received,
                _ = stop.changed() => break,
            };
            let message = match received {
                Err(_) => continue, // idle: beat and look at the stop flag again
                Ok(Err(e)) => {
                    if e.rdkafka_error_code().is_some_and(is_fatal_code) {
                        result = Err(format!("Kafka: {e}"));
                        break;
                    }
                    let wait = broker_backoff.next_wait();
                    warn!(error = %e, wait_ms = wait.as_millis(), "cannot read events; waiting");
                    self.health.set_broker(false, Some(e.to_string()));
                    self.sleep(wait).await;
                    continue;
                }
                Ok(Ok(message)) => message.detach(),
            };
            broker_backoff = Backoff::new(self.settings.retry);
            let started = Instant::now();
            if self.handle(&message).await == Handled::Interrupted {
                break;
            }
            let mut offsets = TopicPartitionList::new();
            if let Err(e) = offsets.add_partition_offset(
                message.topic(),
                message.partition(),
                Offset::Offset(message.offset() + 1),
            ) {
                warn!(error = %e, "cannot name the offset to commit");
                continue;
            }
            // Asynchronous: the state is already stored, so a lost commit only means the event
            // comes back and is found recorded.
            if let Err(e) = consumer.commit(&offsets, CommitMode::Async) {
                warn!(error = %e, offset = message.offset(), "the offset commit failed; the event will be seen again");
            }
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

    /// Sleeps for `wait`, or less when a shutdown is requested.
    async fn sleep(&self, wait: Duration) {
        let mut stop = self.stop.clone();
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = stop.changed() => {}
        }
    }

    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Handles one event to the point where its outcome is stored.
    pub async fn handle(&self, message: &OwnedMessage) -> Handled {
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
            .retry("database", |s| {
                let store = s.store.clone();
                async move { store.has_batch(event.batch_id).await }
            })
            .await
        else {
            return Handled::Interrupted;
        };
        if done {
            self.metrics.events_duplicate.inc();
            info!(batch_id = %event.batch_id, partition = place.partition, offset = place.offset, "batch already recorded; event skipped");
            return Handled::Done;
        }
        let read_started = Instant::now();
        let batch = match self.read_batch(&event).await {
            Ok(Some(batch)) => batch,
            Ok(None) => return Handled::Interrupted,
            Err(skip) => return self.skip(&place, &skip, Some(&event), payload).await,
        };
        let read_ms = read_started.elapsed().as_millis();
        let lookup_started = Instant::now();
        let Some(found) = self
            .retry("registry", |s| {
                let registry = s.registry.clone();
                let ids = batch.datasets.clone();
                async move { registry.lookup(&ids).await }
            })
            .await
        else {
            return Handled::Interrupted;
        };
        let lookup_ms = lookup_started.elapsed().as_millis();
        let records = model::records(&batch.datasets, &found, self.settings.embargo);
        if !records.unknown.is_empty() {
            warn!(batch_id = %event.batch_id, unknown = records.unknown.len(), "dataset ids the registry does not know; recorded as unknown");
        }
        let info = BatchInfo {
            batch_id: event.batch_id,
            origin: &event.origin,
            batch_file: &event.batch_file,
            place: &place,
        };
        let now = self.settings.clock.now();
        let store_started = Instant::now();
        let Some(recorded) = self
            .retry("database", |s| {
                let store = s.store.clone();
                let info = info.clone();
                let records = &records;
                async move { store.record_batch(&info, records, now).await }
            })
            .await
        else {
            return Handled::Interrupted;
        };
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
            read_ms,
            lookup_ms,
            store_ms = store_started.elapsed().as_millis(),
            "batch recorded"
        );
        Handled::Done
    }

    /// Reads the event's batch file, waiting for it while it is missing; `Ok(None)` when a
    /// shutdown interrupted the wait.
    async fn read_batch(&self, event: &BatchIngestedEvent) -> Result<Option<DatasetBatch>, Skip> {
        let path = batch_path(&self.batch_directory, &event.batch_file).map_err(|detail| Skip {
            reason: "batch_file_name",
            detail,
        })?;
        let started = Instant::now();
        let mut backoff = Backoff::new(self.settings.retry);
        let bytes = loop {
            self.health.beat();
            match path.read().await {
                Ok(bytes) => {
                    self.health.set_storage(true, None);
                    break bytes;
                }
                Err(e) if e.is_transient() => {
                    let wait = backoff.next_wait();
                    warn!(error = %e, file = %path, wait_ms = wait.as_millis(), "storage is unavailable; waiting");
                    self.health.set_storage(false, Some(e.to_string()));
                    self.metrics.retry("batch_file");
                    self.sleep(wait).await;
                }
                Err(e) => {
                    let missing = e.is_not_found();
                    if started.elapsed() >= self.settings.batch_file_wait {
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
    ) -> Handled {
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
            .retry("database", |s| {
                let store = s.store.clone();
                let failed = failed.clone();
                async move { store.record_failed(&failed, now).await }
            })
            .await;
        match stored {
            Some(_) => {
                let retried = matches!(skip.reason, "batch_file_missing" | "batch_file_unreadable");
                self.metrics.failed(skip.reason, retried);
                Handled::Done
            }
            None => Handled::Interrupted,
        }
    }

    /// Runs `op` until it succeeds, waiting with backoff; `None` when a shutdown interrupted.
    /// Failures mark the stage's service unavailable (readiness false) until it answers.
    async fn retry<'a, T, F, Fut>(&'a self, stage: &'static str, mut op: F) -> Option<T>
    where
        F: FnMut(&'a Self) -> Fut,
        Fut: Future<Output = anyhow::Result<T>> + 'a,
    {
        let mut backoff = Backoff::new(self.settings.retry);
        let mut failing = false;
        loop {
            match op(self).await {
                Ok(value) => {
                    if failing {
                        info!(stage, "available again");
                    }
                    self.set_stage(stage, true, None);
                    return Some(value);
                }
                Err(e) => {
                    failing = true;
                    let wait = backoff.next_wait();
                    warn!(
                        stage,
                        error = format!("{e:#}"),
                        wait_ms = wait.as_millis(),
                        "unavailable; retrying"
                    );
                    self.set_stage(stage, false, Some(format!("{stage}: {e:#}")));
                    self.metrics.retry(stage);
                    self.health.beat();
                    self.sleep(wait).await;
                    if self.stopping() {
                        return None;
                    }
                }
            }
        }
    }

    fn set_stage(&self, stage: &str, ok: bool, problem: Option<String>) {
        match stage {
            "registry" => self.health.set_registry(ok, problem),
            _ => self.health.set_database(ok, problem),
        }
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

/// Where an event's batch file is: its `batch_file` relative to the batch directory, or itself
/// when it is an absolute path or a URI.
pub fn batch_path(directory: &ResourcePath, batch_file: &str) -> Result<ResourcePath, String> {
    if batch_file.is_empty() {
        return Err("the event names no batch file".to_owned());
    }
    let absolute = batch_file.starts_with('/') || batch_file.contains("://");
    let path = if absolute {
        ResourcePath::parse(batch_file)
    } else {
        directory.join(batch_file)
    };
    path.map_err(|e| format!("batch file {batch_file:?}: {e}"))
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
    fn batch_files_are_relative_to_the_directory_unless_absolute() -> Result<(), String> {
        let dir = ResourcePath::parse("/data/batches/")
            .map_err(|e| e.to_string())?
            .as_dir();
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
