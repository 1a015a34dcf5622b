//! The writer with its database further away: `butler-writer serve` (this build's binary, as
//! deployed) drains a backlog of realistic messages into a fresh registry that it reaches through
//! a proxy adding a fixed delay to every chunk each way (`test_support::proxy`), at several added
//! round-trip times, numbers of batches in the database at once and batch sizes.
//!
//!     eval "$(deploy/local/stack env)"
//!     cargo bench -p butler-writer --bench remote
//!
//! `BENCH_WRITER_BIN=path/to/butler-writer` measures another build (before/after comparisons).
//!
//! The grid, from the environment (comma-separated lists):
//! - `BENCH_RTT_MS`: added round-trip times in milliseconds (default `0,1,5`); half of each is
//!   added each way. RTT 0 goes through the same proxy with no delay, so a ratio to it is the
//!   delay's effect alone (`--bench service` has the writer without the proxy).
//! - `BENCH_DB_CONCURRENCY`: `BUTLER_WRITER_DB_CONCURRENCY`, batches in the database at once,
//!   each on its own connection (default `1,2,4`).
//! - `BENCH_BATCH_MAX_MESSAGES`: `BUTLER_WRITER_BATCH_MAX_MESSAGES` (default `100,500`; 500 is
//!   the writer's default): a batch's statements cost round trips, so smaller batches pay more
//!   of them per dataset.
//! - `BENCH_DATASETS`: datasets per cell (default 10000); each cell makes its own registry,
//!   topics and backlog, drains it and reconciles it (every dataset sent in the registry once and
//!   listed by a batch file, nothing dead-lettered), as `--bench service` does.
//!
//! Other writer settings come from the environment as for the service itself. Printed: a line per
//! cell as it ends, then one table: batch size, added RTT asked for and measured, concurrency,
//! sustained datasets/s (first to last commit), datasets/s per connection (sustained /
//! concurrency), and the ratio to the RTT-0 cell of the same concurrency and batch size. The
//! measured added RTT is the median `SELECT 1` through the proxy less the median without it, on
//! an idle connection before the writer starts: the proxy's threads wake a little late (about 0.1
//! ms each way on the 2-core machine), and at RTT 0 it is what the proxy itself costs.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::cast_precision_loss,
    missing_docs
)]

use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::Connection;
use test_support::TestEnv;
use test_support::service_bench::{self, PARTITIONS, ServeWriter};

/// One cell of the grid.
#[derive(Debug, Clone, Copy)]
struct Cell {
    batch_messages: usize,
    rtt_ms: f64,
    concurrency: usize,
}

fn list<T: std::str::FromStr>(name: &str, default: &str) -> Vec<T> {
    let text = std::env::var(name).unwrap_or_else(|_| default.to_owned());
    text.split(',')
        .map(|v| {
            v.trim()
                .parse()
                .unwrap_or_else(|_| panic!("{name}={text}: {v} does not parse"))
        })
        .collect()
}

#[tokio::main]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let datasets: usize = service_bench::env_or("BENCH_DATASETS", 10_000);
    let rtts: Vec<f64> = list("BENCH_RTT_MS", "0,1,5");
    let concurrencies: Vec<usize> = list("BENCH_DB_CONCURRENCY", "1,2,4");
    let batch_sizes: Vec<usize> = list("BENCH_BATCH_MAX_MESSAGES", "100,500");
    assert!(
        rtts.iter().all(|r| r.is_finite() && *r >= 0.0),
        "BENCH_RTT_MS: not a round-trip time"
    );
    let env = TestEnv::start().await.unwrap_or_else(|e| panic!("{e:#}"));
    // The same visits in every cell, each into a registry of its own.
    let messages = test_support::messages::MessageFactory::load().batch(9_000_000, datasets);
    let fewest_batches = messages.len() / batch_sizes.iter().max().copied().unwrap_or(1).max(1);
    if fewest_batches < 5 {
        println!(
            "note: {} messages make only {fewest_batches} batches of the largest size; the sustained rate leaves out the first, so raise BENCH_DATASETS",
            messages.len()
        );
    }

    let mut results = Vec::new();
    let started = Instant::now();
    for &batch_messages in &batch_sizes {
        for &concurrency in &concurrencies {
            for &rtt_ms in &rtts {
                let cell = Cell {
                    batch_messages,
                    rtt_ms,
                    concurrency,
                };
                let (sustained, measured_ms) = run_cell(&env, cell, &messages, datasets).await;
                results.push((cell, sustained, measured_ms));
            }
        }
    }

    println!();
    println!(
        "the writer with its database at an added round-trip time: {datasets} datasets per cell, {} messages, {PARTITIONS} partitions; {:.0} s in all",
        messages.len(),
        started.elapsed().as_secs_f64()
    );
    println!(
        "| batch max messages | added RTT (ms) | measured (ms) | DB concurrency | datasets/s | datasets/s per connection | / RTT 0 |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for (cell, sustained, measured_ms) in &results {
        let base = results.iter().find(|(c, _, _)| {
            c.rtt_ms == 0.0
                && c.concurrency == cell.concurrency
                && c.batch_messages == cell.batch_messages
        });
        let ratio = base.map_or(f64::NAN, |(_, b, _)| sustained / b);
        println!(
            "| {} | {} | {measured_ms:.2} | {} | {} | {} | {} |",
            cell.batch_messages,
            cell.rtt_ms,
            cell.concurrency,
            figure(*sustained, 0),
            figure(sustained / cell.concurrency as f64, 0),
            figure(ratio, 2)
        );
    }
}

