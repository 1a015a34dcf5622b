//! Getting a batch's results to Kafka: the `batch-ingested` event, a dead-letter record per
//! rejected message, and the consumer offsets, in one of two modes (see [`DeliveryMode`]).
//!
//! Offsets are those of the batch's own messages (the highest of each partition, plus one), never
//! the consumer's position, which the consume loop has already moved past batches still in the
//! pipeline.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};

use schema::topics::dead_letter_headers as headers;
use service_kit::kafka::is_fatal_code;

use super::batch::InputMessage;
use super::consume::WriterConsumer;
use super::faults::FaultInjector;
use super::settings::DeliveryMode;
use crate::outcome::Rejection;

/// Longest we wait for one transactional call or commit.
const KAFKA_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest dead-letter error text, in bytes; longer texts are cut.
const MAX_ERROR_HEADER: usize = 4096;

/// A record to produce.
#[derive(Debug, Clone)]
pub struct OutRecord {
    /// Its topic.
    pub topic: String,
    /// Its key.
    pub key: Option<Vec<u8>>,
    /// Its value.
    pub value: Vec<u8>,
    /// Its headers, in order.
    pub headers: Vec<(&'static str, Vec<u8>)>,
}

impl OutRecord {
    fn owned_headers(&self) -> Option<OwnedHeaders> {
        if self.headers.is_empty() {
            return None;
        }
        let mut headers = OwnedHeaders::new_with_capacity(self.headers.len());
        for (key, value) in &self.headers {
            headers = headers.insert(Header {
                key,
                value: Some(value.as_slice()),
            });
        }
        Some(headers)
    }

    fn future_record(&self) -> FutureRecord<'_, [u8], [u8]> {
        let mut record = FutureRecord::to(&self.topic).payload(self.value.as_slice());
        if let Some(key) = &self.key {
            record = record.key(key.as_slice());
        }
        if let Some(headers) = self.owned_headers() {
            record = record.headers(headers);
        }
        record
    }
}

/// The dead-letter record of a rejected message: its original key and value, unchanged, and
/// headers saying why and where from.
pub fn dead_letter_record(
    topic: &str,
    source_topic: &str,
    message: &InputMessage,
    rejection: &Rejection,
) -> OutRecord {
    let mut error = rejection.error.clone();
    if error.len() > MAX_ERROR_HEADER {
        let mut cut = MAX_ERROR_HEADER;
        while !error.is_char_boundary(cut) {
            cut -= 1;
        }
        error.truncate(cut);
        error.push('…');
    }
    OutRecord {
        topic: topic.to_owned(),
        key: message.key.clone(),
        value: message.value.clone(),
        headers: vec![
            (
                headers::REASON,
                rejection.reason.as_str().as_bytes().to_vec(),
            ),
            (headers::ERROR, error.into_bytes()),
            (headers::SOURCE_TOPIC, source_topic.as_bytes().to_vec()),
            (
                headers::SOURCE_PARTITION,
                message.partition.to_string().into_bytes(),
            ),
            (
                headers::SOURCE_OFFSET,
                message.offset.to_string().into_bytes(),
            ),
            (headers::WRITER_VERSION, crate::VERSION.as_bytes().to_vec()),
        ],
    }
}

/// The offsets to commit for `messages`: per partition, the highest offset plus one.
pub fn offsets_after(topic: &str, messages: &[InputMessage]) -> TopicPartitionList {
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    for message in messages {
        let entry = next.entry(message.partition).or_insert(0);
        *entry = (*entry).max(message.offset + 1);
    }
    let mut list = TopicPartitionList::with_capacity(next.len());
    for (partition, offset) in next {
        // Adding an offset to a fresh list of one topic cannot fail.
        let _ = list.add_partition_offset(topic, partition, Offset::Offset(offset));
    }
    list
}

/// What to do about a failed delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryFailure {
    /// Try again after a backoff.
    Retry,
    /// This writer no longer owns the batch's partitions: abandon it (it will be redelivered).
    Abandon,
    /// Stop the process.
    Stop,
}

