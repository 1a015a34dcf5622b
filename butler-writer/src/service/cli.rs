//! `butler-writer serve`: flags and environment variables, turned into [`Settings`].
//!
//! The deployed Python writer's variables keep their meaning (`BUTLER_REPOSITORY`,
//! `KAFKA_CLUSTER`, `KAFKA_TOPIC`, `KAFKA_OUTPUT_TOPIC`, `KAFKA_USERNAME`, `KAFKA_PASSWORD`,
//! `KAFKA_DEBUG`, `OUTPUT_DATASET_LIST_DIRECTORY`, `WRITER_DEBUG_LEVEL`), so Phalanx values carry
//! over; settings it did not have are `BUTLER_WRITER_*`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use app_metrics::MetricsArgs;
use butler_repository::PoolSettings;
use clap::Args;
use schema::topics::DEAD_LETTER_TOPIC;
use service_kit::cli::{KafkaArgNames, KafkaArgs, seconds};
use service_kit::{ConfigError, KafkaSettings, KafkaVariables, RetrySettings};

use super::Service;
use super::faults::{FaultInjector, NoFaults};
use super::sasquatch::APPLICATION;
use super::settings::{
    BatchSettings, BreakerSettings, DEFAULT_BATCH_MAX_BYTES, DEFAULT_BATCH_MAX_MESSAGES,
    DEFAULT_BATCH_MAX_WAIT_MS, DEFAULT_DB_CONCURRENCY, DEFAULT_GROUP_ID, DEFAULT_TRANSACTIONAL_ID,
    DeliveryMode, Settings,
};

/// The deployed writer's broker variables; the protocol and CA file are ours.
#[derive(Debug)]
pub struct WriterKafka;

impl KafkaArgNames for WriterKafka {
    const VARIABLES: KafkaVariables = KafkaVariables {
        cluster: "KAFKA_CLUSTER",
        username: "KAFKA_USERNAME",
        password: "KAFKA_PASSWORD",
        security_protocol: "BUTLER_WRITER_KAFKA_SECURITY_PROTOCOL",
        ca_file: "BUTLER_WRITER_KAFKA_CA_FILE",
    };
}

