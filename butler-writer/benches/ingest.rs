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
use test_support::TestEnv;
use test_support::messages::{MessageFactory, to_lines};

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
    for (_, _, _, path) in &files {
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

    println!();
    println!(
        "registry ingest, new visits, {reps} timed batches per size after one warm-up (medians)"
    );
    println!(
        "| datasets | messages | daf_butler (s) | ours (s) | daf_butler datasets/s | ours datasets/s | ratio |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
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
    }
}
