//! `publication-consumer serve`: flags and environment variables, turned into [`Settings`].
//!
//! The Kafka and repository variables are the Butler Writer's (`BUTLER_REPOSITORY`,
//! `KAFKA_CLUSTER`, `KAFKA_TOPIC`, `KAFKA_USERNAME`, `KAFKA_PASSWORD`,
//! `OUTPUT_DATASET_LIST_DIRECTORY`), so one deployment's values serve both; the consumer's own
//! are `PUBLICATION_*` and `KAFKA_GROUP_ID`. The embargo comes from the release policy
//! (`PUBLICATION_POLICY_FILE`); the former `EMBARGO_HOURS` is refused with a pointer to it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use butler_repository::PoolSettings;
use clap::{Args, Parser, Subcommand};
use schema::topics::EVENTS_TOPIC;
use secrecy::SecretString;
use service_kit::cli::{KafkaArgNames, KafkaArgs, seconds};
use service_kit::logging::{LogArgNames, LogArgs};
use service_kit::{ConfigError, KafkaVariables, RetrySettings};

use crate::Service;
use crate::clock::Clock;
use crate::policy::{Origin, Policy};
use crate::register::RegisterSettings;
use crate::settings::{
    DEFAULT_BATCH_FILE_WAIT_SECONDS, DEFAULT_GROUP_ID, DEFAULT_ORIGIN, DEFAULT_SCHEMA, Settings,
};
use crate::store::EventPlace;

/// The broker variables: the writer's, so one deployment's values serve both; the protocol and
/// CA file are the consumer's.
#[derive(Debug)]
pub struct ConsumerKafka;

impl KafkaArgNames for ConsumerKafka {
    const VARIABLES: KafkaVariables = KafkaVariables {
        cluster: "KAFKA_CLUSTER",
        username: "KAFKA_USERNAME",
        password: "KAFKA_PASSWORD",
        security_protocol: "PUBLICATION_KAFKA_SECURITY_PROTOCOL",
        ca_file: "PUBLICATION_KAFKA_CA_FILE",
    };
}

/// The consumer's logging variables.
#[derive(Debug, Clone)]
pub struct ConsumerLog;

impl LogArgNames for ConsumerLog {
    const LEVEL: &'static str = "PUBLICATION_LOG_LEVEL";
    const FORMAT: &'static str = "PUBLICATION_LOG_FORMAT";
    const TARGETS: &'static [&'static str] =
        &["publication_consumer", "butler_repository", "service_kit"];
}

/// A Prompt Publication Service consumer: batch-ingested events in, datasets and their
/// embargo-release times out, and an HTTP API of what is ready to publish.
#[derive(Debug, Parser)]
#[command(name = "publication-consumer", version, about)]
pub struct Cli {
    /// `--log-level` (`PUBLICATION_LOG_LEVEL`) and `--log-format` (`PUBLICATION_LOG_FORMAT`).
    #[command(flatten)]
    pub log: LogArgs<ConsumerLog>,

    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the consumer and its HTTP API until SIGTERM or Ctrl-C. Every flag can also be given
    /// by the environment variable shown; flags win.
    #[command(after_help = PPS_VARIABLES_HELP)]
    Serve(Box<ServeArgs>),
    /// Record batch files as their events would have been (the Prompt Publication Service's
    /// `register_embargo_batch`): to re-drive an event given up on once its batch file is
    /// there, or register batches never announced. Idempotent; the batch's failed events are
    /// marked resolved. Prints a line per file.
    RegisterBatch(Box<RegisterArgs>),
    /// Backfill the datasets of RUN collections (the Prompt Publication Service's
    /// `register_embargo_collections`): prints their counts per dataset type, asks for
    /// confirmation (unless `--yes`), and records them as events would, in batches of 10,000.
    /// Idempotent.
    RegisterCollections(Box<RegisterCollectionsArgs>),
    /// List the failed events (skipped and recorded), oldest first, a line each:
    /// `<topic>:<partition>:<offset> <reason> ...`; the resolved ones too with `--all`.
    FailedEvents(Box<FailedEventsArgs>),
    /// Mark one failed event resolved without recording anything, an operator's explicit
    /// decision to leave it (to record its batch instead, use `register-batch`).
    ResolveFailed(Box<ResolveFailedArgs>),
    /// Run the transfer tasks pass after pass until one moves nothing, then exit (the Prompt
    /// Publication Service's `run_tasks`): after observing, or after a backfill, without the
    /// service. The quiet window does not apply. Prints a line per task; exit status 1 when a
    /// task's last pass failed (its work stays eligible).
    RunTasks(Box<RunTasksArgs>),
}

