//! The command line. `butler-writer ingest` ingests messages from files, without Kafka: operators
//! use it to replay a dead-letter dump or to backfill, and tests use it to drive the engine.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use butler_repository::{ButlerConfig, PoolSettings, RepositoryError};
use clap::{Parser, Subcommand, ValueEnum};
use serde::Serialize;
use service_kit::lifecycle::exit_with;
use service_kit::logging::{LogArgNames, LogArgs};
use service_kit::{Backoff, Chain, RetrySettings};
use tracing::warn;
use uuid::Uuid;

use crate::error::EngineError;
use crate::outcome::RejectReason;
use crate::registry::{Registry, StartupError};
use crate::service::faults::{FaultInjector, NoFaults};

/// The Butler Writer of Prompt Processing outputs.
#[derive(Debug, Parser)]
#[command(name = "butler-writer", version, about)]
pub struct Cli {
    /// `--log-level` (the deployed writer's `WRITER_DEBUG_LEVEL`) and `--log-format`
    /// (`BUTLER_WRITER_LOG_FORMAT`).
    #[command(flatten)]
    pub log: LogArgs<WriterLog>,

    #[command(subcommand)]
    pub command: Command,
}

/// The writer's logging variables: the deployed writer's level, our format.
#[derive(Debug, Clone)]
pub struct WriterLog;

impl LogArgNames for WriterLog {
    const LEVEL: &'static str = "WRITER_DEBUG_LEVEL";
    const FORMAT: &'static str = "BUTLER_WRITER_LOG_FORMAT";
    const TARGETS: &'static [&'static str] = &[
        "butler_writer",
        "butler_repository",
        "service_kit",
        crate::registry::TIMER_TARGET,
    ];
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Ingest pp-output messages from files (one JSON value per line), one batch per file or per
    /// `--batch-size` lines, and print what each batch did. Exit status: 0 when every message
    /// was ingested, 1 when some message was rejected, 2 on an error.
    Ingest(IngestArgs),
    /// Run the service: consume pp-output messages from Kafka, ingest them in batches, write each
    /// batch's file and emit its batch-ingested event, dead-letter what cannot be ingested. Every
    /// flag can also be given by the environment variable shown; flags win.
    Serve(Box<crate::service::cli::ServeArgs>),
    /// Bring a registry restored from a backup forward: re-read the input topic from `--since`
    /// in a consumer group of its own, ingest as `serve` does, stop at the end offsets seen at
    /// start and print a JSON summary. Takes every setting of `serve`.
    Replay(Box<crate::replay::ReplayArgs>),
    /// Put dead letters back on the input topic once their cause is fixed (all, or those of the
    /// `--reason`s given), so the live writer ingests and announces them; prints a JSON summary.
    /// Takes every setting of `serve`.
    Redrive(Box<crate::redrive::RedriveArgs>),
}

/// Arguments of `butler-writer ingest`.
#[derive(Debug, clap::Args)]
pub struct IngestArgs {
    /// The repository: its `butler.yaml`, or the directory holding it; a local path or
    /// `s3://[profile@]bucket/prefix`.
    #[arg(long, env = "BUTLER_REPOSITORY")]
    pub butler_config: String,

    /// Messages per batch; by default each file is one batch.
    #[arg(long)]
    pub batch_size: Option<usize>,

    /// `text` for people, `json` (one line per batch) for programs.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,

    /// How many times to try a batch again when the database is unavailable.
    #[arg(long, default_value_t = 5)]
    pub retries: u32,

    /// Files of messages, one JSON value per line.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// A line per batch and one per rejected message.
    Text,
    /// One JSON object per batch.
    Json,
}

/// The whole program: parse the command line, start logging and the runtime, run. `main.rs`
/// calls this, and so does any binary that must behave exactly as `butler-writer` does (the
/// integration tests' writer process).
pub fn main() -> ExitCode {
    main_with_faults(Arc::new(NoFaults))
}

/// [`main`] with a test's fault injector on `serve`: the fault scenarios' writer process
/// (`integration-tests`' `writer-under-test`) breaks where a kill would land.
pub fn main_with_faults(faults: Arc<dyn FaultInjector>) -> ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("butler-writer: cannot start the async runtime: {error}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(run_with_faults(cli, faults))
}

/// Starts logging to stderr: `RUST_LOG` if set, else the `--log-level`.
pub fn init_tracing(cli: &Cli) {
    cli.log.init();
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> ExitCode {
    run_with_faults(cli, Arc::new(NoFaults)).await
}

async fn run_with_faults(cli: Cli, faults: Arc<dyn FaultInjector>) -> ExitCode {
    match cli.command {
        Command::Serve(args) => crate::service::cli::serve_with_faults(*args, faults).await,
        Command::Replay(args) => crate::replay::replay(*args).await,
        Command::Redrive(args) => crate::redrive::redrive(*args).await,
        Command::Ingest(args) => match ingest(&args).await {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(1),
            Err(error) => exit_with("butler-writer", &error, 2),
        },
    }
}

/// Prints `summary` as the command's output: one JSON line on stdout.
pub(crate) fn print_json_line<T: Serialize>(program: &str, summary: &T) {
    match serde_json::to_string(summary) {
        Ok(line) => {
            #[allow(clippy::print_stdout)] // The summary is the command's output.
            {
                println!("{line}");
            }
        }
        Err(e) => {
            let _ = exit_with(program, &e, 1);
        }
    }
}

/// One batch's report, as `--output json` prints it.
#[derive(Debug, Serialize)]
struct BatchReport<'a> {
    batch: usize,
    source: &'a str,
    first_line: usize,
    messages: usize,
    ingested: &'a [Uuid],
    already_present: &'a [Uuid],
    rejected: Vec<RejectedLine<'a>>,
}

