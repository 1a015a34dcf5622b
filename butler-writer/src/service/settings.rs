//! The service's settings, validated: what `butler-writer serve` runs with. The command line
//! (`crate::cli::ServeArgs`) builds them from flags and the deployed writer's environment
//! variables; tests build them directly.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use rdkafka::ClientConfig;
use secrecy::{ExposeSecret, SecretString};

use crate::registry::OpenOptions;

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

/// librdkafka's `security.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SecurityProtocol {
    /// No TLS, no authentication.
    Plaintext,
    /// TLS, no authentication.
    Ssl,
    /// SCRAM-SHA-512 without TLS (Prompt Kafka inside the cluster).
    SaslPlaintext,
    /// SCRAM-SHA-512 over TLS.
    SaslSsl,
}

impl SecurityProtocol {
    fn as_str(self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::Ssl => "ssl",
            Self::SaslPlaintext => "sasl_plaintext",
            Self::SaslSsl => "sasl_ssl",
        }
    }

    fn uses_sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }

    fn uses_tls(self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }
}

/// Where the broker is and how to authenticate.
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    /// `bootstrap.servers`.
    pub bootstrap_servers: String,
    /// SCRAM-SHA-512 user and password, both or neither.
    pub credentials: Option<(String, SecretString)>,
    /// `security.protocol`.
    pub security_protocol: SecurityProtocol,
    /// CA certificate file for TLS (`ssl.ca.location`); the system's store when absent.
    pub ca_file: Option<PathBuf>,
    /// librdkafka `debug=all` on the producer (the deployed writer's `KAFKA_DEBUG=1`).
    pub debug: bool,
    /// Extra librdkafka properties for every client, applied last.
    pub extra: Vec<(String, String)>,
}

impl KafkaSettings {
    /// Plaintext, no credentials.
    pub fn plaintext(bootstrap_servers: impl Into<String>) -> Self {
        Self {
            bootstrap_servers: bootstrap_servers.into(),
            credentials: None,
            security_protocol: SecurityProtocol::Plaintext,
            ca_file: None,
            debug: false,
            extra: Vec::new(),
        }
    }

    /// Settings from what a command line gives: user and password go together; without an
    /// explicit protocol, credentials mean SCRAM-SHA-512 (`sasl_plaintext`, or `sasl_ssl` with a
    /// CA file) and none mean `plaintext` (`ssl` with a CA file). Checked with
    /// [`validate`](Self::validate); the error is one line.
    pub fn from_parts(
        bootstrap_servers: String,
        username: Option<String>,
        password: Option<SecretString>,
        security_protocol: Option<SecurityProtocol>,
        ca_file: Option<PathBuf>,
    ) -> Result<Self, String> {
        let credentials = match (username, password) {
            (Some(user), Some(password)) => Some((user, password)),
            (None, None) => None,
            _ => {
                return Err(
                    "KAFKA_USERNAME and KAFKA_PASSWORD go together: set both or neither".to_owned(),
                );
            }
        };
        let security_protocol =
            security_protocol.unwrap_or(match (credentials.is_some(), ca_file.is_some()) {
                (true, false) => SecurityProtocol::SaslPlaintext,
                (true, true) => SecurityProtocol::SaslSsl,
                (false, false) => SecurityProtocol::Plaintext,
                (false, true) => SecurityProtocol::Ssl,
            });
        let settings = Self {
            bootstrap_servers,
            credentials,
            security_protocol,
            ca_file,
            debug: false,
            extra: Vec::new(),
        };
        settings.validate()?;
        Ok(settings)
    }

    /// A client's configuration: the connection and authentication every client shares, then
    /// the client's own `properties`, then [`extra`](Self::extra), which wins over both.
    pub fn client_config(&self, properties: &[(&str, &str)]) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.bootstrap_servers)
            .set("security.protocol", self.security_protocol.as_str())
            .set("client.id", "butler-writer");
        if let Some((user, password)) = &self.credentials {
            config
                .set("sasl.mechanism", "SCRAM-SHA-512")
                .set("sasl.username", user)
                .set("sasl.password", password.expose_secret());
        }
        if let Some(ca) = &self.ca_file {
            config.set("ssl.ca.location", ca.display().to_string());
        }
        for (key, value) in properties {
            config.set(*key, *value);
        }
        for (key, value) in &self.extra {
            config.set(key, value);
        }
        config
    }

    /// Checks that the protocol and the credentials agree.
    pub fn validate(&self) -> Result<(), String> {
        if self.security_protocol.uses_sasl() != self.credentials.is_some() {
            return Err(if self.credentials.is_some() {
                format!(
                    "Kafka credentials are set but the security protocol is {}: use sasl_plaintext or sasl_ssl",
                    self.security_protocol.as_str()
                )
            } else {
                format!(
                    "the security protocol {} needs KAFKA_USERNAME and KAFKA_PASSWORD",
                    self.security_protocol.as_str()
                )
            });
        }
        if self.ca_file.is_some() && !self.security_protocol.uses_tls() {
            return Err(format!(
                "a CA file is set but the security protocol {} does not use TLS",
                self.security_protocol.as_str()
            ));
        }
        if let Some(ca) = &self.ca_file
            && !ca.is_file()
        {
            return Err(format!("the Kafka CA file {} does not exist", ca.display()));
        }
        Ok(())
    }
}

/// When a batch closes.
#[derive(Debug, Clone, Copy)]
pub struct BatchSettings {
    /// A batch closes when it holds this many messages...
    pub max_messages: usize,
    /// ...or this long after its first message arrived.
    pub max_wait: Duration,
}

