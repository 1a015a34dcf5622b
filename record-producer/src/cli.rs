//! `record-producer night|burst|backlog|create-topics`: flags and environment variables, turned
//! into [`LoadSettings`].
//!
//! The broker settings are the workers' own (`BUTLER_WRITER_KAFKA_CLUSTER`,
//! `BUTLER_WRITER_KAFKA_USERNAME`, `BUTLER_WRITER_KAFKA_PASSWORD`, `BUTLER_WRITER_KAFKA_TOPIC`,
//! as `prompt-keda` sets them), so the producer runs with a worker's configuration; the batch-file
//! directory is the writer's (`OUTPUT_DATASET_LIST_DIRECTORY`).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use schema::topics::{DEAD_LETTER_TOPIC, EVENTS_TOPIC, INPUT_TOPIC};
use service_kit::cli::{KafkaArgNames, seconds};
use service_kit::{ConfigError, KafkaSettings, KafkaVariables};

use crate::load::{Faults, LoadSettings, MetricsCheck, Mode};
use crate::messages::DatasetTypeSpec;
use crate::schedule::{NightPlan, Processing, current_day_obs, parse_day_obs};

/// Loads the Butler Writer the way LSSTCam's Prompt Processing workers do, and reports what the
/// pipeline made of it: every dataset accounted for, throughput, end-to-end latency.
#[derive(Debug, Parser)]
#[command(name = "record-producer", version)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The load-test modes, and topic creation.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// A night on its schedule (time-compressed by --speed).
    Night(LoadArgs),
    /// Every message as fast as the broker takes it, while the pipeline ingests.
    Burst(LoadArgs),
    /// Every message first, then the wait while the pipeline drains the backlog.
    Backlog(LoadArgs),
    /// Create the writer's input, events and dead-letter topics where missing.
    CreateTopics(CreateTopicsArgs),
}

/// The broker, as the workers reach it: their variables (`BUTLER_WRITER_KAFKA_CLUSTER`,
/// `BUTLER_WRITER_KAFKA_USERNAME`, `BUTLER_WRITER_KAFKA_PASSWORD`, as `prompt-keda` sets them);
/// the protocol and CA file are the producer's.
#[derive(Debug)]
pub struct WorkerKafka;

impl KafkaArgNames for WorkerKafka {
    const VARIABLES: KafkaVariables = KafkaVariables {
        cluster: "BUTLER_WRITER_KAFKA_CLUSTER",
        username: "BUTLER_WRITER_KAFKA_USERNAME",
        password: "BUTLER_WRITER_KAFKA_PASSWORD",
        security_protocol: "RECORD_PRODUCER_KAFKA_SECURITY_PROTOCOL",
        ca_file: "RECORD_PRODUCER_KAFKA_CA_FILE",
    };
}

/// The broker flags, as the workers reach it.
pub type KafkaArgs = service_kit::cli::KafkaArgs<WorkerKafka>;

/// The writer's topics.
#[derive(Debug, Args)]
pub struct TopicArgs {
    /// The writer's input topic.
    #[arg(long, env = "BUTLER_WRITER_KAFKA_TOPIC", default_value = INPUT_TOPIC)]
    pub topic: String,

    /// The writer's batch-ingested topic.
    #[arg(long, env = "RECORD_PRODUCER_EVENTS_TOPIC", default_value = EVENTS_TOPIC)]
    pub events_topic: String,

    /// The writer's dead-letter topic.
    #[arg(long, env = "RECORD_PRODUCER_DEAD_LETTER_TOPIC", default_value = DEAD_LETTER_TOPIC)]
    pub dead_letter_topic: String,

    /// The writer's application metrics events topic (`<prefix>.butlerwriter`), when it sends
    /// them to this broker: `create-topics` creates it, and a load test counts its events
    /// against the batches it saw (with `--schema-registry-url`).
    #[arg(long, env = "RECORD_PRODUCER_METRICS_TOPIC")]
    pub metrics_topic: Option<String>,
}

/// Arguments of `record-producer create-topics`.
#[derive(Debug, Args)]
pub struct CreateTopicsArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub topics: TopicArgs,
    /// Partitions of the input topic (the events and dead-letter topics get one, as deployed).
    #[arg(long, default_value_t = 1)]
    pub partitions: i32,
}

impl CreateTopicsArgs {
    /// Validated settings: the broker and the topics with their partitions (the input topic
    /// `--partitions`, the others one, as deployed).
    pub fn into_settings(self) -> Result<(KafkaSettings, Vec<(String, i32)>), ConfigError> {
        if self.partitions < 1 {
            return Err(ConfigError::new("--partitions must be at least 1"));
        }
        let mut topics = vec![
            (self.topics.topic, self.partitions),
            (self.topics.events_topic, 1),
            (self.topics.dead_letter_topic, 1),
        ];
        topics.extend(self.topics.metrics_topic.map(|t| (t, 1)));
        Ok((self.kafka.into_settings()?, topics))
    }
}

