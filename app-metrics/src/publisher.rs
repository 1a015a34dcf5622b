//! Publishing that cannot hurt the service: [`EventPublisher::publish`] encodes the event and puts
//! it on a bounded queue without waiting; one task registers schemas and sends. When the queue is
//! full, or while publishing is paused after a failure, events are dropped and counted. A failure
//! of the schema registry or of the metrics broker is logged once and pauses publishing for the
//! backoff (Safir's 300 s by default), so a missing Sasquatch costs the service nothing but a
//! counter.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use service_kit::{CancellationToken, Chain};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::event::{AppEvent, EventMetadata, EventSchema, SchemaError, frame};
use crate::registry::{RegistryError, SchemaRegistry};
use crate::settings::MetricsSettings;

/// Why events cannot be published at all (a start-up error of the service).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// librdkafka refused the metrics producer's configuration.
    #[error("cannot create the metrics producer for {servers}")]
    Producer {
        /// The metrics broker.
        servers: String,
        /// Why.
        #[source]
        source: KafkaError,
    },
    /// An event type is not publishable.
    #[error(transparent)]
    Schema(#[from] SchemaError),
}

/// What happened to events, for `/metrics` (`<service>_metrics_events_*`) and for tests.
#[derive(Debug, Clone, Default)]
pub struct PublishCounters {
    /// Events the metrics broker acknowledged, by event.
    pub published: Family<Vec<(&'static str, String)>, Counter>,
    /// Events dropped, by reason: `queue_full`, `paused` (after a failure), `registry`,
    /// `broker`, `encoding`.
    pub dropped: Family<Vec<(&'static str, String)>, Counter>,
    published_total: Arc<AtomicU64>,
    dropped_total: Arc<AtomicU64>,
}

impl PublishCounters {
    /// Registers the counters in a service's registry.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "metrics_events_published",
            "Application metrics events the metrics broker acknowledged, by event",
            self.published.clone(),
        );
        registry.register(
            "metrics_events_dropped",
            "Application metrics events dropped, by reason: queue_full, paused, registry, broker, encoding",
            self.dropped.clone(),
        );
    }

    /// Events published, all kinds.
    pub fn published_total(&self) -> u64 {
        self.published_total.load(Ordering::Relaxed)
    }

    /// Events dropped, all reasons.
    pub fn dropped_total(&self) -> u64 {
        self.dropped_total.load(Ordering::Relaxed)
    }

    fn publish_one(&self, event: &'static str) {
        self.published
            .get_or_create(&vec![("event", event.to_owned())])
            .inc();
        self.published_total.fetch_add(1, Ordering::Relaxed);
    }

    fn drop_one(&self, reason: &'static str) {
        self.dropped
            .get_or_create(&vec![("reason", reason.to_owned())])
            .inc();
        self.dropped_total.fetch_add(1, Ordering::Relaxed);
    }
}

/// One event on its way: its schema (for the registration) and its encoded body.
struct Queued {
    schema: Arc<EventSchema>,
    body: Vec<u8>,
}

struct Shared {
    application: String,
    topic: String,
    queue: mpsc::Sender<Queued>,
    counters: PublishCounters,
}

/// The sending task and what stops it; taken by [`Events::close`].
type SendingTask = Arc<Mutex<Option<(CancellationToken, JoinHandle<()>)>>>;

/// A service's metrics events: off (every publish a no-op) or sending to Sasquatch.
#[derive(Clone)]
pub struct Events {
    shared: Option<Arc<Shared>>,
    task: SendingTask,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("topic", &self.shared.as_ref().map(|s| s.topic.clone()))
            .finish_non_exhaustive()
    }
}

impl Events {
    /// Metrics off: publishers that do nothing.
    pub fn disabled() -> Self {
        Self {
            shared: None,
            task: Arc::new(Mutex::new(None)),
        }
    }

