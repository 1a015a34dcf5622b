//! The failures operators see, each under load from the record producer and each ending with an
//! exact reconciliation: every dataset with a delivery report is in the registry exactly once and
//! in a batch file, nothing else is, and the registry equals a clean single run of the same
//! messages table for table (ingest dates aside). Each saves its figures for the table
//! `scripts/test` prints at the end (`cargo run -p integration-tests --bin scenario-table`).
//!
//! These take services away from everything else using them (Postgres stopped, the broker
//! restarted): they run one at a time (the `fault-scenarios` group in `.config/nextest.toml`) and
//! apart from the other crates' tests (`scripts/test` runs them last).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::path::Path;
use std::time::{Duration, Instant};

use integration_tests::{Figures, Harness, Reconciliation, WriterProcess};
use rdkafka::producer::{FutureProducer, FutureRecord};
use record_producer::{Faults, Mode, Report};

/// Librdkafka's default session timeout is 45 s: a SIGKILLed writer's partitions wait that long
/// for the group to notice. The scenarios shorten it so five kills fit in a test; the recovery
/// times below scale with it.
const SESSION_TIMEOUT_ARGS: [&str; 2] = ["--kafka-option", "session.timeout.ms=6000"];

async fn harness(name: &str, partitions: i32) -> Harness {
    Harness::new(
        name,
        partitions,
        Path::new(env!("CARGO_BIN_EXE_writer-under-test")),
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"))
}

/// Reconciles, saves the figures, prints both, and asserts exactness.
async fn finish(
    h: &Harness,
    report: &Report,
    recovery: Option<Duration>,
    started: Instant,
) -> Reconciliation {
    eprintln!("{}", report.table());
    assert_eq!(report.outcome.messages_failed, 0, "a delivery failed");
    let r = h
        .reconcile(report)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let figures = Figures::new(
        &h.name,
        &r,
        recovery.map(|d| d.as_secs_f64()),
        started.elapsed().as_secs_f64(),
    );
    figures.save().expect("saving figures");
    eprintln!("{figures:?}\n{}", r.comparison);
    r.assert_exact();
    r
}

async fn stop(writer: WriterProcess) {
    let status = writer.terminate().await.expect("writer stops");
    assert!(status.success(), "writer exit status {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compressed_night_at_nominal_load() {
    let started = Instant::now();
    let mut h = harness("night_nominal", 1).await;
    let writer = h.start_writer(&[], &[]).await.unwrap();
    let mut load = h.load(Mode::Night, 12, 189, Duration::from_secs(60));
    // Ten times LSSTCam's pace: a 7-minute stretch of night in 45 s.
    load.speed = 10.0;
    let report = record_producer::run(load).await.unwrap();
    assert!(report.outcome.is_complete(), "{}", report.table());
    assert!(
        report.latency.p99 < 2.0,
        "p99 {} s at 10x nominal load",
        report.latency.p99
    );
    let r = finish(&h, &report, None, started).await;
    assert_eq!(r.in_registry, 12 * 189 * 3);
    assert_eq!(r.repeated_in_batch_files, 0, "no crash, no repeat");
    stop(writer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_killed_five_times_loses_and_doubles_nothing() {
    let started = Instant::now();
    let mut h = harness("writer_sigkill_x5", 2).await;
    let mut writer = h.start_writer(&SESSION_TIMEOUT_ARGS, &[]).await.unwrap();
    // 90 visits x 189 detectors x 3 datasets = 51,030 datasets, sent as a backlog.
    let load = h.load(Mode::Backlog, 90, 189, Duration::from_secs(240));
    let run = tokio::spawn(record_producer::run(load));
    let mut rng = fastrand::Rng::with_seed(5);
    let mut last_restart = Instant::now();
    for kill in 1..=5 {
        // Somewhere in the next 1.5-4 s of work: mid-batch, mid-commit, wherever it falls.
        let wait = Duration::from_millis(1500 + rng.u64(0..2500));
        tokio::time::sleep(wait).await;
        eprintln!("kill {kill}: SIGKILL after {wait:?}");
        writer.kill9().await.unwrap();
        writer = h.start_writer(&SESSION_TIMEOUT_ARGS, &[]).await.unwrap();
        last_restart = Instant::now();
    }
    let report = run.await.unwrap().unwrap();
    let recovery = last_restart.elapsed();
    assert!(report.outcome.is_complete(), "{}", report.table());
    let r = finish(&h, &report, Some(recovery), started).await;
    assert_eq!(r.in_registry, 90 * 189 * 3);
    stop(writer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_for_30_seconds_mid_run() {
    let started = Instant::now();
    let mut h = harness("postgres_stopped_30s", 1).await;
    let writer = h.start_writer(&[], &[]).await.unwrap();
    let load = h.load(Mode::Burst, 30, 189, Duration::from_secs(180));
    let run = tokio::spawn(record_producer::run(load));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    h.env.stop_postgres().await.unwrap();
    let stopped = Instant::now();
    // The writer notices: not ready while the database is away, still alive.
    let mut saw_not_ready = false;
    while stopped.elapsed() < Duration::from_secs(30) {
        if let Ok((503, body)) = writer.readiness().await {
            saw_not_ready |= body.contains("database");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    h.env.start_postgres().await.unwrap();
    let restored = Instant::now();
    assert!(
        saw_not_ready,
        "readiness never reported the database outage"
    );
    let report = run.await.unwrap().unwrap();
    let recovery = restored.elapsed();
    assert!(report.outcome.is_complete(), "{}", report.table());
    finish(&h, &report, Some(recovery), started).await;
    stop(writer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_restarted_mid_run() {
    let started = Instant::now();
    let mut h = harness("broker_restarted", 2).await;
    let writer = h.start_writer(&[], &[]).await.unwrap();
    let load = h.load(Mode::Burst, 30, 189, Duration::from_secs(180));
    let run = tokio::spawn(record_producer::run(load));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    h.env.restart_broker().await.unwrap();
    let restarted = Instant::now();
    let report = run.await.unwrap().unwrap();
    let recovery = restarted.elapsed();
    assert!(report.outcome.is_complete(), "{}", report.table());
    finish(&h, &report, Some(recovery), started).await;
    stop(writer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_on_three_partitions_one_killed() {
    let started = Instant::now();
    let mut h = harness("two_writers_one_killed", 3).await;
    let first = h.start_writer(&SESSION_TIMEOUT_ARGS, &[]).await.unwrap();
    let second = h.start_writer(&SESSION_TIMEOUT_ARGS, &[]).await.unwrap();
    let load = h.load(Mode::Burst, 60, 189, Duration::from_secs(180));
    let run = tokio::spawn(record_producer::run(load));
    tokio::time::sleep(Duration::from_secs(3)).await;
    first.kill9().await.unwrap();
    let killed = Instant::now();
    let report = run.await.unwrap().unwrap();
    let recovery = killed.elapsed();
    assert!(report.outcome.is_complete(), "{}", report.table());
    finish(&h, &report, Some(recovery), started).await;
    stop(second).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_flood_trips_the_breaker_and_dead_letters_nothing_valid() {
    let started = Instant::now();
    let mut h = harness("poison_flood", 1).await;
    let writer = h.start_writer(&[], &[]).await.unwrap();
    // Valid traffic first, all of it ingested.
    let before = record_producer::run(h.load(Mode::Burst, 2, 189, Duration::from_secs(60)))
        .await
        .unwrap();
    assert!(before.outcome.is_complete(), "{}", before.table());

    // Then 600 broken messages, then valid ones behind them.
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", h.env.kafka_bootstrap())
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    for i in 0..600 {
        let value = format!("{{\"type\":\"pp-output\",\"dimension_records\":{i}");
        producer
            .send(
                FutureRecord::<(), str>::to(&h.topics.input).payload(&value),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    let mut after_load = h.load(Mode::Burst, 1, 189, Duration::from_secs(5));
    after_load.plan.first_seq_num = 100;
    let after = record_producer::run(after_load).await.unwrap();
    // Stuck behind the flood, not lost, not dead-lettered: the breaker holds the stream.
    assert_eq!(after.outcome.datasets_missing, 189 * 3, "{}", after.table());
    let (status, body) = writer.readiness().await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"breaker_open\":true"), "{body}");
    // The breaker trips when 90% of its 200-message window is bad: after valid traffic, the
    // flood's first 180 or so are dead-lettered before it does. Nothing valid is, and the rest
    // is held.
    let dead = h
        .env
        .read_topic(&h.topics.dead_letter, 600, Duration::from_secs(2))
        .await
        .unwrap();
    assert!(
        dead.len() <= 200,
        "the breaker dead-lettered {}",
        dead.len()
    );
    assert!(
        dead.iter().all(is_broken),
        "a valid message was dead-lettered"
    );

    // The operator's fix: look at the flood, then let the writer dead-letter it (breaker off).
    stop(writer).await;
    let fixed_at = Instant::now();
    let writer = h
        .start_writer(&[], &[("BUTLER_WRITER_BREAKER_MIN_MESSAGES", "0")])
        .await
        .unwrap();
    let expected = 3 * 189 * 3;
    let deadline = Instant::now() + Duration::from_secs(60);
    while integration_tests::registry_datasets(&h.registry)
        .await
        .unwrap()
        .len()
        < expected
    {
        assert!(Instant::now() < deadline, "the valid messages never landed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let recovery = fixed_at.elapsed();
    let dead = h
        .env
        .read_topic(&h.topics.dead_letter, 600, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(dead.len(), 600, "exactly the flood is dead-lettered");
    assert!(
        dead.iter().all(is_broken),
        "a valid message was dead-lettered"
    );
    // The reconciliation of the whole run: the later report's missing datasets are expected in.
    let r = finish(&h, &after, Some(recovery), started).await;
    assert_eq!(r.in_registry, expected as u64);
    stop(writer).await;
}

/// True for a dead letter that is one of the flood's broken messages.
fn is_broken(message: &rdkafka::message::OwnedMessage) -> bool {
    rdkafka::Message::payload(message)
        .is_some_and(|v| schema::PromptProcessingOutputEvent::from_json(v).is_err())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pods_on_one_image_the_first_copy_wins() {
    let started = Instant::now();
    let mut h = harness("two_pods_same_image", 1).await;
    let writer = h.start_writer(&[], &[]).await.unwrap();
    let mut load = h.load(Mode::Burst, 10, 189, Duration::from_secs(90));
    load.faults = Faults {
        twin_per_mille: 200,
        ..Faults::default()
    };
    let report = record_producer::run(load).await.unwrap();
    assert!(report.outcome.is_complete(), "{}", report.table());
    let twins = report.outcome.twins;
    assert!(twins > 200, "{twins} twins");
    // One partition, so the first copy is first in line: every rejection is a twin's copy.
    assert_eq!(report.outcome.datasets_rejected_expected, 3 * twins);
    assert!(
        report
            .unaccounted
            .iter()
            .all(|u| u.expected && u.message.ends_with("(twin pod)")),
        "a first copy lost"
    );
    let r = finish(&h, &report, None, started).await;
    assert_eq!(r.in_registry, 10 * 189 * 3);
    assert_eq!(r.dead_lettered, 3 * twins);
    stop(writer).await;
}