/// Arguments of `butler-writer serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The repository: its `butler.yaml`, or the directory holding it; a local path or
    /// `s3://[profile@]bucket/prefix/`.
    #[arg(long, env = "BUTLER_REPOSITORY")]
    pub butler_repository: String,

    /// The broker: `--kafka-cluster` (`KAFKA_CLUSTER`), `--kafka-username` (`KAFKA_USERNAME`),
    /// `--kafka-password` (`KAFKA_PASSWORD`), `--kafka-security-protocol`, `--kafka-ca-file`,
    /// `--kafka-option`.
    #[command(flatten)]
    pub kafka: KafkaArgs<WriterKafka>,

    /// The topic of pp-output messages (`butler-writer` in Prompt Kafka).
    #[arg(long, env = "KAFKA_TOPIC")]
    pub kafka_topic: String,

    /// The topic of batch-ingested events (`butler-writer-ingestion-events`).
    #[arg(long, env = "KAFKA_OUTPUT_TOPIC")]
    pub kafka_output_topic: String,

    /// Where batch files go: a directory, local or `s3://[profile@]bucket/prefix/`.
    #[arg(long, env = "OUTPUT_DATASET_LIST_DIRECTORY")]
    pub output_dataset_list_directory: String,

    /// `1` turns on librdkafka's `debug=all` on the producer; `0` (default) does not.
    #[arg(long, env = "KAFKA_DEBUG", default_value = "0", value_parser = ["0", "1"])]
    pub kafka_debug: String,

    /// The consumer group.
    #[arg(long, env = "BUTLER_WRITER_GROUP_ID", default_value = DEFAULT_GROUP_ID)]
    pub group_id: String,

    /// The writer's static member id in its group (`group.instance.id`), stable across restarts
    /// (the StatefulSet's pod name), so a restarted writer takes its partitions back at once;
    /// unset: a dynamic member, whose partitions wait out the session timeout after a kill.
    #[arg(long, env = "BUTLER_WRITER_GROUP_INSTANCE_ID")]
    pub group_instance_id: Option<String>,

    /// The dead-letter topic.
    #[arg(long, env = "BUTLER_WRITER_DEAD_LETTER_TOPIC", default_value = DEAD_LETTER_TOPIC)]
    pub dead_letter_topic: String,

    /// How results reach Kafka: `transactional` (event, dead letters and offsets in one
    /// transaction) or `idempotent` (for brokers without transactions: deliver, then commit).
    #[arg(long, env = "BUTLER_WRITER_DELIVERY", value_enum, default_value_t = DeliveryMode::Transactional)]
    pub delivery: DeliveryMode,

    /// Transactional id; each writer sharing a topic needs its own.
    #[arg(long, env = "BUTLER_WRITER_TRANSACTIONAL_ID", default_value = DEFAULT_TRANSACTIONAL_ID)]
    pub transactional_id: String,

    /// A batch closes at this many messages...
    #[arg(long, env = "BUTLER_WRITER_BATCH_MAX_MESSAGES", default_value_t = DEFAULT_BATCH_MAX_MESSAGES)]
    pub batch_max_messages: usize,

    /// ...or this many bytes of message values (a larger message makes a batch of its own): bounds
    /// memory when messages are large.
    #[arg(long, env = "BUTLER_WRITER_BATCH_MAX_BYTES", default_value_t = DEFAULT_BATCH_MAX_BYTES)]
    pub batch_max_bytes: usize,

    /// ...or this many milliseconds after its first message...
    #[arg(long, env = "BUTLER_WRITER_BATCH_MAX_WAIT_MS", default_value_t = DEFAULT_BATCH_MAX_WAIT_MS)]
    pub batch_max_wait_ms: u64,

    /// ...or, when eager, as soon as no more messages are waiting while fewer than
    /// DB_CONCURRENCY batches are in flight, so an idle writer does not wait BATCH_MAX_WAIT_MS
    /// (`false`: batches close only when full or due).
    #[arg(long, env = "BUTLER_WRITER_BATCH_EAGER", default_value_t = true, action = clap::ArgAction::Set)]
    pub batch_eager: bool,

    /// Batches in the database at once, each on its own connection.
    #[arg(long, env = "BUTLER_WRITER_DB_CONCURRENCY", default_value_t = DEFAULT_DB_CONCURRENCY)]
    pub db_concurrency: usize,

    /// Address of `/`, `/healthz`, `/readyz` and `/metrics`.
    #[arg(
        long,
        env = "BUTLER_WRITER_HTTP_ADDRESS",
        default_value = "0.0.0.0:8080"
    )]
    pub http_address: SocketAddr,

    /// Seconds a shutdown (SIGTERM, Ctrl-C) may take to commit the batch in hand.
    #[arg(
        long,
        env = "BUTLER_WRITER_SHUTDOWN_GRACE_SECONDS",
        default_value_t = 10.0
    )]
    pub shutdown_grace_seconds: f64,

    /// First wait, in milliseconds, before retrying after a database, storage or broker failure.
    #[arg(long, env = "BUTLER_WRITER_RETRY_INITIAL_MS", default_value_t = 200)]
    pub retry_initial_ms: u64,

    /// Longest wait between retries, in milliseconds (retries never give up).
    #[arg(long, env = "BUTLER_WRITER_RETRY_MAX_MS", default_value_t = 30_000)]
    pub retry_max_ms: u64,

    /// Messages the circuit breaker looks back over.
    #[arg(long, env = "BUTLER_WRITER_BREAKER_WINDOW", default_value_t = 200)]
    pub breaker_window: usize,

    /// The breaker never trips on fewer messages than this; 0 turns it off.
    #[arg(
        long,
        env = "BUTLER_WRITER_BREAKER_MIN_MESSAGES",
        default_value_t = 100
    )]
    pub breaker_min_messages: usize,

    /// The breaker trips when this fraction of the window is rejected as invalid, of an unknown
    /// dataset type or unsupported.
    #[arg(long, env = "BUTLER_WRITER_BREAKER_THRESHOLD", default_value_t = 0.9)]
    pub breaker_threshold: f64,

    /// Seconds the open breaker waits before trying the held batch again.
    #[arg(
        long,
        env = "BUTLER_WRITER_BREAKER_COOLDOWN_SECONDS",
        default_value_t = 30.0
    )]
    pub breaker_cooldown_seconds: f64,

    /// `/healthz` fails when the consume loop has not turned for this many seconds.
    #[arg(long, env = "BUTLER_WRITER_STALL_SECONDS", default_value_t = 60.0)]
    pub stall_seconds: f64,

    /// Database connections (at least `--db-concurrency` + 1 are used).
    #[arg(long, env = "BUTLER_WRITER_DB_MAX_CONNECTIONS", default_value_t = 4)]
    pub db_max_connections: u32,

    /// db-auth file with database credentials (default `$LSST_DB_AUTH` or
    /// `~/.lsst/db-auth.yaml`).
    #[arg(long, env = "LSST_DB_AUTH")]
    pub db_auth: Option<PathBuf>,

    /// Application metrics events to Sasquatch (off by default): `METRICS_ENABLED`,
    /// `METRICS_APPLICATION` (default `butlerwriter`), `METRICS_EVENTS_TOPIC_PREFIX`,
    /// `SCHEMA_MANAGER_REGISTRY_URL`, `SCHEMA_MANAGER_SUFFIX` and the metrics broker's
    /// `METRICS_KAFKA_*`.
    #[command(flatten)]
    pub metrics: MetricsArgs,
}

