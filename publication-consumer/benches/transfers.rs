//! Each transfer task against daf_butler's call on the same data, in one run: an embargo
//! registry of generated visits (the writer's engine; each file with 4 KiB of content), then for
//! twin fresh targets, daf_butler (`tests/python/daf_butler_transfer.py`, which times its calls
//! alone, without Butler start-up) and ours (`publication_consumer::transfer`, timed the same
//! way, repositories already open):
//! - the visit-record copy (`transfer_dimension_records_from`), in one chunk;
//! - unembargo (`transfer_from(transfer="copy")`), in PPS's chunks of 100;
//! - /repo/main (`transfer_from(transfer="unsafe_direct")`), in one chunk (PPS: 20,000);
//! - the Google publication (`transfer_datasets_in_place`, then `associate` into
//!   `Prompt/Available/Outputs`), in one chunk (PPS: 10,000), into twins sharing the source's
//!   datastore.
//!
//! Run with:
//!
//!     eval "$(deploy/local/stack env)"
//!     cargo bench -p publication-consumer --bench transfers   # BENCH_DATASETS=N (default 1134)
//!
//! Printed: per task, the datasets (or visits), each side's seconds, datasets per second, and
//! ours as a multiple of daf_butler's speed. The two targets are then compared table by table,
//! so the speed is for the same result.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::cast_precision_loss,
    missing_docs
)]

#[path = "../tests/common/mod.rs"]
mod common;

use common::daf_butler::{
    assert_same_registries, copy_visits, datastore_paths, fill_embargo, google_twins, open,
    publish_both, transfer_both, twins, write_files,
};
use publication_consumer::transfer::Mode;
use test_support::TestEnv;

/// One line of the report.
fn report(task: &str, items: usize, python: f64, ours: f64) {
    println!(
        "{task:<24} {items:>6}  daf_butler {python:>7.3} s ({:>8.0}/s)  ours {ours:>7.3} s ({:>8.0}/s)  {:>5.1}x",
        items as f64 / python,
        items as f64 / ours,
        python / ours
    );
}

#[tokio::main]
async fn main() {
    let wanted: usize = std::env::var("BENCH_DATASETS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1134);
    let env = TestEnv::start().await.unwrap_or_else(|e| panic!("{e:#}"));
    let embargo = env.fresh_registry().await.unwrap();
    // 567 datasets per visit (189 detectors x 3).
    let visits: Vec<(i64, usize)> = (0..wanted.div_ceil(567))
        .map(|i| {
            let n = (wanted - i * 567).min(567);
            (2_026_050_200_000 + i64::try_from(i).unwrap(), n)
        })
        .collect();
    let (ids, visit_ids) = fill_embargo(&embargo, &visits).await;
    // Files of a realistic small size, so the copy is not free.
    let paths = datastore_paths(&embargo).await;
    write_files(&embargo, &paths, |_| vec![b'x'; 4096]);
    let source = open("embargo", &embargo).await;
    println!(
        "transfers: {} datasets (the reference messages and {} generated), {} visits, {} files of 4 KiB",
        ids.len(),
        wanted,
        visit_ids.len(),
        paths.len()
    );

    let (a, b) = twins(&env).await;
    let (python, ours) = copy_visits(&embargo, &source, (&a, &b), &visit_ids).await;
    report("visit records", visit_ids.len(), python, ours);
    let (_, python, ours) = transfer_both(&embargo, &source, (&a, &b), &ids, Mode::Copy, 100).await;
    report("unembargo (copy)", ids.len(), python, ours);
    assert_same_registries(&a, &b, "unembargo").await;

    let (main_a, main_b) = twins(&env).await;
    let (python, ours) = copy_visits(&embargo, &source, (&main_a, &main_b), &visit_ids).await;
    report("visit records", visit_ids.len(), python, ours);
    let (_, python, ours) = transfer_both(
        &embargo,
        &source,
        (&main_a, &main_b),
        &ids,
        Mode::Direct,
        20_000,
    )
    .await;
    report("repo main (direct)", ids.len(), python, ours);
    assert_same_registries(&main_a, &main_b, "repo main").await;

    let (google_a, google_b) = google_twins(&env, &embargo).await;
    let (python, ours) = copy_visits(&embargo, &source, (&google_a, &google_b), &visit_ids).await;
    report("visit records", visit_ids.len(), python, ours);
    let (_, python, ours) =
        publish_both(&embargo, &source, (&google_a, &google_b), &ids, 10_000).await;
    report("google (in place, tag)", ids.len(), python, ours);
    assert_same_registries(&google_a, &google_b, "google publication").await;
    println!("the targets of each pair are the same, table by table");
}
