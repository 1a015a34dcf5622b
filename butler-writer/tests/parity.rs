//! Parity with daf_butler: the same messages, in the same batches, written into registry A by
//! daf_butler (what the deployed Python Butler Writer 3.1.0 does per Kafka batch:
//! `tests/python/daf_butler_writer.py`) and into registry B by our `butler-writer ingest`, must
//! leave the two registries identical, and daf_butler must see in B everything it wrote.
//! Both registries are fresh, made by the real `butler create` (test-support), in namespace
//! `embargo`.
//!
//! # What is compared
//! 1. Per batch, the outcomes (`common::python::{PythonBatch, OurBatch}`):
//!    - the same batches (source file, first line, number of messages);
//!    - the set of dataset IDs the Python writer returned (its batch file; it may hold duplicates
//!      after its one-message-at-a-time fallback) equals our `ingested` ∪ `already_present`;
//!      `already_present` is exactly those of them that earlier batches had landed, `ingested` the
//!      rest;
//!    - the lines Python dropped equal the lines we rejected, and each of ours is a `conflict`
//!      (Python drops nothing else: any other error stops it). The same message twice in one
//!      batch (`dupinbatch.jsonl`) makes Python fall back and drop nothing; we reject nothing.
//!    - exit status 1 exactly when something was dropped or rejected, 0 otherwise.
//! 2. The registries (`tests/python/compare_registries.py`): the set of tables in the namespace
//!    (including `dataset_tags_*` made at run time) and their columns; every row of every table as
//!    a sorted multiset of text-rendered rows; every sequence's `last_value` and `is_called`.
//!    B's `dataset.ingest_date` must be TAI nanoseconds (UTC + 37 s), at microsecond resolution,
//!    and recent.
//! 3. daf_butler's view of B (`tests/python/check_python_view.py`), for every dataset we reported
//!    as landed: `query_datasets` by RUN and through the CHAINED collection
//!    `LSSTCam/prompt/output-2026-05-01` (find-first, for the RUNs in the chain), `get_dataset`
//!    (type, RUN, full data ID), `getURI` (datastore root + the message's relative path), and
//!    spatial queries `visit.region OVERLAPS POINT(...)` at the centre and inner vertices of
//!    every visit and `visit_detector_region.region OVERLAPS POINT(...)` at the centre of every
//!    visit-detector (these go through the `*_skypix_overlap` rows).
//!
//! # What is deliberately excluded
//! Only `dataset.ingest_date`, from the row comparison: it is the wall-clock time of the insert
//! (`../shared/reference/butler-registry.md` section 4), so it differs between any two runs,
//! Python's included. It is checked for form and range instead (above). Also not compared: the
//! per-batch order of IDs, log output, and timings (printed, never judged: timing belongs in the
//! benchmark).
//!
//! The Python side runs with a stand-in for `lsst.obs.base`'s FITS formatter
//! (`tests/python/stubs/`), and makes an empty file at each dataset's path first, because
//! `butler.ingest` checks that the files exist and Prompt Processing would have written them.
//! Neither touches a table.

// Test code: a failed expectation is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::python::{OurBatch, PythonBatch, run_butler_writer, run_python};
use test_support::registry::RegistryOptions;
use test_support::{TestEnv, TestRegistry};
use uuid::Uuid;

/// New visits, an exact redelivery, a warm new batch, a batch whose every message conflicts with
/// what landed, the same message twice in one batch, a RUN that does not exist yet, then 100 and
/// 1000 datasets in one batch each.
const REFERENCE_ORDER: &[&str] = &[
    "batch_a.jsonl",
    "batch_a.jsonl",
    "batch_c.jsonl",
    "batch_a_conflict.jsonl",
    "dupinbatch.jsonl",
    "newrun_sql.jsonl",
    "bench_100_0.jsonl",
    "bench_1000_0.jsonl",
];

#[tokio::test]
async fn the_reference_messages_leave_the_registry_daf_butler_leaves() {
    parity(RegistryOptions::default(), REFERENCE_ORDER, None).await;
}

/// The output RUN made by the first ingest rather than by Prompt Processing's initializer (as in
/// `../shared/reference/sql-traces/11_*`), batches cut by `--batch-size`, and a redelivery at the
/// end.
#[tokio::test]
async fn the_output_run_made_by_the_first_ingest_and_batches_cut_by_size() {
    let options = RegistryOptions {
        without_output_run: true,
        ..RegistryOptions::default()
    };
    let order = [
        "batch_a.jsonl",
        "batch_a_conflict.jsonl",
        "dupinbatch.jsonl",
        "bench_100_0.jsonl",
        "batch_a.jsonl",
    ];
    parity(options, &order, Some(10)).await;
}

