//! Reading the writer's answers back: `batch-ingested` events (with their batch files) and dead
//! letters, from the end offsets taken before the first send, into the tracker.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use resources::ResourcePath;
use schema::topics::dead_letter_headers;
use schema::{BatchIngestedEvent, DatasetBatch, DecodeError, PromptProcessingOutputEvent};
use service_kit::kafka::{KafkaCallError, failed, header_text, partitions_of};
use service_kit::{CancellationToken, Chain, KafkaSettings, TaskFailed};
use tracing::{info, warn};
use uuid::Uuid;

use super::{CLIENT_ID, LoadError, LoadSettings, lock, now_ms};
use crate::messages::dataset_ids;
use crate::tracker::Tracker;

/// How long a metadata or watermark request may take.
const BROKER_TIMEOUT: Duration = Duration::from_secs(10);

/// After this long without an event or a dead letter while datasets are still unaccounted for,
/// the reader reads again from the run's start offsets with a new consumer, skipping what it
/// counted. Some implementations of the protocol keep listing an aborted transaction to
/// `read_committed` fetches that start after it, and librdkafka then skips every later record of
/// that producer (noida-db 0.2.3: `deploy/local/README.md`); a fetch from before the abort reads
/// through it. On Apache Kafka this costs one re-read of the run's answers while the pipeline is
/// quiet.
const QUIET_BEFORE_REREAD: Duration = Duration::from_secs(10);

/// The next offset to read, by topic and partition.
type Positions = BTreeMap<(String, i32), i64>;

/// Reads `batch-ingested` events and dead letters into the tracker until stopped.
#[derive(Debug)]
pub(super) struct EventReader {
    task: tokio::task::JoinHandle<()>,
}

impl EventReader {
    /// Assigns the events and dead-letter topics at their end offsets and starts reading.
    pub(super) async fn start(
        settings: &LoadSettings,
        tracker: Arc<Mutex<Tracker>>,
        stop: CancellationToken,
    ) -> Result<Self, LoadError> {
        let kafka = settings.kafka.clone();
        let group = format!("record-producer-{}", Uuid::new_v4().simple());
        let consumer = consumer(&kafka, &group)?;
        let mut topics = vec![settings.events_topic.clone()];
        topics.extend(settings.dead_letter_topic.clone());
        let (consumer, start) =
            tokio::task::spawn_blocking(move || assign_at_end(consumer, &topics))
                .await
                .map_err(TaskFailed)??;
        let directory = ResourcePath::parse(&settings.output_directory)
            .map(|p| p.as_dir())
            .map_err(|source| LoadError::Location {
                what: "the batch-file directory (OUTPUT_DATASET_LIST_DIRECTORY)",
                location: settings.output_directory.clone(),
                source,
            })?;
        let events_topic = settings.events_topic.clone();
        let task = tokio::spawn(async move {
            let mut consumer = consumer;
            let mut counted = start.clone();
            let mut quiet_since = Instant::now();
            loop {
                let received = tokio::select! {
                    () = stop.cancelled() => break,
                    m = consumer.recv() => Some(m.map(|m| m.detach())),
                    () = tokio::time::sleep(Duration::from_secs(1)) => None,
                };
                let message = match received {
                    Some(Ok(message)) => message,
                    Some(Err(e)) => {
                        warn!(error = %e, "reading events");
                        continue;
                    }
                    None => {
                        if quiet_since.elapsed() >= QUIET_BEFORE_REREAD
                            && !lock(&tracker).outcome().is_complete()
                        {
                            match reopen(&kafka, &group, &start) {
                                Ok(fresh) => {
                                    info!(
                                        quiet_s = quiet_since.elapsed().as_secs(),
                                        "no answer for a while with datasets unaccounted for: reading the run's answers again"
                                    );
                                    consumer = fresh;
                                }
                                Err(e) => {
                                    warn!(error = %Chain(&e), "could not start a new consumer for events")
                                }
                            }
                            quiet_since = Instant::now();
                        }
                        continue;
                    }
                };
                quiet_since = Instant::now();
                let next = counted
                    .entry((message.topic().to_owned(), message.partition()))
                    .or_default();
                if message.offset() < *next {
                    continue; // Counted already, before a re-read.
                }
                *next = message.offset() + 1;
                if message.topic() == events_topic {
                    let at = message.timestamp().to_millis().unwrap_or_else(now_ms);
                    announced(
                        &directory,
                        message.payload().unwrap_or_default(),
                        at,
                        &tracker,
                    )
                    .await;
                } else {
                    dead_lettered(&message, &tracker);
                }
            }
        });
        Ok(Self { task })
    }

