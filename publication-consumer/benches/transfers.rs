//! Each transfer task against daf_butler's call on the same data, in one run: an embargo
//! registry of generated visits (the writer's engine; each file with 4 KiB of content), then for
//! twin fresh targets, daf_butler (`tests/python/daf_butler_transfer.py`, which times its calls
//! alone, without Butler start-up) and ours (`publication_consumer::transfer`, timed the same
//! way, repositories already open):
//! - the visit-record copy (`transfer_dimension_records_from`), in one chunk;
//! - unembargo (`transfer_from(transfer="copy")`), in PPS's chunks of 100;
//! - /repo/main (`transfer_from(transfer="unsafe_direct")`), in one chunk (PPS: 20,000).
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

use std::time::Instant;

use common::daf_butler::{assert_same_registries, daf_butler, fill_embargo, open, twins};
use publication_consumer::transfer::{self, Mode, Repository};
use schema::RecordValue;
use sqlx::Connection;
use test_support::{TestEnv, TestRegistry};
use uuid::Uuid;

/// One line of the report.
fn report(task: &str, items: usize, python: f64, ours: f64) {
    println!(
        "{task:<24} {items:>6}  daf_butler {python:>7.3} s ({:>8.0}/s)  ours {ours:>7.3} s ({:>8.0}/s)  {:>5.1}x",
        items as f64 / python,
        items as f64 / ours,
        python / ours
    );
}

async fn records(
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
    let python = daf_butler(&args).await;
    let target = open("target", b).await;
    let values: Vec<RecordValue> = visits.iter().map(|v| RecordValue::Int(*v)).collect();
    let started = Instant::now();
    transfer::copy_dimension_records(source, &target, "visit", "LSSTCam", &values)
        .await
        .unwrap();
    report(
        "visit records",
        visits.len(),
        python.seconds,
        started.elapsed().as_secs_f64(),
    );
}

async fn datasets(
    embargo: &TestRegistry,
    source: &Repository,
    (a, b): (&TestRegistry, &TestRegistry),
    ids: &[Uuid],
    mode: Mode,
    chunk: usize,
) {
    let list = tempfile::NamedTempFile::new().unwrap();
    let text: String = ids.iter().map(|id| format!("{id}\n")).collect();
    std::fs::write(list.path(), text).unwrap();
    let chunk_text = chunk.to_string();
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
        "--chunk",
        &chunk_text,
    ])
    .await;
    let target = open("target", b).await;
    let started = Instant::now();
    for part in ids.chunks(chunk) {
        transfer::transfer_datasets(source, &target, part, mode)
            .await
            .unwrap();
    }
    let task = if mode == Mode::Copy {
        "unembargo (copy)"
    } else {
        "repo main (direct)"
    };
    report(
        task,
        ids.len(),
        python.seconds,
        started.elapsed().as_secs_f64(),
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
    let mut conn = sqlx::PgConnection::connect(&embargo.database_url)
        .await
        .unwrap();
    let paths: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT path FROM embargo.file_datastore_records")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    for path in &paths {
        std::fs::write(embargo.repo.join(path), vec![b'x'; 4096]).unwrap();
    }
    let source = open("embargo", &embargo).await;
    println!(
        "transfers: {} datasets of {} visits ({} with the reference messages), {} files of 4 KiB",
        ids.len(),
        visit_ids.len(),
        ids.len(),
        paths.len()
    );

    let (a, b) = twins(&env).await;
    records(&embargo, &source, (&a, &b), &visit_ids).await;
    datasets(&embargo, &source, (&a, &b), &ids, Mode::Copy, 100).await;
    assert_same_registries(&a, &b, "unembargo").await;

    let (main_a, main_b) = twins(&env).await;
    records(&embargo, &source, (&main_a, &main_b), &visit_ids).await;
    datasets(
        &embargo,
        &source,
        (&main_a, &main_b),
        &ids,
        Mode::Direct,
        20_000,
    )
    .await;
    assert_same_registries(&main_a, &main_b, "repo main").await;
    println!("the targets of each pair are the same, table by table");
}
