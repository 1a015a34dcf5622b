//! Datasets per second into a real registry, ours against daf_butler's Python path (the two calls
//! the deployed writer makes), on the same Postgres in the same run, at batch sizes 1, 10, 100
//! and 1000. Every batch is a new visit, so its dimension records are inserted too.
//!
//!     eval "$(deploy/local/stack env)"
//!     cargo bench -p butler-writer --bench ingest            # BENCH_REPS=N to change repetitions
//!
//! Both sides are timed per batch inside their own process with a warm, long-lived connection
//! (a Butler on the Python side, the engine on ours), including the JSON parsing of the messages:
//! what a writer does between reading a batch from Kafka and committing it.
//!
//! The yardstick, at 1000 datasets: the rows our engine wrote for each timed batch, loaded with
//! COPY into clones of the same registry (indexes, foreign keys and triggers on), one load
//! alone and two at once into two clones; our rate is printed as a ratio of both
//! (`test_support::copy_floor`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    missing_docs
)]

use std::io::Write;
use std::time::Instant;

use butler_repository::{ButlerConfig, PoolSettings};
use butler_writer::Registry;
use serde::Deserialize;
use test_support::messages::{MessageFactory, to_lines};
use test_support::{TestEnv, copy_floor};

const SIZES: &[usize] = &[1, 10, 100, 1000];

#[derive(Deserialize)]
struct PythonBatch {
    seconds: f64,
    #[serde(default)]
    datasets: Vec<String>,
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing useful: run only
    // when asked to measure.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let reps: usize = std::env::var("BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let env = TestEnv::start().await.unwrap_or_else(|e| panic!("{e:#}"));
    let python_registry = env.fresh_registry().await.expect("registry for daf_butler");
    let our_registry = env.fresh_registry().await.expect("registry for ours");
    let factory = MessageFactory::load();
    let dir = tempfile::tempdir().expect("tempdir");

    // The same batches for both sides: one file per batch, new visits throughout. Each side gets
    // its own copies of the visits (same shape, distinct ids), since each fills its own registry.
    let mut files = Vec::new();
    let mut visit = 8_000_001_i64;
    // One warm-up batch per size first, so both sides have their caches filled.
    for &size in SIZES {
        for rep in 0..=reps {
            let batch = factory.batch(visit, size);
            visit += 1 + (size as i64) / (3 * 189);
            let path = dir.path().join(format!("batch_{size}_{rep}.jsonl"));
            let mut file = std::fs::File::create(&path).unwrap();
            for line in to_lines(&batch) {
                file.write_all(&line).unwrap();
                file.write_all(b"\n").unwrap();
            }
            files.push((size, rep, batch.len(), path));
        }
    }

