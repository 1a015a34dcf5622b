//! Sustained throughput of the whole writer, topic to event, and its peak memory: a backlog of
//! realistic messages (new visits, 189 detectors each, three datasets per message) is put on a
//! partitioned topic first, then `butler-writer serve` (this build's binary, as deployed) drains
//! it into a fresh registry with the broker and Postgres on the same machine.
//!
//!     eval "$(deploy/local/stack env)"
//!     cargo bench -p butler-writer --bench service   # BENCH_DATASETS=N (default 100000)
//!
//! Reported: datasets per second from the writer's first commit to its last (sustained), the
//! same over the whole run including start-up and joining the group, the writer's peak RSS
//! (VmHWM) and CPU time; then it reconciles: every dataset sent is in the registry exactly once
//! and listed by a batch file, and nothing was dead-lettered. Settings come from the environment
//! as for the service itself (BUTLER_WRITER_BATCH_MAX_MESSAGES, BUTLER_WRITER_DB_CONCURRENCY, ...).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::cast_precision_loss,
    missing_docs
)]

use std::path::Path;
use std::time::Instant;

use test_support::TestEnv;
use test_support::service_bench::{self, PARTITIONS, ServeWriter};

#[tokio::main]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let datasets: usize = service_bench::env_or("BENCH_DATASETS", 100_000);
    let env = TestEnv::start().await.unwrap_or_else(|e| panic!("{e:#}"));
    let registry = env.fresh_registry().await.expect("registry");
    let topics = env.fresh_topics(PARTITIONS).await.expect("topics");
    let dir = tempfile::tempdir().expect("dir");

    // The backlog: visits of 189 detectors, messages spread over the partitions by detector.
    let factory = test_support::messages::MessageFactory::load();
    let messages = factory.batch(9_000_000, datasets);
    let started = Instant::now();
    let bytes = service_bench::produce_backlog(&env, &topics.input, &messages).await;
    println!(
        "backlog: {} messages, {datasets} datasets, {:.1} MB on {PARTITIONS} partitions, produced in {:.1} s",
        messages.len(),
        bytes as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );

    let mut writer = ServeWriter::start(
        Path::new(env!("CARGO_BIN_EXE_butler-writer")),
        &env,
        &registry.butler_config,
        &topics,
        dir.path(),
        &[],
    );
    let drained = writer.drain(datasets).await;
    writer.stop().await;
    println!(
        "writer: {} datasets in {} batches; sustained {:.0} datasets/s (first to last commit), {:.0} datasets/s including start-up ({:.1} s); peak RSS {:.1} MB; writer CPU {:.1} s",
        drained.datasets,
        drained.batches,
        drained.sustained,
        drained.whole,
        drained.elapsed.as_secs_f64(),
        drained.peak_rss_kib as f64 / 1024.0,
        drained.cpu_seconds
    );

    let reconciliation =
        service_bench::reconcile(&env, &registry, &topics, dir.path(), &messages).await;
    println!("reconciliation: {reconciliation}");
    assert!(reconciliation.is_exact(), "the backlog did not reconcile");
}
