//! Parity of the transfers with daf_butler: the same datasets and visits moved out of one embargo
//! registry into twin targets, fresh ones made by `butler create` (test-support): target A by
//! daf_butler's own calls, as the Prompt Publication Service makes them
//! (`tests/python/daf_butler_transfer.py`), target B by ours (`publication_consumer::transfer`,
//! the writer's engine underneath). Then:
//! - every table and sequence of A and B is the same (`butler-writer/tests/python/
//!   compare_registries.py`, which leaves out only `dataset.ingest_date`, a wall-clock value);
//! - each side reports the same datasets transferred and the same missing;
//! - copied files are byte for byte the source's, at the same paths in both targets.
//!
//! The embargo registry holds the reference messages (`batch_a`, `batch_c`) and generated
//! visits (the message factory), written by the writer's engine, each file with its own content.
//! The targets are made without the output RUN, as a repository that has never received
//! Prompt Processing's outputs, so the transfers create it; the unembargo twins also lack one
//! dataset type, which both sides register (`register_dataset_types=True`).

// Test code: a failed expectation is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::daf_butler::{
    assert_same_registries, copy_visits, datastore_paths, fill_embargo, forget_dataset_type,
    google_twins, open, publish_both, share_datastore, transfer_both, twins,
};
use publication_consumer::transfer::Mode;
use sqlx::Connection;
use test_support::TestEnv;
use uuid::Uuid;

#[tokio::test]
async fn every_transfer_leaves_the_target_daf_butler_leaves() {
    let env = TestEnv::start().await.unwrap_or_else(|e| panic!("{e:#}"));
    let embargo = env.fresh_registry().await.unwrap();
    let (mut ids, visits) = fill_embargo(
        &embargo,
        &[(2_026_050_100_100, 40), (2_026_050_100_200, 20)],
    )
    .await;
    let source = open("embargo", &embargo).await;
    // One id the embargo registry has never heard of: missing on both sides.
    let unknown = Uuid::from_u128(0x5eed);
    ids.push(unknown);

    // Unembargo: visit records, then the datasets with their files copied.
    let (a, b) = twins(&env).await;
    copy_visits(&embargo, &source, (&a, &b), &visits).await;
    assert_same_registries(&a, &b, "the visit-record copy").await;
    for twin in [&a, &b] {
        forget_dataset_type(twin, "single_visit_star_unstandardized", false).await;
    }
    let (copied, python_s, ours_s) =
        transfer_both(&embargo, &source, (&a, &b), &ids, Mode::Copy, 100).await;
    eprintln!("unembargo: daf_butler {python_s:.3} s, ours {ours_s:.3} s");
    assert_eq!(copied.missing, [unknown]);
    assert_eq!(copied.transferred.len(), ids.len() - 1);
    assert_same_registries(&a, &b, "the unembargo copy").await;
    let registered: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM embargo.dataset_type WHERE name = 'single_visit_star_unstandardized'",
    )
    .fetch_one(&mut sqlx::PgConnection::connect(&b.database_url).await.unwrap())
    .await
    .unwrap();
    assert_eq!(registered, 1, "the missing dataset type is registered");
    let paths = datastore_paths(&embargo).await;
    for path in &paths {
        let original = std::fs::read(embargo.repo.join(path)).unwrap();
        assert_eq!(
            std::fs::read(a.repo.join(path)).unwrap(),
            original,
            "{path} in A"
        );
        assert_eq!(
            std::fs::read(b.repo.join(path)).unwrap(),
            original,
            "{path} in B"
        );
    }
    // Again: everything is already there, reported transferred, nothing changes.
    let (again, _, _) = transfer_both(&embargo, &source, (&a, &b), &ids, Mode::Copy, 100).await;
    assert_eq!(again.transferred.len(), ids.len() - 1);
    assert_same_registries(&a, &b, "the unembargo copy, repeated").await;

    // /repo/main: registered in place, by absolute URI, no file copied.
    let (main_a, main_b) = twins(&env).await;
    copy_visits(&embargo, &source, (&main_a, &main_b), &visits).await;
    transfer_both(
        &embargo,
        &source,
        (&main_a, &main_b),
        &ids,
        Mode::Direct,
        20_000,
    )
    .await;
    assert_same_registries(&main_a, &main_b, "the /repo/main direct transfer").await;
    let uri: String = sqlx::query_scalar("SELECT path FROM embargo.file_datastore_records LIMIT 1")
        .fetch_one(
            &mut sqlx::PgConnection::connect(&main_b.database_url)
                .await
                .unwrap(),
        )
        .await
        .unwrap();
    assert!(uri.starts_with("file:///"), "{uri}");

    // A type whose dimensions the target has never seen needs a tags table, which daf_butler
    // creates and this service does not: the chunk is refused, naming the type, before
    // anything of it is written.
    let (lacking, _) = twins(&env).await;
    forget_dataset_type(&lacking, "isr_statistics", true).await;
    let target = open("prompt_prep", &lacking).await;
    let error =
        publication_consumer::transfer::transfer_datasets(&source, &target, &ids, Mode::Direct)
            .await
            .expect_err("a type of unknown dimensions");
    let text = service_kit::chain(&error).to_string();
    assert!(
        text.contains("isr_statistics") && text.contains("butler register-dataset-type"),
        "{text}"
    );
    let datasets: i64 = sqlx::query_scalar("SELECT count(*) FROM embargo.dataset")
        .fetch_one(
            &mut sqlx::PgConnection::connect(&lacking.database_url)
                .await
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(datasets, 0);
}

