//! The Butler Writer service: `pp-output` messages from Kafka in, registry rows, batch files,
//! `batch-ingested` events and dead-letter records out.
//!
//! # Layout
//! - [`settings`]: what the service runs with, validated; [`cli`]: `butler-writer serve`.
//! - [`consume`]: the consume loop (its own thread): back-pressure, rebalances.
//! - [`batch`]: the batch being filled, closed at N messages or T milliseconds.
//! - [`pipeline`]: the ingest (concurrent) and announce (in order) stages, with retries;
//!   [`order`]: batches in the database at once that write the same dataset keep their order.
//! - [`breaker`]: the circuit breaker that holds consumption when nearly everything is rejected.
//! - [`delivery`]: events, dead-letter records and offsets to Kafka, transactional or not.
//! - [`metrics`]: the writer's metrics; health and the HTTP endpoints are the service kit's.
//! - [`sasquatch`]: the application metrics events sent to Sasquatch (one per batch, one per breaker trip).
//! - [`faults`]: the seam tests break the writer through.
//!
//! [`Service::start`] opens everything and returns once the writer is running; `serve` and tests
//! drive it through [`ServiceHandle`] (its address, health, shutdown and end).

pub mod batch;
pub mod breaker;
pub mod cli;
pub mod consume;
pub mod delivery;
pub mod faults;
pub mod metrics;
pub mod order;
pub mod pipeline;
pub mod sasquatch;
pub mod settings;

use std::sync::Arc;
use std::time::Duration;

use app_metrics::Events;
use butler_repository::{ButlerConfig, ErrorClass, PoolSettings, RepositoryError};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, Producer};
use resources::ResourcePath;
use service_kit::context::{KafkaContext, KafkaRefused};
use service_kit::health::Dependency;
use service_kit::http::{BindError, HttpServer, Metadata, Operations, operations};
use service_kit::kafka::is_fatal_code;
use service_kit::lifecycle::run_to_end;
use service_kit::{
    Backoff, CancellationToken, Chain, ConfigError, Health, Running, ServiceHandle, TaskFailed,
};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

pub use settings::{DeliveryMode, Settings};

use self::batch::{Batch, BatchBuilder, InFlight};
use self::consume::{ConsumeLoop, ConsumeParts, Generations, WriterConsumer};
use self::delivery::{Delivery, DeliveryError};
use self::faults::{FaultInjector, InjectedFault, NoFaults};
use self::metrics::Metrics;
use self::pipeline::{BREAKER_HOLD, Pipeline};
use self::sasquatch::WriterEvents;
use crate::error::EngineError;
use crate::registry::{Registry, StartupError};

/// The writer's Kafka clients and database connections go by this name.
pub const CLIENT_ID: &str = "butler-writer";