async fn parity(options: RegistryOptions, order: &[&str], batch_size: Option<usize>) {
    let env = TestEnv::start().await.unwrap_or_else(|e| panic!("{e:#}"));
    let (a, b) = tokio::try_join!(
        env.fresh_registry_with(options.clone()),
        env.fresh_registry_with(options)
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    let files = message_files(order);

    // Both writers at once: separate databases, and the machine has two cores.
    let (python, ours) = tokio::join!(
        run_python("daf_butler_writer.py", writer_args(&a, &files, batch_size)),
        run_butler_writer(
            ["ingest".into(), "--output".into(), "json".into()]
                .into_iter()
                .chain(writer_args(&b, &files, batch_size))
        )
    );
    let python = python.unwrap_or_else(|e| panic!("{e:#}"));
    let ours = ours.unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!(
        "daf_butler writer on A: {:.2} s in all\n{}",
        python.elapsed.as_secs_f64(),
        python.stderr.trim_end()
    );
    eprintln!(
        "butler-writer on B: {:.2} s in all",
        ours.elapsed.as_secs_f64()
    );
    assert!(
        matches!(python.code(), Some(0 | 1)),
        "{}",
        python.describe()
    );
    assert!(matches!(ours.code(), Some(0 | 1)), "{}", ours.describe());
    let python_batches: Vec<PythonBatch> = python
        .json_lines()
        .unwrap_or_else(|e| panic!("{e:#}\n{}", python.describe()));
    let our_batches: Vec<OurBatch> = ours
        .json_lines()
        .unwrap_or_else(|e| panic!("{e:#}\n{}", ours.describe()));

    let mut problems = compare_outcomes(&python_batches, &our_batches);
    let python_dropped = python_batches.iter().any(|b| !b.dropped.is_empty());
    let we_rejected = our_batches.iter().any(|b| !b.rejected.is_empty());
    if python.code() != Some(i32::from(python_dropped)) {
        problems.push(format!(
            "daf_butler_writer.py exited {:?} with dropped messages: {python_dropped}",
            python.code()
        ));
    }
    if ours.code() != Some(i32::from(we_rejected)) {
        problems.push(format!(
            "butler-writer exited {:?} with rejected messages: {we_rejected}",
            ours.code()
        ));
    }

    let compare = run_python(
        "compare_registries.py",
        [
            a.database_url.as_str(),
            b.database_url.as_str(),
            a.namespace.as_str(),
        ],
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!(
        "compare_registries.py ({:.2} s):\n{}",
        compare.elapsed.as_secs_f64(),
        compare.stdout.trim_end()
    );
    if compare.code() != Some(0) {
        problems.push(format!("registries differ:\n{}", compare.describe()));
    }

    let report = tempfile::NamedTempFile::new().expect("temporary file");
    std::fs::write(report.path(), &ours.stdout).expect("writing our report");
    let view = run_python(
        "check_python_view.py",
        [
            b.butler_config.as_os_str(),
            "--batches".as_ref(),
            report.path().as_os_str(),
        ],
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!(
        "check_python_view.py on B ({:.2} s):\n{}",
        view.elapsed.as_secs_f64(),
        view.stdout.trim_end()
    );
    if view.code() != Some(0) {
        problems.push(format!(
            "daf_butler does not see B as expected:\n{}",
            view.describe()
        ));
    }

    assert!(
        problems.is_empty(),
        "{} problems (registries {} and {}):\n{}",
        problems.len(),
        a.database,
        b.database,
        problems.join("\n")
    );
}

/// The fixture message files, in order (`messages/` of `test_support::fixtures_dir`).
fn message_files(order: &[&str]) -> Vec<PathBuf> {
    let dir = test_support::fixtures_dir().join("messages");
    order
        .iter()
        .map(|name| {
            let path = dir.join(name);
            assert!(
                path.is_file(),
                "missing fixture messages {}",
                path.display()
            );
            path
        })
        .collect()
}

/// The arguments both writers take: `--butler-config`, `--batch-size`, then the files.
fn writer_args(
    registry: &TestRegistry,
    files: &[PathBuf],
    batch_size: Option<usize>,
) -> Vec<std::ffi::OsString> {
    let mut args = vec![
        "--butler-config".into(),
        registry.butler_config.clone().into(),
    ];
    if let Some(size) = batch_size {
        args.push("--batch-size".into());
        args.push(size.to_string().into());
    }
    args.extend(files.iter().map(|f| f.clone().into()));
    args
}

/// Batch by batch: the same IDs, split into new and already present as the batches before
/// imply, and the same messages turned away.
fn compare_outcomes(python: &[PythonBatch], ours: &[OurBatch]) -> Vec<String> {
    let mut problems = Vec::new();
    if python.len() != ours.len() {
        problems.push(format!(
            "daf_butler made {} batches, we made {}",
            python.len(),
            ours.len()
        ));
    }
    let mut landed: BTreeSet<Uuid> = BTreeSet::new();
    for (p, o) in python.iter().zip(ours) {
        let label = format!(
            "batch {} ({} from line {})",
            p.batch,
            file_name(&p.source),
            p.first_line
        );
        if (&p.source, p.first_line, p.messages) != (&o.source, o.first_line, o.messages) {
            problems.push(format!(
                "{label}: we report batch {} as {} from line {}, {} messages (daf_butler: {} messages)",
                o.batch,
                file_name(&o.source),
                o.first_line,
                o.messages,
                p.messages
            ));
            continue;
        }

        let python_ids: BTreeSet<Uuid> = p.datasets.iter().copied().collect();
        let ingested: BTreeSet<Uuid> = o.ingested.iter().copied().collect();
        let already: BTreeSet<Uuid> = o.already_present.iter().copied().collect();
        let our_ids: BTreeSet<Uuid> = ingested.union(&already).copied().collect();
        if python_ids != our_ids {
            problems.push(format!(
                "{label}: daf_butler returned {} IDs, we {}; only daf_butler: {:?}; only ours: {:?}",
                python_ids.len(),
                our_ids.len(),
                first(python_ids.difference(&our_ids)),
                first(our_ids.difference(&python_ids))
            ));
        }
        let expected_already: BTreeSet<Uuid> = python_ids.intersection(&landed).copied().collect();
        let expected_new: BTreeSet<Uuid> = python_ids.difference(&landed).copied().collect();
        if already != expected_already || ingested != expected_new {
            problems.push(format!(
                "{label}: we report {} ingested and {} already present; earlier batches imply {} and {}",
                ingested.len(),
                already.len(),
                expected_new.len(),
                expected_already.len()
            ));
        }

        let dropped: BTreeSet<usize> = p.dropped.iter().map(|d| d.line).collect();
        let rejected: BTreeSet<usize> = o.rejected.iter().map(|r| r.line).collect();
        if dropped != rejected {
            problems.push(format!(
                "{label}: daf_butler dropped lines {dropped:?}, we rejected {rejected:?} ({})",
                o.rejected
                    .iter()
                    .map(|r| format!("line {}: {}: {}", r.line, r.reason, r.error))
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
        }
        for r in o.rejected.iter().filter(|r| r.reason != "conflict") {
            problems.push(format!(
                "{label}: line {} rejected as {}, but daf_butler only ever drops conflicts: {}",
                r.line, r.reason, r.error
            ));
        }
        landed.extend(python_ids);
    }
    problems
}

fn first<'a>(ids: impl Iterator<Item = &'a Uuid>) -> Vec<&'a Uuid> {
    ids.take(3).collect()
}

fn file_name(path: &str) -> String {
    Path::new(path)
        .file_name()
        .map_or_else(|| path.to_owned(), |n| n.to_string_lossy().into_owned())
}

/// The judge itself: a difference in IDs, in the new/already-present split or in the messages
/// turned away is reported.
#[test]
fn outcome_differences_are_reported() {
    let id = |n: u128| Uuid::from_u128(n);
    let python = |datasets: Vec<Uuid>, dropped: Vec<usize>| PythonBatch {
        batch: 0,
        source: "x.jsonl".into(),
        first_line: 1,
        messages: 3,
        datasets,
        dropped: dropped
            .into_iter()
            .map(|line| common::python::PythonDropped {
                line,
                error: "ConflictingDefinitionError".into(),
            })
            .collect(),
        fallback: false,
        seconds: 0.0,
    };
    let ours =
        |ingested: Vec<Uuid>, already_present: Vec<Uuid>, rejected: Vec<(usize, &str)>| OurBatch {
            batch: 0,
            source: "x.jsonl".into(),
            first_line: 1,
            messages: 3,
            ingested,
            already_present,
            rejected: rejected
                .into_iter()
                .map(|(line, reason)| common::python::OurRejected {
                    line,
                    reason: reason.into(),
                    error: String::new(),
                })
                .collect(),
        };

    let agree = compare_outcomes(
        &[
            python(vec![id(1), id(2)], vec![3]),
            python(vec![id(1), id(1)], vec![]),
        ],
        &[
            ours(vec![id(1), id(2)], vec![], vec![(3, "conflict")]),
            ours(vec![], vec![id(1)], vec![]),
        ],
    );
    assert!(agree.is_empty(), "{agree:?}");

    let missing_id = compare_outcomes(
        &[python(vec![id(1), id(2)], vec![])],
        &[ours(vec![id(1)], vec![], vec![])],
    );
    assert_eq!(missing_id.len(), 2, "{missing_id:?}");
    let wrong_split = compare_outcomes(
        &[python(vec![id(1)], vec![])],
        &[ours(vec![], vec![id(1)], vec![])],
    );
    assert_eq!(wrong_split.len(), 1, "{wrong_split:?}");
    let not_dropped = compare_outcomes(
        &[python(vec![], vec![])],
        &[ours(vec![], vec![], vec![(2, "conflict")])],
    );
    assert_eq!(not_dropped.len(), 1, "{not_dropped:?}");
    let other_reason = compare_outcomes(
        &[python(vec![], vec![2])],
        &[ours(vec![], vec![], vec![(2, "invalid")])],
    );
    assert_eq!(other_reason.len(), 1, "{other_reason:?}");
    let fewer_batches = compare_outcomes(
        &[python(vec![], vec![]), python(vec![], vec![])],
        &[ours(vec![], vec![], vec![])],
    );
    assert_eq!(fewer_batches.len(), 1, "{fewer_batches:?}");
}
