//! The transfer tasks in the running consumer: events recorded, then, once the policy releases
//! them, the datasets copied to `prompt_prep` (with their visits' records and their files) and
//! registered in `/repo/main` by URI, the types published to the public registered in the Google
//! repository in place (its datastore shares prompt_prep's) and tagged, every step recorded in
//! PPS's status columns; and a run
//! resumed from a state that lost its records of the transfers (as a kill between a chunk's
//! registry commit and its state update leaves it) and its releases (as a state PPS wrote) ends
//! where the first run ended, the repositories unchanged.

// Test code: a failed expectation is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use chrono::TimeDelta;
use common::{announce, fixture, get_json, ingest, observation_end, settings, start, stop};
use publication_consumer::Clock;
use service_kit::ServiceHandle;
use sqlx::{Connection, PgConnection, Row};
use test_support::TestRegistry;
use test_support::registry::RegistryOptions;

/// Row counts of the tables a transfer writes, to compare two states of a repository.
async fn footprint(registry: &TestRegistry) -> Vec<(String, i64)> {
    let mut conn = PgConnection::connect(&registry.database_url).await.unwrap();
    let mut out = Vec::new();
    for table in [
        "dataset",
        "dataset_location",
        "file_datastore_records",
        "collection",
        "visit",
        "visit_definition",
        "visit_detector_region",
        "exposure",
        "\"group\"",
        "day_obs",
    ] {
        let count: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM embargo.{table}"
        )))
        .fetch_one(&mut conn)
        .await
        .unwrap();
        out.push((table.to_owned(), count));
    }
    out
}

