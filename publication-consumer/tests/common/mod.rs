//! What the consumer's tests share, beside `test_support`'s fixture (broker, fresh registry,
//! topics and batch directory) and messages: datasets put in the registry by the writer's engine,
//! batch files and events made by hand, and the consumer started against them with a manual
//! clock.

#![allow(dead_code, unused_imports)]

pub use test_support::messages;

pub mod daf_butler;

/// A real writer ahead of the consumer, and what it left.
pub mod writer {
    pub use test_support::pipeline::*;
    pub use test_support::writer::*;
}

use service_kit::ServiceHandle;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use butler_repository::{ButlerConfig, PoolSettings};
use butler_writer::Registry;
use chrono::{DateTime, Utc};
use publication_consumer::{Clock, Counts, Service, Settings};
use schema::{BatchIngestedEvent, DatasetBatch};
use service_kit::{KafkaSettings, RetrySettings};
use sqlx::AssertSqlSafe;
use test_support::unique_name;
use uuid::Uuid;

pub use test_support::pipeline::{http_get, produce};
pub use test_support::{Fixture, fixture};

/// The end of the reference visit's (and exposure's) timespan, UTC: every visit the message
/// factory makes keeps it. TAI 1777683710 s is UTC 1777683673 s.
pub fn observation_end() -> DateTime<Utc> {
    DateTime::from_timestamp(1_777_683_673, 0).expect("a valid time")
}

/// The default embargo.
pub const EMBARGO_HOURS: i64 = 80;

/// Consumer settings for a test: the fixture's events topic and batch directory, a group and a
/// state schema of its own in the registry's database, a manual clock standing at the end of
/// the observation, short retries, HTTP on a free loopback port.
pub fn settings(fixture: &Fixture) -> Settings {
    let mut settings = Settings::new(
        fixture.registry.butler_config.display().to_string(),
        KafkaSettings::plaintext(fixture.env.kafka_bootstrap()),
        format!("{}/", fixture.dir.path().display()),
    );
    settings.topic = fixture.topics.events.clone();
    settings.group_id = unique_name("pps");
    settings.schema = unique_name("pps");
    settings.http_address = "127.0.0.1:0".parse().expect("address");
    settings.retry = RetrySettings {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(500),
    };
    settings.batch_file_wait = Duration::from_secs(60);
    settings.clock = Clock::manual(observation_end());
    settings
}

/// Starts the consumer, panicking with the reason if it cannot.
pub async fn start(settings: Settings) -> Service {
    Service::start(settings)
        .await
        .unwrap_or_else(|e| panic!("the consumer did not start: {}", service_kit::chain(&e)))
}

/// Stops a consumer and waits for it.
pub async fn stop(service: Service) {
    service.shutdown();
    tokio::time::timeout(Duration::from_secs(30), service.wait())
        .await
        .expect("the consumer stops within 30 s")
        .expect("the consumer stops cleanly");
}

/// Puts `batches` batches of `per_batch` datasets of new visits (from `first_visit` on) in the
/// registry with the writer's engine, and returns each batch as its batch file would list it.
pub async fn ingest(
    fixture: &Fixture,
    first_visit: i64,
    batches: usize,
    per_batch: usize,
) -> Vec<DatasetBatch> {
    let config = ButlerConfig::from_path(&fixture.registry.butler_config).expect("butler.yaml");
    let registry = Registry::open(&config, &PoolSettings::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let factory = messages::MessageFactory::load();
    let mut out = Vec::new();
    for b in 0..batches {
        // A visit holds 189 detectors x 3 datasets; give each batch visits of its own.
        let visit = first_visit + i64::try_from(b * (per_batch / 567 + 1)).expect("small");
        let lines = messages::to_lines(&factory.batch(visit, per_batch));
        let values: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
        let outcome = registry
            .ingest_values(&values)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(outcome.rejected.is_empty(), "{:?}", outcome.rejected);
        out.push(DatasetBatch {
            batch_id: Uuid::new_v4(),
            datasets: outcome.datasets().copied().collect(),
        });
    }
    out
}

/// Writes a batch file into `dir` and returns its name, as the writer names them.
pub fn write_batch_file(dir: &Path, batch: &DatasetBatch) -> String {
    let name = batch_file_name(batch.batch_id);
    std::fs::write(dir.join(&name), batch.to_json()).expect("write the batch file");
    name
}

/// The writer's name for a batch file.
pub fn batch_file_name(batch_id: Uuid) -> String {
    format!(
        "{}-{batch_id}.json",
        Utc::now().format("%Y-%m-%dT%H-%M-%S-%6f")
    )
}

/// The event announcing a batch file.
pub fn event(batch_id: Uuid, batch_file: &str) -> Vec<u8> {
    BatchIngestedEvent::prompt_processing(batch_id, batch_file).to_json()
}

/// Writes the batch files and produces their events.
pub async fn announce(fixture: &Fixture, batches: &[DatasetBatch]) -> Vec<Vec<u8>> {
    let events: Vec<Vec<u8>> = batches
        .iter()
        .map(|b| event(b.batch_id, &write_batch_file(fixture.dir.path(), b)))
        .collect();
    produce(
        fixture.env.kafka_bootstrap(),
        &fixture.topics.events,
        &events,
        Some(0),
    )
    .await;
    events
}

/// `GET path` as JSON.
pub async fn get_json(address: SocketAddr, path: &str) -> (u16, serde_json::Value) {
    let (status, body) = http_get(address, path).await;
    let value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"));
    (status, value)
}

/// `GET /api/v1/counts`.
pub async fn counts(address: SocketAddr) -> Counts {
    let (status, value) = get_json(address, "/api/v1/counts").await;
    assert_eq!(status, 200, "{value}");
    serde_json::from_value(value).expect("the counts")
}

/// Waits until the counts satisfy `done`, failing with the last counts after `timeout`.
pub async fn wait_for_counts(
    address: SocketAddr,
    timeout: Duration,
    done: impl Fn(&Counts) -> bool,
) -> Counts {
    let deadline = Instant::now() + timeout;
    loop {
        let counts = counts(address).await;
        if done(&counts) {
            return counts;
        }
        assert!(Instant::now() < deadline, "after {timeout:?}: {counts:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Rows of a state table.
pub async fn rows(service: &Service, table: &str) -> i64 {
    sqlx::query_scalar(AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
        .fetch_one(service.store().pool())
        .await
        .expect("count")
}

/// A metric's value in the exposition (the first sample whose line starts with `prefix`).
pub fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
