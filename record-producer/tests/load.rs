//! The record producer against a real writer, broker and registry: every dataset accounted for,
//! faults injected and recognised, and a lost writer noticed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use service_kit::ServiceHandle;
use std::time::Duration;

use app_metrics::MetricsSettings;
use record_producer::messages::DatasetTypeSpec;
use record_producer::schedule::{NightPlan, Processing};
use record_producer::{Faults, LoadSettings, MetricsCheck, Mode};
use service_kit::KafkaSettings;
use test_support::pipeline::registry_datasets;
use test_support::schema_registry::TestSchemaRegistry;
use test_support::writer::{env_settings, start};
use test_support::{Fixture, fixture, unique_name};

fn load_settings(f: &Fixture, mode: Mode, visits: u32, detectors: u32) -> LoadSettings {
    let mut plan = NightPlan::new(20260501, visits);
    plan.seed = 11;
    LoadSettings {
        kafka: KafkaSettings::plaintext(f.env.kafka_bootstrap()),
        topic: f.topics.input.clone(),
        events_topic: f.topics.events.clone(),
        dead_letter_topic: Some(f.topics.dead_letter.clone()),
        output_directory: format!("{}/", f.dir.path().display()),
        mode,
        plan,
        processing: Processing {
            delay_s: 5.0,
            spread_s: 5.0,
        },
        speed: 100.0,
        detectors,
        dataset_types: DatasetTypeSpec::defaults(),
        run: None,
        faults: Faults::default(),
        datastore_root: None,
        settle_timeout: Duration::from_secs(60),
        create_topics: None,
        progress: false,
        publication_url: None,
        metrics: None,
        plot: None,
        message_log: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compressed_night_is_ingested_and_accounted_for() {
    let f = fixture(2).await;
    // The writer sends its application metrics events to the test broker, as to Sasquatch; the
    // report counts them against the batches.
    let schema_registry = TestSchemaRegistry::start().await.expect("schema registry");
    let metrics = MetricsSettings::plaintext(
        "butlerwriter",
        unique_name("metrics"),
        &schema_registry.url,
        f.env.kafka_bootstrap(),
    );
    f.env
        .create_topic(&metrics.topic(), 1)
        .await
        .expect("metrics topic");
    let mut writer_settings = env_settings(&f.env, &f.registry, &f.topics, f.dir.path());
    writer_settings.metrics = Some(metrics.clone());
    let writer = start(writer_settings).await;
    let datastore = tempfile::tempdir().expect("datastore");
    let plot = f.dir.path().join("night.svg");
    let mut settings = load_settings(&f, Mode::Night, 3, 30);
    settings.datastore_root = Some(format!("{}/", datastore.path().display()));
    settings.plot = Some(plot.clone());
    settings.metrics = Some(MetricsCheck {
        topic: metrics.topic(),
        registry_url: schema_registry.url.clone(),
    });
    let report = record_producer::run(settings).await.expect("load test");
    let o = &report.outcome;
    assert!(o.is_complete(), "{}", report.table());
    assert_eq!(o.messages_sent, 90);
    assert_eq!(o.messages_delivered, 90);
    assert_eq!(o.datasets_sent, 270);
    assert_eq!(o.datasets_ingested, 270);
    assert_eq!(o.datasets_missing, 0);
    assert!(o.events >= 1);
    assert!(report.latency.p50 > 0.0 && report.latency.p50 <= report.latency.max);
    // What the producer counted is what the registry holds.
    assert_eq!(registry_datasets(&f.registry).await.len(), 270);
    // The files were written where the datasets say they are, before their messages.
    let files = walk(datastore.path());
    assert_eq!(files, 270);
    let svg = std::fs::read_to_string(&plot).expect("plot");
    assert!(svg.contains("latency"));
    // One decodable metrics event per batch, adding up to what the report counted.
    let m = report.metrics.as_ref().expect("metrics counted");
    assert_eq!(m.error, None);
    assert_eq!(m.batch_events, o.events, "{}", report.table());
    assert_eq!((m.undecodable, m.other_events), (0, 0));
    assert_eq!(m.datasets, 270);
    assert_eq!(m.messages, 90);
    assert!(
        report.table().contains("(one per batch;"),
        "{}",
        report.table()
    );
    writer.shutdown();
    writer.wait().await.expect("writer stops cleanly");
}

fn walk(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .expect("dir")
        .map(|e| e.expect("entry").path())
        .map(|p| if p.is_dir() { walk(&p) } else { 1 })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_faults_are_recognised() {
    let f = fixture(3).await;
    let writer = start(env_settings(&f.env, &f.registry, &f.topics, f.dir.path())).await;
    let mut settings = load_settings(&f, Mode::Burst, 2, 189);
    settings.faults = Faults {
        redeliver_per_mille: 50,
        twin_per_mille: 50,
        malformed_per_mille: 30,
    };
    let report = record_producer::run(settings).await.expect("load test");
    let o = &report.outcome;
    assert!(o.is_complete(), "{}", report.table());
    assert!(
        o.redeliveries > 5 && o.twins > 5 && o.malformed > 3,
        "{o:?}"
    );
    assert_eq!(o.malformed_dead_lettered, o.malformed);
    // One copy of each twin pair is in, the other rejected as a conflict.
    assert_eq!(o.datasets_rejected_expected, 3 * o.twins);
    assert_eq!(o.datasets_rejected_unexpected, 0);
    assert_eq!(o.twin_pairs_both_ingested, 0);
    assert_eq!(o.datasets_ingested, 3 * 2 * 189);
    assert_eq!(
        registry_datasets(&f.registry).await.len() as u64,
        o.datasets_ingested
    );
    assert!(
        o.dead_letter_reasons.len() >= 2,
        "{:?}",
        o.dead_letter_reasons
    );
    writer.shutdown();
    writer.wait().await.expect("writer stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_writer_is_reported_not_hidden() {
    let f = fixture(1).await;
    // No writer: every delivered dataset must show up as missing, and the run fails.
    let mut settings = load_settings(&f, Mode::Backlog, 1, 10);
    settings.settle_timeout = Duration::from_secs(2);
    let report = record_producer::run(settings).await.expect("load test");
    let o = &report.outcome;
    assert!(!o.is_complete());
    assert_eq!(o.messages_delivered, 10);
    assert_eq!(o.datasets_missing, 30);
    // Each lost dataset is listed with the message that carried it.
    assert_eq!(report.unaccounted.len(), 30);
    assert!(
        report
            .unaccounted
            .iter()
            .all(|u| u.dead_letter_reason.is_none())
    );
    let table = report.table();
    assert!(
        table.contains("FAIL") && table.contains("never announced (30"),
        "{table}"
    );
    assert!(table.contains("detector 0"), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_that_does_not_exist_is_a_clear_error() {
    let f = fixture(1).await;
    let mut settings = load_settings(&f, Mode::Burst, 1, 1);
    settings.events_topic = unique_name("missing");
    let error = record_producer::run(settings)
        .await
        .expect_err("no events topic");
    let text = format!("{error:#}");
    assert!(text.contains("does not exist"), "{text}");
}
