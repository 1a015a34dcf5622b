//! The service's settings, validated: what `butler-writer serve` runs with. The command line
//! ([`super::cli::ServeArgs`]) builds them from flags and the deployed writer's environment
//! variables; tests build them directly.

use std::net::SocketAddr;
use std::time::Duration;

use app_metrics::MetricsSettings;
use butler_repository::PoolSettings;
use service_kit::{ConfigError, KafkaSettings, RetrySettings};

pub use super::breaker::BreakerSettings;

/// How the event, the dead-letter records and the consumer offsets reach Kafka.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeliveryMode {
    /// One Kafka transaction per batch: event, dead-letter records and offsets together (the
    /// deployed writer's mode). Needs a broker with transactions.
    Transactional,
    /// The idempotent producer sends the event and dead-letter records, the writer waits for
    /// every delivery report, then commits the offsets. A crash in between re-sends the event on
    /// redelivery, which downstream tolerates. For brokers without transactions.
    Idempotent,
}

/// When a batch closes.
#[derive(Debug, Clone, Copy)]
pub struct BatchSettings {
    /// A batch closes when it holds this many messages...
    pub max_messages: usize,
    /// ...or this many bytes of message values (a larger message makes a batch of its own)...
    pub max_bytes: usize,
    /// ...or this long after its first message arrived...
    pub max_wait: Duration,
    /// ...or, when eager, as soon as no more messages are waiting while fewer than
    /// `db_concurrency` batches are in flight: an idle writer does not wait `max_wait`.
    pub eager: bool,
}

/// Everything the service runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `butler.yaml` of the repository (or its directory), local or `s3://`.
    pub butler_repository: String,
    /// How to reach the database (credentials file, pool size).
    pub database: PoolSettings,
    /// How to reach the broker.
    pub kafka: KafkaSettings,
    /// The topic of `pp-output` messages.
    pub input_topic: String,
    /// The topic of `batch-ingested` events.
    pub output_topic: String,
    /// The dead-letter topic.
    pub dead_letter_topic: String,
    /// The consumer group.
    pub group_id: String,
    /// The writer's static member id in its group (`group.instance.id`, KIP-345), stable across
    /// restarts (the StatefulSet's pod name): a restarted writer takes its partitions back at
    /// once. `None`: a dynamic member, whose partitions wait out the session timeout (45 s by
    /// default) after a kill.
    pub group_instance_id: Option<String>,
    /// The transactional id (transactional mode); unique per writer.
    pub transactional_id: String,
    /// How results reach Kafka.
    pub delivery: DeliveryMode,
    /// Where batch files go: a directory, local or `s3://`.
    pub output_directory: String,
    /// When a batch closes.
    pub batch: BatchSettings,
    /// Batches in the database at the same time (each on its own connection).
    pub db_concurrency: usize,
    /// Address of the operations endpoints.
    pub http_address: SocketAddr,
    /// How long a shutdown may take before the writer exits regardless.
    pub shutdown_grace: Duration,
    /// Backoff for database, file and broker retries.
    pub retry: RetrySettings,
    /// The circuit breaker.
    pub breaker: BreakerSettings,
    /// `/healthz` fails when the consume loop has not turned for this long.
    pub stall_timeout: Duration,
    /// Where application metrics events go (Sasquatch); `None`: off.
    pub metrics: Option<MetricsSettings>,
}

impl Settings {
    /// Settings with the defaults of `butler-writer serve` for everything but the places.
    pub fn new(
        butler_repository: impl Into<String>,
        kafka: KafkaSettings,
        input_topic: impl Into<String>,
        output_topic: impl Into<String>,
        output_directory: impl Into<String>,
    ) -> Self {
        Self {
            butler_repository: butler_repository.into(),
            database: PoolSettings::default(),
            kafka,
            input_topic: input_topic.into(),
            output_topic: output_topic.into(),
            dead_letter_topic: schema::topics::DEAD_LETTER_TOPIC.to_owned(),
            group_id: DEFAULT_GROUP_ID.to_owned(),
            group_instance_id: None,
            transactional_id: DEFAULT_TRANSACTIONAL_ID.to_owned(),
            delivery: DeliveryMode::Transactional,
            output_directory: output_directory.into(),
            batch: BatchSettings {
                max_messages: DEFAULT_BATCH_MAX_MESSAGES,
                max_bytes: DEFAULT_BATCH_MAX_BYTES,
                max_wait: Duration::from_millis(DEFAULT_BATCH_MAX_WAIT_MS),
                eager: true,
            },
            db_concurrency: DEFAULT_DB_CONCURRENCY,
            http_address: SocketAddr::from(([0, 0, 0, 0], 8080)),
            shutdown_grace: Duration::from_secs(10),
            retry: RetrySettings::default(),
            breaker: BreakerSettings {
                window: 200,
                min_messages: 100,
                threshold: 0.9,
                cooldown: Duration::from_secs(30),
            },
            stall_timeout: Duration::from_secs(60),
            metrics: None,
        }
    }

