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
//! Prompt Processing's outputs, so the transfers create it.

// Test code: a failed expectation is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;

use common::daf_butler::{assert_same_registries, daf_butler, fill_embargo, open, twins, uuids};
use publication_consumer::transfer::{self, Mode, Repository, Transferred};
use schema::RecordValue;
use sqlx::{Connection, Row};
use test_support::{TestEnv, TestRegistry};
use uuid::Uuid;

/// The visits' records into A with daf_butler and into B with ours.
async fn copy_visits(
    embargo: &TestRegistry,
    source: &Repository,
    (a, b): (&TestRegistry, &TestRegistry),
    visits: &[i64],
) {
    let ids: Vec<String> = visits.iter().map(i64::to_string).collect();
    let mut args = vec![
        "dimension-records",
        "--source",
        embargo.butler_config.to_str().unwrap(),
        "--target",
        a.butler_config.to_str().unwrap(),
        "--element",
        "visit",
        "--ids",
    ];
    args.extend(ids.iter().map(String::as_str));
    daf_butler(&args).await;
    let target = open("prompt_prep", b).await;
    let values: Vec<RecordValue> = visits.iter().map(|v| RecordValue::Int(*v)).collect();
    let copied = transfer::copy_dimension_records(source, &target, "visit", "LSSTCam", &values)
        .await
        .unwrap_or_else(|e| panic!("{}", service_kit::chain(&e)));
    assert!(
        copied > visits.len(),
        "a visit brings its definitions along"
    );
}

/// The datasets into A with daf_butler and into B with ours; both report the same.
async fn transfer_both(
    embargo: &TestRegistry,
    source: &Repository,
    (a, b): (&TestRegistry, &TestRegistry),
    ids: &[Uuid],
    mode: Mode,
) -> Transferred {
    let list = tempfile::NamedTempFile::new().unwrap();
    let text: String = ids.iter().map(|id| format!("{id}\n")).collect();
    std::fs::write(list.path(), text).unwrap();
    let python = daf_butler(&[
        "datasets",
        "--source",
        embargo.butler_config.to_str().unwrap(),
        "--target",
        a.butler_config.to_str().unwrap(),
        "--mode",
        if mode == Mode::Copy {
            "copy"
        } else {
            "unsafe_direct"
        },
        "--ids-file",
        list.path().to_str().unwrap(),
    ])
    .await;
    let target = open("target", b).await;
    let started = std::time::Instant::now();
    let ours = transfer::transfer_datasets(source, &target, ids, mode)
        .await
        .unwrap_or_else(|e| panic!("{}", service_kit::chain(&e)));
    eprintln!(
        "{mode:?}: {} datasets, daf_butler {:.3} s, ours {:.3} s",
        ids.len(),
        python.seconds,
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        ours.transferred.iter().copied().collect::<BTreeSet<_>>(),
        uuids(&python.transferred),
        "{mode:?}: transferred"
    );
    assert_eq!(
        ours.missing.iter().copied().collect::<BTreeSet<_>>(),
        uuids(&python.missing),
        "{mode:?}: missing"
    );
    ours
}

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
    let copied = transfer_both(&embargo, &source, (&a, &b), &ids, Mode::Copy).await;
    assert_eq!(copied.missing, [unknown]);
    assert_eq!(copied.transferred.len(), ids.len() - 1);
    assert_same_registries(&a, &b, "the unembargo copy").await;
    let mut conn = sqlx::PgConnection::connect(&embargo.database_url)
        .await
        .unwrap();
    let paths: Vec<String> =
        sqlx::query("SELECT DISTINCT path FROM embargo.file_datastore_records")
            .fetch_all(&mut conn)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
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
    let again = transfer_both(&embargo, &source, (&a, &b), &ids, Mode::Copy).await;
    assert_eq!(again.transferred.len(), ids.len() - 1);
    assert_same_registries(&a, &b, "the unembargo copy, repeated").await;

    // /repo/main: registered in place, by absolute URI, no file copied.
    let (main_a, main_b) = twins(&env).await;
    copy_visits(&embargo, &source, (&main_a, &main_b), &visits).await;
    transfer_both(&embargo, &source, (&main_a, &main_b), &ids, Mode::Direct).await;
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
}
