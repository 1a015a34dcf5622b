//! Sustained throughput of the whole writer, topic to event, and its peak memory: a backlog of
//! realistic messages (new visits, 189 detectors each, three datasets per message) is put on a
//! partitioned topic first, then `butler-writer serve` (this build's binary, as deployed) drains
//! it into a fresh registry with the broker and Postgres on the same machine.
//!
//!     eval "$(deploy/local/stack env)"
//!     cargo bench -p butler-writer --bench service   # BENCH_DATASETS=N (default 100000)
//!
//! Reported: datasets per second from the writer's first commit to its last (sustained), the
//! same over the whole run including start-up and joining the group, and the writer's peak RSS
//! (VmHWM); then it reconciles: every dataset sent is in the registry exactly once and listed by
//! a batch file, and nothing was dead-lettered. Settings come from the environment as for the service itself
//! (BUTLER_WRITER_BATCH_MAX_MESSAGES, BUTLER_WRITER_DB_CONCURRENCY, ...).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::cast_precision_loss,
    missing_docs
)]

use std::time::{Duration, Instant};

use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::Connection;
use test_support::TestEnv;
use test_support::messages::MessageFactory;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PARTITIONS: i32 = 4;

async fn metric(address: std::net::SocketAddr, name: &str) -> Option<f64> {
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

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

#[tokio::main]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let datasets: usize = std::env::var("BENCH_DATASETS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let env = TestEnv::start().await.unwrap_or_else(|e| panic!("{e:#}"));
    let registry = env.fresh_registry().await.expect("registry");
    let topics = env.fresh_topics(PARTITIONS).await.expect("topics");
    let dir = tempfile::tempdir().expect("dir");

    // The backlog: visits of 189 detectors, messages spread over the partitions by detector.
    let factory = MessageFactory::load();
    let messages = factory.batch(9_000_000, datasets);
    let started = Instant::now();
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
            let topic = &topics.input;
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
    println!(
        "backlog: {} messages, {datasets} datasets, {:.1} MB on {PARTITIONS} partitions, produced in {:.1} s",
        messages.len(),
        bytes as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let address: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let delivery = if env.broker_kind().supports_transactions() {
        "transactional"
    } else {
        "idempotent"
    };
    let started = Instant::now();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_butler-writer"))
        .arg("serve")
        .env("BUTLER_REPOSITORY", &registry.butler_config)
        .env("KAFKA_CLUSTER", env.kafka_bootstrap())
        .env("KAFKA_TOPIC", &topics.input)
        .env("KAFKA_OUTPUT_TOPIC", &topics.events)
        .env(
            "OUTPUT_DATASET_LIST_DIRECTORY",
            format!("{}/", dir.path().display()),
        )
        .env("BUTLER_WRITER_DEAD_LETTER_TOPIC", &topics.dead_letter)
        .env("BUTLER_WRITER_GROUP_ID", format!("{}_group", topics.input))
        .env("BUTLER_WRITER_DELIVERY", delivery)
        .env("BUTLER_WRITER_HTTP_ADDRESS", address.to_string())
        .env("WRITER_DEBUG_LEVEL", "warn")
        .kill_on_drop(true)
        .spawn()
        .expect("start the writer");
    let pid = child.id().expect("pid");

    let mut first_commit: Option<(Instant, f64)> = None;
    let total = datasets as f64;
    let done = loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the writer exited early: {status}");
        }
        let Some(ingested) = metric(address, "butler_writer_datasets_ingested_total").await else {
            continue;
        };
        if ingested > 0.0 && first_commit.is_none() {
            first_commit = Some((Instant::now(), ingested));
        }
        if ingested >= total {
            break Instant::now();
        }
        assert!(
            started.elapsed() < Duration::from_secs(1800),
            "only {ingested} of {total} datasets after 30 minutes"
        );
    };
    let rss = peak_rss_kib(pid).unwrap_or(0);
    let cpu = cpu_seconds(pid).unwrap_or(0.0);
    let batches = metric(address, "butler_writer_batches_total{result=\"committed\"}")
        .await
        .unwrap_or(0.0);
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = tokio::time::timeout(Duration::from_secs(15), child.wait()).await;

    let (first_at, first_count) = first_commit.expect("a first commit");
    let sustained = (total - first_count) / done.duration_since(first_at).as_secs_f64();
    let whole = total / done.duration_since(started).as_secs_f64();
    println!(
        "writer: {total} datasets in {batches} batches; sustained {sustained:.0} datasets/s (first to last commit), {whole:.0} datasets/s including start-up ({:.1} s); peak RSS {:.1} MB; writer CPU {cpu:.1} s",
        done.duration_since(started).as_secs_f64(),
        rss as f64 / 1024.0
    );

    // Reconciliation: every dataset sent is in the registry once and announced by a batch file
    // once; nothing was dead-lettered.
    let sent: std::collections::HashSet<uuid::Uuid> = messages
        .iter()
        .flat_map(test_support::messages::dataset_ids)
        .collect();
    let mut db = sqlx::PgConnection::connect(&registry.database_url)
        .await
        .expect("registry");
    let stored: Vec<uuid::Uuid> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT id FROM {}.dataset",
        registry.namespace
    )))
    .fetch_all(&mut db)
    .await
    .expect("dataset ids");
    let mut announced: std::collections::HashMap<uuid::Uuid, usize> =
        std::collections::HashMap::new();
    for entry in std::fs::read_dir(dir.path()).expect("batch files") {
        let bytes = std::fs::read(entry.expect("entry").path()).expect("batch file");
        for id in schema::DatasetBatch::from_json(&bytes)
            .expect("a batch file")
            .datasets
        {
            *announced.entry(id).or_default() += 1;
        }
    }
    let in_registry: std::collections::HashSet<uuid::Uuid> = stored.iter().copied().collect();
    let lost = sent.iter().filter(|id| !in_registry.contains(id)).count();
    let unannounced = sent.iter().filter(|id| !announced.contains_key(id)).count();
    let announced_twice = announced.values().filter(|n| **n > 1).count();
    let dead = env
        .read_topic(&topics.dead_letter, 1, Duration::from_secs(2))
        .await
        .expect("dead letters")
        .len();
    println!(
        "reconciliation: {} datasets sent, {} in the registry ({lost} lost, {} extra), {} announced ({unannounced} never, {announced_twice} twice), {dead} dead-lettered",
        sent.len(),
        stored.len(),
        stored.len().saturating_sub(in_registry.len()) + in_registry.difference(&sent).count(),
        announced.len(),
    );
    assert!(
        lost == 0 && unannounced == 0 && stored.len() == sent.len() && dead == 0,
        "the backlog did not reconcile"
    );
}
