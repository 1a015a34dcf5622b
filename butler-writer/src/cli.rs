//! The command line. `butler-writer ingest` ingests messages from files, without Kafka: operators
//! use it to replay a dead-letter dump or to backfill, and tests use it to drive the engine.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use serde::Serialize;
use tracing::warn;
use uuid::Uuid;

use crate::error::EngineError;
use crate::outcome::RejectReason;
use crate::registry::{OpenOptions, Registry, StartupError};
use crate::repository::ButlerConfig;
use crate::service::pipeline::Backoff;
use crate::service::settings::RetrySettings;

/// The Butler Writer of Prompt Processing outputs.
#[derive(Debug, Parser)]
#[command(name = "butler-writer", version, about)]
pub struct Cli {
    /// Log level (error, warn, info, debug, trace). The deployed writer's variable; `RUST_LOG`
    /// takes a full filter instead.
    #[arg(
        long,
        global = true,
        env = "WRITER_DEBUG_LEVEL",
        default_value = "info"
    )]
    pub log_level: String,

    /// Log format: `json` (one object per line, for production), `text` (for a terminal), or
    /// `auto` (text on a terminal, JSON otherwise).
    #[arg(
        long,
        global = true,
        env = "BUTLER_WRITER_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Auto
    )]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Text on a terminal, JSON otherwise.
    Auto,
    /// One JSON object per line.
    Json,
    /// Human-readable lines.
    Text,
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
    runtime.block_on(run(cli))
}

/// Starts logging to stderr: `RUST_LOG` if set, else the `--log-level`.
pub fn init_tracing(cli: &Cli) {
    init_logging(&cli.log_level, cli.log_format);
}

/// Starts logging to stderr for any of the services: `RUST_LOG` if set, else `level`; JSON or
/// text by `format`.
pub fn init_logging(level: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level.to_lowercase()));
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !terminal,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init()
    } else {
        builder.with_ansi(terminal).try_init()
    };
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Serve(args) => crate::service::cli::serve(*args).await,
        Command::Replay(args) => crate::replay::replay(*args).await,
        Command::Redrive(args) => crate::redrive::redrive(*args).await,
        Command::Ingest(args) => match ingest(&args).await {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(1),
            Err(message) => {
                eprintln!("butler-writer: {message}");
                ExitCode::from(2)
            }
        },
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

/// Ingests the files; `Ok(true)` when nothing was rejected.
async fn ingest(args: &IngestArgs) -> Result<bool, String> {
    let config = ButlerConfig::load(&args.butler_config)
        .await
        .map_err(|e| e.to_string())?;
    let registry = Registry::open(&config, &OpenOptions::default())
        .await
        .map_err(|e: StartupError| e.to_string())?;
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
            written.map_err(|e| format!("cannot write to stdout: {e}"))?;
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
fn read_lines(path: &Path) -> Result<Vec<(usize, Vec<u8>)>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
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
) -> Result<crate::BatchOutcome, String> {
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
                warn!(attempt, error = %crate::error::describe(&error), wait_ms = wait.as_millis(), "database unavailable; retrying the batch");
                tokio::time::sleep(wait).await;
            }
            Err(error) => return Err(error.to_string()),
        }
    }
}
