//! Application metrics events to Sasquatch: one per batch, in the Confluent wire format, with a
//! schema in the registry that an independent Avro implementation (Python's fastavro) decodes
//! field by field; and ingestion untouched when the registry or the metrics broker is down.

// Test code: a failed expectation is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use app_metrics::MetricsSettings;
use butler_writer::service::Service;
use butler_writer::service::sasquatch::APPLICATION;
use rdkafka::message::Message;
use service_kit::ServiceHandle;
use test_support::messages::{MessageFactory, to_lines};
use test_support::pipeline::{emitted, ids_of, produce, reference_lines, wait_for_datasets};
use test_support::schema_registry::{TestSchemaRegistry, decode_with_fastavro, nothing_listens};
use test_support::writer::{env_settings, start};
use test_support::{Fixture, fixture, unique_name};
use uuid::Uuid;

async fn stop(service: Service) {
    service.shutdown();
    service.wait().await.expect("a clean stop");
}

fn sum(events: &[serde_json::Value], field: &str) -> i64 {
    events
        .iter()
        .map(|e| e["event"][field].as_i64().unwrap())
        .sum()
}

#[tokio::test]
async fn one_event_per_batch_that_fastavro_decodes_field_by_field() {
    let Fixture {
        env,
        registry,
        topics,
        dir,
    } = fixture(1).await;
    let schema_registry = TestSchemaRegistry::start().await.unwrap();
    let metrics = MetricsSettings::plaintext(
        APPLICATION,
        unique_name("metrics"),
        &schema_registry.url,
        env.kafka_bootstrap(),
    );
    let metrics_topic = metrics.topic();
    env.create_topic(&metrics_topic, 1).await.unwrap();

    let mut lines = Vec::new();
    for file in ["batch_a.jsonl", "batch_a_conflict.jsonl", "batch_c.jsonl"] {
        lines.extend(reference_lines(file));
    }
    let conflicting = ids_of(&reference_lines("batch_a_conflict.jsonl"));
    let expected: BTreeSet<Uuid> = ids_of(&lines).difference(&conflicting).copied().collect();
    lines.push(b"not json at all".to_vec());
    lines.push(br#"{"type":"day-end","day_obs":20260501}"#.to_vec());
    produce(env.kafka_bootstrap(), &topics.input, &lines, Some(0)).await;

    let mut settings = env_settings(&env, &registry, &topics, dir.path());
    settings.metrics = Some(metrics.clone());
    // Several batches, several events; with two batches in the database at once, the conflicting
    // copies (offsets 4-7) run beside the originals (0-3) and must still lose to them.
    settings.batch.max_messages = 4;
    let service = start(settings).await;
    let counters = Arc::clone(service.metrics());
    wait_for_datasets(
        &env,
        &topics.events,
        dir.path(),
        &expected,
        Duration::from_secs(60),
    )
    .await;
    // Every message is in a committed batch once the dead letters are out too.
    let dead = env
        .read_topic(&topics.dead_letter, 6, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(dead.len(), 6);
    stop(service).await; // sends what is queued
    let batches = emitted(&env, &topics.events, dir.path()).await.events;

    let messages = env
        .read_topic(&metrics_topic, batches.len(), Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(messages.len(), batches.len(), "one metrics event per batch");
    assert!(
        messages.iter().all(|m| m.key().is_none()),
        "events have no key"
    );
    assert_eq!(
        counters.app_events.published_total(),
        u64::try_from(batches.len()).unwrap()
    );
    assert_eq!(counters.app_events.dropped_total(), 0);
    let values: Vec<Vec<u8>> = messages
        .iter()
        .map(|m| m.payload().unwrap().to_vec())
        .collect();
    let decoded = decode_with_fastavro(&schema_registry.url, &values).unwrap();
    assert_eq!(decoded.len(), values.len());
    eprintln!("a decoded event: {:#}", decoded[0]);
    for event in &decoded {
        assert!(event.get("error").is_none(), "{event}");
        assert_eq!(event["name"], "batch");
        assert_eq!(event["namespace"], metrics_topic.as_str());
        let fields = &event["event"];
        assert_eq!(fields["application"], APPLICATION);
        let id = Uuid::parse_str(fields["id"].as_str().unwrap()).unwrap();
        assert_eq!(id.get_version_num(), 4);
        // fastavro gives timestamp-millis as a datetime; it agrees with timestamp_ns.
        let ns = fields["timestamp_ns"].as_i64().unwrap();
        let when = chrono::DateTime::parse_from_str(
            fields["timestamp"].as_str().unwrap(),
            "%Y-%m-%d %H:%M:%S%.f%:z",
        )
        .unwrap();
        assert_eq!(when.timestamp_millis(), ns / 1_000_000);
        assert_eq!(fields["delivery"], "idempotent");
        for duration in [
            "engine_seconds",
            "file_seconds",
            "announce_seconds",
            "batch_seconds",
            "lag_seconds",
        ] {
            let seconds = fields[duration].as_f64().unwrap();
            assert!((0.0..60.0).contains(&seconds), "{duration} = {seconds}");
        }
        let rejected: i64 = [
            "rejected_conflict",
            "rejected_invalid",
            "rejected_unknown_dataset_type",
            "rejected_unsupported",
            "rejected_other_message_type",
        ]
        .iter()
        .map(|f| fields[f].as_i64().unwrap())
        .sum();
        assert_eq!(fields["rejected"].as_i64().unwrap(), rejected);
    }
    // The events add up to what the writer did.
    let batch_ids: BTreeSet<String> = decoded
        .iter()
        .map(|e| e["event"]["batch_id"].as_str().unwrap().to_owned())
        .collect();
    let announced: BTreeSet<String> = batches.iter().map(|e| e.batch_id.to_string()).collect();
    assert_eq!(batch_ids, announced);
    assert_eq!(
        sum(&decoded, "messages"),
        i64::try_from(lines.len()).unwrap()
    );
    assert_eq!(
        sum(&decoded, "datasets_ingested"),
        i64::try_from(expected.len()).unwrap()
    );
    assert_eq!(sum(&decoded, "rejected_conflict"), 4);
    assert_eq!(sum(&decoded, "rejected_invalid"), 1);
    assert_eq!(sum(&decoded, "rejected_other_message_type"), 1);
    assert_eq!(sum(&decoded, "dead_lettered"), 6);

    // The subject is <topic>.<event>, with compatibility NONE.
    let subject = format!("{metrics_topic}.batch");
    let client = reqwest_get(&format!("{}/config/{subject}", schema_registry.url)).await;
    assert!(client.contains("NONE"), "{client}");
}

async fn reqwest_get(url: &str) -> String {
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || {
        let output = Command::new("python3")
            .args([
                "-c",
                "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1]).read().decode())",
                &url,
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn ingestion_is_unaffected_when_the_registry_or_the_metrics_broker_is_down() {
    let schema_registry = TestSchemaRegistry::start().await.unwrap();
    let factory = MessageFactory::load();
    for (case, first_visit) in [
        ("registry down", 8_300_000),
        ("metrics broker down", 8_300_100),
    ] {
        let Fixture {
            env,
            registry,
            topics,
            dir,
        } = fixture(1).await;
        let (registry_url, bootstrap) = match case {
            "registry down" => (
                format!("http://{}", nothing_listens().unwrap()),
                env.kafka_bootstrap().to_owned(),
            ),
            _ => (schema_registry.url.clone(), nothing_listens().unwrap()),
        };
        let metrics = MetricsSettings::plaintext(
            APPLICATION,
            unique_name("metrics"),
            registry_url,
            bootstrap,
        );
        let lines = to_lines(&factory.batch(first_visit, 40));
        let expected = ids_of(&lines);
        produce(env.kafka_bootstrap(), &topics.input, &lines, Some(0)).await;
        let mut settings = env_settings(&env, &registry, &topics, dir.path());
        settings.batch.max_messages = 5; // several batches, several events to drop
        settings.metrics = Some(metrics);
        let started = Instant::now();
        let service = start(settings).await;
        let counters = Arc::clone(service.metrics());
        let emitted = wait_for_datasets(
            &env,
            &topics.events,
            dir.path(),
            &expected,
            Duration::from_secs(60),
        )
        .await;
        let took = started.elapsed();
        let stopping = Instant::now();
        stop(service).await;
        assert_eq!(emitted.datasets, expected, "{case}");
        assert!(
            emitted.events.len() >= lines.len().div_ceil(5),
            "{case}: {} batches of {} messages",
            emitted.events.len(),
            lines.len()
        );
        assert_eq!(counters.app_events.published_total(), 0, "{case}");
        if case == "registry down" {
            // The first event found the registry down; the rest fell in the pause.
            assert_eq!(
                counters.app_events.dropped_total(),
                u64::try_from(emitted.events.len()).unwrap(),
                "{case}"
            );
        }
        assert!(
            stopping.elapsed() < Duration::from_secs(15),
            "{case}: the stop took {:?}",
            stopping.elapsed()
        );
        eprintln!("{case}: {} datasets in {took:?}", expected.len());
    }
}