/// Waits until the state says `released` datasets are in both prompt_prep and /repo/main, and
/// `published` in the Google repository.
async fn wait_for_transfers(state: &sqlx::PgPool, schema: &str, released: i64, published: i64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FILTER (WHERE prompt_prep_status = 1 AND unembargo_time IS NOT NULL) AS prep,
                    count(*) FILTER (WHERE repo_main_status = 1) AS main,
                    count(*) FILTER (WHERE google_int_status = 1) AS google
             FROM {schema}.dataset"
        )))
        .fetch_one(state)
        .await
        .unwrap();
        let (prep, main, google): (i64, i64, i64) =
            (row.get("prep"), row.get("main"), row.get("google"));
        if prep == released && main == released && google == published {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "after 120 s, {prep} datasets in prompt_prep and {main} in /repo/main of {released}; {google} in Google of {published}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn released_datasets_reach_prompt_prep_and_repo_main_and_a_lost_state_resumes() {
    let fixture = fixture(1).await;
    let batches = ingest(&fixture, 2_026_050_300_001, 2, 60).await;
    // Prompt Processing wrote the files; give each its own content.
    let paths = common::daf_butler::datastore_paths(&fixture.registry).await;
    common::daf_butler::write_files(&fixture.registry, &paths, |path| {
        format!("{path}\n").into_bytes()
    });
    let options = RegistryOptions {
        without_output_run: true,
        ..RegistryOptions::default()
    };
    let prompt_prep = fixture
        .env
        .fresh_registry_with(options.clone())
        .await
        .unwrap();
    let main = fixture
        .env
        .fresh_registry_with(options.clone())
        .await
        .unwrap();
    let google = fixture.env.fresh_registry_with(options).await.unwrap();
    common::daf_butler::share_datastore(&google, &prompt_prep, "FileDatastore@<butlerRoot>");
    common::daf_butler::register_tagged(&google).await;

    let mut settings = settings(&fixture);
    // Past the 80 h embargo of the generator's released type.
    settings.clock = Clock::manual(observation_end() + TimeDelta::hours(81));
    settings.prompt_prep_repository = Some(prompt_prep.butler_config.display().to_string());
    settings.repo_main_repository = Some(main.butler_config.display().to_string());
    settings.google_int_repository = Some(google.butler_config.display().to_string());
    settings.tasks.idle = Duration::from_millis(200);
    settings.tasks.unembargo_chunk = 7;
    let schema = settings.schema.clone();
    let service = start(settings.clone()).await;
    announce(&fixture, &batches).await;
    let state = sqlx::PgPool::connect(&fixture.registry.database_url)
        .await
        .unwrap();
    // Wait for the events, then for the transfers of what the policy released.
    let deadline = Instant::now() + Duration::from_secs(60);
    let total: i64 = batches.iter().map(|b| b.datasets.len() as i64).sum();
    let (released, published) = loop {
        let (recorded, released, published): (i64, i64, i64) =
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT count(*), count(*) FILTER (WHERE release_at <= $1),
                        count(*) FILTER (WHERE release_at <= $1 AND publish_to_public)
                 FROM {schema}.dataset_release"
            )))
            .bind(observation_end() + TimeDelta::hours(81))
            .fetch_one(&state)
            .await
            .unwrap();
        if recorded == total {
            break (released, published);
        }
        assert!(Instant::now() < deadline, "{recorded} of {total} recorded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(released > 0 && released < total, "{released} of {total}");
    assert!(published > 0, "the released types include published ones");
    wait_for_transfers(&state, &schema, released, published).await;

    // The visits are recorded in both targets; files copied to prompt_prep; /repo/main points
    // at prompt_prep's copies.
    let visits: (i64, i64) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FILTER (WHERE prompt_prep_status = 1), count(*) FILTER (WHERE repo_main_status = 1) FROM {schema}.visit"
    )))
    .fetch_one(&state)
    .await
    .unwrap();
    assert_eq!(visits.0, visits.1);
    assert!(visits.0 >= 2, "{visits:?}");
    let copied = common::daf_butler::datastore_paths(&prompt_prep).await;
    assert!(!copied.is_empty());
    for path in &copied {
        assert_eq!(
            std::fs::read(prompt_prep.repo.join(path)).unwrap(),
            std::fs::read(fixture.registry.repo.join(path)).unwrap(),
            "{path}"
        );
    }
    let mut main_conn = PgConnection::connect(&main.database_url).await.unwrap();
    let uris: Vec<String> = sqlx::query_scalar("SELECT path FROM embargo.file_datastore_records")
        .fetch_all(&mut main_conn)
        .await
        .unwrap();
    assert_eq!(i64::try_from(uris.len()).unwrap(), released);
    let prep_root = format!("file://{}/", prompt_prep.repo.display());
    assert!(
        uris.iter().all(|u| u.starts_with(&prep_root)),
        "{:?} under {prep_root}",
        uris.first()
    );
    let (status, progress) = get_json(service.http_address(), "/api/v1/transfers").await;
    assert_eq!(status, 200);
    let unembargo = progress["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["task"] == "unembargo")
        .cloned()
        .unwrap();
    assert_eq!(unembargo["transferred"], released, "{progress}");
    // The Google repository: prompt_prep's files by the same relative paths, all tagged.
    let mut google_conn = PgConnection::connect(&google.database_url).await.unwrap();
    let google_paths: Vec<String> =
        sqlx::query_scalar("SELECT path FROM embargo.file_datastore_records")
            .fetch_all(&mut google_conn)
            .await
            .unwrap();
    assert_eq!(i64::try_from(google_paths.len()).unwrap(), published);
    assert!(
        google_paths.iter().all(|p| copied.contains(p)),
        "{google_paths:?}"
    );
    let tagged: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM embargo.collection_summary_dataset_type s
         JOIN embargo.collection c ON c.collection_id = s.collection_id
         WHERE c.name = 'Prompt/Available/Outputs'",
    )
    .fetch_one(&mut google_conn)
    .await
    .unwrap();
    assert!(
        tagged > 0,
        "the TAGGED collection's summary names the published types"
    );
    stop(service).await;

    // A state that lost its records of the transfers (the registries kept theirs) and its
    // releases: the next run releases the same datasets by PPS's rule, finds them already
    // there, records them, and writes nothing twice.
    let before = (
        footprint(&prompt_prep).await,
        footprint(&main).await,
        footprint(&google).await,
    );
    for statement in [
        "UPDATE dataset SET prompt_prep_status = 0, repo_main_status = 0, google_int_status = 0, unembargo_time = NULL",
        "UPDATE visit SET prompt_prep_status = 0, repo_main_status = 0, google_int_status = 0",
        "UPDATE exposure SET prompt_prep_status = 0, repo_main_status = 0, google_int_status = 0",
        "UPDATE \"group\" SET prompt_prep_status = 0, repo_main_status = 0, google_int_status = 0",
        // Nor any release of ours, as a state PPS wrote: PPS's rule (the policy's embargo
        // counted from visit.time) must release the same datasets.
        "DELETE FROM dataset_release",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(
            statement
                .replace("UPDATE ", &format!("UPDATE {schema}."))
                .replace("DELETE FROM ", &format!("DELETE FROM {schema}.")),
        ))
        .execute(&state)
        .await
        .unwrap();
    }
    let service = start(settings).await;
    wait_for_transfers(&state, &schema, released, published).await;
    stop(service).await;
    let after = (
        footprint(&prompt_prep).await,
        footprint(&main).await,
        footprint(&google).await,
    );
    assert_eq!(before, after);
}
