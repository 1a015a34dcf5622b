//! The Butler Writer service: `pp-output` messages from Kafka in, registry rows, batch files,
//! `batch-ingested` events and dead-letter records out.
//!
//! # Layout
//! - [`settings`]: what the service runs with, validated.
//! - [`consumer`]: the consume loop (its own thread): batches, back-pressure, rebalances.
//! - [`pipeline`]: ingest (concurrent) and commit (in order) stages, retries, the circuit breaker.
//! - [`delivery`]: events, dead-letter records and offsets to Kafka, transactional or not.
//! - [`health`], [`metrics`], [`http`]: what operators see.
//!
//! [`Service::start`] opens everything and returns once the writer is running; a test drives it
//! through [`Service::shutdown`], [`Service::wait`] and [`Service::http_address`].

pub mod cli;
pub mod consumer;
pub mod delivery;
pub mod health;
pub mod http;
pub mod metrics;
pub mod pipeline;
pub mod settings;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::Consumer;
use rdkafka::producer::{FutureProducer, Producer};
use resources::ResourcePath;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

pub use settings::{DeliveryMode, KafkaSettings, SecurityProtocol, Settings};

use self::consumer::{ConsumeLoop, WriterConsumer, WriterContext};
use self::delivery::Delivery;
use self::health::Health;
use self::metrics::Metrics;
use self::pipeline::{Backoff, Pipeline};
use crate::error::ErrorClass;
use crate::registry::{OpenOptions, Registry};
use crate::repository::ButlerConfig;

/// Why the service stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Configuration, credentials, permissions, an unsupported registry: retrying cannot help.
    #[error("{0}")]
    Fatal(String),
    /// A fault a test asked for ([`settings::FaultPlan`]).
    #[error("stopped by an injected fault")]
    InjectedCrash,
}

/// A running writer.
#[derive(Debug)]
pub struct Service {
    http_address: SocketAddr,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
    shutdown_requested: Arc<tokio::sync::Notify>,
    task: JoinHandle<Result<(), ServiceError>>,
}