/// `value` with `decimals`, or `-` when there is none (a cell whose datasets were all in at the
/// first sight of its writer's metrics, or no RTT-0 cell to compare with).
fn figure(value: f64, decimals: usize) -> String {
    if value.is_finite() {
        format!("{value:.decimals$}")
    } else {
        "-".to_owned()
    }
}

/// One cell: a fresh registry behind a proxy of its own, fresh topics with the backlog, the
/// writer draining it; reconciled, then everything but the topics (deleted when `env` is dropped)
/// removed. Returns the sustained datasets/s and the measured added RTT in milliseconds.
async fn run_cell(env: &TestEnv, cell: Cell, messages: &[Value], datasets: usize) -> (f64, f64) {
    let registry = env.fresh_registry().await.expect("registry");
    let topics = env.fresh_topics(PARTITIONS).await.expect("topics");
    let dir = tempfile::tempdir().expect("dir");
    service_bench::produce_backlog(env, &topics.input, messages).await;
    let (proxy, butler_config) = registry
        .through_delayed_proxy(Duration::from_secs_f64(cell.rtt_ms / 2000.0))
        .await
        .expect("proxy");
    let direct = round_trip(&registry.database_url).await;
    let proxied = round_trip(&registry.database_url_through(&proxy).expect("proxied URL")).await;
    let measured_ms = (proxied - direct).as_secs_f64() * 1000.0;
    let mut writer = ServeWriter::start(
        &service_bench::writer_binary(env!("CARGO_BIN_EXE_butler-writer")),
        env,
        &butler_config,
        &topics,
        dir.path(),
        &[
            ("BUTLER_WRITER_DB_CONCURRENCY", cell.concurrency.to_string()),
            (
                "BUTLER_WRITER_BATCH_MAX_MESSAGES",
                cell.batch_messages.to_string(),
            ),
        ],
    );
    let drained = writer.drain(datasets).await;
    writer.stop().await;
    drop(proxy);
    let reconciliation =
        service_bench::reconcile(env, &registry, &topics, dir.path(), messages).await;
    println!(
        "batch {} messages, RTT +{} ms (measured +{measured_ms:.2}), concurrency {}: {} batches, sustained {:.0} datasets/s, {:.0} including start-up ({:.1} s); peak RSS {:.1} MB; reconciliation: {reconciliation}",
        cell.batch_messages,
        cell.rtt_ms,
        cell.concurrency,
        drained.batches,
        drained.sustained,
        drained.whole,
        drained.elapsed.as_secs_f64(),
        drained.peak_rss_kib as f64 / 1024.0,
    );
    assert!(
        reconciliation.is_exact(),
        "the backlog did not reconcile: {cell:?}"
    );
    (drained.sustained, measured_ms)
}

/// The median time of `SELECT 1` on one connection to `url`.
async fn round_trip(url: &str) -> Duration {
    let mut db = sqlx::PgConnection::connect(url).await.expect("connect");
    let mut times = Vec::new();
    for i in 0..60 {
        let started = Instant::now();
        sqlx::query("SELECT 1")
            .execute(&mut db)
            .await
            .expect("SELECT 1");
        // The first few warm the connection (the statement cache, the server's backend).
        if i >= 10 {
            times.push(started.elapsed());
        }
    }
    times.sort();
    times[times.len() / 2]
}
