//! What the benchmarks of the whole writer share (`butler-writer`'s `--bench service` and
//! `--bench remote`): a backlog of realistic messages put on a partitioned topic, `butler-writer
//! serve` (the binary, as deployed) started on it and watched through `/metrics` until it has
//! ingested everything, its CPU time and peak memory, and the reconciliation of what it left.
//!
//! A benchmark whose services do not answer is a broken set-up: these helpers panic with the
//! reason rather than return errors.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;
use sqlx::{Connection, PgConnection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

use crate::{TestEnv, TestRegistry, TestTopics};

/// Partitions of a benchmark's input topic.
pub const PARTITIONS: i32 = 4;

/// How often the writer's `/metrics` is read while it drains: the resolution of the first and
/// last commit's times.
const POLL: Duration = Duration::from_millis(20);

/// `name` from the environment, parsed; `default` when unset.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(value) => value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value} does not parse")),
        Err(_) => default,
    }
}

/// Produces `messages` to `topic`, spread over its [`PARTITIONS`] partitions by position (one
/// visit's detectors round-robin, as the workers' keys spread them), waiting for every delivery.
/// Returns the bytes of message values produced.
pub async fn produce_backlog(env: &TestEnv, topic: &str, messages: &[Value]) -> usize {
    let producer: FutureProducer = env
        .kafka_config()
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("compression.type", "none")
        .create()
        .expect("producer");
    let mut bytes = 0_usize;
    for chunk in messages.chunks(2000) {
        let lines: Vec<Vec<u8>> = chunk
            .iter()
            .map(|m| serde_json::to_vec(m).unwrap())
            .collect();
        bytes += lines.iter().map(Vec::len).sum::<usize>();
        let sends = lines.iter().enumerate().map(|(i, line)| {
            let producer = &producer;
            async move {
                let partition = i32::try_from(i).unwrap() % PARTITIONS;
                producer
                    .send(
                        FutureRecord::<(), _>::to(topic)
                            .payload(line.as_slice())
                            .partition(partition),
                        Duration::from_secs(60),
                    )
                    .await
                    .map_err(|(e, _)| e)
            }
        });
        for result in futures_util::future::join_all(sends).await {
            result.expect("delivery");
        }
    }
    bytes
}

/// A `butler-writer serve` process on a benchmark's topics; killed if dropped before
/// [`ServeWriter::stop`].
#[derive(Debug)]
pub struct ServeWriter {
    child: tokio::process::Child,
    pid: u32,
    address: SocketAddr,
    started: Instant,
}

/// How a writer drained its backlog.
#[derive(Debug, Clone, Copy)]
pub struct Drained {
    /// Datasets it ingested.
    pub datasets: f64,
    /// Batches it committed.
    pub batches: f64,
    /// From the process's start to its last commit.
    pub elapsed: Duration,
    /// Datasets per second from the first commit seen to the last (what was in at the first
    /// sight excluded); NaN when everything was in at the first sight, with nothing to measure.
    pub sustained: f64,
    /// Datasets per second from the process's start (connecting, joining the group) to the last
    /// commit.
    pub whole: f64,
    /// Peak resident memory (VmHWM), KiB.
    pub peak_rss_kib: u64,
    /// User and system CPU time of the writer, seconds.
    pub cpu_seconds: f64,
}

/// The writer binary a benchmark measures: `BENCH_WRITER_BIN` when set (another build, for a
/// before/after comparison in the same conditions), else `this_build`
/// (`env!("CARGO_BIN_EXE_butler-writer")`).
pub fn writer_binary(this_build: &str) -> std::path::PathBuf {
    std::env::var_os("BENCH_WRITER_BIN")
        .filter(|v| !v.is_empty())
        .map_or_else(
            || std::path::PathBuf::from(this_build),
            std::path::PathBuf::from,
        )
}

impl ServeWriter {
    /// Starts `binary` (`env!("CARGO_BIN_EXE_butler-writer")` in a benchmark) with `serve` on
    /// `topics`, the registry of `butler_config`, batch files into `directory`, the delivery mode
    /// the broker allows and the operations endpoints on a free port. The settings not given here
    /// come from the environment, as for the service itself; `settings` (variable, value) pairs
    /// override them.
    pub fn start(
        binary: &Path,
        env: &TestEnv,
        butler_config: &Path,
        topics: &TestTopics,
        directory: &Path,
        settings: &[(&str, String)],
    ) -> Self {
        let address = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap();
        let delivery = if env.broker_kind().supports_transactions() {
            "transactional"
        } else {
            "idempotent"
        };
        let started = Instant::now();
        let child = tokio::process::Command::new(binary)
            .arg("serve")
            .env("BUTLER_REPOSITORY", butler_config)
            .env("KAFKA_CLUSTER", env.kafka_bootstrap())
            .env("KAFKA_TOPIC", &topics.input)
            .env("KAFKA_OUTPUT_TOPIC", &topics.events)
            .env(
                "OUTPUT_DATASET_LIST_DIRECTORY",
                format!("{}/", directory.display()),
            )
            .env("BUTLER_WRITER_DEAD_LETTER_TOPIC", &topics.dead_letter)
            .env("BUTLER_WRITER_GROUP_ID", format!("{}_group", topics.input))
            .env("BUTLER_WRITER_DELIVERY", delivery)
            .env("BUTLER_WRITER_HTTP_ADDRESS", address.to_string())
            .env("WRITER_DEBUG_LEVEL", "warn")
            .envs(settings.iter().map(|(k, v)| (k, v)))
            .kill_on_drop(true)
            .spawn()
            .expect("start the writer");
        let pid = child.id().expect("pid");
        Self {
            child,
            pid,
            address,
            started,
        }
    }