/// Arguments of `publication-consumer failed-events`.
#[derive(Debug, Args)]
pub struct FailedEventsArgs {
    /// The resolved ones too, with when and how.
    #[arg(long)]
    pub all: bool,

    /// The repository and the state, as for `serve`.
    #[command(flatten)]
    pub operator: OperatorArgs,
}

/// Arguments of `publication-consumer resolve-failed`.
#[derive(Debug, Args)]
pub struct ResolveFailedArgs {
    /// The event, `<topic>:<partition>:<offset>` as `failed-events` prints it.
    pub event: String,

    /// Why it is left, recorded with it.
    #[arg(long)]
    pub reason: String,

    /// The repository and the state, as for `serve`.
    #[command(flatten)]
    pub operator: OperatorArgs,
}

/// An event's place from `<topic>:<partition>:<offset>` (the topic may hold colons).
fn event_place(text: &str) -> Result<EventPlace, ConfigError> {
    let refuse = || {
        ConfigError::new(format!(
            "{text:?} is not an event: <topic>:<partition>:<offset>, as failed-events prints it"
        ))
    };
    let (rest, offset) = text.rsplit_once(':').ok_or_else(refuse)?;
    let (topic, partition) = rest.rsplit_once(':').ok_or_else(refuse)?;
    if topic.is_empty() {
        return Err(refuse());
    }
    Ok(EventPlace {
        topic: topic.to_owned(),
        partition: partition.parse().map_err(|_| refuse())?,
        offset: offset.parse().map_err(|_| refuse())?,
    })
}

/// Arguments of `publication-consumer register-batch`.
#[derive(Debug, Args)]
pub struct RegisterArgs {
    /// Batch files: names relative to `--batch-directory`, absolute paths, or URIs.
    #[arg(required = true)]
    pub files: Vec<String>,

    /// Where relative batch file names are (the writer's directory, as for `serve`); the
    /// working directory when not set.
    #[arg(long, env = "OUTPUT_DATASET_LIST_DIRECTORY")]
    pub batch_directory: Option<String>,

    /// The repository, the state and the policy, as for `serve`.
    #[command(flatten)]
    pub operator: OperatorArgs,
}

/// Arguments of `publication-consumer register-collections`.
#[derive(Debug, Args)]
pub struct RegisterCollectionsArgs {
    /// RUN collections of the registry.
    #[arg(required = true)]
    pub collections: Vec<String>,

    /// Only datasets of these types (repeatable); all when not given.
    #[arg(long = "dataset-type")]
    pub dataset_types: Vec<String>,

    /// Do not ask for confirmation after printing the counts.
    #[arg(long)]
    pub yes: bool,

    /// The repository, the state and the policy, as for `serve`.
    #[command(flatten)]
    pub operator: OperatorArgs,
}

/// What the operator commands share with `serve`: the repository, the state, the policy.
#[derive(Debug, Args)]
pub struct OperatorArgs {
    /// The registry's repository, as for `serve`.
    #[arg(long, env = "BUTLER_REPOSITORY")]
    pub butler_repository: String,

    /// The state database, as for `serve`. Its password is never printed.
    #[arg(long, env = "PUBLICATION_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// The Postgres schema of the state, as for `serve`.
    #[arg(long, env = "PUBLICATION_SCHEMA", default_value = DEFAULT_SCHEMA)]
    pub schema: String,

    /// The release policy, as for `serve`.
    #[command(flatten)]
    pub policy: PolicyArgs,

    /// The origin the datasets are recorded with.
    #[arg(long, default_value = DEFAULT_ORIGIN)]
    pub origin: String,

    /// db-auth file with database credentials, as for `serve`.
    #[arg(long, env = "LSST_DB_AUTH")]
    pub db_auth: Option<PathBuf>,
}

impl OperatorArgs {
    /// Validated settings (without a batch directory), or one line saying what to change.
    pub fn into_settings(self) -> Result<RegisterSettings, ConfigError> {
        let origin = Origin::from_name(&self.origin).ok_or_else(|| {
            ConfigError::new(format!(
                "--origin {:?} is not an origin (known: {})",
                self.origin,
                Origin::ALL.map(Origin::name).join(", ")
            ))
        })?;
        crate::settings::validate_schema(&self.schema)?;
        let mut database = PoolSettings {
            max_connections: 2,
            ..PoolSettings::default()
        };
        if self.db_auth.is_some() {
            database.auth_file = self.db_auth;
        }
        Ok(RegisterSettings {
            butler_repository: self.butler_repository,
            batch_directory: None,
            database_url: self
                .database_url
                .filter(|u| !u.is_empty())
                .map(SecretString::from),
            schema: self.schema,
            database,
            policy: self.policy.load()?,
            origin,
        })
    }
}

