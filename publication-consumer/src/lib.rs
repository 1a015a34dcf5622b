//! The publication consumer: a Prompt Publication Service consumer in Rust. It reads the Butler
//! Writer's `batch-ingested` events (read_committed), reads each batch file, looks the datasets
//! up in the registry (read-only) and records them, idempotently, in a Postgres schema of its
//! own with the time their embargo ends. An HTTP API lists what is ready to publish.
//!
//! # Layout
//! - [`settings`]: what the consumer runs with, validated; [`cli`]: `publication-consumer serve`;
//!   [`pps_variables`]: the Prompt Publication Service's `PROMPTPUB_*` variables read as ours.
//! - [`consume`]: the consume loop, one event at a time, offsets committed after the state.
//! - [`registry`]: read-only lookups in the Butler registry; [`register`]: `register-batch`,
//!   batch files recorded by an operator as their events would have been.
//! - [`policy`]: the release policy per (origin, dataset type), the deployed table built in.
//! - [`model`]: what is recorded about a dataset, and its embargo-release time (pure).
//! - [`store`]: the state schema, its migrations, the per-event transaction, the API's queries.
//! - [`tasks`]: the transfer tasks PPS runs, driven by the state database, in a loop beside
//!   the consumer.
//! - [`transfer`]: datasets and dimension records moved between repositories, as PPS's tasks
//!   move them, written with the Butler Writer's engine.
//! - [`http`]: the API (`/api/v1/...`) and `/openapi.json`, beside the service kit's operations
//!   endpoints (`/`, `/healthz`, `/readyz`, `/metrics`).
//! - [`metrics`]: what operators see; [`sasquatch`]: the application metrics events sent to
//!   Sasquatch; [`clock`]: "now", injectable.
//!
//! [`Service::start`] opens everything and returns once the consumer is running; `serve` and
//! tests drive it through [`ServiceHandle`] (its address, health, shutdown and end).

pub mod cli;
pub mod clock;
pub mod consume;
pub mod http;
pub mod metrics;
pub mod model;
pub mod policy;
pub mod pps_variables;
pub mod register;
pub mod registry;
pub mod sasquatch;
pub mod settings;
pub mod store;
pub mod tasks;
pub mod transfer;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use butler_repository::{ButlerConfig, ErrorClass, RepositoryError};
use rdkafka::consumer::Consumer;
use resources::ResourcePath;
use service_kit::health::Dependency;
use service_kit::http::{BindError, HttpServer, Operations};
use service_kit::lifecycle::run_to_end;
use service_kit::metrics::Exposition;
use service_kit::{
    Backoff, CancellationToken, Chain, ConfigError, Health, Running, ServiceHandle, TaskFailed,
};
use tracing::{error, info, warn};

pub use clock::Clock;
pub use settings::Settings;
pub use store::{Counts, Store};

use self::consume::{ConsumeError, EventsConsumer, Processor};
use self::metrics::Metrics;
use self::registry::{RegistryReader, StartError};
use self::sasquatch::ConsumerEvents;

