//! Sustained throughput of the consumer: a backlog of batch-ingested events, each announcing a
//! batch file of datasets already in a fresh registry (put there by the writer's engine), is put
//! on a topic first; then the consumer (in-process, this build) drains it into a fresh state
//! schema, and again as a replay by a second group (every batch already recorded).
//!
//!     eval "$(deploy/local/stack env)"
//!     cargo bench -p publication-consumer --bench events   # BENCH_EVENTS=N (default 100),
//!                                                          # BENCH_BATCH=M (default 500)
//!
//! Reported: events and datasets per second from the first batch recorded to the last
//! (sustained), and over the whole drain including joining the group; then it reconciles: every
//! dataset of every batch is recorded exactly once, none unknown, no event failed. With
//! `RUST_LOG=publication_consumer=info` the consumer's log shows each batch's read, registry
//! lookup and store times.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::cast_precision_loss,
    missing_docs
)]

#[path = "../tests/common/mod.rs"]
mod common;

use service_kit::ServiceHandle;
use std::time::{Duration, Instant};

use butler_repository::{ButlerConfig, PoolSettings};
use butler_writer::Registry;
use chrono::{DateTime, Utc};
use publication_consumer::{Service, Settings};
use schema::{BatchIngestedEvent, DatasetBatch};
use service_kit::metrics::Exposition;
use service_kit::{KafkaSettings, RetrySettings};
use test_support::{TestEnv, unique_name};
use uuid::Uuid;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Run {
    drain: Duration,
    sustained: Option<Duration>,
}

async fn drain(settings: Settings, events: usize, replay: bool) -> Run {
    let started = Instant::now();
    let service = Service::start(settings)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        let text = service.metrics().render();
        let name = if replay {
            "publication_consumer_events_duplicate_total"
        } else {
            "publication_consumer_events_processed_total"
        };
        let done = text
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        if done as usize >= events {
            break;
        }
        assert!(Instant::now() < deadline, "not drained in 30 minutes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drain = started.elapsed();
    let sustained = if replay {
        None
    } else {
        let (first, last): (DateTime<Utc>, DateTime<Utc>) =
            sqlx::query_as("SELECT min(processed_at), max(processed_at) FROM batch")
                .fetch_one(service.store().pool())
                .await
                .unwrap();
        (last - first).to_std().ok()
    };
    service.shutdown();
    service.wait().await.unwrap();
    Run { drain, sustained }
}

#[tokio::main]
async fn main() {
    if std::env::var_os("RUST_LOG").is_some() {
        // The consumer's own lines (`batch recorded` carries read_ms, lookup_ms, store_ms).
        service_kit::logging::init_logging("info", service_kit::logging::LogFormat::Text, &[]);
    }
    let events = env_usize("BENCH_EVENTS", 100);
    let per_batch = env_usize("BENCH_BATCH", 500);
    let env = TestEnv::start().await.unwrap_or_else(|e| panic!("{e:#}"));
    let registry = env.fresh_registry().await.unwrap();
    let topic = unique_name("bench_events");
    env.create_topic(&topic, 1).await.unwrap();
    let dir = tempfile::tempdir().unwrap();

    // The registry's datasets, through the writer's engine; a batch file and an event per batch.
    let prepared = Instant::now();
    let config = ButlerConfig::from_path(&registry.butler_config).unwrap();
    let engine = Registry::open(&config, &PoolSettings::default())
        .await
        .unwrap();
    let factory = common::messages::MessageFactory::load();
    let mut values = Vec::with_capacity(events);
    let mut total = 0usize;
    for b in 0..events {
        let visit = 8_000_000 + i64::try_from(b * (per_batch / 567 + 1)).unwrap();
        let lines = common::messages::to_lines(&factory.batch(visit, per_batch));
        let refs: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
        let outcome = engine.ingest_values(&refs).await.unwrap();
        assert!(outcome.rejected.is_empty());
        let batch = DatasetBatch {
            batch_id: Uuid::new_v4(),
            datasets: outcome.datasets().copied().collect(),
        };
        total += batch.datasets.len();
        let name = format!(
            "{}-{}.json",
            Utc::now().format("%Y-%m-%dT%H-%M-%S-%6f"),
            batch.batch_id
        );
        std::fs::write(dir.path().join(&name), batch.to_json()).unwrap();
        values.push(BatchIngestedEvent::prompt_processing(batch.batch_id, name).to_json());
    }
    common::writer::produce(env.kafka_bootstrap(), &topic, &values, Some(0)).await;
    println!(
        "prepared {events} events of {per_batch} datasets ({total} datasets) in {:.1} s",
        prepared.elapsed().as_secs_f64()
    );

    let mut settings = Settings::new(
        registry.butler_config.display().to_string(),
        KafkaSettings::plaintext(env.kafka_bootstrap()),
        format!("{}/", dir.path().display()),
    );
    settings.topic = topic.clone();
    settings.group_id = unique_name("bench");
    settings.schema = unique_name("bench");
    settings.http_address = "127.0.0.1:0".parse().unwrap();
    settings.retry = RetrySettings {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(1000),
    };
    let schema = settings.schema.clone();
    let first = drain(settings.clone(), events, false).await;
    let rate = |n: usize, d: Duration| n as f64 / d.as_secs_f64();
    println!(
        "first pass: drained in {:.2} s: {:.1} events/s, {:.0} datasets/s (including start-up and joining the group)",
        first.drain.as_secs_f64(),
        rate(events, first.drain),
        rate(total, first.drain)
    );
    if let Some(sustained) = first.sustained.filter(|d| !d.is_zero() && events > 1) {
        // From the first batch recorded to the last: events - 1 intervals.
        let per_event = events - 1;
        println!(
            "first pass, sustained: {:.1} events/s, {:.0} datasets/s ({} events of {per_batch} datasets in {:.2} s)",
            rate(per_event, sustained),
            rate(per_event * per_batch, sustained),
            per_event,
            sustained.as_secs_f64()
        );
    }

    // Reconcile before the replay.
    let state = publication_consumer::Store::open(
        &env.database_url_for(&registry.database),
        &PoolSettings {
            auth_file: None,
            max_connections: 2,
            ..PoolSettings::default()
        },
        &schema,
    )
    .await
    .unwrap();
    let counts = state.counts(Utc::now()).await.unwrap();
    assert_eq!(counts.datasets as usize, total, "{counts:?}");
    assert_eq!((counts.unknown, counts.failed_events), (0, 0), "{counts:?}");
    assert_eq!(counts.events as usize, events);

    settings.group_id = unique_name("bench_replay");
    let replay = drain(settings, events, true).await;
    println!(
        "replay by a new group (every batch already recorded): {:.1} events/s over {:.2} s",
        rate(events, replay.drain),
        replay.drain.as_secs_f64()
    );
    let again = state.counts(Utc::now()).await.unwrap();
    assert_eq!(again, counts);
    println!("reconciled: {total} datasets recorded once each, none unknown, no event failed");
}
