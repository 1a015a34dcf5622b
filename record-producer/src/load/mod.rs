//! One load test: send a night's (or a burst's, or a backlog's) messages like the worker fleet,
//! check every delivery report, read the writer's `batch-ingested` events and dead letters back,
//! and account for every dataset.
//!
//! Three tasks share a [`Tracker`]: the sender (paced by the schedule, or as fast as the producer
//! takes messages), the delivery-report waiters it spawns, and the reader of the events and
//! dead-letter topics. The reader starts from the topics' end offsets taken before the first send,
//! so it sees exactly what this run caused (plus anything else produced meanwhile, counted as
//! not ours).
//!
//! # Layout
//! - [`send`]: sending like the fleet, with the injected faults and the delivery reports.
//! - [`events`]: reading the events (and their batch files) and the dead letters back.
//! - [`topics`]: creating the writer's topics on a broker of one's own.
//! - [`publication`]: the publication consumer's counts over HTTP.
//! - [`progress`]: the progress bar.

mod events;
mod metrics;
mod progress;
mod publication;
mod send;
mod topics;
mod warm;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::Producer;
use rdkafka::util::Timeout;
use service_kit::kafka::{KafkaCallError, failed};
use service_kit::{CancellationToken, ConfigError, KafkaSettings};
use tracing::{info, warn};

pub use self::events::EventError;
pub use self::metrics::MetricsCheck;
pub use self::topics::create_topics;

use self::events::EventReader;
use self::progress::Progress;
use self::send::Sender;
use self::warm::{LoadProducer, ProducerState};
use crate::focal_plane::DETECTORS;
use crate::messages::DatasetTypeSpec;
use crate::report::{Report, Timeline};
use crate::schedule::{NightPlan, Processing, night, sends};
use crate::tracker::Tracker;

/// The record producer's Kafka clients go by this name.
pub const CLIENT_ID: &str = "record-producer";

/// Why a load test could not run to its report.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A setting cannot be used.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The broker refused or did not answer.
    #[error(transparent)]
    Kafka(#[from] KafkaCallError),
    /// A topic the run reads does not exist.
    #[error("topic {0} does not exist: start the writer first, or pass --create-topics")]
    MissingTopic(String),
    /// The broker refused to create a topic.
    #[error("could not create topic {topic}: {code}")]
    TopicRefused {
        /// The topic.
        topic: String,
        /// The broker's answer.
        code: RDKafkaErrorCode,
    },
    /// The producer refused a message.
    #[error("the producer refused a message")]
    Produce(#[source] KafkaError),
    /// A location setting is not usable.
    #[error("{what} {location:?}")]
    Location {
        /// Which setting.
        what: &'static str,
        /// Its value.
        location: String,
        /// Why.
        #[source]
        source: resources::Error,
    },
    /// A file could not be written under the datastore root.
    #[error("writing {path} under the datastore root")]
    Datastore {
        /// The file's path in the datastore.
        path: String,
        /// Why.
        #[source]
        source: resources::Error,
    },
    /// The message log could not be written.
    #[error("writing the message log {}", .path.display())]
    MessageLog {
        /// The log.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A task of the run failed.
    #[error(transparent)]
    Task(#[from] service_kit::TaskFailed),
}

/// How messages are paced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The night's schedule: each worker's message when it would finish, time-compressed by
    /// `speed`.
    Night,
    /// Every message as fast as the broker takes it, while the pipeline ingests them.
    Burst,
    /// Every message first, then the wait: a backlog the pipeline drains (writer down for a while,
    /// or catching up after a restart).
    Backlog,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Self::Night => "night",
            Self::Burst => "burst",
            Self::Backlog => "backlog",
        }
    }
}

/// Faults injected on purpose, each a rate per thousand worker messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// The same message sent again (a worker retrying its send).
    pub redeliver_per_mille: u32,
    /// A second pod on the same image sends the same data ids with new dataset ids.
    pub twin_per_mille: u32,
    /// A malformed message (truncated JSON) sent after the worker's own.
    pub malformed_per_mille: u32,
}

