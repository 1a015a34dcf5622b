//! The services around a writer under test ([`Fixture`]: broker, fresh registry, fresh topics, a
//! batch directory), messages produced to its input topic, and what it left read back for a
//! test's assertions: events and their batch files, dead letters, committed offsets, registry
//! rows, the HTTP endpoints. Nothing here depends on the writer's own types.
//!
//! A broker or database that does not answer here is a broken test set-up: these helpers panic
//! with the reason rather than return errors.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use schema::{BatchIngestedEvent, DatasetBatch};
use sqlx::{Connection, PgConnection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

use crate::{TestEnv, TestRegistry, TestTopics};

/// What most writer tests start from: the services, a fresh registry, fresh topics and a
/// directory for batch files.
#[derive(Debug)]
pub struct Fixture {
    /// The broker and the database.
    pub env: TestEnv,
    /// A registry of the test's own.
    pub registry: TestRegistry,
    /// Input, event and dead-letter topics of the test's own.
    pub topics: TestTopics,
    /// Where batch files go.
    pub dir: tempfile::TempDir,
}

/// A [`Fixture`] whose input topic has `partitions` partitions.
pub async fn fixture(partitions: i32) -> Fixture {
    let env = TestEnv::start().await.unwrap_or_else(|e| panic!("{e:#}"));
    fixture_on(env, partitions).await
}

/// A [`Fixture`] on a broker with transactions ([`TestEnv::start_transactional`]): writers made
/// from it by `writer::env_settings` deliver in transactions.
pub async fn transactional_fixture(partitions: i32) -> Fixture {
    let env = TestEnv::start_transactional()
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    fixture_on(env, partitions).await
}

async fn fixture_on(env: TestEnv, partitions: i32) -> Fixture {
    let registry = env.fresh_registry().await.expect("registry");
    let topics = env.fresh_topics(partitions).await.expect("topics");
    let dir = tempfile::tempdir().expect("dir");
    Fixture {
        env,
        registry,
        topics,
        dir,
    }
}

/// Produces `values` to partition `partition` of `topic` (or by key hash when `None`), waiting
/// for every delivery.
pub async fn produce(bootstrap: &str, topic: &str, values: &[Vec<u8>], partition: Option<i32>) {
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let sends = values.iter().enumerate().map(|(i, value)| {
        let producer = &producer;
        async move {
            let key = format!("k{i}");
            let mut record = FutureRecord::to(topic).payload(value).key(&key);
            if let Some(p) = partition {
                record = record.partition(p);
            }
            producer
                .send(record, Duration::from_secs(30))
                .await
                .map_err(|(e, _)| e)
        }
    });
    for result in futures_util::future::join_all(sends).await {
        result.expect("delivery");
    }
}

/// What the writer has emitted so far.
#[derive(Debug, Default)]
pub struct Emitted {
    /// Events, in topic order.
    pub events: Vec<BatchIngestedEvent>,
    /// Every dataset id listed by the events' batch files.
    pub datasets: BTreeSet<Uuid>,
    /// How many times each dataset id was listed.
    pub listings: BTreeMap<Uuid, usize>,
}

/// Reads every event, checks each names a batch file with its own batch id, and collects the
/// files' dataset ids.
pub async fn emitted(env: &TestEnv, topic: &str, directory: &Path) -> Emitted {
    let messages = env
        .read_topic(topic, usize::MAX, Duration::from_millis(1500))
        .await
        .expect("read events");
    let mut emitted = Emitted::default();
    for message in messages {
        let event = BatchIngestedEvent::from_json(message.payload().unwrap_or_default())
            .expect("a batch-ingested event");
        assert_eq!(event.origin, "prompt_processing");
        let file = read_batch_file(directory, &event.batch_file);
        assert_eq!(file.batch_id, event.batch_id, "{}", event.batch_file);
        for id in file.datasets {
            emitted.datasets.insert(id);
            *emitted.listings.entry(id).or_default() += 1;
        }
        emitted.events.push(event);
    }
    emitted
}

/// A batch file from a local directory, checking its name is as the Python writer makes it.
pub fn read_batch_file(directory: &Path, name: &str) -> DatasetBatch {
    let (stamp, rest) = name.split_at(26);
    assert!(
        chrono::NaiveDateTime::parse_from_str(stamp, "%Y-%m-%dT%H-%M-%S-%6f").is_ok(),
        "time stamp of {name}"
    );
    let id = rest
        .strip_prefix('-')
        .and_then(|r| r.strip_suffix(".json"))
        .expect("-<batch id>.json");
    Uuid::parse_str(id).expect("batch id");
    let bytes = std::fs::read(directory.join(name)).expect("the batch file exists");
    DatasetBatch::from_json(&bytes).expect("a batch file")
}

/// Waits until the batch files list every id of `expected`.
pub async fn wait_for_datasets(
    env: &TestEnv,
    topic: &str,
    directory: &Path,
    expected: &BTreeSet<Uuid>,
    timeout: Duration,
) -> Emitted {
    let deadline = Instant::now() + timeout;
    loop {
        let emitted = emitted(env, topic, directory).await;
        if expected.is_subset(&emitted.datasets) {
            return emitted;
        }
        assert!(
            Instant::now() < deadline,
            "after {timeout:?}, {} of {} datasets were announced",
            expected.intersection(&emitted.datasets).count(),
            expected.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The dataset ids in the registry.
pub async fn registry_datasets(registry: &TestRegistry) -> Vec<Uuid> {
    let mut db = PgConnection::connect(&registry.database_url)
        .await
        .expect("connect");
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT id FROM {}.dataset",
        registry.namespace
    )))
    .fetch_all(&mut db)
    .await
    .expect("dataset ids")
}

/// The group's committed offset per partition of `topic`.
pub fn committed(bootstrap: &str, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut list = TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition(topic, p);
    }
    let committed = consumer
        .committed_offsets(list, Duration::from_secs(10))
        .expect("committed offsets");
    (0..partitions)
        .map(
            |p| match committed.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => -1,
            },
        )
        .collect()
}

/// A dead-letter record's header as text.
pub fn header(message: &OwnedMessage, name: &str) -> Option<String> {
    service_kit::kafka::header_text(message, name)
}

/// `GET path` on the writer's HTTP address: status and body.
pub async fn http_get(address: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect to the HTTP endpoints");
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("response");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Lines of a fixture messages file (`messages/<file>` of [`crate::fixtures_dir`]).
pub fn reference_lines(file: &str) -> Vec<Vec<u8>> {
    crate::fixture_lines(&format!("messages/{file}"))
}

/// The dataset ids of raw message lines.
pub fn ids_of(lines: &[Vec<u8>]) -> BTreeSet<Uuid> {
    lines
        .iter()
        .flat_map(|line| {
            let value: serde_json::Value = serde_json::from_slice(line).expect("json");
            crate::messages::dataset_ids(&value)
        })
        .collect()
}