/// Capped exponential backoff with full jitter.
#[derive(Debug, Clone, Copy)]
pub struct RetrySettings {
    /// The first wait.
    pub initial: Duration,
    /// The longest wait.
    pub max: Duration,
}

/// The circuit breaker: stop consuming when nearly every recent message is rejected for a
/// reason that points at the writer's set-up rather than at one message.
#[derive(Debug, Clone, Copy)]
pub struct BreakerSettings {
    /// How many of the most recent messages the breaker looks at.
    pub window: usize,
    /// It never trips on fewer messages than this; 0 turns the breaker off.
    pub min_messages: usize,
    /// It trips when at least this fraction of the window is rejected.
    pub threshold: f64,
    /// How long it waits before trying the held batch again.
    pub cooldown: Duration,
}

/// Faults a test can inject into a running service.
#[derive(Debug, Clone, Default)]
pub struct FaultPlan {
    /// Stop dead, as if killed, when this many batches have been committed and the next one has
    /// been written to the database and its file, but not yet to Kafka.
    pub crash_before_kafka_commit: Option<u64>,
}

/// Everything the service runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `butler.yaml` of the repository (or its directory), local or `s3://`.
    pub butler_repository: String,
    /// How to reach the database.
    pub open_options: OpenOptions,
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
    /// Faults to inject (tests only).
    pub faults: FaultPlan,
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
            open_options: OpenOptions::default(),
            kafka,
            input_topic: input_topic.into(),
            output_topic: output_topic.into(),
            dead_letter_topic: DEFAULT_DEAD_LETTER_TOPIC.to_owned(),
            group_id: DEFAULT_GROUP_ID.to_owned(),
            transactional_id: DEFAULT_TRANSACTIONAL_ID.to_owned(),
            delivery: DeliveryMode::Transactional,
            output_directory: output_directory.into(),
            batch: BatchSettings {
                max_messages: DEFAULT_BATCH_MAX_MESSAGES,
                max_wait: Duration::from_millis(DEFAULT_BATCH_MAX_WAIT_MS),
            },
            db_concurrency: DEFAULT_DB_CONCURRENCY,
            http_address: SocketAddr::from(([0, 0, 0, 0], 8080)),
            shutdown_grace: Duration::from_secs(10),
            retry: RetrySettings {
                initial: Duration::from_millis(200),
                max: Duration::from_secs(30),
            },
            breaker: BreakerSettings {
                window: 200,
                min_messages: 100,
                threshold: 0.9,
                cooldown: Duration::from_secs(30),
            },
            stall_timeout: Duration::from_secs(60),
            faults: FaultPlan::default(),
        }
    }

    /// Checks what can be checked without the network; the message says what to change.
    pub fn validate(&self) -> Result<(), String> {
        self.kafka.validate()?;
        for (name, topic) in [
            ("KAFKA_TOPIC", &self.input_topic),
            ("KAFKA_OUTPUT_TOPIC", &self.output_topic),
            ("BUTLER_WRITER_DEAD_LETTER_TOPIC", &self.dead_letter_topic),
        ] {
            if topic.is_empty() {
                return Err(format!("{name} is empty"));
            }
        }
        if self.input_topic == self.output_topic || self.input_topic == self.dead_letter_topic {
            return Err(format!(
                "the input topic {} is also an output topic",
                self.input_topic
            ));
        }
        if self.batch.max_messages == 0 {
            return Err("BUTLER_WRITER_BATCH_MAX_MESSAGES must be at least 1".to_owned());
        }
        if self.db_concurrency == 0 || self.db_concurrency > 16 {
            return Err("BUTLER_WRITER_DB_CONCURRENCY must be between 1 and 16".to_owned());
        }
        if !(self.breaker.threshold > 0.0 && self.breaker.threshold <= 1.0) {
            return Err("BUTLER_WRITER_BREAKER_THRESHOLD must be in (0, 1]".to_owned());
        }
        if self.breaker.min_messages > self.breaker.window {
            return Err(
                "BUTLER_WRITER_BREAKER_MIN_MESSAGES cannot exceed BUTLER_WRITER_BREAKER_WINDOW"
                    .to_owned(),
            );
        }
        if self.retry.initial.is_zero() || self.retry.initial > self.retry.max {
            return Err("the retry backoff needs 0 < initial <= max".to_owned());
        }
        resources::ResourcePath::parse(&self.output_directory).map_err(|e| {
            format!(
                "OUTPUT_DATASET_LIST_DIRECTORY {} is not a usable location: {e}",
                self.output_directory
            )
        })?;
        Ok(())
    }
}

/// The deployed writer's consumer group.
pub const DEFAULT_GROUP_ID: &str = "butler-writer";
/// The deployed writer's transactional id (granted by ACL in Prompt Kafka).
pub const DEFAULT_TRANSACTIONAL_ID: &str = "butler-writer-output";
/// The dead-letter topic.
pub const DEFAULT_DEAD_LETTER_TOPIC: &str = "butler-writer-dlq";
/// Messages per batch at most: one LSSTCam visit is 189.
pub const DEFAULT_BATCH_MAX_MESSAGES: usize = 500;
/// How long a batch waits for more messages after its first.
pub const DEFAULT_BATCH_MAX_WAIT_MS: u64 = 200;
/// Batches in the database at once.
pub const DEFAULT_DB_CONCURRENCY: usize = 2;
