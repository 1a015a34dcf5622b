//! Sustained throughput of the whole writer, topic to event, and its peak memory: a backlog of
//! realistic messages (new visits, 189 detectors each, three datasets per message) is put on a
//! partitioned topic first, then `butler-writer serve` (this build's binary, as deployed) drains
//! it into a fresh registry with the broker and Postgres on the same machine.
//!
//!     eval "$(deploy/local/stack env)"
//!     cargo bench -p butler-writer --bench service   # BENCH_DATASETS=N (default 100000)
//!
//! `BENCH_WRITER_BIN=path/to/butler-writer` measures another build (before/after comparisons).
//!
//! Reported: datasets per second from the writer's first commit to its last (sustained), the
//! same over the whole run including start-up and joining the group, the writer's peak RSS
//! (VmHWM) and CPU time; then it reconciles: every dataset sent is in the registry exactly once
//! and listed by a batch file, and nothing was dead-lettered. Settings come from the environment
//! as for the service itself (BUTLER_WRITER_BATCH_MAX_MESSAGES, BUTLER_WRITER_DB_CONCURRENCY, ...).
//!
//! Then the yardstick (`test_support::copy_floor`): the rows the writer wrote into its registry,
//! loaded with COPY into clones of the registry (indexes, foreign keys and triggers on), one load
//! alone and two full loads at once into two clones; the writer's sustained rate is printed as a
//! ratio of the one-load rate and of the two loads' aggregate rate. `--bench remote` runs the same
//! writer with its database further away.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::cast_precision_loss,
    missing_docs
)]

use std::time::Instant;

use test_support::service_bench::{self, PARTITIONS, ServeWriter};
use test_support::{TestEnv, copy_floor};

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

    // From here on only the writer writes to its registry (the bootstrap is done): what it
    // writes lies between this mark and the one taken when it has stopped.
    let from = copy_floor::mark(&registry).await.expect("mark");
    let mut writer = ServeWriter::start(
        &service_bench::writer_binary(env!("CARGO_BIN_EXE_butler-writer")),
        &env,
        &registry.butler_config,
        &topics,
        dir.path(),
        &[],
    );
    let drained = writer.drain(datasets).await;
    writer.stop().await;
    let to = copy_floor::mark(&registry).await.expect("mark");
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

    copy_floor_line(&env, &registry, from, to, datasets, drained.sustained).await;
}

/// Loads the rows the writer wrote between the marks `from` and `to` into clones of its
/// registry, once alone and twice at once, and prints the writer's `sustained` rate against both.
async fn copy_floor_line(
    env: &TestEnv,
    registry: &test_support::TestRegistry,
    from: i64,
    to: i64,
    datasets: usize,
    sustained: f64,
) {
    let rows = copy_floor::rows_between(registry, from, to)
        .await
        .expect("the writer's rows");
    let clones = [
        env.fresh_registry().await.expect("clone"),
        env.fresh_registry().await.expect("clone"),
        env.fresh_registry().await.expect("clone"),
    ];
    let one = copy_floor::load(&clones[0], &rows)
        .await
        .expect("one load")
        .as_secs_f64();
    // Two loads at once: all the rows into each of two clones, started together, each timed by
    // the server; the longer is the pair's wall time, and twice the datasets over it the
    // aggregate rate of two sessions. Not the rows split in halves: a half needs the dimension
    // records its datasets refer to, and so would not be a clean half. As with the writer's
    // concurrent batches, the two loads share the server's CPU, disk and WAL; unlike them, they
    // share no index or lock, so this aggregate is an upper bound of what two sessions could do
    // in one registry.
    let (a, b) = tokio::join!(
        copy_floor::load(&clones[1], &rows),
        copy_floor::load(&clones[2], &rows)
    );
    let two = a.expect("load a").max(b.expect("load b")).as_secs_f64();
    let n = datasets as f64;
    let (one_rate, two_rate) = (n / one, 2.0 * n / two);
    println!(
        "COPY floor: the writer's rows ({:.1} MB of COPY data) into clones of the registry (psql, timed by the server): one load {one:.2} s, {one_rate:.0} datasets/s; two loads at once {two:.2} s, {two_rate:.0} datasets/s together; the writer's sustained rate is {:.2}x one load, {:.2}x two loads",
        rows.bytes() as f64 / 1e6,
        sustained / one_rate,
        sustained / two_rate
    );
    println!(
        "bench process peak RSS {:.1} MB (the backlog's messages and the COPY data in memory)",
        service_bench::peak_rss_kib(std::process::id()).unwrap_or(0) as f64 / 1024.0
    );
}