    /// Checks what can be checked without the network; the message says what to change.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.kafka.validate()?;
        for (name, topic) in [
            ("KAFKA_TOPIC", &self.input_topic),
            ("KAFKA_OUTPUT_TOPIC", &self.output_topic),
            ("BUTLER_WRITER_DEAD_LETTER_TOPIC", &self.dead_letter_topic),
        ] {
            if topic.is_empty() {
                return Err(ConfigError::new(format!("{name} is empty")));
            }
        }
        if self.input_topic == self.output_topic || self.input_topic == self.dead_letter_topic {
            return Err(ConfigError::new(format!(
                "the input topic {} is also an output topic",
                self.input_topic
            )));
        }
        if self
            .group_instance_id
            .as_ref()
            .is_some_and(|id| id.trim().is_empty())
        {
            return Err(ConfigError::new(
                "BUTLER_WRITER_GROUP_INSTANCE_ID is empty: unset it for a dynamic member",
            ));
        }
        if self.batch.max_messages == 0 {
            return Err(ConfigError::new(
                "BUTLER_WRITER_BATCH_MAX_MESSAGES must be at least 1",
            ));
        }
        if self.batch.max_bytes == 0 {
            return Err(ConfigError::new(
                "BUTLER_WRITER_BATCH_MAX_BYTES must be at least 1",
            ));
        }
        if self.db_concurrency == 0 || self.db_concurrency > 16 {
            return Err(ConfigError::new(
                "BUTLER_WRITER_DB_CONCURRENCY must be between 1 and 16",
            ));
        }
        if !(self.breaker.threshold > 0.0 && self.breaker.threshold <= 1.0) {
            return Err(ConfigError::new(
                "BUTLER_WRITER_BREAKER_THRESHOLD must be in (0, 1]",
            ));
        }
        if self.breaker.min_messages > self.breaker.window {
            return Err(ConfigError::new(
                "BUTLER_WRITER_BREAKER_MIN_MESSAGES cannot exceed BUTLER_WRITER_BREAKER_WINDOW",
            ));
        }
        if !self.retry.is_valid() {
            return Err(ConfigError::new(
                "BUTLER_WRITER_RETRY_INITIAL_MS must be above 0 and at most BUTLER_WRITER_RETRY_MAX_MS",
            ));
        }
        if let Some(metrics) = &self.metrics {
            metrics.validate()?;
        }
        resources::ResourcePath::parse(&self.output_directory).map_err(|e| {
            ConfigError::caused_by(
                format!(
                    "OUTPUT_DATASET_LIST_DIRECTORY {} is not a usable location",
                    self.output_directory
                ),
                e,
            )
        })?;
        Ok(())
    }
}

/// The deployed writer's consumer group.
pub const DEFAULT_GROUP_ID: &str = "butler-writer";
/// The deployed writer's transactional id (granted by ACL in Prompt Kafka).
pub const DEFAULT_TRANSACTIONAL_ID: &str = "butler-writer-output";
/// Messages per batch at most: one LSSTCam visit is 189.
pub const DEFAULT_BATCH_MAX_MESSAGES: usize = 500;
/// Bytes of message values per batch at most: 16 MiB. A visit's 189 messages are about 0.8 MB, so
/// LSSTCam's batches never reach it; it bounds memory when messages are large (up to the topic's
/// 10 MiB `message.max.bytes`). The writer holds at most `db_concurrency` batches in the
/// database, one in the channel, one closed and one filling, each parsed to a few times its bytes:
/// about 5 x 16 MiB x 3 = 240 MB at worst, within the deployed 1 GiB limit.
pub const DEFAULT_BATCH_MAX_BYTES: usize = 16 * 1024 * 1024;
/// How long a batch waits for more messages after its first.
pub const DEFAULT_BATCH_MAX_WAIT_MS: u64 = 200;
/// Batches in the database at once.
pub const DEFAULT_DB_CONCURRENCY: usize = 2;