impl RegisterArgs {
    /// Validated settings and the files, or one line saying what to change.
    pub fn into_settings(self) -> Result<(RegisterSettings, Vec<String>), ConfigError> {
        let mut settings = self.operator.into_settings()?;
        settings.batch_directory = self.batch_directory.filter(|d| !d.is_empty());
        Ok((settings, self.files))
    }
}

/// The release policy's settings, shared by `serve` and the operator commands.
#[derive(Debug, Args)]
pub struct PolicyArgs {
    /// The release policy, a YAML file of profiles (embargo hours, publish to public, retention
    /// days, dataset types) per origin; the deployed table (built in) when not set.
    #[arg(long, env = "PUBLICATION_POLICY_FILE")]
    pub policy_file: Option<PathBuf>,

    /// Release datasets that have an exposure but no visit from the end of their exposure; the
    /// deployed service never releases them.
    #[arg(
        long,
        env = "PUBLICATION_RELEASE_EXPOSURE_ONLY",
        default_value_t = false,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub release_exposure_only: bool,
}

impl PolicyArgs {
    /// The release policy: the file's, or the deployed table.
    pub fn load(&self) -> Result<Policy, ConfigError> {
        let mut policy = match &self.policy_file {
            Some(path) => Policy::load(path)
                .map_err(|e| ConfigError::new(format!("PUBLICATION_POLICY_FILE: {e}")))?,
            None => Policy::deployed(),
        };
        policy.release_exposure_only = self.release_exposure_only;
        Ok(policy)
    }
}

/// What `serve --help` says of the Prompt Publication Service's variables.
const PPS_VARIABLES_HELP: &str = "The Prompt Publication Service's variables are read with its meaning: \
PROMPTPUB_EMBARGO_REPO_PATH, PROMPTPUB_EMBARGO_BATCH_FILE_DIRECTORY, PROMPTPUB_KAFKA_SERVER, \
PROMPTPUB_KAFKA_TOPIC, PROMPTPUB_KAFKA_GROUP_ID, PROMPTPUB_KAFKA_USERNAME, PROMPTPUB_KAFKA_PASSWORD, \
PROMPTPUB_STATE_DATABASE_URI and PROMPTPUB_STATE_DATABASE_PASSWORD stand for BUTLER_REPOSITORY, \
OUTPUT_DATASET_LIST_DIRECTORY, KAFKA_CLUSTER, KAFKA_TOPIC, KAFKA_GROUP_ID, KAFKA_USERNAME, \
KAFKA_PASSWORD and PUBLICATION_DATABASE_URL (its password replaced); PROMPTPUB_PROMPT_PREP_REPO_PATH \
PROMPTPUB_MAIN_REPO_PATH and PROMPTPUB_GOOGLE_INT_REPO_PATH for PUBLICATION_PROMPT_PREP_REPOSITORY, \
PUBLICATION_REPO_MAIN_REPOSITORY and PUBLICATION_GOOGLE_INT_REPOSITORY; one of them and ours set to \
different values is an error.";

/// The transfer tasks' repositories and chunks, which `serve` and `run-tasks` share.
#[derive(Debug, Args)]
pub struct TransferArgs {
    /// `prompt_prep`'s repository (`butler.yaml` or its directory): where released datasets
    /// are copied, with their visits' records. The transfer tasks run only when it is set.
    #[arg(long, env = "PUBLICATION_PROMPT_PREP_REPOSITORY")]
    pub prompt_prep_repository: Option<String>,

    /// `/repo/main`'s repository: where `prompt_prep`'s files are registered in place, by URI.
    /// Needs `--prompt-prep-repository`.
    #[arg(long, env = "PUBLICATION_REPO_MAIN_REPOSITORY")]
    pub repo_main_repository: Option<String>,

    /// The Google `prompt` repository (`butler.yaml` or its directory), whose datastore shares
    /// `prompt_prep`'s root and datastore names: the types the policy publishes to the public
    /// are registered there in place and tagged into `--google-tagged-collection`. Needs
    /// `--prompt-prep-repository`.
    #[arg(long, env = "PUBLICATION_GOOGLE_INT_REPOSITORY")]
    pub google_int_repository: Option<String>,

