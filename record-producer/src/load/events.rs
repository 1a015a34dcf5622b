//! Reading the writer's answers back: `batch-ingested` events (with their batch files) and dead
//! letters, from the end offsets taken before the first send, into the tracker.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use resources::ResourcePath;
use schema::topics::dead_letter_headers;
use schema::{BatchIngestedEvent, DatasetBatch, DecodeError, PromptProcessingOutputEvent};
use service_kit::kafka::{KafkaCallError, failed, header_text, partitions_of};
use service_kit::{CancellationToken, Chain, TaskFailed};
use tracing::warn;
use uuid::Uuid;

use super::{CLIENT_ID, LoadError, LoadSettings, lock, now_ms};
use crate::messages::dataset_ids;
use crate::tracker::Tracker;

/// How long a metadata or watermark request may take.
const BROKER_TIMEOUT: Duration = Duration::from_secs(10);

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
        let group = format!("record-producer-{}", Uuid::new_v4().simple());
        let consumer: StreamConsumer = settings
            .kafka
            .client_config(
                CLIENT_ID,
                &[
                    ("group.id", &group),
                    ("enable.auto.commit", "false"),
                    ("isolation.level", "read_committed"),
                    ("auto.offset.reset", "earliest"),
                ],
            )
            .create()
            .map_err(failed("creating the Kafka consumer for events"))?;
        let mut topics = vec![settings.events_topic.clone()];
        topics.extend(settings.dead_letter_topic.clone());
        let consumer = tokio::task::spawn_blocking(move || assign_at_end(consumer, &topics))
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
            loop {
                let message = tokio::select! {
                    () = stop.cancelled() => break,
                    m = consumer.recv() => m,
                };
                match message {
                    Ok(m) if m.topic() == events_topic => {
                        let at = m.timestamp().to_millis().unwrap_or_else(now_ms);
                        announced(&directory, m.payload().unwrap_or_default(), at, &tracker).await;
                    }
                    Ok(m) => dead_lettered(&m, &tracker),
                    Err(e) => warn!(error = %e, "reading events"),
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

/// Assigns every partition of `topics` at its end offset, so the reader sees exactly what comes
/// after (this run's answers, and anything else produced meanwhile, counted as not ours).
fn assign_at_end(consumer: StreamConsumer, topics: &[String]) -> Result<StreamConsumer, LoadError> {
    let mut assignment = TopicPartitionList::new();
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
        }
    }
    consumer
        .assign(&assignment)
        .map_err(failed("assigning the events topics"))?;
    Ok(consumer)
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
fn dead_lettered(message: &rdkafka::message::BorrowedMessage<'_>, tracker: &Mutex<Tracker>) {
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