    /// Waits until the writer has ingested `datasets` (at most 30 minutes), then reads its
    /// figures; the writer keeps running.
    pub async fn drain(&mut self, datasets: usize) -> Drained {
        let total = datasets as f64;
        let mut first_commit: Option<(Instant, f64)> = None;
        let done = loop {
            tokio::time::sleep(POLL).await;
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the writer exited early: {status}");
            }
            let Some(ingested) =
                metric(self.address, "butler_writer_datasets_ingested_total").await
            else {
                continue;
            };
            if ingested > 0.0 && first_commit.is_none() {
                first_commit = Some((Instant::now(), ingested));
            }
            if ingested >= total {
                break Instant::now();
            }
            assert!(
                self.started.elapsed() < Duration::from_secs(1800),
                "only {ingested} of {total} datasets after 30 minutes"
            );
        };
        let peak_rss_kib = peak_rss_kib(self.pid).unwrap_or(0);
        let cpu_seconds = cpu_seconds(self.pid).unwrap_or(0.0);
        let batches = metric(
            self.address,
            "butler_writer_batches_total{result=\"committed\"}",
        )
        .await
        .unwrap_or(0.0);
        let (first_at, first_count) = first_commit.expect("a first commit");
        let elapsed = done.duration_since(self.started);
        Drained {
            datasets: total,
            batches,
            elapsed,
            sustained: if first_count < total {
                (total - first_count) / done.duration_since(first_at).as_secs_f64()
            } else {
                f64::NAN
            },
            whole: total / elapsed.as_secs_f64(),
            peak_rss_kib,
            cpu_seconds,
        }
    }

    /// Stops the writer as Kubernetes does (SIGTERM) and waits for it to exit (at most 15 s,
    /// then it is killed).
    pub async fn stop(mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        if tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// One figure from a Prometheus text endpoint (the first series named exactly `name`, labels
/// included).
pub async fn metric(address: SocketAddr, name: &str) -> Option<f64> {
    let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await.ok()?;
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// User + system CPU seconds of a process so far.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// Peak resident memory (VmHWM) of a process, KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// What a writer left against what was sent: every dataset in the registry once and listed by
/// a batch file once, nothing dead-lettered.
#[derive(Debug, Clone, Copy)]
pub struct Reconciliation {
    /// Datasets sent.
    pub sent: usize,
    /// Rows of the registry's `dataset` table.
    pub stored: usize,
    /// Sent, not in the registry.
    pub lost: usize,
    /// In the registry, not sent, or there twice.
    pub extra: usize,
    /// Datasets listed by batch files.
    pub announced: usize,
    /// Sent, listed by no batch file.
    pub unannounced: usize,
    /// Listed by more than one batch file, or twice by one.
    pub announced_twice: usize,
    /// Records on the dead-letter topic.
    pub dead_lettered: usize,
}

impl Reconciliation {
    /// Nothing lost, nothing extra, everything announced, nothing dead-lettered.
    pub fn is_exact(&self) -> bool {
        self.lost == 0
            && self.extra == 0
            && self.unannounced == 0
            && self.stored == self.sent
            && self.dead_lettered == 0
    }
}

impl std::fmt::Display for Reconciliation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} datasets sent, {} in the registry ({} lost, {} extra), {} announced ({} never, {} twice), {} dead-lettered",
            self.sent,
            self.stored,
            self.lost,
            self.extra,
            self.announced,
            self.unannounced,
            self.announced_twice,
            self.dead_lettered
        )
    }
}

/// Reads back what the writer left: the registry's datasets (over a connection of its own, not
/// through any proxy the writer used), the batch files in `directory` and the dead-letter topic.
pub async fn reconcile(
    env: &TestEnv,
    registry: &TestRegistry,
    topics: &TestTopics,
    directory: &Path,
    messages: &[Value],
) -> Reconciliation {
    let sent: HashSet<Uuid> = messages
        .iter()
        .flat_map(crate::messages::dataset_ids)
        .collect();
    let mut db = PgConnection::connect(&registry.database_url)
        .await
        .expect("registry");
    let stored: Vec<Uuid> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT id FROM {}.dataset",
        registry.namespace
    )))
    .fetch_all(&mut db)
    .await
    .expect("dataset ids");
    let mut announced: HashMap<Uuid, usize> = HashMap::new();
    for entry in std::fs::read_dir(directory).expect("batch files") {
        let bytes = std::fs::read(entry.expect("entry").path()).expect("batch file");
        for id in schema::DatasetBatch::from_json(&bytes)
            .expect("a batch file")
            .datasets
        {
            *announced.entry(id).or_default() += 1;
        }
    }
    let in_registry: HashSet<Uuid> = stored.iter().copied().collect();
    let dead_lettered = env
        .read_topic(&topics.dead_letter, 1, Duration::from_secs(2))
        .await
        .expect("dead letters")
        .len();
    Reconciliation {
        sent: sent.len(),
        stored: stored.len(),
        lost: sent.iter().filter(|id| !in_registry.contains(id)).count(),
        extra: stored.len() - in_registry.len() + in_registry.difference(&sent).count(),
        announced: announced.len(),
        unannounced: sent.iter().filter(|id| !announced.contains_key(id)).count(),
        announced_twice: announced.values().filter(|n| **n > 1).count(),
        dead_lettered,
    }
}
