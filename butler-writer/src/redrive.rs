//! `butler-writer redrive`: after the cause of dead letters is fixed (a dataset type registered,
//! a dimension record added), put them back on the input topic, so the live writer ingests them
//! and announces them downstream like any other message.
//!
//! Reads the dead-letter topic from its earliest offset to its end offsets at start (assigned,
//! never committing: it takes no part in any group), keeps the letters whose
//! `butler_writer.reason` header is one of `--reason` (all when none is given), and produces each
//! one's original key and value to the input topic with the idempotent producer, waiting for
//! every delivery. Re-driving a letter twice is harmless: ingestion is idempotent. A letter that
//! still cannot be ingested is dead-lettered again with its new reason.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use schema::topics::dead_letter_headers as headers;
use serde::Serialize;
use service_kit::TaskFailed;
use service_kit::kafka::{KafkaCallError, failed, header_text, partitions_of};
use service_kit::lifecycle::exit_with;
use tracing::info;

use crate::service::CLIENT_ID;
use crate::service::cli::ServeArgs;
use crate::service::settings::Settings;

/// Why a re-drive stopped.
#[derive(Debug, thiserror::Error)]
pub enum RedriveError {
    /// The broker refused or did not answer.
    #[error(transparent)]
    Broker(#[from] KafkaCallError),
    /// The dead-letter topic went quiet before its end offsets.
    #[error("no message from {topic} for {seconds}s before its end offsets")]
    Stalled {
        /// The dead-letter topic.
        topic: String,
        /// How long it waited.
        seconds: u64,
    },
    /// The reading task failed.
    #[error(transparent)]
    Task(#[from] TaskFailed),
}

/// How long a metadata or watermark request may take, and how long the read may go without a
/// message before it gives up.
const BROKER_TIMEOUT: Duration = Duration::from_secs(30);

/// Arguments of `butler-writer redrive`: which letters, and every setting of `serve` (the same
/// environment variables: the input and dead-letter topics, the broker and its credentials).
#[derive(Debug, clap::Args)]
pub struct RedriveArgs {
    /// Re-drive only letters with this `butler_writer.reason` (`conflict`, `invalid`,
    /// `unknown_dataset_type`, `unsupported`, `other_message_type`); repeatable. All when absent.
    #[arg(long = "reason")]
    pub reasons: Vec<String>,

    /// Count what would be re-driven, produce nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Every setting of `butler-writer serve`.
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// What a re-drive did, printed as one JSON line on stdout.
#[derive(Debug, Default, Serialize)]
pub struct RedriveSummary {
    /// The dead-letter topic read.
    pub dead_letter_topic: String,
    /// The topic the letters went to.
    pub input_topic: String,
    /// Letters read.
    pub letters: u64,
    /// Letters read, by reason.
    pub by_reason: BTreeMap<String, u64>,
    /// Letters produced back to the input topic (0 with `--dry-run`).
    pub redriven: u64,
    /// True with `--dry-run`.
    pub dry_run: bool,
}

/// Runs `butler-writer redrive`. Exit status 0 when every chosen letter was delivered, 1 on a
/// broker error, 2 on bad configuration.
pub async fn redrive(args: RedriveArgs) -> ExitCode {
    let settings = match args.serve.into_settings() {
        Ok(settings) => settings,
        Err(error) => return exit_with("butler-writer", &error, 2),
    };
    match run(&settings, &args.reasons, args.dry_run).await {
        Ok(summary) => {
            crate::cli::print_json_line("butler-writer", &summary);
            ExitCode::SUCCESS
        }
        Err(error) => exit_with("butler-writer", &error, 1),
    }
}

/// One letter to re-drive: its original key and value.
type Letter = (Option<Vec<u8>>, Vec<u8>);

/// Reads the chosen letters, then produces them to the input topic.
pub async fn run(
    settings: &Settings,
    reasons: &[String],
    dry_run: bool,
) -> Result<RedriveSummary, RedriveError> {
    let consumer: BaseConsumer = settings
        .kafka
        .client_config(
            CLIENT_ID,
            &[
                ("group.id", "butler-writer-redrive"),
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
                // Where the writer delivers in transactions, the last offset of the dead-letter
                // topic is a transaction marker no message carries: the end of each partition is
                // known by librdkafka's end-of-partition event (at the last stable offset).
                ("enable.partition.eof", "true"),
            ],
        )
        .create()
        .map_err(failed("creating the Kafka consumer"))?;
    let topic = settings.dead_letter_topic.clone();
    let wanted = reasons.to_vec();
    let (letters, by_reason) =
        tokio::task::spawn_blocking(move || read(&consumer, &topic, &wanted))
            .await
            .map_err(TaskFailed)??;
    let mut summary = RedriveSummary {
        dead_letter_topic: settings.dead_letter_topic.clone(),
        input_topic: settings.input_topic.clone(),
        letters: by_reason.values().sum(),
        by_reason,
        redriven: 0,
        dry_run,
    };
    if dry_run || letters.is_empty() {
        return Ok(summary);
    }
    let producer: FutureProducer = settings
        .kafka
        .producer_config(CLIENT_ID, &[("message.timeout.ms", "60000")])
        .create()
        .map_err(failed("creating the Kafka producer"))?;
    let sends = letters.iter().map(|(key, value)| {
        let producer = &producer;
        let topic = settings.input_topic.as_str();
        async move {
            let mut record: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(topic).payload(value.as_slice());
            if let Some(key) = key {
                record = record.key(key.as_slice());
            }
            producer
                .send(record, Duration::from_secs(60))
                .await
                .map_err(|(e, _)| e)
        }
    });
    for result in futures_util::future::join_all(sends).await {
        result.map_err(failed(format!("producing to {}", settings.input_topic)))?;
        summary.redriven += 1;
    }
    info!(
        redriven = summary.redriven,
        topic = %settings.input_topic,
        "dead letters re-driven"
    );
    Ok(summary)
}

/// Every committed letter from the earliest offset to the end offsets seen at start; those of the
/// wanted reasons are returned, all are counted by reason. Letters of transactions still open
/// at the end are left for the next re-drive; those of aborted transactions are never read
/// (librdkafka reads `read_committed` by default).
fn read(
    consumer: &BaseConsumer,
    topic: &str,
    reasons: &[String],
) -> Result<(Vec<Letter>, BTreeMap<String, u64>), RedriveError> {
    let partitions = partitions_of(consumer, topic, BROKER_TIMEOUT)?;
    let mut assignment = TopicPartitionList::new();
    let mut ends: BTreeMap<i32, i64> = BTreeMap::new();
    for partition in partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, BROKER_TIMEOUT)
            .map_err(failed(format!("reading the offsets of {topic}")))?;
        if high > low {
            ends.insert(partition, high);
            assignment
                .add_partition_offset(topic, partition, Offset::Offset(low))
                .map_err(failed("building the assignment"))?;
        }
    }
    let mut letters = Vec::new();
    let mut by_reason: BTreeMap<String, u64> = BTreeMap::new();
    if ends.is_empty() {
        return Ok((letters, by_reason));
    }
    consumer
        .assign(&assignment)
        .map_err(failed(format!("reading {topic}")))?;
    let mut last_message = Instant::now();
    while !ends.is_empty() {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(message)) => {
                last_message = Instant::now();
                let partition = message.partition();
                let Some(end) = ends.get(&partition).copied() else {
                    continue;
                };
                if message.offset() >= end {
                    // Produced after the re-drive started: not this re-drive's.
                    ends.remove(&partition);
                    continue;
                }
                let reason =
                    header_text(&message, headers::REASON).unwrap_or_else(|| "unknown".to_owned());
                *by_reason.entry(reason.clone()).or_default() += 1;
                if reasons.is_empty() || reasons.contains(&reason) {
                    letters.push((
                        message.key().map(<[u8]>::to_vec),
                        message.payload().unwrap_or_default().to_vec(),
                    ));
                }
                if message.offset() + 1 >= end {
                    ends.remove(&partition);
                }
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                last_message = Instant::now();
                ends.remove(&partition);
            }
            Some(Err(e)) => return Err(failed(format!("reading {topic}"))(e).into()),
            None if last_message.elapsed() > BROKER_TIMEOUT => {
                return Err(RedriveError::Stalled {
                    topic: topic.to_owned(),
                    seconds: BROKER_TIMEOUT.as_secs(),
                });
            }
            None => {}
        }
    }
    Ok((letters, by_reason))
}