    /// Waits for the reader to stop (after its stop token fired).
    pub(super) async fn stopped(self) {
        let _ = self.task.await;
    }
}

/// A `read_committed` consumer that commits nothing: the reader's own positions are its state.
fn consumer(kafka: &KafkaSettings, group: &str) -> Result<StreamConsumer, LoadError> {
    Ok(kafka
        .client_config(
            CLIENT_ID,
            &[
                ("group.id", group),
                ("enable.auto.commit", "false"),
                ("isolation.level", "read_committed"),
                ("auto.offset.reset", "earliest"),
            ],
        )
        .create()
        .map_err(failed("creating the Kafka consumer for events"))?)
}

/// A new consumer, assigned at `positions`.
fn reopen(
    kafka: &KafkaSettings,
    group: &str,
    positions: &Positions,
) -> Result<StreamConsumer, LoadError> {
    let consumer = consumer(kafka, group)?;
    let mut assignment = TopicPartitionList::new();
    for ((topic, partition), offset) in positions {
        assignment
            .add_partition_offset(topic, *partition, Offset::Offset(*offset))
            .map_err(failed("building the assignment"))?;
    }
    consumer
        .assign(&assignment)
        .map_err(failed("assigning the events topics"))?;
    Ok(consumer)
}

/// Assigns every partition of `topics` at its end offset, so the reader sees exactly what comes
/// after (this run's answers, and anything else produced meanwhile, counted as not ours).
fn assign_at_end(
    consumer: StreamConsumer,
    topics: &[String],
) -> Result<(StreamConsumer, Positions), LoadError> {
    let mut assignment = TopicPartitionList::new();
    let mut positions = Positions::new();
    for topic in topics {
        let partitions = partitions_of(&consumer, topic, BROKER_TIMEOUT).map_err(|e| match e {
            KafkaCallError::NoTopic(topic) => LoadError::MissingTopic(topic),
            other => other.into(),
        })?;
        for partition in partitions {
            let (_, high) = consumer
                .fetch_watermarks(topic, partition, BROKER_TIMEOUT)
                .map_err(failed(format!("reading the end offsets of {topic}")))?;
            assignment
                .add_partition_offset(topic, partition, Offset::Offset(high))
                .map_err(failed("building the assignment"))?;
            positions.insert((topic.clone(), partition), high);
        }
    }
    consumer
        .assign(&assignment)
        .map_err(failed("assigning the events topics"))?;
    Ok((consumer, positions))
}

/// An event: the dataset ids of its batch file, announced at `at`.
async fn announced(directory: &ResourcePath, event: &[u8], at: i64, tracker: &Mutex<Tracker>) {
    match read_batch(directory, event).await {
        Ok(ids) => lock(tracker).announced(&ids, at),
        Err(e) => {
            warn!(error = %Chain(&e), "an event could not be read");
            lock(tracker).undecodable_event();
        }
    }
}

/// A dead letter: the message the writer turned away, and why.
fn dead_lettered(message: &OwnedMessage, tracker: &Mutex<Tracker>) {
    let value = message.payload().unwrap_or_default();
    let reason =
        header_text(message, dead_letter_headers::REASON).unwrap_or_else(|| "unknown".to_owned());
    let ids: Vec<Uuid> = PromptProcessingOutputEvent::from_json(value)
        .map(|m| dataset_ids(&m).collect())
        .unwrap_or_default();
    lock(tracker).dead_lettered(value, &ids, &reason);
}

/// An event that cannot be followed to its datasets.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// The event does not decode.
    #[error("the event does not decode")]
    Decode(#[from] DecodeError),
    /// Its batch file is not a location.
    #[error("batch file {0}")]
    Location(String, #[source] resources::Error),
    /// Its batch file cannot be read (after waiting ten seconds for it).
    #[error("reading {0}")]
    Read(String, #[source] resources::Error),
}

/// The dataset ids of an event's batch file, waiting a little for a file that is not there yet.
async fn read_batch(directory: &ResourcePath, event: &[u8]) -> Result<Vec<Uuid>, EventError> {
    let event = BatchIngestedEvent::from_json(event)?;
    let path = if event.batch_file.contains("://") {
        ResourcePath::parse(&event.batch_file)
    } else {
        directory.join(&event.batch_file)
    }
    .map_err(|e| EventError::Location(event.batch_file.clone(), e))?;
    let mut attempts = 0;
    let bytes = loop {
        match path.read().await {
            Ok(bytes) => break bytes,
            Err(e) if (e.is_not_found() || e.is_transient()) && attempts < 50 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(EventError::Read(event.batch_file, e)),
        }
    };
    Ok(DatasetBatch::from_json(&bytes)?.datasets)
}