    /// Starts the sending task for `settings` (or nothing for `None`), counting into `counters`.
    /// Nothing here waits for the registry or the broker.
    pub fn start(
        settings: Option<&MetricsSettings>,
        counters: PublishCounters,
    ) -> Result<Self, StartError> {
        let Some(settings) = settings else {
            return Ok(Self::disabled());
        };
        let producer: FutureProducer = settings
            .kafka
            .client_config(
                &format!("{}-metrics", settings.application),
                &[
                    ("acks", "all"),
                    ("linger.ms", "50"),
                    ("message.timeout.ms", "30000"),
                    ("queue.buffering.max.messages", "10000"),
                ],
            )
            .create()
            .map_err(|source| StartError::Producer {
                servers: settings.kafka.bootstrap_servers.clone(),
                source,
            })?;
        let (queue, receiver) = mpsc::channel(settings.queue_capacity);
        let shared = Arc::new(Shared {
            application: settings.application.clone(),
            topic: settings.topic(),
            queue,
            counters: counters.clone(),
        });
        let stop = CancellationToken::new();
        let sender = Sender {
            settings: settings.clone(),
            registry: SchemaRegistry::new(&settings.registry_url),
            producer,
            ids: HashMap::new(),
            paused_until: Arc::new(Mutex::new(None)),
            counters,
        };
        let handle = tokio::spawn(sender.run(receiver, stop.clone()));
        info!(topic = %shared.topic, registry = %settings.registry_url, "application metrics events on");
        Ok(Self {
            shared: Some(shared),
            task: Arc::new(Mutex::new(Some((stop, handle)))),
        })
    }

    /// A publisher of `E`; an error if `E` is not a flat record (checked at start-up, so that a
    /// bad event type stops the service before it runs rather than losing events later).
    pub fn publisher<E: AppEvent>(&self) -> Result<EventPublisher<E>, SchemaError> {
        let topic = self
            .shared
            .as_ref()
            .map_or_else(|| "disabled".to_owned(), |s| s.topic.clone());
        let schema = Arc::new(EventSchema::of::<E>(&topic)?);
        Ok(EventPublisher {
            shared: self.shared.clone(),
            schema,
            event: PhantomData,
        })
    }

    /// The events topic, when on.
    pub fn topic(&self) -> Option<&str> {
        self.shared.as_ref().map(|s| s.topic.as_str())
    }

    /// Sends what is queued, waiting at most `grace`, and stops the sending task.
    pub async fn close(&self, grace: Duration) {
        let task = self.task.lock().map(|mut t| t.take()).unwrap_or(None);
        if let Some((stop, handle)) = task {
            stop.cancel();
            let abort = handle.abort_handle();
            if tokio::time::timeout(grace, handle).await.is_err() {
                abort.abort();
                warn!("application metrics events still queued at shutdown were dropped");
            }
        }
    }
}

/// Publishes one kind of event.
pub struct EventPublisher<E> {
    shared: Option<Arc<Shared>>,
    schema: Arc<EventSchema>,
    event: PhantomData<fn(E)>,
}

impl<E> std::fmt::Debug for EventPublisher<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventPublisher")
            .field("event", &self.schema.name)
            .finish_non_exhaustive()
    }
}

impl<E: AppEvent> EventPublisher<E> {
    /// Queues `payload` with fresh metadata; never waits. Dropped and counted when the queue is
    /// full; a no-op when metrics are off.
    pub fn publish(&self, payload: &E) {
        let Some(shared) = &self.shared else { return };
        let metadata = EventMetadata::now(&shared.application);
        let body = match self.schema.encode(&metadata, payload) {
            Ok(body) => body,
            Err(error) => {
                warn!(event = self.schema.name, error = %Chain(&error), "cannot encode a metrics event");
                shared.counters.drop_one("encoding");
                return;
            }
        };
        let queued = Queued {
            schema: Arc::clone(&self.schema),
            body,
        };
        if shared.queue.try_send(queued).is_err() {
            shared.counters.drop_one("queue_full");
        }
    }
}

