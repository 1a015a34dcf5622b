//! The consumer on the real broker and Postgres: events from a real writer, replays, duplicates,
//! late and missing batch files, unknown datasets, bad events, and the API as the clock passes
//! the embargo.

// Test code: a failed expectation is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use service_kit::ServiceHandle;
use std::collections::BTreeSet;
use std::time::Duration;

use app_metrics::MetricsSettings;
use chrono::TimeDelta;
use common::{
    EMBARGO_HOURS, announce, counts, fixture, get_json, http_get, ingest, observation_end, produce,
    rows, settings, start, stop, wait_for_counts, write_batch_file,
};
use publication_consumer::Clock;
use publication_consumer::policy::Policy;
use publication_consumer::sasquatch::APPLICATION;
use schema::DatasetBatch;
use sqlx::{Connection, PgConnection};
use test_support::schema_registry::{TestSchemaRegistry, decode_with_fastavro};
use test_support::unique_name;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn events_from_a_real_writer_are_recorded_with_their_visit_type_run_and_release_time() {
    let f = fixture(1).await;
    // The writer, in-process, turns pp-output messages into registry rows, batch files and events.
    let factory = common::messages::MessageFactory::load();
    let mut messages = factory.batch(7_000_100, 60);
    messages.extend(factory.batch(7_000_101, 30));
    let lines = common::messages::to_lines(&messages);
    let expected = common::writer::ids_of(&lines);
    assert_eq!(expected.len(), 90);
    let writer = common::writer::start(common::writer::env_settings(
        &f.env,
        &f.registry,
        &f.topics,
        f.dir.path(),
    ))
    .await;
    produce(f.env.kafka_bootstrap(), &f.topics.input, &lines, None).await;
    let emitted =
        common::writer::wait_for_datasets(&f.env, &f.topics.events, f.dir.path(), &expected, WAIT)
            .await;
    writer.shutdown();
    writer.wait().await.expect("the writer stops");

    // The consumer keeps its state in a database of its own on the same server.
    let state_db = f.env.fresh_database("pps_state").await.unwrap();
    let mut s = settings(&f);
    s.database_url = Some(state_db.url.clone().into());
    let consumer = start(s).await;
    let address = consumer.http_address();
    let done = wait_for_counts(address, WAIT, |c| c.datasets == 90).await;
    assert_eq!(done.unknown, 0);
    assert_eq!(done.failed_events, 0);
    assert_eq!(done.events, i64::try_from(emitted.events.len()).unwrap());

    // Every dataset as the registry has it: type, run, visit or exposure, detector.
    let mut registry = PgConnection::connect(&f.registry.database_url)
        .await
        .unwrap();
    let truth: Vec<(Uuid, String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT d.id, t.name, c.name FROM {ns}.dataset d JOIN {ns}.dataset_type t ON t.id = d.dataset_type_id
         JOIN {ns}.collection c ON c.collection_id = d.run_id",
        ns = f.registry.namespace
    )))
    .fetch_all(&mut registry)
    .await
    .unwrap();
    assert_eq!(truth.len(), 90);
    let release = observation_end() + TimeDelta::hours(EMBARGO_HOURS);
    for (id, dataset_type, run) in &truth {
        let (status, d) = get_json(address, &format!("/api/v1/datasets/{id}")).await;
        assert_eq!(status, 200, "{d}");
        assert_eq!(d["dataset_type"], dataset_type.as_str());
        assert_eq!(d["run"], run.as_str());
        assert_eq!(d["instrument"], "LSSTCam");
        assert!(d["detector"].is_i64());
        let source = if dataset_type == "isr_statistics" {
            assert!(d["visit"].is_null());
            assert!(d["exposure"].is_i64());
            assert!(d["group"].is_string(), "the exposure's group: {d}");
            "exposure"
        } else {
            assert!(d["exposure"].is_null());
            assert!([7_000_100, 7_000_101].contains(&d["visit"].as_i64().unwrap()));
            "visit"
        };
        assert_eq!(d["observation_end_source"], source);
        assert_eq!(d["day_obs"], 20260501);
        assert_eq!(d["origin"], "prompt_processing");
        // The deployed policy: preliminary_visit_image 80 h after its visit ended, public, kept
        // for ever; the other two types are not in the table and never leave the embargo.
        if dataset_type == "preliminary_visit_image" {
            let release_at: chrono::DateTime<chrono::Utc> =
                serde_json::from_value(d["release_at"].clone()).unwrap();
            assert_eq!(release_at, release, "{id}");
            assert_eq!(d["status"], "embargoed");
            assert_eq!(d["release_basis"], "visit_end");
            assert_eq!(
                (
                    &d["embargo_hours"],
                    &d["publish_to_public"],
                    &d["retention_days"]
                ),
                (
                    &serde_json::json!(80),
                    &serde_json::json!(true),
                    &serde_json::Value::Null
                )
            );
        } else {
            assert!(d["release_at"].is_null(), "{d}");
            assert_eq!(d["status"], "never");
            assert_eq!(d["release_basis"], "not_listed");
            assert!(d["embargo_hours"].is_null());
        }
    }
    assert_eq!((done.embargoed, done.never_released), (30, 60));
    // Visits, exposures and groups, once each, as the Python PPS records them.
    assert_eq!(rows(&consumer, "visit").await, 2);
    assert_eq!(rows(&consumer, "exposure").await, 2);
    assert_eq!(rows(&consumer, r#""group""#).await, 2);
    // The counters agree, and the lag gauge (librdkafka statistics, every 5 s) reaches zero.
    let (_, text) = http_get(address, "/metrics").await;
    assert_eq!(
        common::metric(&text, "publication_consumer_datasets_recorded_total"),
        Some(90.0),
        "{text}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, text) = http_get(address, "/metrics").await;
        if common::metric(&text, "publication_consumer_consumer_lag{") == Some(0.0) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    stop(consumer).await;
}

#[tokio::test]
async fn a_replay_by_a_new_group_and_duplicate_events_change_nothing() {
    let f = fixture(1).await;
    let batches = ingest(&f, 7_000_200, 4, 30).await;
    let events = announce(&f, &batches).await;
    // The same events again, as a writer re-sending after a crash would.
    produce(f.env.kafka_bootstrap(), &f.topics.events, &events, Some(0)).await;

    let s = settings(&f);
    let schema = s.schema.clone();
    let first_group = s.group_id.clone();
    let first = start(s).await;
    let after_first = wait_for_counts(first.http_address(), WAIT, |c| c.datasets == 120).await;
    // Eight events, four batches: the duplicates were seen and skipped.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (_, text) = http_get(first.http_address(), "/metrics").await;
        if common::metric(&text, "publication_consumer_events_duplicate_total") == Some(4.0) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(after_first.events, 4);
    let group = first_group.clone();
    let tables = [
        "dataset",
        "visit",
        "exposure",
        r#""group""#,
        "batch",
        "unknown_dataset",
        "failed_event",
    ];
    let mut before = Vec::new();
    for t in tables {
        before.push(rows(&first, t).await);
    }
    stop(first).await;
    // Every offset was committed, after its state was stored.
    assert_eq!(
        common::writer::committed(f.env.kafka_bootstrap(), &group, &f.topics.events, 1),
        [8]
    );

    // A second consumer group reads the topic from the beginning into the same state.
    let mut s = settings(&f);
    s.schema = schema;
    let replay = start(s).await;
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (_, text) = http_get(replay.http_address(), "/metrics").await;
        if common::metric(&text, "publication_consumer_events_duplicate_total") == Some(8.0) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut after = Vec::new();
    for t in tables {
        after.push(rows(&replay, t).await);
    }
    assert_eq!(before, after);
    assert_eq!(counts(replay.http_address()).await, after_first);
    stop(replay).await;
}

#[tokio::test]
async fn a_late_batch_file_is_recorded_once_it_appears() {
    let f = fixture(1).await;
    let batches = ingest(&f, 7_000_300, 1, 20).await;
    let batch = &batches[0];
    let name = common::batch_file_name(batch.batch_id);
    produce(
        f.env.kafka_bootstrap(),
        &f.topics.events,
        &[common::event(batch.batch_id, &name)],
        Some(0),
    )
    .await;
    let consumer = start(settings(&f)).await;
    let address = consumer.http_address();
    // The consumer waits for the file...
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (_, text) = http_get(address, "/metrics").await;
        if common::metric(
            &text,
            "publication_consumer_retries_total{stage=\"batch_file\"}",
        )
        .is_some_and(|n| n >= 2.0)
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(counts(address).await.datasets, 0);
    // ...holding the event: not ready, saying why, the wait in a gauge...
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (status, body) = http_get(address, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("batch file") && body.contains(&name),
        "{body}"
    );
    let (_, text) = http_get(address, "/metrics").await;
    assert!(
        common::metric(&text, "publication_consumer_batch_file_waiting_seconds")
            .is_some_and(|s| s >= 1.0),
        "{text}"
    );
    // ...until it appears, a few seconds late.
    std::fs::write(f.dir.path().join(&name), batch.to_json()).unwrap();
    let done = wait_for_counts(address, WAIT, |c| c.datasets == 20).await;
    assert_eq!((done.events, done.failed_events), (1, 0));
    let (_, text) = http_get(address, "/metrics").await;
    assert_eq!(
        common::metric(&text, "publication_consumer_batch_file_waiting_seconds"),
        Some(0.0)
    );
    let deadline = std::time::Instant::now() + WAIT;
    while http_get(address, "/readyz").await.0 != 200 {
        assert!(std::time::Instant::now() < deadline, "ready again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop(consumer).await;
}

#[tokio::test]
async fn a_batch_file_that_never_appears_is_recorded_as_failed_and_the_consumer_moves_on() {
    let f = fixture(1).await;
    let batches = ingest(&f, 7_000_400, 1, 10).await;
    let missing = Uuid::new_v4();
    produce(
        f.env.kafka_bootstrap(),
        &f.topics.events,
        &[common::event(missing, &common::batch_file_name(missing))],
        Some(0),
    )
    .await;
    announce(&f, &batches).await;
    let mut s = settings(&f);
    s.batch_file_wait = Duration::from_secs(2);
    let consumer = start(s).await;
    let done = wait_for_counts(consumer.http_address(), WAIT, |c| c.datasets == 10).await;
    assert_eq!((done.events, done.failed_events), (1, 1));
    let (_, failed) = get_json(consumer.http_address(), "/api/v1/failed-events").await;
    let failed = failed["failed_events"].as_array().unwrap();
    assert_eq!(failed[0]["reason"], "batch_file_missing");
    assert_eq!(failed[0]["batch_id"], missing.to_string());
    let (_, text) = http_get(consumer.http_address(), "/metrics").await;
    assert_eq!(
        common::metric(
            &text,
            "publication_consumer_events_failed_total{reason=\"batch_file_missing\"}"
        ),
        Some(1.0),
        "{text}"
    );
    stop(consumer).await;
}

#[tokio::test]
async fn dataset_ids_the_registry_does_not_know_are_recorded_as_unknown() {
    let f = fixture(1).await;
    let mut batches = ingest(&f, 7_000_500, 1, 12).await;
    let strangers: Vec<Uuid> = (0..5).map(|_| Uuid::new_v4()).collect();
    batches[0].datasets.extend(&strangers);
    announce(&f, &batches).await;
    let consumer = start(settings(&f)).await;
    let done = wait_for_counts(consumer.http_address(), WAIT, |c| c.events == 1).await;
    assert_eq!((done.datasets, done.unknown), (12, 5));
    let recorded: BTreeSet<Uuid> =
        sqlx::query_scalar("SELECT dataset_id FROM unknown_dataset_batch WHERE batch_id = $1")
            .bind(batches[0].batch_id)
            .fetch_all(consumer.store().pool())
            .await
            .unwrap()
            .into_iter()
            .collect();
    assert_eq!(recorded, strangers.iter().copied().collect());
    // PPS's own record of them: origin 1 and its error naming the batch.
    let errors: Vec<String> = sqlx::query_scalar("SELECT DISTINCT error FROM unknown_dataset")
        .fetch_all(consumer.store().pool())
        .await
        .unwrap();
    assert_eq!(
        errors,
        [format!(
            "Dataset not found in Butler, from batch '{}'",
            batches[0].batch_id
        )]
    );
    let (_, text) = http_get(consumer.http_address(), "/metrics").await;
    assert_eq!(
        common::metric(&text, "publication_consumer_unknown_datasets_total"),
        Some(5.0)
    );
    stop(consumer).await;
}

#[tokio::test]
async fn malformed_events_and_unknown_types_are_recorded_and_skipped() {
    let f = fixture(1).await;
    let batches = ingest(&f, 7_000_600, 1, 9).await;
    let bad: Vec<Vec<u8>> = vec![
        b"{not json".to_vec(),
        br#"{"type":"day-end","instrument":"LSSTCam","day_obs":20260501}"#.to_vec(),
        br#"{"type":"batch-ingested","batch_id":"5f0c1d7e-3b2a-4c51-9a8e-0d1f2e3a4b5c","origin":"somewhere_else","batch_file":"x.json"}"#.to_vec(),
    ];
    produce(f.env.kafka_bootstrap(), &f.topics.events, &bad, Some(0)).await;
    // A batch file that is not one.
    let not_a_batch = Uuid::new_v4();
    let name = common::batch_file_name(not_a_batch);
    std::fs::write(f.dir.path().join(&name), b"[1, 2, 3]").unwrap();
    produce(
        f.env.kafka_bootstrap(),
        &f.topics.events,
        &[common::event(not_a_batch, &name)],
        Some(0),
    )
    .await;
    announce(&f, &batches).await;
    // Application metrics events on: one per event recorded, one per event skipped.
    let schema_registry = TestSchemaRegistry::start().await.unwrap();
    let metrics = MetricsSettings::plaintext(
        APPLICATION,
        unique_name("metrics"),
        &schema_registry.url,
        f.env.kafka_bootstrap(),
    );
    f.env.create_topic(&metrics.topic(), 1).await.unwrap();
    let mut consumer_settings = settings(&f);
    consumer_settings.metrics = Some(metrics.clone());
    let consumer = start(consumer_settings).await;
    let address = consumer.http_address();
    let done = wait_for_counts(address, WAIT, |c| c.datasets == 9).await;
    assert_eq!((done.events, done.failed_events), (1, 4));
    let (_, failed) = get_json(address, "/api/v1/failed-events").await;
    let mut reasons: Vec<String> = failed["failed_events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["reason"].as_str().unwrap().to_owned())
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            "batch_file_invalid",
            "malformed",
            "unknown_origin",
            "unknown_type"
        ]
    );
    let (_, text) = http_get(address, "/metrics").await;
    assert_eq!(
        common::metric(
            &text,
            "publication_consumer_events_skipped_total{reason=\"malformed\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert!(consumer.health().readiness().ready);
    stop(consumer).await;

    let messages = f
        .env
        .read_topic(&metrics.topic(), 5, Duration::from_secs(20))
        .await
        .unwrap();
    let values: Vec<Vec<u8>> = messages
        .iter()
        .map(|m| rdkafka::Message::payload(m).unwrap().to_vec())
        .collect();
    let decoded = decode_with_fastavro(&schema_registry.url, &values).unwrap();
    let mut names: Vec<&str> = decoded
        .iter()
        .map(|e| e["name"].as_str().unwrap_or("undecodable"))
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "event_failed",
            "event_failed",
            "event_failed",
            "event_failed",
            "event_recorded"
        ],
        "{decoded:?}"
    );
    let recorded = decoded
        .iter()
        .find(|e| e["name"] == "event_recorded")
        .unwrap();
    assert_eq!(recorded["event"]["application"], APPLICATION);
    assert_eq!(recorded["event"]["datasets"], 9);
    assert_eq!(recorded["event"]["recorded"], 9);
    assert_eq!(recorded["event"]["new_batch"], true);
    assert_eq!(
        recorded["event"]["batch_id"],
        batches[0].batch_id.to_string()
    );
    let mut failed_reasons: Vec<&str> = decoded
        .iter()
        .filter(|e| e["name"] == "event_failed")
        .map(|e| e["event"]["reason"].as_str().unwrap())
        .collect();
    failed_reasons.sort_unstable();
    assert_eq!(failed_reasons, reasons);
}

#[tokio::test]
async fn the_api_follows_the_clock_past_the_embargo() {
    let f = fixture(1).await;
    let batches = ingest(&f, 7_000_700, 2, 30).await;
    announce(&f, &batches).await;
    let mut s = settings(&f);
    let clock = Clock::manual(observation_end());
    s.clock = clock.clone();
    // A policy that embargoes all three of the factory's types, and the exposure-only one from
    // its exposure's end (the same time as its visit's here).
    s.policy = Policy::from_yaml(
        &format!(
            "profiles:\n  - {{name: all, origin: prompt_processing, embargo_hours: {EMBARGO_HOURS}, \
             publish_to_public: true, retention_days: null, dataset_types: \
             [preliminary_visit_image, single_visit_star_unstandardized, isr_statistics]}}\n"
        ),
        "test",
    )
    .unwrap();
    s.policy.release_exposure_only = true;
    let consumer = start(s).await;
    let address = consumer.http_address();
    let before = wait_for_counts(address, WAIT, |c| c.datasets == 60).await;
    assert_eq!((before.embargoed, before.ready), (60, 0));
    let (_, page) = get_json(address, "/api/v1/datasets/ready").await;
    assert_eq!(page["datasets"].as_array().unwrap().len(), 0);

    // A second before the embargo ends, nothing; at its end, everything.
    clock.advance(TimeDelta::hours(EMBARGO_HOURS) - TimeDelta::seconds(1));
    assert_eq!(counts(address).await.ready, 0);
    clock.advance(TimeDelta::seconds(1));
    let after = counts(address).await;
    assert_eq!((after.embargoed, after.ready), (0, 60));

    // Paging through the ready datasets visits each once.
    let mut seen = BTreeSet::new();
    let mut cursor = String::new();
    let mut pages = 0;
    loop {
        let (status, page) = get_json(
            address,
            &format!("/api/v1/datasets/ready?limit=25&cursor={cursor}"),
        )
        .await;
        assert_eq!(status, 200, "{page}");
        pages += 1;
        for d in page["datasets"].as_array().unwrap() {
            assert_eq!(d["status"], "ready");
            assert!(seen.insert(d["id"].as_str().unwrap().to_owned()));
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = next.to_owned(),
            None => break,
        }
    }
    assert_eq!((seen.len(), pages), (60, 3));
    let all: BTreeSet<String> = batches
        .iter()
        .flat_map(|b| b.datasets.iter().map(Uuid::to_string))
        .collect();
    assert_eq!(seen, all);

    // Filters: by visit (of the data ID: isr_statistics has an exposure instead), by dataset
    // type, and the visit's own listing.
    let (_, by_visit) = get_json(address, "/api/v1/datasets/ready?visit=7000700&limit=1000").await;
    assert_eq!(by_visit["datasets"].as_array().unwrap().len(), 20);
    let (_, by_type) = get_json(
        address,
        "/api/v1/datasets/ready?dataset_type=isr_statistics&limit=1000",
    )
    .await;
    let by_type = by_type["datasets"].as_array().unwrap();
    assert_eq!(by_type.len(), 20);
    assert!(
        by_type
            .iter()
            .all(|d| d["dataset_type"] == "isr_statistics")
    );
    // isr_statistics has no visit in its data ID: the visit listing holds the other two types.
    let (_, visit) = get_json(address, "/api/v1/visits/7000701/datasets?limit=1000").await;
    assert_eq!(visit["datasets"].as_array().unwrap().len(), 20);
    // Bad parameters are refused with a reason.
    let (status, error) = get_json(address, "/api/v1/datasets/ready?limit=0").await;
    assert_eq!(status, 400);
    assert!(error["error"].as_str().unwrap().contains("limit"));
    let (status, _) = get_json(address, "/api/v1/datasets/ready?cursor=zzz").await;
    assert_eq!(status, 400);
    let (status, _) = get_json(address, &format!("/api/v1/datasets/{}", Uuid::new_v4())).await;
    assert_eq!(status, 404);
    stop(consumer).await;
}

#[tokio::test]
async fn the_deployed_policy_releases_only_the_types_it_lists_and_pages_reach_the_rest() {
    let f = fixture(1).await;
    // One visit, ten detectors, the factory's three types: preliminary_visit_image (80 h in the
    // deployed table), single_visit_star_unstandardized and isr_statistics (not listed).
    let batches = ingest(&f, 7_001_300, 1, 30).await;
    announce(&f, &batches).await;
    let mut s = settings(&f);
    let clock = Clock::manual(observation_end());
    s.clock = clock.clone();
    let consumer = start(s).await;
    let address = consumer.http_address();
    let before = wait_for_counts(address, WAIT, |c| c.datasets == 30).await;
    assert_eq!(
        (before.embargoed, before.ready, before.never_released),
        (10, 0, 20)
    );
    clock.advance(TimeDelta::hours(EMBARGO_HOURS));
    let after = counts(address).await;
    assert_eq!(
        (after.embargoed, after.ready, after.never_released),
        (0, 10, 20)
    );
    let (_, ready) = get_json(address, "/api/v1/datasets/ready?limit=1000").await;
    let ready = ready["datasets"].as_array().unwrap();
    assert_eq!(ready.len(), 10);
    assert!(
        ready
            .iter()
            .all(|d| d["dataset_type"] == "preliminary_visit_image")
    );

    // The visit's listing in pages of 3: the released datasets first, then the ones never
    // released (by id), each once, the cursor crossing from one kind to the other.
    let mut statuses = Vec::new();
    let mut seen = BTreeSet::new();
    let mut cursor = String::new();
    loop {
        let (status, page) = get_json(
            address,
            &format!("/api/v1/visits/7001300/datasets?limit=3&cursor={cursor}"),
        )
        .await;
        assert_eq!(status, 200, "{page}");
        for d in page["datasets"].as_array().unwrap() {
            assert!(seen.insert(d["id"].as_str().unwrap().to_owned()), "{d}");
            statuses.push(d["status"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = next.to_owned(),
            None => break,
        }
    }
    // isr_statistics has an exposure, not a visit, in its data ID: 20 in the visit's listing.
    assert_eq!(seen.len(), 20);
    assert!(statuses[..10].iter().all(|s| s == "ready"), "{statuses:?}");
    assert!(statuses[10..].iter().all(|s| s == "never"), "{statuses:?}");
    stop(consumer).await;
}

#[tokio::test]
async fn every_documented_route_answers_on_the_running_service() {
    let f = fixture(1).await;
    let batches = ingest(&f, 7_000_800, 1, 3).await;
    announce(&f, &batches).await;
    let consumer = start(settings(&f)).await;
    let address = consumer.http_address();
    wait_for_counts(address, WAIT, |c| c.datasets == 3).await;
    let (_, document) = get_json(address, "/openapi.json").await;
    let paths = document["paths"].as_object().unwrap();
    assert_eq!(paths.len(), publication_consumer::http::ROUTES.len());
    for path in paths.keys() {
        let concrete = path
            .replace("{id}", &batches[0].datasets[0].to_string())
            .replace("{visit}", "7000800");
        let (status, body) = http_get(address, &concrete).await;
        assert_eq!(status, 200, "GET {concrete}: {body}");
    }
    let (_, root) = get_json(address, "/").await;
    assert_eq!(root["name"], "publication-consumer");
    stop(consumer).await;
}

#[tokio::test]
async fn an_empty_batch_is_recorded_as_an_event_without_datasets() {
    let f = fixture(1).await;
    let empty = DatasetBatch {
        batch_id: Uuid::new_v4(),
        datasets: Vec::new(),
    };
    let name = write_batch_file(f.dir.path(), &empty);
    produce(
        f.env.kafka_bootstrap(),
        &f.topics.events,
        &[common::event(empty.batch_id, &name)],
        Some(0),
    )
    .await;
    let consumer = start(settings(&f)).await;
    let done = wait_for_counts(consumer.http_address(), WAIT, |c| c.events == 1).await;
    assert_eq!((done.datasets, done.unknown, done.failed_events), (0, 0, 0));
    stop(consumer).await;
}

#[tokio::test]
async fn a_database_outage_is_waited_out_with_readiness_false_and_nothing_lost() {
    let f = fixture(1).await;
    let batches = ingest(&f, 7_001_000, 2, 15).await;
    let (proxy, proxied) = f.registry.through_proxy().await.unwrap();
    announce(&f, &batches[..1]).await;
    let mut s = settings(&f);
    // Registry and state both through the proxy: the state defaults to the registry's database.
    s.butler_repository = proxied.display().to_string();
    let consumer = start(s).await;
    let address = consumer.http_address();
    wait_for_counts(address, WAIT, |c| c.datasets == 15).await;

    proxy.cut();
    announce(&f, &batches[1..]).await;
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (status, body) = http_get(address, "/readyz").await;
        if status == 503 && body.contains("\"database\":false") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{status} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Alive all the while: retrying, not crashing.
    let (status, _) = http_get(address, "/healthz").await;
    assert_eq!(status, 200);

    proxy.restore();
    let done = wait_for_counts(address, WAIT, |c| c.datasets == 30).await;
    assert_eq!((done.events, done.failed_events), (2, 0));
    let deadline = std::time::Instant::now() + WAIT;
    while !consumer.health().readiness().ready {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            consumer.health().readiness()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, text) = http_get(address, "/metrics").await;
    assert!(
        common::metric(
            &text,
            "publication_consumer_retries_total{stage=\"database\"}"
        )
        .is_some_and(|n| n >= 1.0),
        "{text}"
    );
    stop(consumer).await;
}

#[tokio::test]
async fn a_permanent_database_error_stops_the_consumer_with_the_reason() {
    let f = fixture(1).await;
    let batches = ingest(&f, 7_001_100, 2, 10).await;
    announce(&f, &batches[..1]).await;
    let s = settings(&f);
    let schema = s.schema.clone();
    let consumer = start(s).await;
    wait_for_counts(consumer.http_address(), WAIT, |c| c.datasets == 10).await;

    // A column of the state is gone (a migration gone wrong, another tool's hand): no retry
    // heals that, so the consumer stops, naming it, instead of retrying for ever.
    let mut db = PgConnection::connect(&f.registry.database_url)
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER TABLE {schema}.dataset_release DROP COLUMN day_obs"
    )))
    .execute(&mut db)
    .await
    .unwrap();
    announce(&f, &batches[1..]).await;
    let error = tokio::time::timeout(WAIT, consumer.wait())
        .await
        .expect("the consumer stops on a permanent error")
        .expect_err("an error");
    assert!(
        matches!(
            error,
            publication_consumer::ServiceError::Consume(
                publication_consumer::consume::ConsumeError::Database { .. }
            )
        ),
        "{error:?}"
    );
    let text = service_kit::chain(&error);
    assert!(
        text.contains("day_obs") && text.contains("42703") && !text.contains('\n'),
        "{text}"
    );
}

#[tokio::test]
async fn scram_credentials_are_used_and_a_wrong_password_stops_the_consumer() {
    let f = fixture(1).await;
    if f.env.broker_kind() != test_support::BrokerKind::Nisshi {
        // The authenticating broker is a nisshi of the test's own, as in the writer's tests.
        return;
    }
    let broker = test_support::sasl::SaslBroker::start("pps", "s3cret")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let topic = unique_name("events");
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        broker.client_config("pps", "s3cret").create().unwrap();
    for result in admin
        .create_topics(
            [&rdkafka::admin::NewTopic::new(
                &topic,
                1,
                rdkafka::admin::TopicReplication::Fixed(1),
            )],
            &rdkafka::admin::AdminOptions::new(),
        )
        .await
        .unwrap()
    {
        result.unwrap();
    }
    let batches = ingest(&f, 7_001_100, 1, 6).await;
    let name = write_batch_file(f.dir.path(), &batches[0]);
    let producer: rdkafka::producer::FutureProducer =
        broker.client_config("pps", "s3cret").create().unwrap();
    producer
        .send(
            rdkafka::producer::FutureRecord::<(), _>::to(&topic)
                .payload(&common::event(batches[0].batch_id, &name)),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();

    let settings_with = |password: &str| {
        let mut s = settings(&f);
        s.topic = topic.clone();
        s.kafka = service_kit::KafkaSettings {
            credentials: Some(("pps".to_owned(), password.to_owned().into())),
            security_protocol: service_kit::SecurityProtocol::SaslPlaintext,
            ..service_kit::KafkaSettings::plaintext(broker.bootstrap())
        };
        s
    };
    let consumer = start(settings_with("s3cret")).await;
    wait_for_counts(consumer.http_address(), WAIT, |c| c.datasets == 6).await;
    stop(consumer).await;

    // A wrong password is a configuration error: the consumer stops, saying why.
    let refused = start(settings_with("wrong")).await;
    let error = tokio::time::timeout(WAIT, refused.wait())
        .await
        .expect("the consumer stops on refused credentials")
        .expect_err("an error");
    assert!(error.to_string().contains("Kafka"), "{error}");
}