#[derive(Debug, Serialize)]
struct RejectedLine<'a> {
    line: usize,
    reason: RejectReason,
    error: &'a str,
}

/// Why `butler-writer ingest` stopped.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// `butler.yaml` cannot be read or used.
    #[error(transparent)]
    Repository(#[from] RepositoryError),
    /// The registry cannot be opened.
    #[error(transparent)]
    Registry(#[from] StartupError),
    /// A batch failed for good, or the retries ran out.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A file of messages cannot be read.
    #[error("cannot read {}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The report cannot be written.
    #[error("cannot write to stdout")]
    Stdout(#[source] std::io::Error),
}

/// Ingests the files; `Ok(true)` when nothing was rejected.
async fn ingest(args: &IngestArgs) -> Result<bool, IngestError> {
    let config = ButlerConfig::load(&args.butler_config).await?;
    let registry = Registry::open(&config, &PoolSettings::default()).await?;
    let mut everything_ingested = true;
    let mut batch_number = 0;
    let stdout = std::io::stdout();
    for file in &args.files {
        let lines = read_lines(file)?;
        let size = args.batch_size.unwrap_or(lines.len()).max(1);
        for chunk in lines.chunks(size) {
            let values: Vec<&[u8]> = chunk.iter().map(|(_, v)| v.as_slice()).collect();
            let outcome = ingest_with_retries(&registry, &values, args.retries).await?;
            everything_ingested &= outcome.rejected.is_empty();
            let source = file.display().to_string();
            let report = BatchReport {
                batch: batch_number,
                source: &source,
                first_line: chunk.first().map_or(0, |(n, _)| *n),
                messages: chunk.len(),
                ingested: &outcome.ingested,
                already_present: &outcome.already_present,
                rejected: outcome
                    .rejected
                    .iter()
                    .map(|r| RejectedLine {
                        line: chunk.get(r.index).map_or(0, |(n, _)| *n),
                        reason: r.reason,
                        error: &r.error,
                    })
                    .collect(),
            };
            let mut out = stdout.lock();
            let written = match args.output {
                Output::Json => serde_json::to_writer(&mut out, &report)
                    .map_err(std::io::Error::from)
                    .and_then(|()| writeln!(out)),
                Output::Text => write_text(&mut out, &report),
            };
            written.map_err(IngestError::Stdout)?;
            batch_number += 1;
        }
    }
    Ok(everything_ingested)
}

fn write_text(out: &mut impl Write, report: &BatchReport<'_>) -> std::io::Result<()> {
    writeln!(
        out,
        "batch {} ({} lines {}-{}): {} messages, {} datasets ingested, {} already present, {} messages rejected",
        report.batch,
        report.source,
        report.first_line,
        report.first_line + report.messages.saturating_sub(1),
        report.messages,
        report.ingested.len(),
        report.already_present.len(),
        report.rejected.len()
    )?;
    for rejected in &report.rejected {
        writeln!(
            out,
            "  line {}: {}: {}",
            rejected.line, rejected.reason, rejected.error
        )?;
    }
    Ok(())
}

/// Non-empty lines of a file with their 1-based numbers.
fn read_lines(path: &Path) -> Result<Vec<(usize, Vec<u8>)>, IngestError> {
    let bytes = std::fs::read(path).map_err(|source| IngestError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(bytes
        .split(|b| *b == b'\n')
        .enumerate()
        .map(|(i, line)| (i + 1, line.strip_suffix(b"\r").unwrap_or(line)))
        .filter(|(_, line)| !line.iter().all(u8::is_ascii_whitespace))
        .map(|(n, line)| (n, line.to_vec()))
        .collect())
}

async fn ingest_with_retries(
    registry: &Registry,
    values: &[&[u8]],
    retries: u32,
) -> Result<crate::BatchOutcome, EngineError> {
    // The service's backoff, bounded: a one-shot command gives up after `retries` tries.
    let mut backoff = Backoff::new(RetrySettings {
        initial: Duration::from_secs(2),
        max: Duration::from_secs(32),
    });
    let mut attempt = 0;
    loop {
        match registry.ingest_values(values).await {
            Ok(outcome) => return Ok(outcome),
            Err(EngineError::Retry(error)) if attempt < retries => {
                attempt += 1;
                let wait = backoff.next_wait();
                warn!(attempt, error = %Chain(&error), wait_ms = wait.as_millis(), "database unavailable; retrying the batch");
                tokio::time::sleep(wait).await;
            }
            Err(error) => return Err(error),
        }
    }
}
