//! `butler-writer replay --since <time>`: bring a registry restored from a backup forward by
//! re-reading the input topic from a point in time.
//!
//! Ingestion is idempotent (a dataset already present is skipped, dimension records are
//! `ON CONFLICT DO NOTHING`) and the input topic keeps two weeks of messages, so everything
//! produced after a backup was taken is still on the topic. The replay:
//!
//! 1. finds, for each partition of the input topic, the first offset whose message timestamp is
//!    at or after `--since` (`offsets_for_times`) and the end offset (high watermark) now;
//! 2. commits those start offsets for a consumer group of its own, never the live writer's, so
//!    the live writer's position is untouched and both can run at once;
//! 3. runs the normal service ([`crate::service::Service`], the same pipeline, retries and
//!    dead-lettering as `serve`) in that group until the group's committed offsets reach the end
//!    offsets captured in step 1, then stops it gracefully and prints a summary.
//!
//! Messages produced after the replay started are the live writer's business. Events for the
//! replayed batches go to the output topic again, which downstream tolerates (each batch is
//! announced with a new batch id; its datasets are the same).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use tracing::{info, warn};

use rdkafka::error::KafkaError;
use service_kit::kafka::{KafkaCallError, failed, partitions_of};
use service_kit::lifecycle::exit_with;
use service_kit::metrics::Exposition;
use service_kit::{ConfigError, ServiceHandle, TaskFailed, termination};

use crate::service::cli::ServeArgs;
use crate::service::metrics::Metrics;
use crate::service::settings::Settings;
use crate::service::{CLIENT_ID, Service, ServiceError};

/// Why a replay stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The service could not start, or stopped on an error.
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// The broker refused or did not answer a planning request.
    #[error(transparent)]
    Broker(#[from] KafkaCallError),
    /// The broker answered an offset lookup with something other than an offset.
    #[error("the broker answered {answer} for {topic}[{partition}] at {since}")]
    UnexpectedOffset {
        /// What it answered.
        answer: String,
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The time looked up.
        since: DateTime<Utc>,
    },
    /// A planning task failed.
    #[error(transparent)]
    Task(#[from] TaskFailed),
}

/// How long a metadata, watermark, offset or commit request to the broker may take.
const BROKER_TIMEOUT: Duration = Duration::from_secs(30);

/// Arguments of `butler-writer replay`: `--since`, the replay's own group, and every setting of
/// `serve` (the same environment variables, so it runs with the deployed writer's configuration).
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// Re-read every message whose Kafka timestamp is at or after this time (RFC 3339, for
    /// example `2026-11-28T22:00:00Z`): a time safely before the backup was taken.
    #[arg(long, value_parser = parse_time)]
    pub since: DateTime<Utc>,

    /// The replay's consumer group; by default `<group>-replay-<since, Unix seconds>`. It must
    /// not be the live writer's group.
    #[arg(long)]
    pub replay_group_id: Option<String>,

    /// The replay's transactional id (transactional delivery); by default
    /// `<transactional id>-replay`, so the replay never fences the live writer.
    #[arg(long)]
    pub replay_transactional_id: Option<String>,

    /// Where the replay's `/healthz`, `/readyz` and `/metrics` listen; by default a free loopback
    /// port, so a replay can run beside the live writer in its pod.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub replay_http_address: SocketAddr,

    /// Every setting of `butler-writer serve`.
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// One partition's range to replay.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionRange {
    /// The partition.
    pub partition: i32,
    /// First offset at or after `--since`.
    pub start: i64,
    /// The end offset (high watermark) when the replay started.
    pub end: i64,
    /// The earliest offset still on the topic; a `start` equal to it with `low > 0` means
    /// retention may already have deleted messages after `--since`.
    pub low: i64,
}

/// What a replay did, printed as one JSON line on stdout.
#[derive(Debug, Serialize)]
pub struct ReplaySummary {
    /// `--since`, RFC 3339.
    pub since: String,
    /// The consumer group the replay used.
    pub group_id: String,
    /// The ranges replayed.
    pub partitions: Vec<PartitionRange>,
    /// Messages the replay had to read (sum of `end - start`).
    pub messages_to_replay: i64,
    /// Messages consumed.
    pub messages_consumed: u64,
    /// Datasets the replay added to the registry.
    pub datasets_ingested: u64,
    /// Datasets the registry already had.
    pub datasets_already_present: u64,
    /// Messages dead-lettered (again).
    pub messages_rejected: u64,
    /// Seconds from the start of the service to the last commit.
    pub elapsed_seconds: f64,
    /// Datasets (ingested and already present) per second over `elapsed_seconds`.
    pub datasets_per_second: f64,
    /// True when every partition reached its end offset; false when stopped by a signal.
    pub complete: bool,
}