/// Why the service could not start, or stopped. Each is a reason retrying cannot help; the
/// writer retries everything else itself. An operator gets it on one line with its causes
/// ([`service_kit::chain`]).
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A setting cannot be used.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `butler.yaml` cannot be read or used.
    #[error(transparent)]
    Repository(#[from] RepositoryError),
    /// The registry cannot be served.
    #[error(transparent)]
    Registry(#[from] StartupError),
    /// The registry database refused the writer while it ran (privileges, a table gone).
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// Batch files cannot be written.
    #[error("cannot write batch files to {directory}")]
    BatchFiles {
        /// The batch-file directory.
        directory: String,
        /// Why.
        #[source]
        source: resources::Error,
    },
    /// The HTTP endpoints cannot listen.
    #[error(transparent)]
    Http(#[from] BindError),
    /// librdkafka refused to create a client.
    #[error("cannot create the Kafka {client}")]
    KafkaClient {
        /// `consumer` or `producer`.
        client: &'static str,
        /// Why.
        #[source]
        source: KafkaError,
    },
    /// The broker refused the transactional id.
    #[error(
        "the broker refused transactional id {id} (a broker without transactions needs BUTLER_WRITER_DELIVERY=idempotent)"
    )]
    Transactions {
        /// The transactional id.
        id: String,
        /// Why.
        #[source]
        source: KafkaError,
    },
    /// Kafka refused the credentials or permissions.
    #[error(transparent)]
    KafkaRefused(#[from] KafkaRefused),
    /// Kafka refused a batch's results for good (fenced, unauthorized).
    #[error("delivering a batch's results to Kafka")]
    Delivery(#[source] DeliveryError),
    /// The consume loop's thread could not start.
    #[error("cannot start the consume loop")]
    Thread(#[source] std::io::Error),
    /// A task of the service failed.
    #[error(transparent)]
    Task(#[from] TaskFailed),
    /// A test's fault injector stopped the writer.
    #[error(transparent)]
    Injected(#[from] InjectedFault),
    /// Application metrics events cannot be sent (a configuration librdkafka refuses).
    #[error(transparent)]
    AppMetrics(#[from] app_metrics::StartError),
}

/// A running writer. Its address, health, shutdown and end are [`ServiceHandle`]'s.
#[derive(Debug)]
pub struct Service {
    metrics: Arc<Metrics>,
    running: Running<ServiceError>,
}

impl Service {
    /// Validates the settings, opens the registry (waiting while the database is unavailable),
    /// connects to Kafka, binds the HTTP endpoints and starts consuming.
    pub async fn start(settings: Settings) -> Result<Self, ServiceError> {
        Self::start_with_faults(settings, Arc::new(NoFaults)).await
    }

    /// [`start`](Self::start), with a test's fault injector on the pipeline.
    pub async fn start_with_faults(
        settings: Settings,
        faults: Arc<dyn FaultInjector>,
    ) -> Result<Self, ServiceError> {
        settings.validate()?;
        let settings = Arc::new(settings);
        let health = Arc::new(
            Health::new(&[Dependency::Broker, Dependency::Database]).with_hold(BREAKER_HOLD),
        );
        let metrics = Arc::new(Metrics::new());
        let shutdown = CancellationToken::new();
        let events = Events::start(settings.metrics.as_ref(), metrics.app_events.clone())?;
        let events =
            Arc::new(WriterEvents::new(events).map_err(|e| ServiceError::AppMetrics(e.into()))?);

        let registry = Arc::new(open_registry(&settings, &health).await?);
        let output_directory = ResourcePath::parse(&settings.output_directory)
            .map_err(|e| ConfigError::caused_by("OUTPUT_DATASET_LIST_DIRECTORY", e))?
            .as_dir();
        let http_stop = CancellationToken::new();
        let http = HttpServer::start(
            settings.http_address,
            operations(Operations {
                metadata: metadata(),
                health: Arc::clone(&health),
                metrics: Arc::clone(&metrics) as Arc<dyn service_kit::metrics::Exposition>,
                stall_timeout: settings.stall_timeout,
            }),
            http_stop.clone(),
        )
        .await?;
        let http_address = http.address();

        let gate = Arc::new(tokio::sync::Mutex::new(()));
        let consumer = Arc::new(create_consumer(&settings, &health, &metrics, &gate)?);
        let producer = create_producer(&settings).await?;
        let delivery = Delivery::new(
            producer,
            Arc::clone(&consumer),
            settings.delivery,
            Arc::clone(&faults),
        );

        let close = CancellationToken::new();
        let (batch_tx, batch_rx) = mpsc::channel(1);
        let consume_loop = ConsumeLoop::new(ConsumeParts {
            consumer: Arc::clone(&consumer),
            batches: batch_tx,
            builder: BatchBuilder::new(
                settings.batch.max_messages,
                settings.batch.max_bytes,
                settings.batch.max_wait,
            ),
            shutdown: shutdown.clone(),
            close: close.clone(),
            health: Arc::clone(&health),
            metrics: Arc::clone(&metrics),
            runtime: tokio::runtime::Handle::current(),
            in_flight: InFlight::default(),
            eager_below: settings.batch.eager.then_some(settings.db_concurrency),
        });
        let consume_thread = std::thread::Builder::new()
            .name("consume-loop".to_owned())
            .spawn(move || consume_loop.run())
            .map_err(ServiceError::Thread)?;

        let pipeline = Arc::new(Pipeline {
            registry,
            settings: Arc::clone(&settings),
            output_directory,
            delivery: delivery.clone(),
            consumer: Arc::clone(&consumer),
            gate,
            health: Arc::clone(&health),
            metrics: Arc::clone(&metrics),
            shutdown: shutdown.clone(),
            faults,
            events: Arc::clone(&events),
            turns: order::BatchTurns::default(),
        });
        let task = tokio::spawn(supervise(Supervised {
            pipeline,
            batch_rx,
            consumer,
            consume_thread,
            delivery,
            settings,
            shutdown: shutdown.clone(),
            close,
            health: Arc::clone(&health),
            http,
            http_stop,
            events,
        }));
        info!(%http_address, "butler-writer started");
        Ok(Self {
            metrics,
            running: Running::new(http_address, health, shutdown, task),
        })
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
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

/// `/`: what this service is.
fn metadata() -> Metadata {
    Metadata {
        name: "butler-writer",
        version: crate::VERSION,
        description: env!("CARGO_PKG_DESCRIPTION"),
        repository_url: env!("CARGO_PKG_REPOSITORY"),
        documentation_url: concat!(env!("CARGO_PKG_REPOSITORY"), "/tree/main/butler-writer"),
        links: None,
    }
}

/// What the supervising task owns.
struct Supervised {
    pipeline: Arc<Pipeline>,
    batch_rx: mpsc::Receiver<Batch>,
    consumer: Arc<WriterConsumer>,
    consume_thread: std::thread::JoinHandle<()>,
    delivery: Delivery,
    settings: Arc<Settings>,
    shutdown: CancellationToken,
    close: CancellationToken,
    health: Arc<Health>,
    http: HttpServer,
    http_stop: CancellationToken,
    events: Arc<WriterEvents>,
}

/// Runs the pipeline to its end (a fatal Kafka error, or a shutdown with `shutdown_grace` to
/// finish the batches in hand), then closes everything.
async fn supervise(s: Supervised) -> Result<(), ServiceError> {
    let work = tokio::spawn(Arc::clone(&s.pipeline).run(s.batch_rx));
    let fatal = Arc::clone(s.consumer.context().fatal());
    let health = Arc::clone(&s.health);
    let result = run_to_end(
        work,
        &s.shutdown,
        s.settings.shutdown_grace,
        async move { ServiceError::from(fatal.wait().await) },
        || health.set_stopping(),
    )
    .await;
    // Stop the consume loop and leave the group; nothing more is committed.
    s.shutdown.cancel();
    s.close.cancel();
    let thread = s.consume_thread;
    let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    let producer = s.delivery.producer().clone();
    let _ = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(2))).await;
    s.events.events.close(Duration::from_secs(5)).await;
    s.http_stop.cancel();
    s.http.finished().await;
    match &result {
        Ok(()) => info!("butler-writer stopped"),
        Err(e) => error!(error = %Chain(e), "butler-writer stopped on an error"),
    }
    result
}

/// Opens the registry, waiting (with backoff) while the database is unavailable.
async fn open_registry(settings: &Settings, health: &Health) -> Result<Registry, ServiceError> {
    let config = ButlerConfig::load(&settings.butler_repository).await?;
    // One connection per batch in the database, and one more for health checks and the
    // statistics refresh; those of the batches opened at start and kept, so that the first
    // batches after start-up (or after a quiet hour) do not wait for a connection.
    let concurrency = u32::try_from(settings.db_concurrency).unwrap_or(16);
    let pool = PoolSettings {
        max_connections: settings.database.max_connections.max(concurrency + 1),
        min_connections: concurrency,
        ..settings.database.clone()
    };
    let mut backoff = Backoff::new(settings.retry);
    loop {
        match Registry::open(&config, &pool).await {
            Ok(registry) => {
                health.set(Dependency::Database, true, None);
                return Ok(registry);
            }
            Err(e) if e.class() == ErrorClass::Retry => {
                let wait = backoff.next_wait();
                let text = Chain(&e).to_string();
                warn!(error = %text, wait_ms = wait.as_millis(), "the registry database is unavailable; waiting");
                health.set(Dependency::Database, false, Some(text));
                tokio::time::sleep(wait).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn create_consumer(
    settings: &Settings,
    health: &Arc<Health>,
    metrics: &Arc<Metrics>,
    gate: &Arc<tokio::sync::Mutex<()>>,
) -> Result<WriterConsumer, ServiceError> {
    let mut properties = vec![
        ("group.id", settings.group_id.as_str()),
        ("enable.auto.commit", "false"),
        ("enable.auto.offset.store", "false"),
        ("auto.offset.reset", "earliest"),
        // Eager assignors: a rebalance revokes everything, so an uncommitted batch is simply
        // abandoned and redelivered (see `consume`).
        ("partition.assignment.strategy", "range,roundrobin"),
        // Bounded prefetch per partition: 8 MB keeps a 500-message batch fed from a backlog
        // (4 MB starved it: 4,000 instead of 6,500 datasets/s) and the writer under 150 MB
        // (16 MB: 128 MB peak on four partitions, 8 MB: 115 MB).
        ("queued.max.messages.kbytes", "8192"),
        ("statistics.interval.ms", "5000"),
    ];
    // Static membership (KIP-345): a restarted pod with the same instance id takes its
    // partitions back at once instead of waiting out the session timeout of its dead self.
    if let Some(instance) = &settings.group_instance_id {
        properties.push(("group.instance.id", instance));
    }
    let mut config = settings.kafka.client_config(CLIENT_ID, &properties);
    config.set_log_level(RDKafkaLogLevel::Warning);
    let context = KafkaContext::new(
        Arc::clone(health),
        metrics.common.consumer_lag.clone(),
        settings.input_topic.clone(),
        Generations::new(Arc::clone(gate)),
    );
    let consumer: WriterConsumer =
        config
            .create_with_context(context)
            .map_err(|source| ServiceError::KafkaClient {
                client: "consumer",
                source,
            })?;
    consumer
        .subscribe(&[&settings.input_topic])
        .map_err(|source| ServiceError::KafkaClient {
            client: "consumer",
            source,
        })?;
    Ok(consumer)
}

async fn create_producer(settings: &Settings) -> Result<FutureProducer, ServiceError> {
    let mut properties = vec![("message.timeout.ms", "30000")];
    if settings.kafka.debug {
        properties.push(("debug", "all"));
    }
    if settings.delivery == DeliveryMode::Transactional {
        properties.push(("transactional.id", &settings.transactional_id));
        properties.push(("transaction.timeout.ms", "60000"));
    }
    let mut config = settings.kafka.producer_config(CLIENT_ID, &properties);
    config.set_log_level(RDKafkaLogLevel::Warning);
    let producer: FutureProducer = config
        .create()
        .map_err(|source| ServiceError::KafkaClient {
            client: "producer",
            source,
        })?;
    if settings.delivery == DeliveryMode::Transactional {
        init_transactions(settings, &producer).await?;
    }
    Ok(producer)
}

/// Registers the transactional id with the broker, waiting while it is unavailable; a broker
/// that refuses transactions stops the writer with a hint.
async fn init_transactions(
    settings: &Settings,
    producer: &FutureProducer,
) -> Result<(), ServiceError> {
    let mut backoff = Backoff::new(settings.retry);
    loop {
        let p = producer.clone();
        let result =
            tokio::task::spawn_blocking(move || p.init_transactions(Duration::from_secs(30)))
                .await
                .map_err(TaskFailed)?;
        let Err(e) = result else { return Ok(()) };
        let fatal = match &e {
            KafkaError::Transaction(t) => t.is_fatal() || !t.is_retriable(),
            _ => true,
        };
        if fatal || e.rdkafka_error_code().is_some_and(is_fatal_code) {
            return Err(ServiceError::Transactions {
                id: settings.transactional_id.clone(),
                source: e,
            });
        }
        let wait = backoff.next_wait();
        warn!(error = %e, wait_ms = wait.as_millis(), "cannot initialise transactions yet; waiting");
        tokio::time::sleep(wait).await;
    }
}