/// A delivery that failed: what was being done, and what to do about it.
#[derive(Debug, thiserror::Error)]
#[error("{doing}")]
pub struct DeliveryError {
    /// What to do about it.
    pub failure: DeliveryFailure,
    /// What was being done ("committing the transaction").
    pub doing: String,
    /// librdkafka's error, or a failed task.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl DeliveryError {
    fn task(doing: &str, error: tokio::task::JoinError) -> Self {
        Self {
            failure: DeliveryFailure::Retry,
            doing: doing.to_owned(),
            source: Box::new(error),
        }
    }
}

fn classify(error: KafkaError, doing: &str) -> DeliveryError {
    let failure = match (&error, error.rdkafka_error_code()) {
        (KafkaError::Transaction(txn), _) if txn.is_fatal() => DeliveryFailure::Stop,
        (_, Some(code)) if is_fatal_code(code) => DeliveryFailure::Stop,
        (
            _,
            Some(
                RDKafkaErrorCode::IllegalGeneration
                | RDKafkaErrorCode::UnknownMemberId
                | RDKafkaErrorCode::RebalanceInProgress,
            ),
        ) => DeliveryFailure::Abandon,
        _ => DeliveryFailure::Retry,
    };
    DeliveryError {
        failure,
        doing: doing.to_owned(),
        source: Box::new(error),
    }
}

