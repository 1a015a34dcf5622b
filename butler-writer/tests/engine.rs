//! The registry engine against a real registry made by `butler create`: what lands, what is
//! turned away and why, and how database errors are classified (retry, reject, stop).

// Test code: a failed expectation is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use butler_repository::{ButlerConfig, ErrorClass, PoolSettings};
use butler_writer::error::EngineError;
use butler_writer::registry::UnsupportedRegistry;
use butler_writer::{BatchOutcome, Registry, RejectReason, StartupError};
use serde_json::Value;
use service_kit::chain;
use sqlx::{AssertSqlSafe, Connection, PgConnection};
use test_support::messages::{MessageFactory, dataset_ids, record_mut, to_lines};
use test_support::{TestEnv, TestRegistry};

async fn env() -> TestEnv {
    TestEnv::start().await.unwrap_or_else(|e| panic!("{e:#}"))
}

async fn open(registry: &TestRegistry) -> Registry {
    let config = ButlerConfig::from_path(&registry.butler_config).expect("butler.yaml");
    Registry::open(&config, &PoolSettings::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn ingest(registry: &Registry, messages: &[Value]) -> BatchOutcome {
    let lines = to_lines(messages);
    let values: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
    registry
        .ingest_values(&values)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn count(registry: &TestRegistry, sql: &str) -> i64 {
    let mut db = PgConnection::connect(&registry.database_url)
        .await
        .expect("connect");
    let sql = sql.replace("NS.", &format!("{}.", registry.namespace));
    sqlx::query_scalar(AssertSqlSafe(sql))
        .fetch_one(&mut db)
        .await
        .expect("count")
}

fn reasons(outcome: &BatchOutcome) -> Vec<(usize, RejectReason)> {
    outcome
        .rejected
        .iter()
        .map(|r| (r.index, r.reason))
        .collect()
}

#[tokio::test]
async fn bad_messages_are_rejected_with_their_reason_and_the_rest_lands() {
    let env = env().await;
    let test_registry = env.fresh_registry().await.expect("registry");
    let registry = open(&test_registry).await;
    let factory = MessageFactory::load();

    let good = factory.message(7_000_001, 1, 3);
    let mut unknown_element = factory.message(7_000_001, 2, 3);
    unknown_element["dimension_records"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"definition": "nope", "record": {}}));
    let mut extra_field = factory.message(7_000_001, 3, 3);
    record_mut(&mut extra_field, "exposure")["extra"] = 1.into();
    let mut missing_field = factory.message(7_000_001, 4, 3);
    record_mut(&mut missing_field, "exposure")
        .as_object_mut()
        .unwrap()
        .remove("dark_time");
    let mut wrong_type = factory.message(7_000_001, 5, 3);
    record_mut(&mut wrong_type, "exposure")["seq_num"] = 1.5.into();
    let mut too_long = factory.message(7_000_001, 6, 3);
    record_mut(&mut too_long, "exposure")["observation_type"] = "x".repeat(17).into();
    let mut bad_region = factory.message(7_000_001, 7, 3);
    record_mut(&mut bad_region, "visit_detector_region")["region"] = "70zz".into();
    let mut circle = factory.message(7_000_001, 8, 3);
    record_mut(&mut circle, "visit_detector_region")["region"] =
        format!("63{}", "00".repeat(32)).into();
    let mut unknown_type = factory.message(7_000_001, 9, 3);
    let file = &mut unknown_type["datasets"][0]["refs"];
    let id = file.as_object().unwrap().keys().next().unwrap().clone();
    file[&id]["dataset_type_name"] = "not_registered".into();
    let day_end =
        serde_json::json!({"type": "day-end", "instrument": "LSSTCam", "day_obs": 20260501});
    let mut null_key = factory.message(7_000_001, 10, 3);
    record_mut(&mut null_key, "exposure")["group"] = Value::Null;
    let mut missing_data_id = factory.message(7_000_001, 11, 3);
    let refs = &mut missing_data_id["datasets"][0]["refs"];
    let id = refs.as_object().unwrap().keys().next().unwrap().clone();
    refs[&id]["data_id"]
        .as_object_mut()
        .unwrap()
        .remove("visit");

    let mut huge_region = factory.message(7_000_001, 12, 3);
    let vertex = "000000000000f03f00000000000000000000000000000000"; // (1, 0, 0)
    record_mut(&mut huge_region, "visit_detector_region")["region"] =
        format!("70{}", vertex.repeat(300)).into();

    let batch = vec![
        good.clone(),
        unknown_element,
        extra_field,
        missing_field,
        wrong_type,
        too_long,
        bad_region,
        circle,
        unknown_type,
        day_end,
        null_key,
        missing_data_id,
        huge_region,
    ];
    let mut lines = to_lines(&batch);
    lines.push(b"{not json".to_vec());
    let values: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
    let outcome = registry.ingest_values(&values).await.expect("ingest");

    use RejectReason::*;
    assert_eq!(
        reasons(&outcome),
        [
            (1, Invalid),
            (2, Invalid),
            (3, Invalid),
            (4, Invalid),
            (5, Invalid),
            (6, Invalid),
            (7, Unsupported),
            (8, UnknownDatasetType),
            (9, OtherMessageType),
            (10, Invalid),
            (11, Invalid),
            (12, Unsupported),
            (13, Invalid),
        ],
        "{:#?}",
        outcome.rejected
    );
    for rejection in &outcome.rejected {
        assert!(!rejection.error.is_empty());
    }
    let texts: Vec<&str> = outcome.rejected.iter().map(|r| r.error.as_str()).collect();
    assert!(
        texts[0].contains("`nope` is not an element"),
        "{}",
        texts[0]
    );
    assert!(
        texts[1].contains("`extra` is not a field of `exposure`"),
        "{}",
        texts[1]
    );
    assert!(texts[2].contains("`dark_time` is required"), "{}", texts[2]);
    assert!(
        texts[3].contains("`seq_num` must be an integer, got float"),
        "{}",
        texts[3]
    );
    assert!(texts[4].contains("at most 16"), "{}", texts[4]);
    assert!(texts[7].contains("not_registered"), "{}", texts[7]);
    assert!(
        texts[10].contains("lacks required dimension `visit`"),
        "{}",
        texts[10]
    );

    let mut ingested = outcome.ingested.clone();
    ingested.sort();
    let mut expected = dataset_ids(&good);
    expected.sort();
    assert_eq!(ingested, expected, "only the good message's datasets land");
    assert_eq!(
        count(&test_registry, "SELECT count(*) FROM NS.dataset").await,
        3
    );
    assert_eq!(
        count(
            &test_registry,
            "SELECT count(*) FROM NS.visit_detector_region"
        )
        .await,
        1
    );
}

#[tokio::test]
async fn a_unique_obs_id_taken_by_another_exposure_rejects_only_that_message() {
    let env = env().await;
    let test_registry = env.fresh_registry().await.expect("registry");
    let registry = open(&test_registry).await;
    let factory = MessageFactory::load();
    let first = factory.message(7_100_001, 1, 3);
    assert!(
        ingest(&registry, std::slice::from_ref(&first))
            .await
            .rejected
            .is_empty()
    );

    // A new exposure claiming the first one's obs_id (exposure(instrument, obs_id) is unique),
    // a message referring to a physical filter the registry does not have, and two good ones.
    let mut taken = factory.message(7_100_002, 1, 3);
    record_mut(&mut taken, "exposure")["obs_id"] = "MC_O_20260501_100001".into();
    let mut unknown_filter = factory.message(7_100_003, 1, 3);
    record_mut(&mut unknown_filter, "exposure")["physical_filter"] = "r_99".into();
    record_mut(&mut unknown_filter, "visit")["physical_filter"] = "r_99".into();
    let good_a = factory.message(7_100_004, 1, 3);
    let good_b = factory.message(7_100_001, 2, 3);
    let outcome = ingest(
        &registry,
        &[good_a.clone(), taken, unknown_filter, good_b.clone()],
    )
    .await;
    assert_eq!(
        reasons(&outcome),
        [(1, RejectReason::Invalid), (2, RejectReason::Invalid)],
        "{:#?}",
        outcome.rejected
    );
    assert!(
        outcome.rejected[0].error.contains("obs_id"),
        "{}",
        outcome.rejected[0].error
    );
    assert_eq!(outcome.ingested.len(), 6);
    assert_eq!(
        count(&test_registry, "SELECT count(*) FROM NS.exposure").await,
        2
    );
}

#[tokio::test]
async fn conflicts_are_isolated_and_the_first_copy_in_a_batch_wins() {
    let env = env().await;
    let test_registry = env.fresh_registry().await.expect("registry");
    let registry = open(&test_registry).await;
    let factory = MessageFactory::load();

    let original = factory.message(7_200_001, 5, 3);
    assert!(
        ingest(&registry, std::slice::from_ref(&original))
            .await
            .rejected
            .is_empty()
    );

    // Two pods on one image: same data IDs, new UUIDs. One copy conflicts with the registry; in
    // a new visit, the second of two copies conflicts with the first.
    let reprocessed = factory.message(7_200_001, 5, 3);
    let first_copy = factory.message(7_200_002, 5, 3);
    let second_copy = factory.message(7_200_002, 5, 3);
    let redelivered = original.clone();
    let fresh = factory.message(7_200_003, 5, 3);
    let outcome = ingest(
        &registry,
        &[
            reprocessed,
            first_copy.clone(),
            second_copy,
            redelivered.clone(),
            redelivered.clone(),
            fresh.clone(),
        ],
    )
    .await;
    assert_eq!(
        reasons(&outcome),
        [(0, RejectReason::Conflict), (2, RejectReason::Conflict)],
        "{:#?}",
        outcome.rejected
    );
    let mut ingested = outcome.ingested.clone();
    ingested.sort();
    let mut expected: Vec<_> = dataset_ids(&first_copy)
        .into_iter()
        .chain(dataset_ids(&fresh))
        .collect();
    expected.sort();
    assert_eq!(ingested, expected);
    let mut present = outcome.already_present.clone();
    present.sort();
    let mut original_ids = dataset_ids(&redelivered);
    original_ids.sort();
    assert_eq!(
        present, original_ids,
        "a redelivery, twice in one batch, is already present and not a conflict"
    );
    assert_eq!(
        count(&test_registry, "SELECT count(*) FROM NS.dataset").await,
        9
    );
}

#[tokio::test]
async fn a_dataset_type_registered_after_start_up_is_found() {
    let env = env().await;
    let test_registry = env.fresh_registry().await.expect("registry");
    let registry = open(&test_registry).await;
    let factory = MessageFactory::load();
    let mut message = factory.message(7_300_001, 1, 1);
    let refs = &mut message["datasets"][0]["refs"];
    let id = refs.as_object().unwrap().keys().next().unwrap().clone();
    refs[&id]["dataset_type_name"] = "late_visit_image".into();
    let outcome = ingest(&registry, std::slice::from_ref(&message)).await;
    assert_eq!(reasons(&outcome), [(0, RejectReason::UnknownDatasetType)]);

    // Register it the way operators do, through daf_butler, while the engine is running.
    let python = test_support::registry::python().expect("python");
    let script = format!(
        "from lsst.daf.butler import Butler, DatasetType\n\
         b = Butler.from_config({:?}, writeable=True)\n\
         b.registry.registerDatasetType(DatasetType('late_visit_image', ['instrument', 'visit', 'detector'], 'ExposureF', universe=b.dimensions))\n",
        test_registry.butler_config.display().to_string()
    );
    let status = std::process::Command::new(python)
        .arg("-c")
        .arg(script)
        .status()
        .expect("python");
    assert!(status.success());
    let outcome = ingest(&registry, std::slice::from_ref(&message)).await;
    assert!(outcome.rejected.is_empty(), "{:#?}", outcome.rejected);
    assert_eq!(outcome.ingested.len(), 1);
}

#[tokio::test]
async fn two_writers_creating_the_same_run_at_once_both_succeed() {
    let env = env().await;
    let test_registry = env.fresh_registry().await.expect("registry");
    let (a, b) = (open(&test_registry).await, open(&test_registry).await);
    let factory = MessageFactory::load();
    let with_run = |visit: i64, detector: i64| {
        let mut m = factory.message(visit, detector, 3);
        for file in m["datasets"].as_array_mut().unwrap() {
            for (_, r) in file["refs"].as_object_mut().unwrap() {
                r["run"] = "LSSTCam/prompt/output-2026-05-09/raced".into();
            }
        }
        m
    };
    let (ma, mb) = (with_run(7_400_001, 1), with_run(7_400_002, 1));
    let (ra, rb) = tokio::join!(
        ingest(&a, std::slice::from_ref(&ma)),
        ingest(&b, std::slice::from_ref(&mb))
    );
    assert!(
        ra.rejected.is_empty() && rb.rejected.is_empty(),
        "{ra:?} {rb:?}"
    );
    assert_eq!(ra.ingested.len() + rb.ingested.len(), 6);
    assert_eq!(count(&test_registry, "SELECT count(*) FROM NS.collection WHERE name = 'LSSTCam/prompt/output-2026-05-09/raced'").await, 1);
    assert_eq!(count(&test_registry, "SELECT count(*) FROM NS.run r JOIN NS.collection c USING (collection_id) WHERE c.name LIKE '%raced'").await, 1);
}

#[tokio::test]
async fn a_universe_7_registry_is_served() {
    let env = env().await;
    let options = test_support::registry::RegistryOptions {
        universe_version: Some(7),
        ..Default::default()
    };
    let test_registry = env.fresh_registry_with(options).await.expect("registry");
    let registry = open(&test_registry).await;
    assert_eq!(registry.universe().version, 7);
    let factory = MessageFactory::load();
    let outcome = ingest(&registry, &factory.batch(7_500_001, 30)).await;
    assert!(outcome.rejected.is_empty(), "{:#?}", outcome.rejected);
    assert_eq!(outcome.ingested.len(), 30);
}

#[tokio::test]
async fn an_unsupported_registry_is_refused_at_start_up_with_one_line() {
    let env = env().await;
    let test_registry = env.fresh_registry().await.expect("registry");
    let mut db = PgConnection::connect(&test_registry.database_url)
        .await
        .expect("connect");
    let ns = &test_registry.namespace;
    sqlx::query(AssertSqlSafe(format!(
        "UPDATE {ns}.butler_attributes SET value = '3.0.0' WHERE name LIKE 'version:%ByDimensionsDatasetRecordStorageManagerUUID'"
    )))
    .execute(&mut db)
    .await
    .expect("update");
    let config = ButlerConfig::from_path(&test_registry.butler_config).expect("config");
    let error = Registry::open(&config, &PoolSettings::default())
        .await
        .expect_err("refused");
    assert_eq!(error.class(), ErrorClass::Stop);
    let text = chain(&error);
    assert!(
        text.contains("3.0.0") && text.contains("2.0.x") && !text.contains('\n'),
        "{text}"
    );

    sqlx::query(AssertSqlSafe(format!(
        "UPDATE {ns}.butler_attributes SET value = replace(value, '\"version\": 8', '\"version\": 42') WHERE name = 'config:dimensions.json'"
    )))
    .execute(&mut db)
    .await
    .expect("update");
    sqlx::query(AssertSqlSafe(format!(
        "UPDATE {ns}.butler_attributes SET value = '2.0.0' WHERE name LIKE 'version:%ByDimensionsDatasetRecordStorageManagerUUID'"
    )))
    .execute(&mut db)
    .await
    .expect("update");
    let error = Registry::open(&config, &PoolSettings::default())
        .await
        .expect_err("refused");
    assert!(
        matches!(
            error,
            StartupError::Unsupported(UnsupportedRegistry::Universe(_))
        ),
        "{error}"
    );
    let text = chain(&error);
    assert!(
        text.contains("version 42") && text.contains("7, 8"),
        "{text}"
    );
}

#[tokio::test]
async fn database_errors_are_classified_retry_or_stop() {
    let env = env().await;
    let test_registry = env.fresh_registry().await.expect("registry");
    let registry = open(&test_registry).await;
    let factory = MessageFactory::load();

    // Stop: a table the engine read at start-up is gone (a registry swapped under the writer).
    let mut db = PgConnection::connect(&test_registry.database_url)
        .await
        .expect("connect");
    let ns = &test_registry.namespace;
    sqlx::query(AssertSqlSafe(format!(
        "ALTER TABLE {ns}.dataset_location RENAME TO dataset_location_moved"
    )))
    .execute(&mut db)
    .await
    .expect("rename");
    let lines = to_lines(&[factory.message(7_600_001, 1, 3)]);
    let values: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
    let error = registry
        .ingest_values(&values)
        .await
        .expect_err("a missing table stops the writer");
    assert_eq!(error.class(), ErrorClass::Stop, "{error}");
    assert!(chain(&error).contains("dataset_location"), "{error}");
    sqlx::query(AssertSqlSafe(format!(
        "ALTER TABLE {ns}.dataset_location_moved RENAME TO dataset_location"
    )))
    .execute(&mut db)
    .await
    .expect("rename back");

    // Stop: the writer's role lost its privileges.
    let role = test_support::unique_name("writer");
    sqlx::query(AssertSqlSafe(format!("CREATE ROLE {role} LOGIN")))
        .execute(&mut db)
        .await
        .expect("role");
    sqlx::query(AssertSqlSafe(format!(
        "GRANT USAGE ON SCHEMA {ns} TO {role}"
    )))
    .execute(&mut db)
    .await
    .expect("grant");
    sqlx::query(AssertSqlSafe(format!(
        "GRANT SELECT ON ALL TABLES IN SCHEMA {ns} TO {role}"
    )))
    .execute(&mut db)
    .await
    .expect("grant");
    let text = std::fs::read_to_string(&test_registry.butler_config).expect("read");
    let restricted = test_registry.repo.join("restricted.yaml");
    std::fs::write(
        &restricted,
        text.replace(
            "postgresql+psycopg2://postgres@",
            &format!("postgresql+psycopg2://{role}@"),
        ),
    )
    .expect("write");
    let config = ButlerConfig::from_path(&restricted).expect("config");
    let reader = Registry::open(&config, &PoolSettings::default())
        .await
        .expect("a read-only role can start");
    let lines = to_lines(&[factory.message(7_600_002, 1, 3)]);
    let values: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
    let error = reader
        .ingest_values(&values)
        .await
        .expect_err("no privilege");
    assert_eq!(error.class(), ErrorClass::Stop, "{error}");
    assert!(chain(&error).contains("permission denied"), "{error}");

    // Retry: the database goes away (through a proxy, so other tests keep their server) and
    // comes back; the batch is kept and lands once, whole.
    let (proxy, proxied) = test_registry.through_proxy().await.expect("proxy");
    let config = ButlerConfig::from_path(&proxied).expect("config");
    let options = PoolSettings {
        acquire_timeout: std::time::Duration::from_secs(2),
        ..PoolSettings::default()
    };
    let writer = Registry::open(&config, &options)
        .await
        .expect("open through the proxy");
    proxy.cut();
    let message = factory.message(7_600_003, 1, 3);
    let lines = to_lines(std::slice::from_ref(&message));
    let values: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
    let error = writer
        .ingest_values(&values)
        .await
        .expect_err("the database is unreachable");
    assert_eq!(error.class(), ErrorClass::Retry, "{error}");
    assert!(matches!(error, EngineError::Retry(_)));
    proxy.restore();
    let outcome = writer
        .ingest_values(&values)
        .await
        .expect("the same batch succeeds once the database is back");
    assert_eq!(outcome.ingested.len(), 3);
    assert_eq!(
        count(
            &test_registry,
            "SELECT count(*) FROM NS.visit WHERE id = 7600003"
        )
        .await,
        1
    );
}

#[tokio::test]
async fn the_repository_configuration_can_live_on_s3() {
    let env = env().await;
    let test_registry = env.fresh_registry().await.expect("registry");
    let s3 = test_support::s3::TestS3::start().await.expect("moto");
    let vars = s3.profile_env("embargo");
    let resolver = resources::Resolver::from_vars(vars.clone());
    let yaml = std::fs::read(&test_registry.butler_config).expect("butler.yaml");
    let target =
        resources::ResourcePath::parse(&s3.uri(Some("embargo"), "repo/butler.yaml")).expect("uri");
    target
        .write_with(&resolver, yaml)
        .await
        .expect("upload butler.yaml");

    // As prod spells it: the repository directory, with the profile, without naming the file.
    let repository = s3.uri(Some("embargo"), "repo");
    let messages = test_support::fixtures_dir().join("messages/batch_a.jsonl");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_butler-writer"))
        .args(["ingest", "--output", "json", "--butler-config", &repository])
        .arg(&messages)
        .envs(vars)
        .output()
        .expect("run butler-writer");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        count(&test_registry, "SELECT count(*) FROM NS.dataset").await,
        10
    );

    let missing = std::process::Command::new(env!("CARGO_BIN_EXE_butler-writer"))
        .args([
            "ingest",
            "--butler-config",
            &s3.uri(Some("embargo"), "nowhere/"),
        ])
        .arg(&messages)
        .envs(s3.profile_env("embargo"))
        .output()
        .expect("run butler-writer");
    assert_eq!(missing.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.contains("nowhere/butler.yaml") && stderr.lines().count() == 1,
        "{stderr}"
    );
}