    // daf_butler: one process, one Butler, every batch timed inside it.
    let python = test_support::registry::python().expect("python");
    let script =
        test_support::workspace_root().join("butler-writer/tests/python/daf_butler_writer.py");
    let output = std::process::Command::new(&python)
        .arg(&script)
        .arg("--butler-config")
        .arg(&python_registry.butler_config)
        .args(files.iter().map(|(_, _, _, p)| p))
        .output()
        .expect("run daf_butler");
    assert!(
        output.status.success(),
        "daf_butler failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let python_batches: Vec<PythonBatch> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(python_batches.len(), files.len());

    // Ours: one engine, every batch timed the same way.
    let config = ButlerConfig::from_path(&our_registry.butler_config).expect("config");
    let registry = Registry::open(&config, &PoolSettings::default())
        .await
        .expect("open");
    let mut ours = Vec::new();
    // The transaction id before each batch (and after the last): what each batch wrote.
    let mut marks = Vec::new();
    for (_, _, _, path) in &files {
        marks.push(copy_floor::mark(&our_registry).await.expect("mark"));
        let text = std::fs::read(path).unwrap();
        let started = Instant::now();
        let values: Vec<&[u8]> = text
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        let outcome = registry.ingest_values(&values).await.expect("ingest");
        ours.push(started.elapsed().as_secs_f64());
        assert!(outcome.rejected.is_empty(), "{:?}", outcome.rejected);
    }
    marks.push(copy_floor::mark(&our_registry).await.expect("mark"));
    let floor = copy_floor_at(&env, &our_registry, &files, &marks, FLOOR_SIZE).await;

    println!();
    println!(
        "registry ingest, new visits, {reps} timed batches per size after one warm-up (medians)"
    );
    println!(
        "| datasets | messages | daf_butler (s) | ours (s) | daf_butler datasets/s | ours datasets/s | ratio |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    let (mut ours_at_floor, mut python_at_floor) = (f64::NAN, f64::NAN);
    for &size in SIZES {
        let picked: Vec<usize> = files
            .iter()
            .enumerate()
            .filter(|(_, f)| f.0 == size && f.1 > 0)
            .map(|(i, _)| i)
            .collect();
        let mut py: Vec<f64> = picked.iter().map(|&i| python_batches[i].seconds).collect();
        let mut rs: Vec<f64> = picked.iter().map(|&i| ours[i]).collect();
        let messages = files[picked[0]].2;
        assert!(
            picked
                .iter()
                .all(|&i| python_batches[i].datasets.len() >= size)
        );
        let (py, rs) = (median(&mut py), median(&mut rs));
        println!(
            "| {size} | {messages} | {py:.4} | {rs:.4} | {:.0} | {:.0} | {:.1}x |",
            size as f64 / py,
            size as f64 / rs,
            py / rs
        );
        if size == FLOOR_SIZE {
            ours_at_floor = rs;
            python_at_floor = py;
        }
    }
    let (one, two) = floor;
    let n = FLOOR_SIZE as f64;
    println!();
    println!(
        "the COPY floor at {FLOOR_SIZE} datasets: the rows our engine wrote for each timed batch, COPY (psql) into clones of the registry (medians)"
    );
    println!(
        "| datasets | COPY, one load (s) | COPY, two loads at once (s) | ours (s) | one load datasets/s | two loads datasets/s | ours datasets/s | ours / one load | ours / two loads | daf_butler / one load |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {FLOOR_SIZE} | {one:.4} | {two:.4} | {ours_at_floor:.4} | {:.0} | {:.0} | {:.0} | {:.2}x | {:.2}x | {:.2}x |",
        n / one,
        2.0 * n / two,
        n / ours_at_floor,
        one / ours_at_floor,
        (two / 2.0) / ours_at_floor,
        one / python_at_floor
    );
}

/// The batch size the COPY floor is measured at.
const FLOOR_SIZE: usize = 1000;

/// Medians over the timed batches of `size`: one COPY load of a batch's rows into a clone, and
/// the wall time of two loads at once into two other clones.
async fn copy_floor_at(
    env: &TestEnv,
    registry: &test_support::TestRegistry,
    files: &[(usize, usize, usize, std::path::PathBuf)],
    marks: &[i64],
    size: usize,
) -> (f64, f64) {
    let timed: Vec<usize> = files
        .iter()
        .enumerate()
        .filter(|(_, f)| f.0 == size && f.1 > 0)
        .map(|(i, _)| i)
        .collect();
    let first = timed[0];
    // Everything written before the first timed batch (earlier sizes, the RUN, the warm-up):
    // loaded untimed, so each timed batch finds what it refers to.
    let prefix = copy_floor::rows_between(registry, marks[0], marks[first])
        .await
        .expect("prefix rows");
    let clones = [
        env.fresh_registry().await.expect("clone"),
        env.fresh_registry().await.expect("clone"),
        env.fresh_registry().await.expect("clone"),
    ];
    for clone in &clones {
        copy_floor::load(clone, &prefix).await.expect("prefix load");
    }
    let (mut one, mut two) = (Vec::new(), Vec::new());
    for &i in &timed {
        let rows = copy_floor::rows_between(registry, marks[i], marks[i + 1])
            .await
            .expect("batch rows");
        one.push(
            copy_floor::load(&clones[0], &rows)
                .await
                .expect("one load")
                .as_secs_f64(),
        );
        // Started together; each timed by the server, so the longer is the pair's wall time
        // without psql's start-up.
        let (a, b) = tokio::join!(
            copy_floor::load(&clones[1], &rows),
            copy_floor::load(&clones[2], &rows)
        );
        two.push(a.expect("load a").max(b.expect("load b")).as_secs_f64());
    }
    (median(&mut one), median(&mut two))
}
