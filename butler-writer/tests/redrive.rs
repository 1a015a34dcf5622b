//! Re-driving dead letters after a fix, end to end: a message whose exposure names a physical
//! filter the registry lacks is dead-lettered while the rest of its batch lands; the filter is
//! then added (the fix), `butler-writer redrive` (the binary, with the deployed variables) puts
//! the letter back on the input topic, and the live writer ingests and announces it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use service_kit::ServiceHandle;
use std::collections::BTreeSet;
use std::time::Duration;

use common::python::run_butler_writer;
use schema::topics::dead_letter_headers as headers;
use serde_json::Value;
use sqlx::{Connection, PgConnection};
use test_support::fixture;
use test_support::messages::{MessageFactory, dataset_ids, record_mut, to_lines};
use test_support::pipeline::{Fixture, transactional_fixture};
use test_support::pipeline::{header, produce, registry_datasets, wait_for_datasets};
use test_support::writer::{env_settings, start};
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_redriven_after_the_fix_and_announced() {
    redrive_after_the_fix(fixture(1).await).await;
}

/// The same where the writer delivers in transactions: the dead-letter topic then ends with a
/// transaction marker, not a letter, and the letters are read `read_committed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_of_a_transactional_writer_are_redriven() {
    redrive_after_the_fix(transactional_fixture(1).await).await;
}

async fn redrive_after_the_fix(f: Fixture) {
    let factory = MessageFactory::load();
    let good = factory.batch(740_000, 30);
    let mut bad = factory.message(741_000, 5, 3);
    for element in ["exposure", "visit"] {
        record_mut(&mut bad, element)["physical_filter"] = Value::from("zz_99");
    }
    let good_ids: BTreeSet<Uuid> = good.iter().flat_map(dataset_ids).collect();
    let bad_ids: BTreeSet<Uuid> = dataset_ids(&bad).into_iter().collect();

    let writer = start(env_settings(&f.env, &f.registry, &f.topics, f.dir.path())).await;
    let mut messages = good.clone();
    messages.push(bad.clone());
    produce(
        f.env.kafka_bootstrap(),
        &f.topics.input,
        &to_lines(&messages),
        None,
    )
    .await;
    wait_for_datasets(
        &f.env,
        &f.topics.events,
        f.dir.path(),
        &good_ids,
        Duration::from_secs(60),
    )
    .await;
    let dead = f
        .env
        .read_topic(&f.topics.dead_letter, 1, Duration::from_secs(20))
        .await
        .expect("dead letters");
    assert_eq!(dead.len(), 1);
    let reason = header(&dead[0], headers::REASON).expect("reason");
    assert_eq!(reason, "invalid");
    let present: BTreeSet<Uuid> = registry_datasets(&f.registry).await.into_iter().collect();
    assert!(present.is_disjoint(&bad_ids));

    let args = |extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = vec!["redrive".into()];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args.extend(
            [
                "--butler-repository",
                f.registry.butler_config.to_str().expect("utf-8"),
                "--kafka-cluster",
                f.env.kafka_bootstrap(),
                "--kafka-topic",
                &f.topics.input,
                "--kafka-output-topic",
                &f.topics.events,
                "--dead-letter-topic",
                &f.topics.dead_letter,
                "--output-dataset-list-directory",
                &format!("{}/", f.dir.path().display()),
            ]
            .map(str::to_owned),
        );
        args
    };

    // Letters of another reason only: nothing goes back.
    let none = run_butler_writer(args(&["--reason", "conflict"]))
        .await
        .unwrap();
    assert_eq!(none.code(), Some(0), "{}", none.describe());
    let summary: Value = serde_json::from_str(none.stdout.trim()).expect("summary");
    assert_eq!(summary["letters"], 1);
    assert_eq!(summary["by_reason"]["invalid"], 1);
    assert_eq!(summary["redriven"], 0);

    // The fix: the registry learns the filter.
    let mut db = PgConnection::connect(&f.registry.database_url)
        .await
        .expect("connect");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {}.physical_filter (instrument, name, band) VALUES ('LSSTCam', 'zz_99', 'r')",
        f.registry.namespace
    )))
    .execute(&mut db)
    .await
    .expect("add the filter");

    let redriven = run_butler_writer(args(&["--reason", "invalid"]))
        .await
        .unwrap();
    assert_eq!(redriven.code(), Some(0), "{}", redriven.describe());
    let summary: Value = serde_json::from_str(redriven.stdout.trim()).expect("summary");
    eprintln!("redrive summary: {summary}");
    assert_eq!(summary["redriven"], 1);

    // The live writer ingests it and announces it like any other message.
    let mut everything = good_ids.clone();
    everything.extend(bad_ids.iter().copied());
    let emitted = wait_for_datasets(
        &f.env,
        &f.topics.events,
        f.dir.path(),
        &everything,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(emitted.datasets, everything);
    let present: BTreeSet<Uuid> = registry_datasets(&f.registry).await.into_iter().collect();
    assert_eq!(present, everything);
    writer.shutdown();
    writer.wait().await.expect("the writer stops cleanly");
    // Nothing new was dead-lettered.
    let dead = f
        .env
        .read_topic(&f.topics.dead_letter, 2, Duration::from_secs(3))
        .await
        .expect("dead letters");
    assert_eq!(dead.len(), 1);
}
