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

use common::daf_butler::{
    assert_same_registries, copy_visits, datastore_paths, fill_embargo, open, transfer_both, twins,
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
    let (copied, python_s, ours_s) =
        transfer_both(&embargo, &source, (&a, &b), &ids, Mode::Copy, 100).await;
    eprintln!("unembargo: daf_butler {python_s:.3} s, ours {ours_s:.3} s");
    assert_eq!(copied.missing, [unknown]);
    assert_eq!(copied.transferred.len(), ids.len() - 1);
    assert_same_registries(&a, &b, "the unembargo copy").await;
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
}