    /// The Google repository's TAGGED collection that published datasets are tagged into; it
    /// must exist (PPS's `initialize_google_repo` makes it).
    #[arg(
        long,
        env = "PUBLICATION_GOOGLE_TAGGED_COLLECTION",
        default_value = crate::tasks::PUBLISHED_COLLECTION
    )]
    pub google_tagged_collection: String,

    /// Datasets per unembargo chunk: each chunk's files are copied and its registry rows
    /// written in one transaction before it is recorded (PPS: 100).
    #[arg(long, env = "PUBLICATION_UNEMBARGO_CHUNK", default_value_t = 100)]
    pub unembargo_chunk: usize,
}

impl TransferArgs {
    /// The repositories, empty values read as unset.
    fn locations(&self) -> (Option<String>, Option<String>, Option<String>) {
        let set = |r: &Option<String>| r.clone().filter(|r| !r.trim().is_empty());
        (
            set(&self.prompt_prep_repository),
            set(&self.repo_main_repository),
            set(&self.google_int_repository),
        )
    }
}

/// Arguments of `publication-consumer run-tasks`.
#[derive(Debug, Args)]
pub struct RunTasksArgs {
    /// The repository, the state and the policy, as for `serve`.
    #[command(flatten)]
    pub operator: OperatorArgs,

    /// The transfer tasks' repositories, as for `serve`; `--prompt-prep-repository` is needed.
    #[command(flatten)]
    pub transfers: TransferArgs,
}

/// Arguments of `publication-consumer serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The registry's repository: its `butler.yaml`, or the directory holding it; a local path
    /// or `s3://[profile@]bucket/prefix/`. Only read from.
    #[arg(long, env = "BUTLER_REPOSITORY")]
    pub butler_repository: String,

    /// The broker: `--kafka-cluster` (`KAFKA_CLUSTER`), `--kafka-username` (`KAFKA_USERNAME`),
    /// `--kafka-password` (`KAFKA_PASSWORD`), `--kafka-security-protocol`, `--kafka-ca-file`,
    /// `--kafka-option`.
    #[command(flatten)]
    pub kafka: KafkaArgs<ConsumerKafka>,

    /// The topic of batch-ingested events.
    #[arg(long, env = "KAFKA_TOPIC", default_value = EVENTS_TOPIC)]
    pub kafka_topic: String,

    /// The consumer group (its own: offsets are committed after the state is stored).
    #[arg(long, env = "KAFKA_GROUP_ID", default_value = DEFAULT_GROUP_ID)]
    pub kafka_group_id: String,

    /// The directory the writer writes batch files to (the writer's variable); an event's
    /// `batch_file` is relative to it. Local path or `s3://[profile@]bucket/prefix/`.
    #[arg(long, env = "OUTPUT_DATASET_LIST_DIRECTORY")]
    pub batch_directory: String,

    /// The state database, `postgresql://user[:password]@host[:port]/database`; the registry's
    /// database (from butler.yaml) when not set. Its password is never printed.
    #[arg(long, env = "PUBLICATION_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// The Postgres schema of the state, created and migrated at start-up.
    #[arg(long, env = "PUBLICATION_SCHEMA", default_value = DEFAULT_SCHEMA)]
    pub schema: String,

    /// `--policy-file` (`PUBLICATION_POLICY_FILE`) and `--release-exposure-only`
    /// (`PUBLICATION_RELEASE_EXPOSURE_ONLY`).
    #[command(flatten)]
    pub policy: PolicyArgs,

    /// Accepted event origins, comma-separated; others are recorded as failed and skipped.
    #[arg(long, env = "PUBLICATION_ORIGINS", value_delimiter = ',', default_value = DEFAULT_ORIGIN)]
    pub origins: Vec<String>,

    /// Seconds a missing batch file is waited for before its event is recorded as failed.
    #[arg(
        long,
        env = "PUBLICATION_BATCH_FILE_WAIT_SECONDS",
        default_value_t = DEFAULT_BATCH_FILE_WAIT_SECONDS
    )]
    pub batch_file_wait_seconds: f64,

    /// The transfer tasks' repositories.
    #[command(flatten)]
    pub transfers: TransferArgs,

    /// Seconds the transfer tasks wait after a pass that found nothing to do.
    #[arg(
        long,
        env = "PUBLICATION_TRANSFER_IDLE_SECONDS",
        default_value_t = 60.0
    )]
    pub transfer_idle_seconds: f64,

    /// Daily window, `HH:MM-HH:MM` UTC, in which no transfer runs (events are still recorded);
    /// the deployed Prompt Publication Service is stopped from 21:30 to 12:00. Empty: none.
    #[arg(long, env = "PUBLICATION_QUIET_WINDOW")]
    pub quiet_window: Option<String>,

    /// Address of the HTTP API and the operations endpoints.
    #[arg(long, env = "PUBLICATION_HTTP_ADDRESS", default_value = "0.0.0.0:8080")]
    pub http_address: SocketAddr,

    /// Database connections per pool (state and registry).
    #[arg(long, env = "PUBLICATION_DB_MAX_CONNECTIONS", default_value_t = 4)]
    pub db_max_connections: u32,

    /// db-auth file with database credentials (default `$LSST_DB_AUTH` or
    /// `~/.lsst/db-auth.yaml`).
    #[arg(long, env = "LSST_DB_AUTH")]
    pub db_auth: Option<PathBuf>,

    /// Application metrics events to Sasquatch (off by default): `METRICS_ENABLED`,
    /// `METRICS_APPLICATION` (default `publicationconsumer`), `METRICS_EVENTS_TOPIC_PREFIX`,
    /// `SCHEMA_MANAGER_REGISTRY_URL`, `SCHEMA_MANAGER_SUFFIX` and the metrics broker's
    /// `METRICS_KAFKA_*`.
    #[command(flatten)]
    pub metrics: app_metrics::MetricsArgs,

    /// First wait, in milliseconds, before retrying after a database, storage or broker failure.
    #[arg(long, env = "PUBLICATION_RETRY_INITIAL_MS", default_value_t = 200)]
    pub retry_initial_ms: u64,

    /// Longest wait between retries, in milliseconds (database retries never give up).
    #[arg(long, env = "PUBLICATION_RETRY_MAX_MS", default_value_t = 30_000)]
    pub retry_max_ms: u64,

    /// Seconds a shutdown (SIGTERM, Ctrl-C) may take to store the event in hand.
    #[arg(
        long,
        env = "PUBLICATION_SHUTDOWN_GRACE_SECONDS",
        default_value_t = 10.0
    )]
    pub shutdown_grace_seconds: f64,
}