/// Arguments of a load test (`night`, `burst`, `backlog`).
#[derive(Debug, Args)]
pub struct LoadArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub topics: TopicArgs,

    /// Do not read the dead-letter topic (rejected datasets then count as missing).
    #[arg(long)]
    pub no_dead_letters: bool,

    /// The writer's batch-file directory, where events' batch files are read: local or
    /// `s3://[profile@]bucket/prefix/`.
    #[arg(long, env = "OUTPUT_DATASET_LIST_DIRECTORY")]
    pub output_directory: String,

    /// Visits to send (a night is about 800).
    #[arg(long, default_value_t = 800)]
    pub visits: u32,

    /// Detectors per visit: the first N of LSSTCam's 189.
    #[arg(long, default_value_t = 189)]
    pub detectors: u32,

    /// The observing day, YYYYMMDD; today's by default. Data ids must be new to the registry:
    /// the same day and sequence numbers twice make conflicts.
    #[arg(long, value_parser = parse_day_obs)]
    pub day_obs: Option<u32>,

    /// The first visit's sequence number.
    #[arg(long, default_value_t = 1)]
    pub first_seq_num: u32,

    /// Seed of the schedule, pointings and injected faults.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// Time compression of a night: 1 is the real pace, 30 sends a 34 s cadence every ~1.1 s.
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,

    /// Seconds from the end of an exposure to the first worker's message.
    #[arg(long, default_value_t = Processing::default().delay_s)]
    pub processing_delay: f64,

    /// Seconds over which a visit's workers finish.
    #[arg(long, default_value_t = Processing::default().spread_s)]
    pub spread: f64,

    /// A dataset type each worker exports (repeatable): a reference type, or
    /// NAME:visit|exposure:EXTENSION:FORMATTER for one registered in the repository. Default:
    /// preliminary_visit_image, single_visit_star_unstandardized, isr_statistics.
    #[arg(long = "dataset-type", value_parser = DatasetTypeSpec::parse)]
    pub dataset_types: Vec<DatasetTypeSpec>,

    /// The RUN collection; Prompt Processing's of the day by default.
    #[arg(long)]
    pub run: Option<String>,

    /// Per thousand worker messages: the same message sent again.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub redeliver_per_mille: u32,

    /// Per thousand worker messages: a second pod sends the same data ids with new dataset ids.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub twin_per_mille: u32,

    /// Per thousand worker messages: a malformed message besides.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub malformed_per_mille: u32,

    /// Write every file (a small placeholder) under this datastore root before sending its
    /// message, as workers do: local or `s3://[profile@]bucket/prefix/`.
    #[arg(long)]
    pub datastore_root: Option<String>,

    /// Seconds to wait after the last send for every dataset to be accounted for.
    #[arg(long, default_value_t = 120.0)]
    pub settle_timeout: f64,

    /// Create missing topics first: the input topic with this many partitions, the others with one.
    #[arg(long)]
    pub create_topics: Option<i32>,

    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,

    /// The publication consumer's base URL (`http://host:port`): its counts go in the report.
    #[arg(long, env = "RECORD_PRODUCER_PUBLICATION_URL")]
    pub publication_url: Option<String>,

    /// The schema registry the writer's metrics events are registered in, to decode the events
    /// of `--metrics-topic`.
    #[arg(long, env = "RECORD_PRODUCER_SCHEMA_REGISTRY_URL")]
    pub schema_registry_url: Option<String>,

    /// Write the plot of latency and throughput over time here (SVG).
    #[arg(long)]
    pub plot: Option<PathBuf>,

    /// Append every distinct worker message sent (originals and twin copies) to this file, one
    /// JSON line each, to replay the same messages elsewhere (`butler-writer ingest`).
    #[arg(long)]
    pub message_log: Option<PathBuf>,

    /// Write the report as JSON here (`-` for standard output, after the table).
    #[arg(long)]
    pub report_json: Option<PathBuf>,
}