/// The sending task's state.
struct Sender {
    settings: MetricsSettings,
    registry: SchemaRegistry,
    producer: FutureProducer,
    /// Registered schema ids, by event.
    ids: HashMap<&'static str, u32>,
    /// Set by a failure (here or in a delivery report), cleared when the pause is over.
    paused_until: Arc<Mutex<Option<Instant>>>,
    counters: PublishCounters,
}

impl Sender {
    async fn run(mut self, mut queue: mpsc::Receiver<Queued>, stop: CancellationToken) {
        loop {
            let queued = tokio::select! {
                biased;
                next = queue.recv() => next,
                () = stop.cancelled() => None,
            };
            let Some(queued) = queued else { break };
            self.send(queued).await;
        }
        // Shutting down: what is already queued still goes, then librdkafka's own queue.
        queue.close();
        while let Ok(queued) = queue.try_recv() {
            self.send(queued).await;
        }
        let producer = self.producer.clone();
        let _ = tokio::task::spawn_blocking(move || {
            producer.flush(Timeout::After(Duration::from_secs(5)))
        })
        .await;
    }

    fn paused(&self) -> bool {
        let mut paused = self.paused_until.lock().unwrap_or_else(|p| p.into_inner());
        match *paused {
            Some(until) if Instant::now() < until => true,
            Some(_) => {
                *paused = None;
                info!("application metrics events: publishing again after the pause");
                false
            }
            None => false,
        }
    }

    async fn send(&mut self, queued: Queued) {
        if self.paused() {
            self.counters.drop_one("paused");
            return;
        }
        let name = queued.schema.name;
        let id = match self.ids.get(name) {
            Some(id) => *id,
            None => match self
                .registry
                .register(&self.settings.subject(name), &queued.schema.json)
                .await
            {
                Ok(id) => {
                    info!(event = name, schema_id = id, subject = %self.settings.subject(name), "registered the metrics event's schema");
                    self.ids.insert(name, id);
                    id
                }
                Err(error) => {
                    self.counters.drop_one("registry");
                    pause(
                        &self.paused_until,
                        self.settings.backoff,
                        &RegistryFailure(error),
                    );
                    return;
                }
            },
        };
        let value = frame(id, &queued.body);
        let topic = self.settings.topic();
        let record: FutureRecord<'_, (), Vec<u8>> = FutureRecord::to(&topic).payload(&value);
        match self.producer.send_result(record) {
            Ok(delivery) => {
                let counters = self.counters.clone();
                let paused_until = Arc::clone(&self.paused_until);
                let backoff = self.settings.backoff;
                tokio::spawn(async move {
                    match delivery.await {
                        Ok(Ok(_)) => counters.publish_one(name),
                        Ok(Err((error, _))) => {
                            counters.drop_one("broker");
                            pause(&paused_until, backoff, &BrokerFailure(error));
                        }
                        Err(_) => counters.drop_one("broker"),
                    }
                });
            }
            Err((error, _)) => {
                self.counters.drop_one("broker");
                pause(
                    &self.paused_until,
                    self.settings.backoff,
                    &BrokerFailure(error),
                );
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the schema registry failed")]
struct RegistryFailure(#[source] RegistryError);

#[derive(Debug, thiserror::Error)]
#[error("the metrics broker failed")]
struct BrokerFailure(#[source] KafkaError);

/// Pauses publishing for `backoff` (logged once per pause).
fn pause(
    paused_until: &Mutex<Option<Instant>>,
    backoff: Duration,
    error: &(dyn std::error::Error + 'static),
) {
    let mut paused = paused_until.lock().unwrap_or_else(|p| p.into_inner());
    if paused.is_none() {
        *paused = Some(Instant::now() + backoff);
        warn!(error = %Chain(error), pause_s = backoff.as_secs_f64(), "cannot publish application metrics events; events are dropped and counted until the pause is over (the service is not affected)");
    }
}