/// Everything a load test needs.
#[derive(Debug, Clone)]
pub struct LoadSettings {
    /// The broker.
    pub kafka: KafkaSettings,
    /// The writer's input topic.
    pub topic: String,
    /// The writer's `batch-ingested` topic.
    pub events_topic: String,
    /// The writer's dead-letter topic; `None` to not read it (rejections then count as missing).
    pub dead_letter_topic: Option<String>,
    /// The writer's batch-file directory (its `OUTPUT_DATASET_LIST_DIRECTORY`), where the events'
    /// relative batch-file names are read from.
    pub output_directory: String,
    /// Pacing.
    pub mode: Mode,
    /// The night.
    pub plan: NightPlan,
    /// Worker finishing times.
    pub processing: Processing,
    /// Time compression of a night (1 = real pace).
    pub speed: f64,
    /// Detectors per visit (the first N of 189).
    pub detectors: u32,
    /// What each worker exports.
    pub dataset_types: Vec<DatasetTypeSpec>,
    /// The RUN; Prompt Processing's of the day when `None`.
    pub run: Option<String>,
    /// Faults to inject.
    pub faults: Faults,
    /// Write each file (a small placeholder) under this datastore root before sending, as workers
    /// do; local or `s3://`.
    pub datastore_root: Option<String>,
    /// How long to wait after the last send for the pipeline to account for everything.
    pub settle_timeout: Duration,
    /// Create the three topics first (if missing) with this many partitions for the input topic.
    pub create_topics: Option<i32>,
    /// Draw a progress bar (on a terminal).
    pub progress: bool,
    /// The publication consumer's base URL, to read its counts at the end.
    pub publication_url: Option<String>,
    /// The writer's application metrics events, to count against the batches at the end.
    pub metrics: Option<MetricsCheck>,
    /// Where to write the SVG plot.
    pub plot: Option<PathBuf>,
    /// Append every distinct worker message sent (originals and twins; not the redelivered
    /// copies or the malformed ones) to this file, one JSON line each: what a clean single run
    /// of the same messages needs.
    pub message_log: Option<PathBuf>,
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub(crate) fn lock(tracker: &Mutex<Tracker>) -> MutexGuard<'_, Tracker> {
    // A panic elsewhere leaves the counts as they were; reading them is still right.
    tracker.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs a load test and returns its report.
pub async fn run(settings: LoadSettings) -> Result<Report, LoadError> {
    settings.check()?;
    if let Some(partitions) = settings.create_topics {
        let mut topics = vec![
            (settings.topic.as_str(), partitions),
            (settings.events_topic.as_str(), 1),
        ];
        topics.extend(settings.dead_letter_topic.as_deref().map(|t| (t, 1)));
        create_topics(&settings.kafka, &topics).await?;
    }
    let tracker = Arc::new(Mutex::new(Tracker::default()));
    let stop = CancellationToken::new();
    let reader = EventReader::start(&settings, tracker.clone(), stop.clone()).await?;
    let sent = send(&settings, &tracker).await;
    if sent.is_ok() {
        settle(&settings, &tracker).await;
    }
    stop.cancel();
    reader.stopped().await;
    sent?.finish();
    let mut report = report(&settings, &lock(&tracker));
    if let Some(url) = &settings.publication_url {
        report.publication =
            publication::publication_counts(url, report.outcome.datasets_ingested).await;
    }
    if let Some(check) = &settings.metrics {
        report.metrics = Some(metrics::count(&settings.kafka, check, report.outcome.events).await);
    }
    Ok(report)
}

impl LoadSettings {
    /// What the command line cannot check on its own.
    fn check(&self) -> Result<(), ConfigError> {
        if self.detectors == 0 || self.detectors > DETECTORS {
            return Err(ConfigError::new(format!(
                "detectors per visit must be 1 to {DETECTORS}"
            )));
        }
        if self.dataset_types.is_empty() {
            return Err(ConfigError::new("no dataset types to export"));
        }
        if self.speed.is_nan() || self.speed <= 0.0 {
            return Err(ConfigError::new("speed must be > 0"));
        }
        Ok(())
    }
}

/// Sends the whole plan and waits for every delivery report; returns the progress bar, still
/// running while the pipeline settles.
async fn send(
    settings: &LoadSettings,
    tracker: &Arc<Mutex<Tracker>>,
) -> Result<Progress, LoadError> {
    let visits = night(&settings.plan);
    let mut plan = sends(&visits, settings.processing, settings.plan.seed);
    plan.retain(|s| s.detector < settings.detectors);
    let expected = plan.len() as u64 * settings.dataset_types.len() as u64;
    let progress = Progress::start(settings.progress, expected, tracker.clone());
    let state = ProducerState::default();
    let producer: LoadProducer = settings
        .kafka
        .producer_config(CLIENT_ID, &warm::PRODUCER_PROPERTIES)
        .create_with_context(state.clone())
        .map_err(failed("creating the Kafka producer"))?;
    warm::warm_up(&producer, &state, &settings.topic).await;
    let started = Instant::now();
    let send_result = match Sender::new(settings, &producer, tracker) {
        Ok(sender) => sender.send_all(&visits, &plan).await,
        Err(e) => Err(e),
    };
    let flush = tokio::task::spawn_blocking({
        let producer = producer.clone();
        move || producer.flush(Timeout::After(Duration::from_secs(60)))
    })
    .await;
    if let Ok(Err(e)) = flush {
        warn!(error = %e, "the producer did not flush every message within 60 s");
    }
    let mut waiters = send_result?;
    while waiters.join_next().await.is_some() {}
    info!(
        messages = lock(tracker).outcome().messages_sent,
        seconds = started.elapsed().as_secs_f64(),
        "every message sent"
    );
    Ok(progress)
}

/// Waits for the pipeline to account for every delivered dataset, at most the settle timeout.
async fn settle(settings: &LoadSettings, tracker: &Mutex<Tracker>) {
    let deadline = Instant::now() + settings.settle_timeout;
    while !lock(tracker).outcome().is_complete() {
        if Instant::now() >= deadline {
            warn!(
                timeout_s = settings.settle_timeout.as_secs_f64(),
                "gave up waiting: datasets are missing"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The report of what the tracker saw, with its plot when one was asked for.
fn report(settings: &LoadSettings, tracker: &Tracker) -> Report {
    let mut report = Report::new(
        settings.mode.name(),
        settings.plan.visits,
        settings.detectors,
        (settings.mode == Mode::Night).then_some(settings.speed),
        tracker.outcome(),
        tracker.sends(),
        tracker.arrivals(),
    );
    report.unaccounted = tracker.unaccounted();
    if let Some(path) = &settings.plot {
        let timeline = Timeline::new(tracker.sends(), tracker.arrivals());
        let title = format!(
            "{} mode: {} visits x {} detectors",
            report.mode, report.visits, report.detectors
        );
        match timeline.plot_svg(path, &title) {
            Ok(()) => report.plot = Some(path.display().to_string()),
            Err(e) => {
                warn!(error = %service_kit::Chain(&e), path = %path.display(), "could not draw the plot");
            }
        }
    }
    report
}