/// Parses an RFC 3339 time (clap value parser).
pub fn parse_time(text: &str) -> Result<DateTime<Utc>, ConfigError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            ConfigError::caused_by("expected an RFC 3339 time such as 2026-11-28T22:00:00Z", e)
        })
}

impl ReplayArgs {
    /// The service settings for the replay: those of `serve`, with the replay's own group,
    /// transactional id and HTTP address.
    pub fn into_settings(self) -> Result<(Settings, DateTime<Utc>), ConfigError> {
        let since = self.since;
        let mut settings = self.serve.into_settings()?;
        let live_group = settings.group_id.clone();
        let group = self
            .replay_group_id
            .unwrap_or_else(|| format!("{live_group}-replay-{}", since.timestamp()));
        if group == live_group {
            return Err(ConfigError::new(format!(
                "--replay-group-id must differ from the live writer's group ({live_group}): the replay moves its group's offsets"
            )));
        }
        settings.group_id = group;
        settings.transactional_id = self
            .replay_transactional_id
            .unwrap_or_else(|| format!("{}-replay", settings.transactional_id));
        settings.http_address = self.replay_http_address;
        // A one-off run in a group of its own: a dynamic member, whatever the pod's variables say.
        settings.group_instance_id = None;
        settings.validate()?;
        Ok((settings, since))
    }
}

/// Runs `butler-writer replay`. Exit status 0 when every partition was brought to its end
/// offset, 1 on a fatal error or an interrupted replay, 2 on bad configuration.
pub async fn replay(args: ReplayArgs) -> ExitCode {
    let (settings, since) = match args.into_settings() {
        Ok(parts) => parts,
        Err(error) => return exit_with("butler-writer", &error, 2),
    };
    match run(settings, since).await {
        Ok(summary) => {
            crate::cli::print_json_line("butler-writer", &summary);
            if summary.complete {
                ExitCode::SUCCESS
            } else {
                eprintln!(
                    "butler-writer: the replay was interrupted; run it again with the same --since"
                );
                ExitCode::from(1)
            }
        }
        Err(error) => exit_with("butler-writer", &error, 1),
    }
}

/// Plans the ranges, commits the start offsets for the replay's group, runs the service until
/// the group has committed every end offset (or a signal arrives) and returns what it did.
pub async fn run(settings: Settings, since: DateTime<Utc>) -> Result<ReplaySummary, ReplayError> {
    let planner = Arc::new(offsets_client(&settings)?);
    let topic = settings.input_topic.clone();
    let ranges = {
        let (planner, topic) = (Arc::clone(&planner), topic.clone());
        tokio::task::spawn_blocking(move || plan(&planner, &topic, since))
            .await
            .map_err(TaskFailed)??
    };
    let mut summary = ReplaySummary::planned(&settings.group_id, since, ranges.clone());
    info!(
        group = %settings.group_id,
        %since,
        messages_to_replay = summary.messages_to_replay,
        partitions = ranges.len(),
        "replay planned"
    );
    {
        let (planner, topic, ranges) = (Arc::clone(&planner), topic.clone(), ranges.clone());
        tokio::task::spawn_blocking(move || commit_start(&planner, &topic, &ranges))
            .await
            .map_err(TaskFailed)??;
    }
    if summary.complete {
        info!("nothing to replay: no message at or after --since");
        return Ok(summary);
    }
    let started = Instant::now();
    let service = Service::start(settings).await?;
    let metrics = Arc::clone(service.metrics());
    let (caught_up_tx, mut caught_up_rx) = tokio::sync::watch::channel(false);
    let signal = async {
        tokio::select! {
            () = watch_progress(planner, topic, ranges, caught_up_tx) => {}
            () = termination() => {}
        }
    };
    service.run_until(signal).await?;
    summary.complete = *caught_up_rx.borrow_and_update();
    summary.count(&metrics, started.elapsed().as_secs_f64());
    info!(
        complete = summary.complete,
        messages = summary.messages_consumed,
        datasets_ingested = summary.datasets_ingested,
        datasets_already_present = summary.datasets_already_present,
        messages_rejected = summary.messages_rejected,
        elapsed_s = summary.elapsed_seconds,
        "replay finished"
    );
    Ok(summary)
}