impl ServeArgs {
    /// Validated settings, or one line saying what to change.
    pub fn into_settings(self) -> Result<Settings, ConfigError> {
        let kafka = KafkaSettings {
            debug: self.kafka_debug == "1",
            ..self.kafka.into_settings()?
        };
        let mut database = PoolSettings {
            max_connections: self.db_max_connections,
            ..PoolSettings::default()
        };
        if self.db_auth.is_some() {
            database.auth_file = self.db_auth;
        }
        let settings = Settings {
            butler_repository: self.butler_repository,
            database,
            kafka,
            input_topic: self.kafka_topic,
            output_topic: self.kafka_output_topic,
            dead_letter_topic: self.dead_letter_topic,
            group_id: self.group_id,
            group_instance_id: self.group_instance_id.filter(|id| !id.is_empty()),
            transactional_id: self.transactional_id,
            delivery: self.delivery,
            output_directory: self.output_dataset_list_directory,
            batch: BatchSettings {
                max_messages: self.batch_max_messages,
                max_bytes: self.batch_max_bytes,
                max_wait: Duration::from_millis(self.batch_max_wait_ms),
                eager: self.batch_eager,
            },
            db_concurrency: self.db_concurrency,
            http_address: self.http_address,
            shutdown_grace: seconds(
                self.shutdown_grace_seconds,
                "BUTLER_WRITER_SHUTDOWN_GRACE_SECONDS",
            )?,
            retry: RetrySettings {
                initial: Duration::from_millis(self.retry_initial_ms),
                max: Duration::from_millis(self.retry_max_ms),
            },
            breaker: BreakerSettings {
                window: self.breaker_window,
                min_messages: self.breaker_min_messages,
                threshold: self.breaker_threshold,
                cooldown: seconds(
                    self.breaker_cooldown_seconds,
                    "BUTLER_WRITER_BREAKER_COOLDOWN_SECONDS",
                )?,
            },
            stall_timeout: seconds(self.stall_seconds, "BUTLER_WRITER_STALL_SECONDS")?,
            metrics: self.metrics.into_settings(APPLICATION)?,
        };
        settings.validate()?;
        Ok(settings)
    }
}