/// The Google publication: the datasets registered in place in a repository whose datastore
/// shares the source's root and name, then tagged into `Prompt/Available/Outputs`; daf_butler's
/// `transfer_datasets_in_place` and `associate` into A, ours into B.
#[tokio::test]
async fn the_google_publication_leaves_the_target_daf_butler_leaves() {
    let env = TestEnv::start().await.unwrap_or_else(|e| panic!("{e:#}"));
    let embargo = env.fresh_registry().await.unwrap();
    let (mut ids, visits) = fill_embargo(&embargo, &[(2_026_050_100_300, 30)]).await;
    let source = open("prompt_prep", &embargo).await;
    let unknown = Uuid::from_u128(0x5eed);
    ids.push(unknown);

    let (a, b) = google_twins(&env, &embargo).await;
    copy_visits(&embargo, &source, (&a, &b), &visits).await;
    assert_same_registries(&a, &b, "the visit-record copy into Google").await;
    // Chunks smaller than the datasets, so that the later ones find the RUN and summaries the
    // first made.
    let (published, python_s, ours_s) = publish_both(&embargo, &source, (&a, &b), &ids, 25).await;
    eprintln!("publish: daf_butler {python_s:.3} s, ours {ours_s:.3} s");
    assert_eq!(published.missing, [unknown]);
    assert_eq!(published.transferred.len(), ids.len() - 1);
    assert_same_registries(&a, &b, "the Google publication").await;
    assert_eq!(
        tagged_datasets(&b).await,
        published.transferred.len(),
        "every published dataset is tagged"
    );
    // In place: no file was written into either target's own directory.
    for twin in [&a, &b] {
        let files: Vec<_> = walk(&twin.repo)
            .into_iter()
            .filter(|p| p.extension().is_none_or(|e| e != "yaml"))
            .collect();
        assert!(
            files.is_empty(),
            "files in {}: {files:?}",
            twin.repo.display()
        );
    }
    // Again: already there and tagged, all reported transferred, nothing changes.
    let (again, _, _) = publish_both(&embargo, &source, (&a, &b), &ids, 25).await;
    assert_eq!(again.transferred.len(), ids.len() - 1);
    assert_same_registries(&a, &b, "the Google publication, repeated").await;

    // A target whose datastore is not the source's is refused before anything is written.
    let (other, _) = twins(&env).await;
    share_datastore(&other, &embargo, "FileDatastore@elsewhere");
    let target = open("google_int", &other).await;
    let error = publication_consumer::transfer::publish_datasets(
        &source,
        &target,
        &ids,
        publication_consumer::tasks::PUBLISHED_COLLECTION,
    )
    .await
    .expect_err("another datastore");
    let text = service_kit::chain(&error).to_string();
    assert!(text.contains("FileDatastore@elsewhere"), "{text}");
}

/// How many datasets `Prompt/Available/Outputs` holds (its collection summary names their types,
/// and each type's tags table its rows).
async fn tagged_datasets(registry: &test_support::TestRegistry) -> usize {
    let mut conn = sqlx::PgConnection::connect(&registry.database_url)
        .await
        .unwrap();
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT t.tag_association_table FROM embargo.collection c
         JOIN embargo.collection_summary_dataset_type s ON s.collection_id = c.collection_id
         JOIN embargo.dataset_type t ON t.id = s.dataset_type_id
         WHERE c.name = 'Prompt/Available/Outputs'",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let mut count = 0;
    for table in tables {
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM embargo.{table} t JOIN embargo.collection c
             ON c.collection_id = t.collection_id WHERE c.name = 'Prompt/Available/Outputs'"
        )))
        .fetch_one(&mut conn)
        .await
        .unwrap();
        count += usize::try_from(n).unwrap();
    }
    count
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}