impl Service {
    /// Validates the settings, opens the registry (waiting while the database is unavailable),
    /// connects to Kafka, binds the HTTP endpoints and starts consuming.
    pub async fn start(settings: Settings) -> Result<Self, ServiceError> {
        settings.validate().map_err(ServiceError::Fatal)?;
        let settings = Arc::new(settings);
        let health = Arc::new(Health::new());
        let metrics = Arc::new(Metrics::new());

        let registry = Arc::new(open_registry(&settings, &health).await?);
        let output_directory = ResourcePath::parse(&settings.output_directory)
            .map_err(|e| ServiceError::Fatal(format!("OUTPUT_DATASET_LIST_DIRECTORY: {e}")))?
            .as_dir();

        let listener = tokio::net::TcpListener::bind(settings.http_address)
            .await
            .map_err(|e| {
                ServiceError::Fatal(format!(
                    "cannot listen on {} for the HTTP endpoints: {e}",
                    settings.http_address
                ))
            })?;
        let http_address = listener
            .local_addr()
            .map_err(|e| ServiceError::Fatal(format!("HTTP listener: {e}")))?;

        let gate = Arc::new(tokio::sync::Mutex::new(()));
        let consumer = Arc::new(create_consumer(&settings, &health, &metrics, &gate)?);
        let producer = create_producer(&settings).await?;
        let delivery = Delivery::new(producer, Arc::clone(&consumer), settings.delivery);

        let stop = Arc::new(AtomicBool::new(false));
        let closed = Arc::new(AtomicBool::new(false));
        let (batch_tx, batch_rx) = mpsc::channel(1);
        let consume_loop = ConsumeLoop {
            consumer: Arc::clone(&consumer),
            batches: batch_tx,
            max_messages: settings.batch.max_messages,
            max_wait: settings.batch.max_wait,
            stop: Arc::clone(&stop),
            closed: Arc::clone(&closed),
            health: Arc::clone(&health),
            metrics: Arc::clone(&metrics),
        };
        let consume_thread = std::thread::Builder::new()
            .name("consume-loop".to_owned())
            .spawn(move || consume_loop.run())
            .map_err(|e| ServiceError::Fatal(format!("cannot start the consume loop: {e}")))?;

        let pipeline = Arc::new(Pipeline {
            registry,
            settings: Arc::clone(&settings),
            output_directory,
            delivery: delivery.clone(),
            consumer: Arc::clone(&consumer),
            gate,
            health: Arc::clone(&health),
            metrics: Arc::clone(&metrics),
            stop: Arc::clone(&stop),
        });

        let (http_stop_tx, http_stop_rx) = tokio::sync::oneshot::channel::<()>();
        let router = http::router(http::HttpState {
            health: Arc::clone(&health),
            metrics: Arc::clone(&metrics),
            stall_timeout: settings.stall_timeout,
        });
        let http_task = tokio::spawn(async move {
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    let _ = http_stop_rx.await;
                })
                .await;
            if let Err(e) = served {
                error!(error = %e, "the HTTP endpoints failed");
            }
        });

        let shutdown_requested = Arc::new(tokio::sync::Notify::new());
        let task = tokio::spawn(supervise(Supervised {
            pipeline,
            batch_rx,
            consumer,
            consume_thread,
            delivery,
            settings,
            stop: Arc::clone(&stop),
            closed,
            health: Arc::clone(&health),
            shutdown_requested: Arc::clone(&shutdown_requested),
            http_stop: http_stop_tx,
            http_task,
        }));
        info!(%http_address, "butler-writer started");
        Ok(Self {
            http_address,
            health,
            metrics,
            stop,
            shutdown_requested,
            task,
        })
    }

    /// Where the HTTP endpoints listen.
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

    /// Begins a graceful shutdown: stop fetching, commit the batch in hand, leave the group.
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.shutdown_requested.notify_one();
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
        let stop = Arc::clone(&self.stop);
        let notify = Arc::clone(&self.shutdown_requested);
        let mut task = self.task;
        tokio::select! {
            result = &mut task => return flatten(result),
            () = signal => {
                info!("shutdown requested");
                stop.store(true, Ordering::SeqCst);
                notify.notify_one();
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

/// What the supervising task owns.
struct Supervised {
    pipeline: Arc<Pipeline>,
    batch_rx: mpsc::Receiver<consumer::Batch>,
    consumer: Arc<WriterConsumer>,
    consume_thread: std::thread::JoinHandle<()>,
    delivery: Delivery,
    settings: Arc<Settings>,
    stop: Arc<AtomicBool>,
    closed: Arc<AtomicBool>,
    health: Arc<Health>,
    shutdown_requested: Arc<tokio::sync::Notify>,
    http_stop: tokio::sync::oneshot::Sender<()>,
    http_task: JoinHandle<()>,
}

/// Runs the pipeline; watches for fatal Kafka errors and for a shutdown, which gets
/// `shutdown_grace` to finish the batches in hand.
async fn supervise(s: Supervised) -> Result<(), ServiceError> {
    let mut pipeline = tokio::spawn(Arc::clone(&s.pipeline).run(s.batch_rx));
    let consumer = Arc::clone(&s.consumer);
    let fatal_watch = async move {
        loop {
            if let Some(fatal) = consumer.context().fatal() {
                return fatal;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let result = tokio::select! {
        joined = &mut pipeline => flatten(joined),
        fatal = fatal_watch => {
            pipeline.abort();
            Err(ServiceError::Fatal(fatal))
        }
        () = s.shutdown_requested.notified() => {
            s.health.set_stopping();
            info!(grace_s = s.settings.shutdown_grace.as_secs_f64(), "stopping: finishing the batch in hand");
            match tokio::time::timeout(s.settings.shutdown_grace, &mut pipeline).await {
                Ok(joined) => flatten(joined),
                Err(_) => {
                    warn!("the shutdown grace period ran out; batches not committed will be redelivered");
                    pipeline.abort();
                    Ok(())
                }
            }
        }
    };
    // Stop the consume loop and leave the group; nothing more is committed.
    s.stop.store(true, Ordering::SeqCst);
    s.closed.store(true, Ordering::SeqCst);
    let thread = s.consume_thread;
    let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    let producer = s.delivery.producer().clone();
    let _ = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(2))).await;
    let _ = s.http_stop.send(());
    let _ = s.http_task.await;
    match &result {
        Ok(()) => info!("butler-writer stopped"),
        Err(e) => error!(error = %e, "butler-writer stopped on an error"),
    }
    result
}

/// Opens the registry, waiting (with backoff) while the database is unavailable.
async fn open_registry(settings: &Settings, health: &Health) -> Result<Registry, ServiceError> {
    let config = ButlerConfig::load(&settings.butler_repository)
        .await
        .map_err(|e| ServiceError::Fatal(e.to_string()))?;
    let options = OpenOptions {
        max_connections: settings
            .open_options
            .max_connections
            .max(u32::try_from(settings.db_concurrency).unwrap_or(16) + 1),
        ..settings.open_options.clone()
    };
    let mut backoff = Backoff::new(settings.retry);
    loop {
        match Registry::open(&config, &options).await {
            Ok(registry) => {
                health.set_database(true, None);
                return Ok(registry);
            }
            Err(e) if e.class() == ErrorClass::Retry => {
                let wait = backoff.next_wait();
                warn!(error = %e, wait_ms = wait.as_millis(), "the registry database is unavailable; waiting");
                health.set_database(false, Some(e.to_string()));
                tokio::time::sleep(wait).await;
            }
            Err(e) => return Err(ServiceError::Fatal(e.to_string())),
        }
    }
}

fn create_consumer(
    settings: &Settings,
    health: &Arc<Health>,
    metrics: &Arc<Metrics>,
    gate: &Arc<tokio::sync::Mutex<()>>,
) -> Result<WriterConsumer, ServiceError> {
    let mut config = settings.kafka.client_config(&[
        ("group.id", &settings.group_id),
        ("enable.auto.commit", "false"),
        ("enable.auto.offset.store", "false"),
        ("auto.offset.reset", "earliest"),
        // Eager assignors: a rebalance revokes everything, so an uncommitted batch is simply
        // abandoned and redelivered (see `consumer`).
        ("partition.assignment.strategy", "range,roundrobin"),
        // Bounded prefetch per partition: 8 MB keeps a 500-message batch fed from a backlog
        // (4 MB starved it: 4,000 instead of 6,500 datasets/s) and the writer under 150 MB
        // (16 MB: 128 MB peak on four partitions, 8 MB: 115 MB).
        ("queued.max.messages.kbytes", "8192"),
        ("statistics.interval.ms", "5000"),
    ]);
    config.set_log_level(RDKafkaLogLevel::Warning);
    let context = WriterContext::new(
        Arc::clone(health),
        Arc::clone(metrics),
        Arc::clone(gate),
        settings.input_topic.clone(),
    );
    let consumer: WriterConsumer = config
        .create_with_context(context)
        .map_err(|e| ServiceError::Fatal(format!("cannot create the Kafka consumer: {e}")))?;
    consumer.subscribe(&[&settings.input_topic]).map_err(|e| {
        ServiceError::Fatal(format!("cannot subscribe to {}: {e}", settings.input_topic))
    })?;
    Ok(consumer)
}

async fn create_producer(settings: &Settings) -> Result<FutureProducer, ServiceError> {
    let mut properties = vec![
        ("enable.idempotence", "true"),
        ("acks", "all"),
        ("linger.ms", "5"),
        ("message.timeout.ms", "30000"),
    ];
    if settings.kafka.debug {
        properties.push(("debug", "all"));
    }
    if settings.delivery == DeliveryMode::Transactional {
        properties.push(("transactional.id", &settings.transactional_id));
        properties.push(("transaction.timeout.ms", "60000"));
    }
    let mut config = settings.kafka.client_config(&properties);
    config.set_log_level(RDKafkaLogLevel::Warning);
    let producer: FutureProducer = config
        .create()
        .map_err(|e| ServiceError::Fatal(format!("cannot create the Kafka producer: {e}")))?;
    if settings.delivery == DeliveryMode::Transactional {
        let mut backoff = Backoff::new(settings.retry);
        loop {
            let p = producer.clone();
            let result =
                tokio::task::spawn_blocking(move || p.init_transactions(Duration::from_secs(30)))
                    .await
                    .map_err(|e| ServiceError::Fatal(format!("init_transactions: {e}")))?;
            match result {
                Ok(()) => break,
                Err(e) => {
                    let fatal = match &e {
                        rdkafka::error::KafkaError::Transaction(t) => {
                            t.is_fatal() || !t.is_retriable()
                        }
                        _ => true,
                    };
                    let code = e.rdkafka_error_code();
                    if fatal || code.is_some_and(consumer::is_fatal_code) {
                        return Err(ServiceError::Fatal(format!(
                            "the broker refused transactional id {}: {e} (a broker without transactions needs BUTLER_WRITER_DELIVERY=idempotent)",
                            settings.transactional_id
                        )));
                    }
                    let wait = backoff.next_wait();
                    warn!(error = %e, wait_ms = wait.as_millis(), "cannot initialise transactions yet; waiting");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
    Ok(producer)
}
