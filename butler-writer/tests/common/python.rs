//! Running the parity test's tools: the Python scripts in `tests/python/` (with the Python that
//! has daf_butler) and our own `butler-writer` binary, and reading the JSON lines they print.

#![allow(dead_code)]

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

/// Longest a tool may run before the test gives up on it: the 1000-dataset batch takes about a
/// second, so this only catches a hang.
const TIMEOUT: Duration = Duration::from_secs(600);

/// A finished process: its status, its output and how long it took.
#[derive(Debug)]
pub struct Finished {
    pub program: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Finished {
    /// The exit code; `None` when a signal ended the process.
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Each non-empty line of stdout parsed as one `T`.
    pub fn json_lines<T: DeserializeOwned>(&self) -> anyhow::Result<Vec<T>> {
        self.stdout
            .lines()
            .filter(|line| !line.trim().is_empty())
            .enumerate()
            .map(|(i, line)| {
                serde_json::from_str(line).with_context(|| {
                    format!(
                        "{}: stdout line {} is not a report: {line}",
                        self.program,
                        i + 1
                    )
                })
            })
            .collect()
    }

    /// Status and stderr, for a failure message.
    pub fn describe(&self) -> String {
        format!(
            "{} exited with {} after {:.1} s\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.program,
            self.status,
            self.elapsed.as_secs_f64(),
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}

/// A script of `tests/python/`.
pub fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(name)
}

/// Runs `tests/python/<name>` with the Python that has daf_butler.
pub async fn run_python<I, S>(name: &str, args: I) -> anyhow::Result<Finished>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let python = test_support::registry::python()?;
    let mut command = tokio::process::Command::new(python);
    command
        .arg(script(name))
        .args(args)
        // No __pycache__ beside the scripts and stubs in the source tree.
        .env("PYTHONDONTWRITEBYTECODE", "1");
    run(name, command).await
}

/// Runs our `butler-writer` binary.
pub async fn run_butler_writer<I, S>(args: I) -> anyhow::Result<Finished>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_butler-writer"));
    command.args(args);
    run("butler-writer", command).await
}

async fn run(program: &str, mut command: tokio::process::Command) -> anyhow::Result<Finished> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let started = Instant::now();
    let output = match tokio::time::timeout(TIMEOUT, command.output()).await {
        Ok(output) => output.with_context(|| format!("running {program}"))?,
        Err(_) => bail!("{program} did not finish within {} s", TIMEOUT.as_secs()),
    };
    Ok(Finished {
        program: program.to_owned(),
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        elapsed: started.elapsed(),
    })
}

/// One batch as `daf_butler_writer.py` reports it.
#[derive(Debug, Clone, Deserialize)]
pub struct PythonBatch {
    pub batch: usize,
    pub source: String,
    pub first_line: usize,
    pub messages: usize,
    /// The IDs the deployed writer would list in its batch file; duplicates when the
    /// one-message-at-a-time fallback ran.
    pub datasets: Vec<Uuid>,
    pub dropped: Vec<PythonDropped>,
    /// Whether the batch raised `ConflictingDefinitionError` and was redone message by message.
    pub fallback: bool,
    /// Time of the two daf_butler calls (with the fallback).
    pub seconds: f64,
}

/// A message the Python writer dropped.
#[derive(Debug, Clone, Deserialize)]
pub struct PythonDropped {
    pub line: usize,
    pub error: String,
}

/// One batch as `butler-writer ingest --output json` reports it.
#[derive(Debug, Clone, Deserialize)]
pub struct OurBatch {
    pub batch: usize,
    pub source: String,
    pub first_line: usize,
    pub messages: usize,
    pub ingested: Vec<Uuid>,
    pub already_present: Vec<Uuid>,
    pub rejected: Vec<OurRejected>,
}

/// A message our writer rejected.
#[derive(Debug, Clone, Deserialize)]
pub struct OurRejected {
    pub line: usize,
    pub reason: String,
    pub error: String,
}