impl ReplaySummary {
    /// The summary of a replay of `ranges`, before it runs.
    fn planned(group_id: &str, since: DateTime<Utc>, ranges: Vec<PartitionRange>) -> Self {
        for range in &ranges {
            if range.start == range.low && range.low > 0 {
                warn!(
                    partition = range.partition,
                    earliest_offset = range.low,
                    "the replay starts at the earliest offset still on the topic: messages older than it are gone, so --since may be past the topic's retention"
                );
            }
        }
        let messages_to_replay: i64 = ranges.iter().map(|r| r.end - r.start).sum();
        Self {
            since: since.to_rfc3339(),
            group_id: group_id.to_owned(),
            partitions: ranges,
            messages_to_replay,
            messages_consumed: 0,
            datasets_ingested: 0,
            datasets_already_present: 0,
            messages_rejected: 0,
            elapsed_seconds: 0.0,
            datasets_per_second: 0.0,
            complete: messages_to_replay == 0,
        }
    }

    /// Takes what the replay's service did from its metrics.
    fn count(&mut self, metrics: &Metrics, elapsed: f64) {
        self.messages_consumed = metrics.messages_consumed.get();
        self.datasets_ingested = metrics.datasets_ingested.get();
        self.datasets_already_present = metrics.datasets_already_present.get();
        self.messages_rejected = rejected_total(&metrics.render());
        self.elapsed_seconds = elapsed;
        #[allow(clippy::cast_precision_loss)]
        let datasets = (self.datasets_ingested + self.datasets_already_present) as f64;
        self.datasets_per_second = if elapsed > 0.0 {
            datasets / elapsed
        } else {
            0.0
        };
    }
}

/// Watches the replay group's committed offsets every half second (a line every ten seconds)
/// and says when they reach the end offsets.
async fn watch_progress(
    planner: Arc<BaseConsumer>,
    topic: String,
    ranges: Vec<PartitionRange>,
    caught_up: tokio::sync::watch::Sender<bool>,
) {
    let mut last_log = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (planner, topic, ranges) = (Arc::clone(&planner), topic.clone(), ranges.clone());
        let remaining =
            tokio::task::spawn_blocking(move || remaining_messages(&planner, &topic, &ranges))
                .await;
        match remaining {
            Ok(Ok(0)) => {
                let _ = caught_up.send(true);
                return;
            }
            Ok(Ok(remaining)) => {
                if last_log.elapsed() >= Duration::from_secs(10) {
                    info!(remaining, "replaying");
                    last_log = Instant::now();
                }
            }
            Ok(Err(e)) => warn!(error = %e, "cannot read the replay group's offsets yet"),
            Err(e) => warn!(error = %e, "cannot read the replay group's offsets yet"),
        }
    }
}

/// A consumer that never joins the group: it only plans, commits the start offsets and reads
/// the group's committed offsets.
fn offsets_client(settings: &Settings) -> Result<BaseConsumer, ReplayError> {
    settings
        .kafka
        .client_config(
            CLIENT_ID,
            &[
                ("group.id", &settings.group_id),
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
            ],
        )
        .create()
        .map_err(|e| failed("creating the Kafka client that plans the replay")(e).into())
}

/// For each partition: the first offset at or after `since`, the end offset, the earliest.
fn plan(
    client: &BaseConsumer,
    topic: &str,
    since: DateTime<Utc>,
) -> Result<Vec<PartitionRange>, ReplayError> {
    let partitions = partitions_of(client, topic, BROKER_TIMEOUT)?;
    let mut query = TopicPartitionList::new();
    for &partition in &partitions {
        query
            .add_partition_offset(topic, partition, Offset::Offset(since.timestamp_millis()))
            .map_err(failed("building the offsets query"))?;
    }
    let found = client
        .offsets_for_times(query, BROKER_TIMEOUT)
        .map_err(failed(format!("looking up offsets of {topic} by time")))?;
    let mut ranges = Vec::with_capacity(partitions.len());
    for partition in partitions {
        let (low, high) = client
            .fetch_watermarks(topic, partition, BROKER_TIMEOUT)
            .map_err(failed(format!("reading the end offsets of {topic}")))?;
        let start = match found
            .find_partition(topic, partition)
            .map(|element| element.offset())
        {
            Some(Offset::Offset(offset)) => offset.clamp(low, high),
            // No message at or after `since`: nothing to replay on this partition.
            Some(Offset::End) | None => high,
            Some(other) => {
                return Err(ReplayError::UnexpectedOffset {
                    answer: format!("{other:?}"),
                    topic: topic.to_owned(),
                    partition,
                    since,
                });
            }
        };
        ranges.push(PartitionRange {
            partition,
            start,
            end: high,
            low,
        });
    }
    Ok(ranges)
}