/// Runs the service until SIGTERM or Ctrl-C. Exit status 0 after a clean stop, 1 on a fatal
/// error, 2 on a configuration error (one line on stderr, and in the log).
pub async fn serve(args: ServeArgs) -> ExitCode {
    serve_with_faults(args, Arc::new(NoFaults)).await
}

/// [`serve`] with a test's fault injector.
pub async fn serve_with_faults(args: ServeArgs, faults: Arc<dyn FaultInjector>) -> ExitCode {
    service_kit::lifecycle::serve(PROGRAM, args.into_settings(), |settings| {
        Service::start_with_faults(settings, faults)
    })
    .await
}

/// How the writer names itself on stderr.
const PROGRAM: &str = "butler-writer";

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::cli::{Cli, Command};

    fn parse(args: &[&str]) -> Result<super::Settings, String> {
        let mut argv = vec!["butler-writer", "serve"];
        argv.extend_from_slice(args);
        let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
        match cli.command {
            Command::Serve(args) => args.into_settings().map_err(|e| service_kit::chain(&e)),
            _ => Err("not serve".to_owned()),
        }
    }

    const REQUIRED: &[&str] = &[
        "--butler-repository",
        "/repo",
        "--kafka-cluster",
        "localhost:9092",
        "--kafka-topic",
        "in",
        "--kafka-output-topic",
        "out",
        "--output-dataset-list-directory",
        "/tmp/batches/",
    ];

    #[test]
    fn defaults_are_those_of_the_deployed_writer_plus_ours() {
        let settings = parse(REQUIRED).expect("valid");
        assert_eq!(settings.group_id, "butler-writer");
        assert_eq!(settings.transactional_id, "butler-writer-output");
        assert_eq!(settings.dead_letter_topic, "butler-writer-dlq");
        assert_eq!(settings.delivery, super::DeliveryMode::Transactional);
        assert_eq!(settings.batch.max_messages, 500);
        assert_eq!(settings.shutdown_grace.as_secs(), 10);
        assert_eq!(
            settings.kafka.security_protocol,
            service_kit::SecurityProtocol::Plaintext
        );
    }

    #[test]
    fn credentials_go_together_and_pick_sasl() {
        let mut args = REQUIRED.to_vec();
        args.extend(["--kafka-username", "butler-writer"]);
        let error = parse(&args).expect_err("password missing");
        assert!(
            error.contains("KAFKA_USERNAME and KAFKA_PASSWORD"),
            "{error}"
        );
        args.extend(["--kafka-password", "hunter2"]);
        let settings = parse(&args).expect("valid");
        assert_eq!(
            settings.kafka.security_protocol,
            service_kit::SecurityProtocol::SaslPlaintext
        );
        // The password never shows in Debug output (logs, error reports).
        assert!(!format!("{settings:?}").contains("hunter2"));
    }

    #[test]
    fn bad_values_are_refused_with_the_variable_named() {
        let mut args = REQUIRED.to_vec();
        args.extend(["--db-concurrency", "0"]);
        assert!(
            parse(&args)
                .expect_err("zero")
                .contains("BUTLER_WRITER_DB_CONCURRENCY")
        );
        let args: Vec<&str> = REQUIRED
            .iter()
            .map(|a| if *a == "out" { "in" } else { a })
            .collect();
        assert!(
            parse(&args)
                .expect_err("same topic")
                .contains("also an output topic")
        );
        let mut args = REQUIRED.to_vec();
        args.extend(["--kafka-debug", "2"]);
        assert!(parse(&args).is_err());
        let mut args = REQUIRED.to_vec();
        args.extend(["--kafka-option", "novalue"]);
        assert!(parse(&args).expect_err("kv").contains("key=value"));
    }
}
