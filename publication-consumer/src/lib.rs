//! The publication consumer: a Prompt Publication Service consumer in Rust. It reads the Butler
//! Writer's `batch-ingested` events (read_committed), reads each batch file, looks the datasets
//! up in the registry (read-only) and records them, idempotently, in a Postgres schema of its
//! own with the time their embargo ends. An HTTP API lists what is ready to publish.
//!
//! # Layout
//! - [`settings`]: what the consumer runs with, validated; [`cli`]: `publication-consumer serve`.
//! - [`consume`]: the consume loop, one event at a time, offsets committed after the state.
//! - [`registry`]: read-only lookups in the Butler registry.
//! - [`model`]: what is recorded about a dataset, and its embargo-release time (pure).
//! - [`store`]: the state schema, its migrations, the per-event transaction, the API's queries.
//! - [`http`]: the API (`/api/v1/...`), `/openapi.json` and the operations endpoints.
//! - [`health`], [`metrics`]: what operators see; [`clock`]: "now", injectable.
//!
//! [`Service::start`] opens everything and returns once the consumer is running; tests drive it
//! through [`Service::http_address`], [`Service::shutdown`] and [`Service::wait`].

pub mod cli;
pub mod clock;
pub mod consume;
pub mod health;
pub mod http;
pub mod metrics;
pub mod model;
pub mod registry;
pub mod settings;
pub mod store;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use butler_writer::ButlerConfig;
use butler_writer::service::pipeline::Backoff;
use rdkafka::consumer::Consumer;
use resources::ResourcePath;
use secrecy::ExposeSecret;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

pub use clock::Clock;
pub use settings::Settings;
pub use store::{Counts, Store};

use self::consume::Processor;
use self::health::Health;
use self::metrics::Metrics;
use self::registry::{RegistryReader, StartError};

/// This build's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Why the service could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Configuration, credentials, permissions: retrying cannot help.
    #[error("{0}")]
    Fatal(String),
}

/// A running consumer.
#[derive(Debug)]
pub struct Service {
    http_address: SocketAddr,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    store: Store,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), ServiceError>>,
}

impl Service {
    /// Validates the settings, opens the registry and the state database (waiting while either
    /// is unavailable), migrates the state schema, binds the HTTP API and starts consuming.
    pub async fn start(settings: Settings) -> Result<Self, ServiceError> {
        settings.validate().map_err(ServiceError::Fatal)?;
        let settings = Arc::new(settings);
        let health = Arc::new(Health::new());
        let metrics = Arc::new(Metrics::new());

        let config = ButlerConfig::load(&settings.butler_repository)
            .await
            .map_err(|e| ServiceError::Fatal(e.to_string()))?;
        let batch_directory = ResourcePath::parse(&settings.batch_directory)
            .map_err(|e| ServiceError::Fatal(format!("OUTPUT_DATASET_LIST_DIRECTORY: {e}")))?
            .as_dir();
        let auth = settings.db_auth.as_deref();
        let registry = wait_for(&settings, "registry", || {
            RegistryReader::connect(&config, auth, settings.db_max_connections)
        })
        .await?;
        health.set_registry(true, None);
        let state_url = settings.database_url.as_ref().map_or_else(
            || config.registry_db.clone(),
            |u| u.expose_secret().to_owned(),
        );
        let store = wait_for(&settings, "state database", || {
            Store::open(
                &state_url,
                auth,
                &settings.schema,
                settings.db_max_connections,
            )
        })
        .await?;
        health.set_database(true, None);
        info!(
            registry_schema = registry.namespace(),
            state_schema = store.schema(),
            "databases opened"
        );

        let listener = tokio::net::TcpListener::bind(settings.http_address)
            .await
            .map_err(|e| {
                ServiceError::Fatal(format!(
                    "cannot listen on {} for the HTTP API: {e}",
                    settings.http_address
                ))
            })?;
        let http_address = listener
            .local_addr()
            .map_err(|e| ServiceError::Fatal(format!("HTTP listener: {e}")))?;

        let consumer = Arc::new(
            consume::create_consumer(&settings, &health, &metrics).map_err(ServiceError::Fatal)?,
        );
        let (stop_tx, stop_rx) = watch::channel(false);
        let processor = Processor {
            store: store.clone(),
            registry,
            settings: Arc::clone(&settings),
            batch_directory,
            health: Arc::clone(&health),
            metrics: Arc::clone(&metrics),
            stop: stop_rx.clone(),
        };
        let router = http::router(http::HttpState {
            store: store.clone(),
            health: Arc::clone(&health),
            metrics: Arc::clone(&metrics),
            clock: settings.clock.clone(),
            stall_timeout: settings.batch_file_wait.max(Duration::from_secs(60))
                + Duration::from_secs(60),
        });
        let mut http_stop = stop_rx.clone();
        let http_task = tokio::spawn(async move {
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = http_stop.wait_for(|stop| *stop).await;
                })
                .await;
            if let Err(e) = served {
                error!(error = %e, "the HTTP API failed");
            }
        });
        let task = tokio::spawn(supervise(
            processor,
            consumer,
            stop_rx,
            Arc::clone(&health),
            settings.shutdown_grace,
            http_task,
        ));
        info!(%http_address, topic = %settings.topic, group = %settings.group_id, "publication-consumer started");
        Ok(Self {
            http_address,
            health,
            metrics,
            store,
            stop: stop_tx,
            task,
        })
    }

    /// Where the HTTP API listens.
    pub fn http_address(&self) -> SocketAddr {
        self.http_address
    }

    /// Readiness and liveness.
    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The state database.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Begins a graceful shutdown: stop fetching, store the event in hand, commit, leave.
    pub fn shutdown(&self) {
        self.stop.send_replace(true);
    }

    /// Waits for the service to end.
    pub async fn wait(self) -> Result<(), ServiceError> {
        match self.task.await {
            Ok(result) => result,
            Err(e) => Err(ServiceError::Fatal(format!("the service task failed: {e}"))),
        }
    }

    /// Runs until `signal` completes, then shuts down gracefully.
    pub async fn run_until(self, signal: impl Future<Output = ()>) -> Result<(), ServiceError> {
        let Self { stop, mut task, .. } = self;
        tokio::select! {
            joined = &mut task => return flatten(joined),
            () = signal => {
                info!("shutdown requested");
                stop.send_replace(true);
            }
        }
        flatten(task.await)
    }
}