/// Produces records and commits offsets in the configured mode.
#[derive(Clone)]
pub struct Delivery {
    producer: FutureProducer,
    consumer: Arc<WriterConsumer>,
    mode: DeliveryMode,
    faults: Arc<dyn FaultInjector>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl Delivery {
    /// Wraps a producer configured for `mode` (transactional id set and transactions
    /// initialised for [`DeliveryMode::Transactional`], idempotence for the other).
    pub fn new(
        producer: FutureProducer,
        consumer: Arc<WriterConsumer>,
        mode: DeliveryMode,
        faults: Arc<dyn FaultInjector>,
    ) -> Self {
        Self {
            producer,
            consumer,
            mode,
            faults,
        }
    }

    /// The producer (to flush at shutdown).
    pub fn producer(&self) -> &FutureProducer {
        &self.producer
    }

    /// Delivers `records` and commits `offsets`. `delivered` marks records already delivered by
    /// an earlier attempt (idempotent mode), so that a retry sends only the rest.
    pub async fn deliver(
        &self,
        records: &[OutRecord],
        delivered: &mut [bool],
        offsets: &TopicPartitionList,
    ) -> Result<(), DeliveryError> {
        match self.mode {
            DeliveryMode::Transactional => self.transactional(records, offsets).await,
            DeliveryMode::Idempotent => self.idempotent(records, delivered, offsets).await,
        }
    }

    async fn idempotent(
        &self,
        records: &[OutRecord],
        delivered: &mut [bool],
        offsets: &TopicPartitionList,
    ) -> Result<(), DeliveryError> {
        let pending: Vec<usize> = (0..records.len()).filter(|i| !delivered[*i]).collect();
        let sends = pending.iter().map(|i| {
            let record = &records[*i];
            async move {
                self.producer
                    .send(record.future_record(), Timeout::After(KAFKA_CALL_TIMEOUT))
                    .await
                    .map_err(|(error, _)| error)
            }
        });
        let results = join_all(sends).await;
        let mut failure = None;
        for (i, result) in pending.into_iter().zip(results) {
            match result {
                Ok(_) => delivered[i] = true,
                Err(error) => {
                    if failure.is_none() {
                        failure = Some(classify(
                            error,
                            &format!("producing to {}", records[i].topic),
                        ));
                    }
                }
            }
        }
        if let Some(failure) = failure {
            return Err(failure);
        }
        let consumer = Arc::clone(&self.consumer);
        let offsets = offsets.clone();
        tokio::task::spawn_blocking(move || consumer.commit(&offsets, CommitMode::Sync))
            .await
            .map_err(|e| DeliveryError::task("committing offsets", e))?
            .map_err(|e| classify(e, "committing offsets"))
    }

    async fn transactional(
        &self,
        records: &[OutRecord],
        offsets: &TopicPartitionList,
    ) -> Result<(), DeliveryError> {
        let producer = self.producer.clone();
        let consumer = Arc::clone(&self.consumer);
        let faults = Arc::clone(&self.faults);
        let records = records.to_vec();
        let offsets = offsets.clone();
        tokio::task::spawn_blocking(move || {
            let result = transaction(&producer, &consumer, &records, &offsets, &*faults);
            if let Err(error) = &result
                && error.failure != DeliveryFailure::Stop
            {
                // Leave the producer ready for the next try; a failed abort of a transaction that
                // never began is harmless.
                let _ = producer.abort_transaction(KAFKA_CALL_TIMEOUT);
            }
            result
        })
        .await
        .map_err(|e| DeliveryError::task("running the transaction", e))?
    }
}

fn transaction(
    producer: &FutureProducer,
    consumer: &WriterConsumer,
    records: &[OutRecord],
    offsets: &TopicPartitionList,
    faults: &dyn FaultInjector,
) -> Result<(), DeliveryError> {
    producer
        .begin_transaction()
        .map_err(|e| classify(e, "beginning a transaction"))?;
    for record in records {
        // Delivery is confirmed by the commit, which flushes; the futures are not needed.
        producer
            .send_result(record.future_record())
            .map_err(|(e, _)| classify(e, &format!("producing to {}", record.topic)))?;
    }
    let group = consumer.group_metadata().ok_or_else(|| DeliveryError {
        failure: DeliveryFailure::Retry,
        doing: "sending offsets to the transaction".to_owned(),
        source: "the consumer has no group metadata yet".into(),
    })?;
    producer
        .send_offsets_to_transaction(offsets, &group, KAFKA_CALL_TIMEOUT)
        .map_err(|e| classify(e, "sending offsets to the transaction"))?;
    // The records are on the broker, in the open transaction, before it commits (the commit
    // would flush them first anyway).
    producer
        .flush(KAFKA_CALL_TIMEOUT)
        .map_err(|e| classify(e, "producing the batch's records"))?;
    faults.in_transaction().map_err(|fault| DeliveryError {
        failure: DeliveryFailure::Stop,
        doing: "committing the transaction".to_owned(),
        source: Box::new(fault),
    })?;
    producer
        .commit_transaction(KAFKA_CALL_TIMEOUT)
        .map_err(|e| classify(e, "committing the transaction"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::RejectReason;

    fn message(partition: i32, offset: i64) -> InputMessage {
        InputMessage {
            partition,
            offset,
            key: None,
            value: b"{}".to_vec(),
            timestamp_ms: None,
        }
    }

    #[test]
    fn offsets_are_one_past_the_highest_of_each_partition() {
        let list = offsets_after(
            "in",
            &[message(0, 5), message(1, 9), message(0, 7), message(0, 6)],
        );
        let got: Vec<(i32, Offset)> = list
            .elements()
            .iter()
            .map(|e| (e.partition(), e.offset()))
            .collect();
        assert_eq!(got, [(0, Offset::Offset(8)), (1, Offset::Offset(10))]);
    }

    #[test]
    fn dead_letters_keep_the_value_and_say_why() {
        let long = "x".repeat(10_000);
        let record = dead_letter_record(
            "dlq",
            "in",
            &InputMessage {
                key: Some(b"k".to_vec()),
                ..message(3, 42)
            },
            &Rejection {
                index: 0,
                reason: RejectReason::Conflict,
                error: long,
            },
        );
        assert_eq!(record.value, b"{}");
        assert_eq!(record.key.as_deref(), Some(&b"k"[..]));
        let header = |name: &str| {
            record
                .headers
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        };
        assert_eq!(header(headers::REASON).as_deref(), Some("conflict"));
        assert_eq!(header(headers::SOURCE_TOPIC).as_deref(), Some("in"));
        assert_eq!(header(headers::SOURCE_PARTITION).as_deref(), Some("3"));
        assert_eq!(header(headers::SOURCE_OFFSET).as_deref(), Some("42"));
        assert_eq!(
            header(headers::WRITER_VERSION).as_deref(),
            Some(crate::VERSION)
        );
        assert!(header(headers::ERROR).is_some_and(|e| e.len() <= MAX_ERROR_HEADER + 3));
    }
}
