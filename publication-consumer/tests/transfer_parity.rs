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

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Stdio;

use butler_repository::{ButlerConfig, PoolSettings};
use butler_writer::Registry;
use publication_consumer::transfer::{self, Mode, Repository, Transferred};
use schema::RecordValue;
use serde::Deserialize;
use sqlx::Row;
use test_support::registry::{RegistryOptions, python};
use test_support::{TestEnv, TestRegistry, fixture_lines, messages, workspace_root};
use uuid::Uuid;

/// What `daf_butler_transfer.py` prints.
#[derive(Debug, Deserialize)]
struct PythonOutcome {
    transferred: Vec<serde_json::Value>,
    missing: Vec<serde_json::Value>,
    seconds: f64,
    #[serde(default)]
    error: Option<String>,
}

/// Runs a Python tool with daf_butler; panics with its output if it fails.
async fn run_python(script: &Path, args: &[&str]) -> String {
    let output = tokio::process::Command::new(python().unwrap())
        .arg(script)
        .args(args)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .expect("running python");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{} {args:?} exited with {}\n--- stdout ---\n{stdout}\n--- stderr ---\n{}",
        script.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

async fn daf_butler(args: &[&str]) -> PythonOutcome {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/daf_butler_transfer.py");
    let stdout = run_python(&script, args).await;
    let outcome: PythonOutcome = serde_json::from_str(stdout.trim()).expect("a JSON report");
    assert!(outcome.error.is_none(), "{outcome:?}");
    outcome
}

/// Every table and sequence of `a` and `b` compared; panics with the differences.
async fn assert_same_registries(a: &TestRegistry, b: &TestRegistry, after: &str) {
    let script = workspace_root().join("butler-writer/tests/python/compare_registries.py");
    let output = tokio::process::Command::new(python().unwrap())
        .arg(script)
        .args([&a.database_url, &b.database_url, &a.namespace])
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .output()
        .await
        .expect("running compare_registries.py");
    assert!(
        output.status.success(),
        "after {after}, the registries differ:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

async fn open(label: &'static str, registry: &TestRegistry) -> Repository {
    Repository::open(
        label,
        &registry.butler_config.display().to_string(),
        &PoolSettings::default(),
    )
    .await
    .unwrap_or_else(|e| panic!("{}", service_kit::chain(&e)))
}

fn uuids(values: &[serde_json::Value]) -> BTreeSet<Uuid> {
    values
        .iter()
        .map(|v| v.as_str().expect("a UUID string").parse().expect("a UUID"))
        .collect()
}

/// The embargo registry's datasets: the reference messages and two generated visits, each file
/// written with content of its own. Returns the dataset ids and the visits.
async fn fill_embargo(embargo: &TestRegistry) -> (Vec<Uuid>, Vec<i64>) {
    let config = ButlerConfig::from_path(&embargo.butler_config).expect("butler.yaml");
    let registry = Registry::open(&config, &PoolSettings::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut lines = fixture_lines("messages/batch_a.jsonl");
    lines.extend(fixture_lines("messages/batch_c.jsonl"));
    let factory = messages::MessageFactory::load();
    lines.extend(messages::to_lines(&factory.batch(2_026_050_100_100, 40)));
    lines.extend(messages::to_lines(&factory.batch(2_026_050_100_200, 20)));
    let values: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
    let outcome = registry.ingest_values(&values).await.unwrap();
    assert!(outcome.rejected.is_empty(), "{:?}", outcome.rejected);
    let ids: Vec<Uuid> = outcome.datasets().copied().collect();

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
        let file = embargo.repo.join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, format!("content of {path}\n")).unwrap();
    }
    let visits: Vec<i64> = sqlx::query("SELECT id FROM embargo.visit ORDER BY id")
        .fetch_all(&mut conn)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    (ids, visits)
}

use sqlx::Connection;

/// Twin targets, fresh, without the output RUN.
async fn twins(env: &TestEnv) -> (TestRegistry, TestRegistry) {
    let options = RegistryOptions {
        without_output_run: true,
        ..RegistryOptions::default()
    };
    (
        env.fresh_registry_with(options.clone()).await.unwrap(),
        env.fresh_registry_with(options).await.unwrap(),
    )
}

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
    let (mut ids, visits) = fill_embargo(&embargo).await;
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