fn flatten(
    joined: Result<Result<(), ServiceError>, tokio::task::JoinError>,
) -> Result<(), ServiceError> {
    joined.unwrap_or_else(|e| Err(ServiceError::Fatal(format!("the service task failed: {e}"))))
}

/// Runs the consume loop until a shutdown; the loop gets `grace` to finish the event in hand.
async fn supervise(
    processor: Processor,
    consumer: Arc<consume::EventsConsumer>,
    mut stop: watch::Receiver<bool>,
    health: Arc<Health>,
    grace: Duration,
    http_task: JoinHandle<()>,
) -> Result<(), ServiceError> {
    let mut work = tokio::spawn(processor.run(Arc::clone(&consumer)));
    let stopped = async move {
        let _ = stop.wait_for(|stop| *stop).await;
    };
    let result = tokio::select! {
        joined = &mut work => {
            http_task.abort();
            match joined {
                Ok(Ok(())) => Ok(()),
                Ok(Err(fatal)) => Err(ServiceError::Fatal(fatal)),
                Err(e) => Err(ServiceError::Fatal(format!("the consume loop failed: {e}"))),
            }
        }
        () = stopped => {
            health.set_stopping();
            info!(grace_s = grace.as_secs_f64(), "stopping: finishing the event in hand");
            match tokio::time::timeout(grace, &mut work).await {
                Ok(Ok(Err(fatal))) => Err(ServiceError::Fatal(fatal)),
                Ok(_) => Ok(()),
                Err(_) => {
                    warn!("the shutdown grace period ran out; the event in hand will be seen again");
                    work.abort();
                    Ok(())
                }
            }
        }
    };
    // Leave the group before returning, off the runtime (closing blocks).
    let _ = tokio::task::spawn_blocking(move || {
        consumer.unsubscribe();
        drop(consumer);
    })
    .await;
    let _ = http_task.await;
    match &result {
        Ok(()) => info!("publication-consumer stopped"),
        Err(e) => error!(error = %e, "publication-consumer stopped on an error"),
    }
    result
}

/// Opens a database, waiting with backoff while it is unavailable.
async fn wait_for<T, F, Fut>(
    settings: &Settings,
    what: &str,
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
            Err(StartError::Retry(e)) => {
                let wait = backoff.next_wait();
                warn!(error = %e, wait_ms = wait.as_millis(), "the {what} is unavailable; waiting");
                tokio::time::sleep(wait).await;
            }
            Err(StartError::Fatal(e)) => return Err(ServiceError::Fatal(e)),
        }
    }
}