impl ServeArgs {
    /// Validated settings, or one line saying what to change.
    pub fn into_settings(self) -> Result<Settings, ConfigError> {
        let kafka = self.kafka.into_settings()?;
        if std::env::var_os("EMBARGO_HOURS").is_some() {
            return Err(ConfigError::new(
                "EMBARGO_HOURS is no longer read: the embargo of each dataset type comes from \
                 the release policy (PUBLICATION_POLICY_FILE; the deployed table by default)",
            ));
        }
        let policy = self.policy.load()?;
        let (prompt_prep_repository, repo_main_repository, google_int_repository) =
            self.transfers.locations();
        let mut database = PoolSettings {
            max_connections: self.db_max_connections,
            ..PoolSettings::default()
        };
        if self.db_auth.is_some() {
            database.auth_file = self.db_auth;
        }
        let settings = Settings {
            butler_repository: self.butler_repository,
            kafka,
            topic: self.kafka_topic,
            group_id: self.kafka_group_id,
            batch_directory: self.batch_directory,
            database_url: self
                .database_url
                .filter(|u| !u.is_empty())
                .map(SecretString::from),
            schema: self.schema,
            database,
            policy,
            origins: self
                .origins
                .into_iter()
                .map(|o| o.trim().to_owned())
                .collect(),
            batch_file_wait: seconds(
                self.batch_file_wait_seconds,
                "PUBLICATION_BATCH_FILE_WAIT_SECONDS",
            )?,
            retry: RetrySettings {
                initial: Duration::from_millis(self.retry_initial_ms),
                max: Duration::from_millis(self.retry_max_ms),
            },
            http_address: self.http_address,
            shutdown_grace: seconds(
                self.shutdown_grace_seconds,
                "PUBLICATION_SHUTDOWN_GRACE_SECONDS",
            )?,
            clock: Clock::system(),
            metrics: self.metrics.into_settings(crate::sasquatch::APPLICATION)?,
            prompt_prep_repository,
            repo_main_repository,
            google_int_repository,
            tasks: crate::tasks::TaskSettings {
                idle: seconds(
                    self.transfer_idle_seconds,
                    "PUBLICATION_TRANSFER_IDLE_SECONDS",
                )?,
                quiet_window: self
                    .quiet_window
                    .filter(|w| !w.trim().is_empty())
                    .map(|w| crate::tasks::QuietWindow::parse(&w))
                    .transpose()
                    .map_err(|e| ConfigError::new(format!("PUBLICATION_QUIET_WINDOW: {e}")))?,
                unembargo_chunk: self.transfers.unembargo_chunk,
                tagged_collection: self.transfers.google_tagged_collection,
                ..crate::tasks::TaskSettings::default()
            },
        };
        settings.validate()?;
        Ok(settings)
    }
}