/// Commits each range's start as the replay group's offset, so the service starts there.
fn commit_start(
    client: &BaseConsumer,
    topic: &str,
    ranges: &[PartitionRange],
) -> Result<(), ReplayError> {
    let mut offsets = TopicPartitionList::new();
    for range in ranges {
        offsets
            .add_partition_offset(topic, range.partition, Offset::Offset(range.start))
            .map_err(failed("building the start offsets"))?;
    }
    client.commit(&offsets, CommitMode::Sync).map_err(|e| {
        failed("committing the start offsets for the replay's group (is the group in use?)")(e)
            .into()
    })
}

/// Messages between the replay group's committed offsets and the end offsets.
fn remaining_messages(
    client: &BaseConsumer,
    topic: &str,
    ranges: &[PartitionRange],
) -> Result<i64, KafkaError> {
    let mut query = TopicPartitionList::new();
    for range in ranges {
        query.add_partition(topic, range.partition);
    }
    let committed = client.committed_offsets(query, BROKER_TIMEOUT)?;
    Ok(ranges
        .iter()
        .map(|range| {
            let at = match committed
                .find_partition(topic, range.partition)
                .map(|element| element.offset())
            {
                Some(Offset::Offset(offset)) => offset,
                _ => range.start,
            };
            (range.end - at).max(0)
        })
        .sum())
}

/// The sum of `butler_writer_messages_rejected_total` over its reasons, from the exposition.
fn rejected_total(exposition: &str) -> u64 {
    exposition
        .lines()
        .filter(|line| line.starts_with("butler_writer_messages_rejected_total"))
        .filter_map(|line| line.rsplit(' ').next())
        .filter_map(|value| value.parse::<f64>().ok())
        .map(|value| value as u64)
        .sum()
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::cli::{Cli, Command};

    fn parse(args: &[&str]) -> Result<(super::Settings, super::DateTime<super::Utc>), String> {
        let mut argv = vec![
            "butler-writer",
            "replay",
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
        argv.extend_from_slice(args);
        let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
        match cli.command {
            Command::Replay(args) => args.into_settings().map_err(|e| service_kit::chain(&e)),
            _ => Err("not replay".to_owned()),
        }
    }

    #[test]
    fn a_replay_has_its_own_group_transactional_id_and_port() {
        let (settings, since) = parse(&["--since", "2026-11-28T22:00:00+01:00"]).expect("valid");
        assert_eq!(since.to_rfc3339(), "2026-11-28T21:00:00+00:00");
        assert_eq!(settings.group_id, "butler-writer-replay-1795899600");
        assert_eq!(settings.transactional_id, "butler-writer-output-replay");
        assert_eq!(settings.http_address.to_string(), "127.0.0.1:0");
    }

    #[test]
    fn the_live_group_and_bad_times_are_refused() {
        let error = parse(&[
            "--since",
            "2026-11-28T22:00:00Z",
            "--replay-group-id",
            "butler-writer",
        ])
        .expect_err("live group");
        assert!(error.contains("live writer's group"), "{error}");
        assert!(parse(&["--since", "yesterday"]).is_err());
        assert!(parse(&[]).is_err());
    }

    #[test]
    fn rejected_messages_are_summed_over_reasons() {
        let text = "# TYPE butler_writer_messages_rejected counter\nbutler_writer_messages_rejected_total{reason=\"conflict\"} 2\nbutler_writer_messages_rejected_total{reason=\"invalid\"} 3\nbutler_writer_messages_consumed_total 9\n";
        assert_eq!(super::rejected_total(text), 5);
    }
}
