//! The daf_butler side of the transfer parity test and benchmark: `tests/python/
//! daf_butler_transfer.py` run and read, an embargo registry filled with datasets whose files
//! have content, twin targets, and the registries compared by `compare_registries.py`.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Stdio;

use butler_repository::{ButlerConfig, PoolSettings};
use butler_writer::Registry;
use publication_consumer::transfer::{self, Mode, Repository, Transferred};
use schema::RecordValue;
use serde::Deserialize;
use sqlx::{Connection, Row};
use test_support::registry::{RegistryOptions, python};
use test_support::{TestEnv, TestRegistry, fixture_lines, messages, workspace_root};
use uuid::Uuid;

/// What `daf_butler_transfer.py` prints.
#[derive(Debug, Deserialize)]
pub struct PythonOutcome {
    pub transferred: Vec<serde_json::Value>,
    pub missing: Vec<serde_json::Value>,
    pub seconds: f64,
    #[serde(default)]
    pub error: Option<String>,
}

/// Runs a Python tool with daf_butler; panics with its output if it fails.
pub async fn run_python(script: &Path, args: &[&str]) -> String {
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

pub async fn daf_butler(args: &[&str]) -> PythonOutcome {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/daf_butler_transfer.py");
    let stdout = run_python(&script, args).await;
    let outcome: PythonOutcome = serde_json::from_str(stdout.trim()).expect("a JSON report");
    assert!(outcome.error.is_none(), "{outcome:?}");
    outcome
}

/// Every table and sequence of `a` and `b` compared; panics with the differences.
pub async fn assert_same_registries(a: &TestRegistry, b: &TestRegistry, after: &str) {
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

pub async fn open(label: &'static str, registry: &TestRegistry) -> Repository {
    Repository::open(
        label,
        &registry.butler_config.display().to_string(),
        &PoolSettings::default(),
    )
    .await
    .unwrap_or_else(|e| panic!("{}", service_kit::chain(&e)))
}

pub fn uuids(values: &[serde_json::Value]) -> BTreeSet<Uuid> {
    values
        .iter()
        .map(|v| v.as_str().expect("a UUID string").parse().expect("a UUID"))
        .collect()
}

/// The embargo registry's datasets: the reference messages and generated visits (first visit,
/// datasets), each file written with content of its own. Returns the dataset ids and the visits.
pub async fn fill_embargo(
    embargo: &TestRegistry,
    generated: &[(i64, usize)],
) -> (Vec<Uuid>, Vec<i64>) {
    let config = ButlerConfig::from_path(&embargo.butler_config).expect("butler.yaml");
    let registry = Registry::open(&config, &PoolSettings::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut lines = fixture_lines("messages/batch_a.jsonl");
    lines.extend(fixture_lines("messages/batch_c.jsonl"));
    let factory = messages::MessageFactory::load();
    for (visit, datasets) in generated {
        lines.extend(messages::to_lines(&factory.batch(*visit, *datasets)));
    }
    let values: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
    let outcome = registry.ingest_values(&values).await.unwrap();
    assert!(outcome.rejected.is_empty(), "{:?}", outcome.rejected);
    let ids: Vec<Uuid> = outcome.datasets().copied().collect();

    let paths = datastore_paths(embargo).await;
    write_files(embargo, &paths, |path| {
        format!("content of {path}\n").into_bytes()
    });
    let mut conn = sqlx::PgConnection::connect(&embargo.database_url)
        .await
        .unwrap();
    let visits: Vec<i64> = sqlx::query("SELECT id FROM embargo.visit ORDER BY id")
        .fetch_all(&mut conn)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    (ids, visits)
}

/// Twin targets, fresh, without the output RUN.
pub async fn twins(env: &TestEnv) -> (TestRegistry, TestRegistry) {
    let options = RegistryOptions {
        without_output_run: true,
        ..RegistryOptions::default()
    };
    (
        env.fresh_registry_with(options.clone()).await.unwrap(),
        env.fresh_registry_with(options).await.unwrap(),
    )
}

/// Every file path a registry's datastore records name, relative to its root.
pub async fn datastore_paths(registry: &TestRegistry) -> Vec<String> {
    let mut conn = sqlx::PgConnection::connect(&registry.database_url)
        .await
        .unwrap();
    sqlx::query_scalar("SELECT DISTINCT path FROM embargo.file_datastore_records")
        .fetch_all(&mut conn)
        .await
        .unwrap()
}

/// Writes each file, as Prompt Processing would have, with `content(path)`.
pub fn write_files(registry: &TestRegistry, paths: &[String], content: impl Fn(&str) -> Vec<u8>) {
    for path in paths {
        let file = registry.repo.join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, content(path)).unwrap();
    }
}

/// The visits' records into A with daf_butler and into B with ours; returns each side's
/// seconds (daf_butler's calls alone; ours with the repositories open).
pub async fn copy_visits(
    embargo: &TestRegistry,
    source: &Repository,
    (a, b): (&TestRegistry, &TestRegistry),
    visits: &[i64],
) -> (f64, f64) {
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
    let target = open("prompt_prep", b).await;
    let values: Vec<RecordValue> = visits.iter().map(|v| RecordValue::Int(*v)).collect();
    let started = std::time::Instant::now();
    let copied = transfer::copy_dimension_records(source, &target, "visit", "LSSTCam", &values)
        .await
        .unwrap_or_else(|e| panic!("{}", service_kit::chain(&e)));
    let ours = started.elapsed().as_secs_f64();
    assert!(
        copied > visits.len(),
        "a visit brings its definitions along"
    );
    (python.seconds, ours)
}

/// The datasets into A with daf_butler and into B with ours, in chunks of `chunk`; both must
/// report the same transferred and missing ids. Returns ours and each side's seconds.
pub async fn transfer_both(
    embargo: &TestRegistry,
    source: &Repository,
    (a, b): (&TestRegistry, &TestRegistry),
    ids: &[Uuid],
    mode: Mode,
    chunk: usize,
) -> (Transferred, f64, f64) {
    let list = id_file(ids);
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
    let started = std::time::Instant::now();
    let mut ours = Transferred::default();
    for part in ids.chunks(chunk) {
        let done = transfer::transfer_datasets(source, &target, part, mode)
            .await
            .unwrap_or_else(|e| panic!("{}", service_kit::chain(&e)));
        ours.transferred.extend(done.transferred);
        ours.missing.extend(done.missing);
    }
    let seconds = started.elapsed().as_secs_f64();
    assert_same_outcome(&ours, &python, &format!("{mode:?}"));
    (ours, python.seconds, seconds)
}

/// Twin Google targets for `source`: fresh, without the output RUN, their datastore sharing the
/// source's root and name (as the Google repository shares prompt_prep's), and the TAGGED
/// collection registered by daf_butler in both, as PPS's set-up makes it.
pub async fn google_twins(env: &TestEnv, source: &TestRegistry) -> (TestRegistry, TestRegistry) {
    let (a, b) = twins(env).await;
    for twin in [&a, &b] {
        share_datastore(twin, source, "FileDatastore@<butlerRoot>");
        register_tagged(twin).await;
    }
    (a, b)
}

/// Registers `Prompt/Available/Outputs` (TAGGED) in `target` with daf_butler.
pub async fn register_tagged(target: &TestRegistry) {
    daf_butler_status(&[
        "register-tagged",
        "--target",
        target.butler_config.to_str().unwrap(),
    ])
    .await;
}

/// Points `target`'s datastore at `source`'s root, under the datastore name `name`.
pub fn share_datastore(target: &TestRegistry, source: &TestRegistry, name: &str) {
    let text = std::fs::read_to_string(&target.butler_config).unwrap();
    let root = format!("  root: {}/", source.repo.display());
    let shared = text.replace("  root: <butlerRoot>", &format!("  name: {name}\n{root}"));
    assert_ne!(shared, text, "a datastore root to replace in {text}");
    std::fs::write(&target.butler_config, shared).unwrap();
}

/// Runs a `daf_butler_transfer.py` command that prints nothing.
async fn daf_butler_status(args: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/daf_butler_transfer.py");
    run_python(&script, args).await;
}

/// The Google publication into A with daf_butler (in-place transfer, then `associate`) and into
/// B with ours, in chunks of `chunk`; both must report the same transferred and missing ids.
/// Returns ours and each side's seconds.
pub async fn publish_both(
    source_registry: &TestRegistry,
    source: &Repository,
    (a, b): (&TestRegistry, &TestRegistry),
    ids: &[Uuid],
    chunk: usize,
) -> (Transferred, f64, f64) {
    let list = id_file(ids);
    let chunk_text = chunk.to_string();
    let python = daf_butler(&[
        "publish",
        "--source",
        source_registry.butler_config.to_str().unwrap(),
        "--target",
        a.butler_config.to_str().unwrap(),
        "--ids-file",
        list.path().to_str().unwrap(),
        "--chunk",
        &chunk_text,
    ])
    .await;
    let target = open("google_int", b).await;
    let started = std::time::Instant::now();
    let mut ours = Transferred::default();
    for part in ids.chunks(chunk) {
        let done = transfer::publish_datasets(
            source,
            &target,
            part,
            publication_consumer::tasks::PUBLISHED_COLLECTION,
        )
        .await
        .unwrap_or_else(|e| panic!("{}", service_kit::chain(&e)));
        ours.transferred.extend(done.transferred);
        ours.missing.extend(done.missing);
    }
    let seconds = started.elapsed().as_secs_f64();
    assert_same_outcome(&ours, &python, "publish");
    (ours, python.seconds, seconds)
}

/// The dataset ids, one a line, in a temporary file for `daf_butler_transfer.py --ids-file`.
fn id_file(ids: &[Uuid]) -> tempfile::NamedTempFile {
    let list = tempfile::NamedTempFile::new().unwrap();
    let text: String = ids.iter().map(|id| format!("{id}\n")).collect();
    std::fs::write(list.path(), text).unwrap();
    list
}

/// Both sides reported the same datasets transferred and the same missing.
fn assert_same_outcome(ours: &Transferred, python: &PythonOutcome, what: &str) {
    assert_eq!(
        ours.transferred.iter().copied().collect::<BTreeSet<_>>(),
        uuids(&python.transferred),
        "{what}: transferred"
    );
    assert_eq!(
        ours.missing.iter().copied().collect::<BTreeSet<_>>(),
        uuids(&python.missing),
        "{what}: missing"
    );
}

/// Removes the dataset type `name` from a registry that has no dataset of it, as a repository
/// that never registered it; with `group`, its dimension group's definition too (a repository
/// that has never seen those dimensions).
pub async fn forget_dataset_type(registry: &TestRegistry, name: &str, group: bool) {
    let mut conn = sqlx::PgConnection::connect(&registry.database_url)
        .await
        .unwrap();
    let key: i64 =
        sqlx::query_scalar("SELECT dimensions_key FROM embargo.dataset_type WHERE name = $1")
            .bind(name)
            .fetch_one(&mut conn)
            .await
            .unwrap();
    sqlx::query("DELETE FROM embargo.dataset_type WHERE name = $1")
        .bind(name)
        .execute(&mut conn)
        .await
        .unwrap();
    if group {
        sqlx::query("DELETE FROM embargo.dimension_graph_definition WHERE dimension_graph_id = $1")
            .bind(key)
            .execute(&mut conn)
            .await
            .unwrap();
    }
}