/// Starts logging to stderr: `RUST_LOG` if set, else the `--log-level` (as the writer does).
pub fn init_tracing(cli: &Cli) {
    cli.log.init();
}

/// Runs a parsed command line. Exit status 0 after a clean stop, 1 on a fatal error, 2 on a
/// configuration error (one line on stderr each time).
pub async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Serve(args) => serve(*args).await,
        Command::RegisterBatch(args) => register(*args).await,
        Command::RegisterCollections(args) => register_collections(*args).await,
        Command::FailedEvents(args) => failed_events(*args).await,
        Command::ResolveFailed(args) => resolve_failed(*args).await,
        Command::RunTasks(args) => run_tasks(*args).await,
    }
}

async fn run_tasks(args: RunTasksArgs) -> ExitCode {
    let settings = match args.operator.into_settings() {
        Ok(settings) => settings,
        Err(error) => return config_error(&error),
    };
    let (prompt_prep, repo_main, google_int) = args.transfers.locations();
    let Some(prompt_prep) = prompt_prep else {
        return config_error(&ConfigError::new(
            "run-tasks needs --prompt-prep-repository (PUBLICATION_PROMPT_PREP_REPOSITORY)",
        ));
    };
    if args.transfers.unembargo_chunk == 0 {
        return config_error(&ConfigError::new(
            "PUBLICATION_UNEMBARGO_CHUNK must be at least 1",
        ));
    }
    let locations = crate::tasks::RepositoryLocations {
        embargo: settings.butler_repository.clone(),
        prompt_prep,
        repo_main,
        google_int,
    };
    let task_settings = crate::tasks::TaskSettings {
        unembargo_chunk: args.transfers.unembargo_chunk,
        tagged_collection: args.transfers.google_tagged_collection,
        ..crate::tasks::TaskSettings::default()
    };
    match crate::register::run_tasks(&settings, &locations, task_settings).await {
        Ok(progress) => {
            let mut failed = false;
            // The per-task lines are the command's output.
            #[allow(clippy::print_stdout)]
            for task in &progress.tasks {
                failed |= task.last_error.is_some();
                println!(
                    "{}: {} transferred, {} missing{}",
                    task.task,
                    task.transferred,
                    task.missing,
                    task.last_error
                        .as_ref()
                        .map(|e| format!(", FAILED: {e}"))
                        .unwrap_or_default()
                );
            }
            if failed {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(error) => fatal(&error),
    }
}

async fn serve(args: ServeArgs) -> ExitCode {
    service_kit::lifecycle::serve(PROGRAM, args.into_settings(), Service::start).await
}

async fn register(args: RegisterArgs) -> ExitCode {
    let (settings, files) = match args.into_settings() {
        Ok(settings) => settings,
        Err(error) => return config_error(&error),
    };
    match crate::register::register_batches(&settings, &files).await {
        Ok(registered) => {
            for r in registered {
                // The command's report, one line per file, is its output.
                #[allow(clippy::print_stdout)]
                {
                    println!(
                        "{}: batch {} {}, {} datasets and {} unknown ids added, {} failed events resolved",
                        r.batch_file,
                        r.batch_id,
                        if r.new_batch {
                            "recorded"
                        } else {
                            "already recorded"
                        },
                        r.datasets,
                        r.unknown,
                        r.resolved
                    );
                }
            }
            ExitCode::SUCCESS
        }
        Err(error) => fatal(&error),
    }
}

async fn register_collections(args: RegisterCollectionsArgs) -> ExitCode {
    let RegisterCollectionsArgs {
        collections,
        dataset_types,
        yes,
        operator,
    } = args;
    let settings = match operator.into_settings() {
        Ok(settings) => settings,
        Err(error) => return config_error(&error),
    };
    let confirm = |found: &std::collections::BTreeMap<String, usize>| {
        // The counts and the question are the command's output.
        #[allow(clippy::print_stdout)]
        {
            for (dataset_type, n) in found {
                println!("{dataset_type}: {n}");
            }
            println!("total: {}", found.values().sum::<usize>());
            if yes {
                return true;
            }
            println!("Record these datasets? [y/N]");
        }
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer).is_ok()
            && matches!(answer.trim(), "y" | "Y" | "yes")
    };
    match crate::register::register_collections(&settings, &collections, &dataset_types, confirm)
        .await
    {
        Ok(done) => {
            #[allow(clippy::print_stdout)]
            {
                if done.found.is_empty() {
                    println!("no datasets in {}", collections.join(", "));
                } else if done.confirmed {
                    println!(
                        "recorded: {} datasets added, {} new batches",
                        done.datasets, done.new_batches
                    );
                } else {
                    println!("nothing recorded");
                }
            }
            ExitCode::SUCCESS
        }
        Err(error) => fatal(&error),
    }
}

async fn failed_events(args: FailedEventsArgs) -> ExitCode {
    let settings = match args.operator.into_settings() {
        Ok(settings) => settings,
        Err(error) => return config_error(&error),
    };
    match crate::register::failed_events(&settings, args.all).await {
        Ok(events) => {
            for e in events {
                let text = |key: &str| e[key].as_str().unwrap_or("-").to_owned();
                let mut line = format!(
                    "{}:{}:{} {} batch={} file={} at={}: {}",
                    text("topic"),
                    e["partition"],
                    e["offset"],
                    text("reason"),
                    text("batch_id"),
                    text("batch_file"),
                    text("recorded_at"),
                    text("detail")
                );
                if args.all && !e["resolved_at"].is_null() {
                    line.push_str(&format!(
                        " [resolved {}: {}]",
                        text("resolved_at"),
                        text("resolution")
                    ));
                }
                // The list is the command's output.
                #[allow(clippy::print_stdout)]
                {
                    println!("{line}");
                }
            }
            ExitCode::SUCCESS
        }
        Err(error) => fatal(&error),
    }
}

async fn resolve_failed(args: ResolveFailedArgs) -> ExitCode {
    let place = match event_place(&args.event) {
        Ok(place) => place,
        Err(error) => return config_error(&error),
    };
    let settings = match args.operator.into_settings() {
        Ok(settings) => settings,
        Err(error) => return config_error(&error),
    };
    match crate::register::resolve_failed(&settings, &place, &args.reason).await {
        Ok(true) => {
            #[allow(clippy::print_stdout)]
            {
                println!("{}: resolved", args.event);
            }
            ExitCode::SUCCESS
        }
        Ok(false) => {
            eprintln!(
                "{PROGRAM}: no unresolved failed event at {} (failed-events lists them)",
                args.event
            );
            ExitCode::from(1)
        }
        Err(error) => fatal(&error),
    }
}

/// A configuration error: one line, exit status 2.
fn config_error(error: &ConfigError) -> ExitCode {
    eprintln!("{PROGRAM}: {}", service_kit::chain(error));
    ExitCode::from(2)
}

/// A failure: one line, exit status 1.
fn fatal(error: &(dyn std::error::Error + 'static)) -> ExitCode {
    eprintln!("{PROGRAM}: {}", service_kit::chain(error));
    ExitCode::from(1)
}

/// How the consumer names itself on stderr.
const PROGRAM: &str = "publication-consumer";

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::{Cli, Command};

    fn parse(args: &[&str]) -> Result<super::Settings, String> {
        let mut argv = vec!["publication-consumer", "serve"];
        argv.extend_from_slice(args);
        let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
        match cli.command {
            Command::Serve(args) => args.into_settings().map_err(|e| service_kit::chain(&e)),
            _ => Err("not serve".to_owned()),
        }
    }

    fn parse_register(args: &[&str]) -> Result<super::RegisterSettings, String> {
        let mut argv = vec!["publication-consumer", "register-batch"];
        argv.extend_from_slice(args);
        let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
        match cli.command {
            Command::RegisterBatch(args) => args
                .into_settings()
                .map(|(settings, _)| settings)
                .map_err(|e| service_kit::chain(&e)),
            _ => Err("not register-batch".to_owned()),
        }
    }

    #[test]
    fn event_places_are_topic_partition_offset() {
        let place = super::event_place("a:b:3:42").expect("valid");
        assert_eq!(
            (place.topic.as_str(), place.partition, place.offset),
            ("a:b", 3, 42)
        );
        for bad in ["", "t:1", ":1:2", "t:x:2", "t:1:y"] {
            assert!(super::event_place(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn register_batch_takes_files_and_refuses_an_unknown_origin() {
        let settings = parse_register(&["--butler-repository", "/repo", "a.json"]).expect("valid");
        assert_eq!(settings.origin, crate::policy::Origin::PromptProcessing);
        assert_eq!(settings.schema, "publication_consumer");
        assert!(
            parse_register(&["--butler-repository", "/repo"])
                .expect_err("no file")
                .contains("FILES")
        );
        let e = parse_register(&["--butler-repository", "/repo", "--origin", "x", "a.json"])
            .expect_err("origin");
        assert!(e.contains("--origin \"x\""), "{e}");
    }

    const REQUIRED: &[&str] = &[
        "--butler-repository",
        "/repo",
        "--kafka-cluster",
        "localhost:9092",
        "--batch-directory",
        "/tmp/batches/",
    ];

    #[test]
    fn defaults() {
        let settings = parse(REQUIRED).expect("valid");
        assert_eq!(settings.topic, "butler-writer-ingestion-events");
        assert_eq!(settings.group_id, "prompt-publication");
        assert_eq!(settings.schema, "publication_consumer");
        assert_eq!(settings.policy, crate::policy::Policy::deployed());
        assert!(!settings.policy.release_exposure_only);
        assert_eq!(settings.batch_file_wait.as_secs(), 600);
        assert_eq!(settings.origins, vec!["prompt_processing".to_owned()]);
        assert_eq!(settings.http_address.port(), 8080);
        assert!(settings.database_url.is_none());
    }

    #[test]
    fn a_policy_file_and_the_exposure_option_are_read() {
        let dir = tempfile::tempdir().expect("a directory");
        let path = dir.path().join("policy.yaml");
        std::fs::write(
            &path,
            "profiles:\n  - {name: all, origin: prompt_processing, embargo_hours: 0, \
             publish_to_public: false, retention_days: 7, dataset_types: [isr_statistics]}\n",
        )
        .expect("write");
        let mut args = REQUIRED.to_vec();
        let path = path.display().to_string();
        args.extend(["--policy-file", &path, "--release-exposure-only"]);
        let settings = parse(&args).expect("valid");
        assert_eq!(
            settings.policy.len(crate::policy::Origin::PromptProcessing),
            1
        );
        assert!(settings.policy.release_exposure_only);
        let mut args = REQUIRED.to_vec();
        args.extend(["--origins", "prompt_processing,daytime_ap_catchup"]);
        assert_eq!(parse(&args).expect("valid").origins.len(), 2);
    }

    #[test]
    fn credentials_go_together_and_stay_secret() {
        let mut args = REQUIRED.to_vec();
        args.extend(["--kafka-username", "pps"]);
        assert!(
            parse(&args)
                .expect_err("no password")
                .contains("KAFKA_PASSWORD")
        );
        args.extend(["--kafka-password", "hunter2"]);
        let settings = parse(&args).expect("valid");
        assert_eq!(
            settings.kafka.security_protocol,
            service_kit::SecurityProtocol::SaslPlaintext
        );
        assert!(!format!("{settings:?}").contains("hunter2"));
        let mut args = REQUIRED.to_vec();
        args.extend(["--database-url", "postgresql://pps:sesame@db/state"]);
        assert!(!format!("{:?}", parse(&args).expect("valid")).contains("sesame"));
    }

    #[test]
    fn bad_values_name_their_variable() {
        let mut args = REQUIRED.to_vec();
        args.extend(["--schema", "Bad-Schema"]);
        assert!(
            parse(&args)
                .expect_err("schema")
                .contains("PUBLICATION_SCHEMA")
        );
        let mut args = REQUIRED.to_vec();
        args.extend(["--policy-file", "/nonexistent/policy.yaml"]);
        let e = parse(&args).expect_err("policy");
        assert!(
            e.contains("PUBLICATION_POLICY_FILE") && e.contains("/nonexistent/policy.yaml"),
            "{e}"
        );
        let mut args = REQUIRED.to_vec();
        args.extend(["--origins", "prompt_processing,elsewhere"]);
        let e = parse(&args).expect_err("origins");
        assert!(e.contains("unknown origin \"elsewhere\""), "{e}");
        let mut args = REQUIRED.to_vec();
        args.extend(["--origins", "a,,b"]);
        assert!(
            parse(&args)
                .expect_err("origins")
                .contains("PUBLICATION_ORIGINS")
        );
    }
}