/// This build's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Why the service could not start, or stopped: each a reason retrying cannot help. An
/// operator gets it on one line with its causes ([`service_kit::chain`]).
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A setting cannot be used.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `butler.yaml` cannot be read or used.
    #[error(transparent)]
    Repository(#[from] RepositoryError),
    /// The registry or the state database cannot be opened.
    #[error("cannot open the {what}")]
    Open {
        /// `registry` or `state database`.
        what: &'static str,
        /// Why.
        #[source]
        source: StartError,
    },
    /// A repository of the transfer tasks cannot be used.
    #[error(transparent)]
    Transfers(transfer::OpenError),
    /// The HTTP API cannot listen.
    #[error(transparent)]
    Http(#[from] BindError),
    /// The consume loop stopped on an error.
    #[error(transparent)]
    Consume(#[from] ConsumeError),
    /// A task of the service failed.
    #[error(transparent)]
    Task(#[from] TaskFailed),
    /// Application metrics events cannot be sent (a configuration librdkafka refuses).
    #[error(transparent)]
    AppMetrics(#[from] app_metrics::StartError),
}

/// A running consumer. Its address, health, shutdown and end are [`ServiceHandle`]'s.
#[derive(Debug)]
pub struct Service {
    metrics: Arc<Metrics>,
    store: Store,
    running: Running<ServiceError>,
}

impl Service {
    /// Validates the settings, opens the registry and the state database (waiting while either
    /// is unavailable), migrates the state schema, binds the HTTP API and starts consuming.
    pub async fn start(settings: Settings) -> Result<Self, ServiceError> {
        settings.validate()?;
        let settings = Arc::new(settings);
        let health = Arc::new(Health::new(&[
            Dependency::Database,
            Dependency::Registry,
            Dependency::Storage,
            Dependency::Broker,
        ]));
        let metrics = Arc::new(Metrics::new());
        let events =
            app_metrics::Events::start(settings.metrics.as_ref(), metrics.app_events.clone())?;
        let events =
            Arc::new(ConsumerEvents::new(events).map_err(|e| ServiceError::AppMetrics(e.into()))?);

        let config = ButlerConfig::load(&settings.butler_repository).await?;
        let batch_directory = ResourcePath::parse(&settings.batch_directory)
            .map_err(|e| ConfigError::caused_by("OUTPUT_DATASET_LIST_DIRECTORY", e))?
            .as_dir();
        let registry = wait_for(&settings, "registry", || {
            RegistryReader::connect(&config, &settings.database)
        })
        .await?;
        health.set(Dependency::Registry, true, None);
        let state_url = store::state_url(&config, settings.database_url.as_ref());
        let store = wait_for(&settings, "state database", || {
            Store::open(&state_url, &settings.database, &settings.schema)
        })
        .await?;
        health.set(Dependency::Database, true, None);
        info!(
            registry_schema = registry.namespace(),
            state_schema = store.schema(),
            "databases opened"
        );

        let transfers = open_transfers(&settings).await?;
        let progress = tasks::Progress::default();

        let http_stop = CancellationToken::new();
        let router = http::router(
            http::HttpState {
                store: store.clone(),
                clock: settings.clock.clone(),
                progress: progress.clone(),
            },
            Operations {
                metadata: http::metadata(),
                health: Arc::clone(&health),
                metrics: Arc::clone(&metrics) as Arc<dyn Exposition>,
                // A batch file may keep the loop waiting for `batch_file_wait`; it beats while
                // it waits, but give it room.
                stall_timeout: settings.batch_file_wait.max(Duration::from_secs(60))
                    + Duration::from_secs(60),
            },
        );
        let http = HttpServer::start(settings.http_address, router, http_stop.clone()).await?;
        let http_address = http.address();

        let consumer = Arc::new(consume::create_consumer(&settings, &health, &metrics)?);
        let shutdown = CancellationToken::new();
        let processor = Processor {
            store: store.clone(),
            registry,
            settings: Arc::clone(&settings),
            batch_directory,
            health: Arc::clone(&health),
            metrics: Arc::clone(&metrics),
            shutdown: shutdown.clone(),
            events: Arc::clone(&events),
        };
        if let Some(repositories) = transfers {
            let (store, task_settings, policy, clock, stop) = (
                store.clone(),
                settings.tasks.clone(),
                settings.policy.clone(),
                settings.clock.clone(),
                shutdown.clone(),
            );
            let tasks =
                tasks::Tasks::new(repositories, store, task_settings, policy, clock, progress);
            tokio::spawn(tasks.run(stop));
        }
        let task = tokio::spawn(supervise(Supervised {
            processor,
            consumer,
            shutdown: shutdown.clone(),
            health: Arc::clone(&health),
            grace: settings.shutdown_grace,
            http,
            http_stop,
            events,
        }));
        info!(%http_address, topic = %settings.topic, group = %settings.group_id, "publication-consumer started");
        Ok(Self {
            metrics,
            store,
            running: Running::new(http_address, health, shutdown, task),
        })
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The state database.
    pub fn store(&self) -> &Store {
        &self.store
    }
}

impl ServiceHandle for Service {
    type Error = ServiceError;

    fn running(&self) -> &Running<ServiceError> {
        &self.running
    }

    fn into_running(self) -> Running<ServiceError> {
        self.running
    }
}

/// What the supervising task owns.
struct Supervised {
    processor: Processor,
    consumer: Arc<EventsConsumer>,
    shutdown: CancellationToken,
    health: Arc<Health>,
    grace: Duration,
    http: HttpServer,
    http_stop: CancellationToken,
    events: Arc<ConsumerEvents>,
}

/// Runs the consume loop until it ends or a shutdown, which gives it `grace` to finish the event
/// in hand; then leaves the group and stops the API.
async fn supervise(s: Supervised) -> Result<(), ServiceError> {
    let consumer = Arc::clone(&s.consumer);
    let work =
        tokio::spawn(async move { s.processor.run(consumer).await.map_err(ServiceError::from) });
    let health = Arc::clone(&s.health);
    let result = run_to_end(work, &s.shutdown, s.grace, std::future::pending(), || {
        health.set_stopping()
    })
    .await;
    // Leave the group before returning, off the runtime (closing blocks).
    let consumer = s.consumer;
    let _ = tokio::task::spawn_blocking(move || {
        consumer.unsubscribe();
        drop(consumer);
    })
    .await;
    s.events.events.close(Duration::from_secs(5)).await;
    s.http_stop.cancel();
    s.http.finished().await;
    match &result {
        Ok(()) => info!("publication-consumer stopped"),
        Err(e) => error!(error = %Chain(e), "publication-consumer stopped on an error"),
    }
    result
}

/// The repositories of the transfer tasks, when `prompt_prep` is configured (waiting while a
/// registry is unavailable).
async fn open_transfers(settings: &Settings) -> Result<Option<tasks::Repositories>, ServiceError> {
    let Some(prompt_prep) = &settings.prompt_prep_repository else {
        info!("transfer tasks off: no prompt_prep repository configured");
        return Ok(None);
    };
    let locations = tasks::RepositoryLocations {
        embargo: settings.butler_repository.clone(),
        prompt_prep: prompt_prep.clone(),
        repo_main: settings.repo_main_repository.clone(),
        google_int: settings.google_int_repository.clone(),
    };
    let mut backoff = Backoff::new(settings.retry);
    let repositories = loop {
        match tasks::Repositories::open(&locations, &settings.database).await {
            Ok(repositories) => break repositories,
            Err(e) if e.class() == ErrorClass::Retry => {
                let wait = backoff.next_wait();
                warn!(error = %Chain(&e), wait_ms = wait.as_millis(), "a repository of the transfer tasks is unavailable; waiting");
                tokio::time::sleep(wait).await;
            }
            Err(e) => return Err(ServiceError::Transfers(e)),
        }
    };
    info!(
        repo_main = locations.repo_main.is_some(),
        google_int = locations.google_int.is_some(),
        "transfer tasks on: embargo to prompt_prep"
    );
    Ok(Some(repositories))
}

/// Opens a database, waiting with backoff while it is unavailable.
async fn wait_for<T, F, Fut>(
    settings: &Settings,
    what: &'static str,
    mut open: F,
) -> Result<T, ServiceError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StartError>>,
{
    let mut backoff = Backoff::new(settings.retry);
    loop {
        match open().await {
            Ok(value) => return Ok(value),
            Err(e) if e.class() == ErrorClass::Retry => {
                let wait = backoff.next_wait();
                warn!(error = %Chain(&e), wait_ms = wait.as_millis(), "the {what} is unavailable; waiting");
                tokio::time::sleep(wait).await;
            }
            Err(source) => return Err(ServiceError::Open { what, source }),
        }
    }
}