impl LoadArgs {
    /// Validated settings for a load test in `mode`, or one line saying what to change.
    pub fn into_settings(self, mode: Mode) -> Result<LoadSettings, ConfigError> {
        let kafka = self.kafka.into_settings()?;
        if !(self.speed.is_finite() && self.speed > 0.0) {
            return Err(ConfigError::new("--speed must be a number > 0"));
        }
        if self.detectors == 0 || self.detectors > 189 {
            return Err(ConfigError::new("--detectors must be 1 to 189"));
        }
        if self.visits == 0 {
            return Err(ConfigError::new("--visits must be at least 1"));
        }
        let settle_timeout = seconds(self.settle_timeout, "--settle-timeout")?;
        seconds(self.processing_delay, "--processing-delay")?;
        seconds(self.spread, "--spread")?;
        if matches!(self.create_topics, Some(p) if p < 1) {
            return Err(ConfigError::new(
                "--create-topics needs a partition count >= 1",
            ));
        }
        let mut plan = NightPlan::new(self.day_obs.unwrap_or_else(current_day_obs), self.visits);
        plan.first_seq_num = self.first_seq_num;
        plan.seed = self.seed;
        if u64::from(self.first_seq_num) + u64::from(self.visits) > 99_999 {
            return Err(ConfigError::new(
                "sequence numbers go up to 99999 a day: lower --first-seq-num or --visits",
            ));
        }
        Ok(LoadSettings {
            kafka,
            topic: self.topics.topic,
            events_topic: self.topics.events_topic,
            dead_letter_topic: (!self.no_dead_letters).then_some(self.topics.dead_letter_topic),
            output_directory: self.output_directory,
            mode,
            plan,
            processing: Processing {
                delay_s: self.processing_delay,
                spread_s: self.spread,
            },
            speed: self.speed,
            detectors: self.detectors,
            dataset_types: if self.dataset_types.is_empty() {
                DatasetTypeSpec::defaults()
            } else {
                self.dataset_types
            },
            run: self.run,
            faults: Faults {
                redeliver_per_mille: self.redeliver_per_mille,
                twin_per_mille: self.twin_per_mille,
                malformed_per_mille: self.malformed_per_mille,
            },
            datastore_root: self.datastore_root,
            settle_timeout,
            create_topics: self.create_topics,
            progress: !self.no_progress,
            publication_url: self.publication_url,
            metrics: match (self.topics.metrics_topic, self.schema_registry_url) {
                (Some(topic), Some(registry_url)) => Some(MetricsCheck {
                    topic,
                    registry_url,
                }),
                (None, _) => None,
                (Some(_), None) => {
                    return Err(ConfigError::new(
                        "--metrics-topic needs --schema-registry-url to decode the events",
                    ));
                }
            },
            plot: self.plot,
            message_log: self.message_log,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<LoadSettings, String> {
        let mut all = vec!["record-producer"];
        all.extend_from_slice(args);
        match Cli::try_parse_from(all).map_err(|e| e.to_string())?.command {
            Command::Night(a) => a.into_settings(Mode::Night).map_err(|e| e.to_string()),
            Command::Burst(a) => a.into_settings(Mode::Burst).map_err(|e| e.to_string()),
            Command::Backlog(a) => a.into_settings(Mode::Backlog).map_err(|e| e.to_string()),
            Command::CreateTopics(_) => Err("not a load test".to_owned()),
        }
    }

    #[test]
    fn a_night_from_flags() {
        let s = parse(&[
            "night",
            "--kafka-cluster",
            "127.0.0.1:9092",
            "--output-directory",
            "/tmp/x/",
            "--visits",
            "20",
            "--speed",
            "30",
            "--day-obs",
            "20260501",
            "--twin-per-mille",
            "5",
        ])
        .expect("valid");
        assert_eq!(s.mode, Mode::Night);
        assert_eq!(s.plan.visits, 20);
        assert_eq!(s.plan.day_obs, 20260501);
        assert_eq!(s.faults.twin_per_mille, 5);
        assert_eq!(s.dataset_types.len(), 3);
        assert_eq!(s.dead_letter_topic.as_deref(), Some(DEAD_LETTER_TOPIC));
    }

    #[test]
    fn bad_values_are_one_line_errors() {
        let base = [
            "burst",
            "--kafka-cluster",
            "h:1",
            "--output-directory",
            "/d/",
        ];
        let with = |extra: &[&str]| {
            let mut args = base.to_vec();
            args.extend_from_slice(extra);
            parse(&args)
        };
        assert!(with(&["--speed", "0"]).is_err());
        assert!(with(&["--detectors", "190"]).is_err());
        assert!(with(&["--day-obs", "20261340"]).is_err());
        assert!(with(&["--malformed-per-mille", "1001"]).is_err());
        assert!(
            with(&["--kafka-username", "u"]).is_err(),
            "user without password"
        );
        assert!(with(&["--dataset-type", "nope"]).is_err());
        assert!(with(&["--first-seq-num", "99990", "--visits", "20"]).is_err());
        assert!(with(&[]).is_ok());
    }
}
