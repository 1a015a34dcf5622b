//! One load test: send a night's (or a burst's, or a backlog's) messages like the worker fleet,
//! check every delivery report, read the writer's `batch-ingested` events and dead letters back,
//! and account for every dataset.
//!
//! Three tasks share a [`Tracker`]: the sender (paced by the schedule, or as fast as the producer
//! takes messages), the delivery-report waiters it spawns, and the reader of the events and
//! dead-letter topics. The reader starts from the topics' end offsets taken before the first send,
//! so it sees exactly what this run caused (plus anything else produced meanwhile, counted as
//! not ours).

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use butler_writer::service::KafkaSettings;
use indicatif::{ProgressBar, ProgressStyle};
use rdkafka::Message;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Headers;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use resources::ResourcePath;
use schema::{BatchIngestedEvent, DatasetBatch, PromptProcessingOutputEvent};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{info, warn};
use uuid::Uuid;

use crate::focal_plane::{DETECTORS, VisitRegions, visit_regions};
use crate::messages::{DatasetTypeSpec, WorkerOutput, dataset_ids, default_run};
use crate::report::{PublicationCounts, Report, Timeline};
use crate::schedule::{NightPlan, Processing, Send, Visit, night, sends};
use crate::tracker::{MessageKind, Tracker};

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
    /// Where to write the SVG plot.
    pub plot: Option<PathBuf>,
    /// Append every distinct worker message sent (originals and twins; not the redelivered
    /// copies or the malformed ones) to this file, one JSON line each: what a clean single run
    /// of the same messages needs.
    pub message_log: Option<PathBuf>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn lock(tracker: &Mutex<Tracker>) -> MutexGuard<'_, Tracker> {
    // A panic elsewhere leaves the counts as they were; reading them is still right.
    tracker.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs a load test and returns its report.
pub async fn run(settings: LoadSettings) -> anyhow::Result<Report> {
    if settings.detectors == 0 || settings.detectors > DETECTORS {
        bail!("detectors per visit must be 1 to {DETECTORS}");
    }
    if settings.dataset_types.is_empty() {
        bail!("no dataset types to export");
    }
    if settings.speed.is_nan() || settings.speed <= 0.0 {
        bail!("speed must be > 0");
    }
    if let Some(partitions) = settings.create_topics {
        let mut topics = vec![
            (settings.topic.as_str(), partitions),
            (settings.events_topic.as_str(), 1),
        ];
        topics.extend(settings.dead_letter_topic.as_deref().map(|t| (t, 1)));
        create_topics(&settings.kafka, &topics).await?;
    }
    let tracker = Arc::new(Mutex::new(Tracker::default()));
    let (stop, stopped) = watch::channel(false);
    let reader = EventReader::start(&settings, tracker.clone(), stopped).await?;

    let visits = night(&settings.plan);
    let mut plan = sends(&visits, settings.processing, settings.plan.seed);
    plan.retain(|s| s.detector < settings.detectors);
    let expected = plan.len() as u64 * settings.dataset_types.len() as u64;
    let progress = Progress::start(settings.progress, expected, tracker.clone());

    let producer: FutureProducer = settings
        .kafka
        .client_config(&[
            ("client.id", "record-producer"),
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("linger.ms", "5"),
        ])
        .create()
        .context("creating the Kafka producer")?;
    let started = Instant::now();
    let send_result = send_all(&settings, &producer, &visits, &plan, &tracker).await;
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
        messages = lock(&tracker).outcome().messages_sent,
        seconds = started.elapsed().as_secs_f64(),
        "every message sent"
    );

    // Wait for the pipeline to account for every delivered dataset.
    let deadline = Instant::now() + settings.settle_timeout;
    loop {
        if lock(&tracker).outcome().is_complete() {
            break;
        }
        if Instant::now() >= deadline {
            warn!(
                timeout_s = settings.settle_timeout.as_secs_f64(),
                "gave up waiting: datasets are missing"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop.send(true);
    reader.stop().await;
    progress.finish();

    let mut report = {
        let tracker = lock(&tracker);
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
                Err(e) => warn!(error = %e, path = %path.display(), "could not draw the plot"),
            }
        }
        report
    };
    if let Some(url) = &settings.publication_url {
        report.publication = publication_counts(url, report.outcome.datasets_ingested).await;
    }
    Ok(report)
}

/// Creates `topics` (name, partitions) where missing, replication 1 (a local broker; Strimzi
/// creates the deployed ones).
pub async fn create_topics(kafka: &KafkaSettings, topics: &[(&str, i32)]) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = kafka
        .client_config(&[("client.id", "record-producer")])
        .create()
        .context("creating the Kafka admin client")?;
    let topics: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|&(name, partitions)| NewTopic::new(name, partitions, TopicReplication::Fixed(1)))
        .collect();
    let results = admin
        .create_topics(&topics, &AdminOptions::new())
        .await
        .context("creating topics")?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => bail!("could not create topic {topic}: {code}"),
        }
    }
    Ok(())
}

/// Sends every planned message (and injected faults); returns the delivery-report waiters.
async fn send_all(
    settings: &LoadSettings,
    producer: &FutureProducer,
    visits: &[Visit],
    plan: &[Send],
    tracker: &Arc<Mutex<Tracker>>,
) -> anyhow::Result<JoinSet<()>> {
    let mut rng = fastrand::Rng::with_seed(settings.plan.seed ^ 0xfa17);
    let mut regions: HashMap<usize, VisitRegions> = HashMap::new();
    let runs: Vec<String> = visits
        .iter()
        .map(|v| settings.run.clone().unwrap_or_else(|| default_run(v)))
        .collect();
    let datastore = settings
        .datastore_root
        .as_deref()
        .map(|root| ResourcePath::parse(root).map(|p| p.as_dir()))
        .transpose()
        .context("the datastore root")?;
    let mut log = match &settings.message_log {
        Some(path) => Some(std::io::BufWriter::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening the message log {}", path.display()))?,
        )),
        None => None,
    };
    let mut waiters = JoinSet::new();
    let start = Instant::now();
    let paced = settings.mode == Mode::Night;
    let first_at = plan.first().map_or(0.0, |s| s.at_s);
    for send in plan {
        if paced {
            let due = start + Duration::from_secs_f64((send.at_s - first_at) / settings.speed);
            tokio::time::sleep_until(due.into()).await;
        }
        let visit = &visits[send.visit];
        let visit_regions = regions
            .entry(send.visit)
            .or_insert_with(|| visit_regions(visit.pointing));
        let output = WorkerOutput {
            visit,
            regions: visit_regions,
            run: &runs[send.visit],
            dataset_types: &settings.dataset_types,
        };
        let message = output.message(send.detector);
        if let Some(root) = &datastore {
            write_files(root, &message).await?;
        }
        let payload = message.to_json();
        if let Some(log) = &mut log {
            log_line(log, &payload)?;
        }
        let label = format!("visit {} detector {}", visit.id, send.detector);
        let original = produce(
            producer,
            &label,
            &settings.topic,
            payload.clone(),
            MessageKind::Original,
            dataset_ids(&message).collect(),
            tracker,
            &mut waiters,
        )
        .await?;
        let faults = settings.faults;
        if rng.u32(0..1000) < faults.redeliver_per_mille {
            let ids = dataset_ids(&message).collect();
            produce(
                producer,
                &label,
                &settings.topic,
                payload.clone(),
                MessageKind::Redelivery,
                ids,
                tracker,
                &mut waiters,
            )
            .await?;
        }
        if rng.u32(0..1000) < faults.twin_per_mille {
            let twin = output.twin(&message);
            let ids = dataset_ids(&twin).collect();
            let payload = twin.to_json();
            if let Some(log) = &mut log {
                log_line(log, &payload)?;
            }
            produce(
                producer,
                &label,
                &settings.topic,
                payload,
                MessageKind::Twin { of: original },
                ids,
                tracker,
                &mut waiters,
            )
            .await?;
        }
        if rng.u32(0..1000) < faults.malformed_per_mille {
            let cut = rng.usize(1..payload.len() - 1);
            produce(
                producer,
                &label,
                &settings.topic,
                payload[..cut].to_vec(),
                MessageKind::Malformed,
                Vec::new(),
                tracker,
                &mut waiters,
            )
            .await?;
        }
        // Sends come in finishing order, so a visit a few back is done: drop its regions.
        regions.retain(|&v, _| v + 3 >= send.visit);
    }
    if let Some(mut log) = log {
        log.flush().context("writing the message log")?;
    }
    Ok(waiters)
}

fn log_line(log: &mut impl Write, payload: &[u8]) -> anyhow::Result<()> {
    log.write_all(payload)
        .and_then(|()| log.write_all(b"\n"))
        .context("writing the message log")
}

/// Writes a placeholder for each file of a message under the datastore root.
async fn write_files(
    root: &ResourcePath,
    message: &PromptProcessingOutputEvent,
) -> anyhow::Result<()> {
    for file in &message.datasets {
        let path = root
            .join(&file.path)
            .with_context(|| format!("datastore path {}", file.path))?;
        let body = format!("record-producer placeholder for {}\n", file.path);
        path.write(body.into_bytes())
            .await
            .with_context(|| format!("writing {}", file.path))?;
    }
    Ok(())
}

/// Hands one message to the producer (waiting while its queue is full) and spawns the wait for
/// its delivery report; returns the message's index in the tracker.
#[allow(clippy::too_many_arguments)] // one call site per kind of copy; a struct would only rename them
async fn produce(
    producer: &FutureProducer,
    label: &str,
    topic: &str,
    payload: Vec<u8>,
    kind: MessageKind,
    ids: Vec<Uuid>,
    tracker: &Arc<Mutex<Tracker>>,
    waiters: &mut JoinSet<()>,
) -> anyhow::Result<usize> {
    let index = {
        let mut tracker = lock(tracker);
        let index = tracker.sent(
            kind,
            ids,
            (kind == MessageKind::Malformed).then_some(payload.as_slice()),
            now_ms(),
        );
        let copy = match kind {
            MessageKind::Original => "",
            MessageKind::Redelivery => " (redelivered)",
            MessageKind::Twin { .. } => " (twin pod)",
            MessageKind::Malformed => " (malformed)",
        };
        tracker.set_label(index, format!("{label}{copy}"));
        index
    };
    let delivery = loop {
        let record: FutureRecord<'_, (), [u8]> = FutureRecord::to(topic).payload(&payload);
        match producer.send_result(record) {
            Ok(delivery) => break delivery,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err((e, _)) => bail!("the producer refused a message: {e}"),
        }
    };
    let tracker = tracker.clone();
    waiters.spawn(async move {
        let ok = match delivery.await {
            Ok(Ok(_)) => true,
            Ok(Err((e, _))) => {
                warn!(error = %e, message = index, "delivery failed");
                false
            }
            Err(_) => {
                warn!(
                    message = index,
                    "the producer dropped a message without a report"
                );
                false
            }
        };
        lock(&tracker).delivered(index, ok);
    });
    Ok(index)
}

/// Reads `batch-ingested` events and dead letters into the tracker.
struct EventReader {
    task: tokio::task::JoinHandle<()>,
}

impl EventReader {
    async fn start(
        settings: &LoadSettings,
        tracker: Arc<Mutex<Tracker>>,
        mut stopped: watch::Receiver<bool>,
    ) -> anyhow::Result<Self> {
        let group = format!("record-producer-{}", Uuid::new_v4().simple());
        let consumer: StreamConsumer = settings
            .kafka
            .client_config(&[
                ("client.id", "record-producer"),
                ("group.id", &group),
                ("enable.auto.commit", "false"),
                ("isolation.level", "read_committed"),
                ("auto.offset.reset", "earliest"),
            ])
            .create()
            .context("creating the Kafka consumer for events")?;
        let mut assignment = TopicPartitionList::new();
        let mut topics = vec![settings.events_topic.clone()];
        topics.extend(settings.dead_letter_topic.clone());
        let consumer = tokio::task::spawn_blocking(move || -> anyhow::Result<StreamConsumer> {
            for topic in &topics {
                let metadata = consumer
                    .fetch_metadata(Some(topic), Duration::from_secs(10))
                    .with_context(|| format!("reading the metadata of topic {topic}"))?;
                let partitions = metadata
                    .topics()
                    .first()
                    .filter(|t| t.error().is_none())
                    .map(|t| t.partitions().len())
                    .unwrap_or(0);
                if partitions == 0 {
                    bail!(
                        "topic {topic} does not exist: start the writer first, or pass --create-topics"
                    );
                }
                for partition in 0..partitions as i32 {
                    let (_, high) = consumer
                        .fetch_watermarks(topic, partition, Duration::from_secs(10))
                        .with_context(|| format!("reading the end offsets of {topic}"))?;
                    assignment.add_partition_offset(topic, partition, Offset::Offset(high))?;
                }
            }
            consumer.assign(&assignment)?;
            Ok(consumer)
        })
        .await??;
        let events_topic = settings.events_topic.clone();
        let directory = ResourcePath::parse(&settings.output_directory)
            .map(|p| p.as_dir())
            .with_context(|| {
                format!(
                    "the batch-file directory {:?} (OUTPUT_DATASET_LIST_DIRECTORY)",
                    settings.output_directory
                )
            })?;
        let task = tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    _ = stopped.changed() => break,
                    m = consumer.recv() => m,
                };
                let message = match message {
                    Ok(m) => m,
                    Err(e) => {
                        warn!(error = %e, "reading events");
                        continue;
                    }
                };
                let value = message.payload().unwrap_or_default();
                if message.topic() == events_topic {
                    let at = message.timestamp().to_millis().unwrap_or_else(now_ms);
                    match read_batch(&directory, value).await {
                        Ok(ids) => lock(&tracker).announced(&ids, at),
                        Err(e) => {
                            warn!(error = %format!("{e:#}"), "an event could not be read");
                            lock(&tracker).undecodable_event();
                        }
                    }
                } else {
                    let reason = message
                        .headers()
                        .and_then(|h| {
                            h.iter()
                                .find(|h| h.key == "butler_writer.reason")
                                .and_then(|h| h.value)
                                .map(|v| String::from_utf8_lossy(v).into_owned())
                        })
                        .unwrap_or_else(|| "unknown".to_owned());
                    let ids: Vec<Uuid> = PromptProcessingOutputEvent::from_json(value)
                        .map(|m| dataset_ids(&m).collect())
                        .unwrap_or_default();
                    lock(&tracker).dead_lettered(value, &ids, &reason);
                }
            }
        });
        Ok(Self { task })
    }

    async fn stop(self) {
        let _ = self.task.await;
    }
}

/// The dataset ids of an event's batch file, waiting a little for a file that is not there yet.
async fn read_batch(directory: &ResourcePath, event: &[u8]) -> anyhow::Result<Vec<Uuid>> {
    let event = BatchIngestedEvent::from_json(event)?;
    let path = if event.batch_file.contains("://") {
        ResourcePath::parse(&event.batch_file)?
    } else {
        directory.join(&event.batch_file)?
    };
    let mut attempts = 0;
    let bytes = loop {
        match path.read().await {
            Ok(bytes) => break bytes,
            Err(e) if (e.is_not_found() || e.is_transient()) && attempts < 50 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", event.batch_file)),
        }
    };
    Ok(DatasetBatch::from_json(&bytes)?.datasets)
}

/// The publication consumer's counts once it has caught up with `ingested` datasets (or after a
/// minute, as they stand).
async fn publication_counts(url: &str, ingested: u64) -> Option<PublicationCounts> {
    let url = format!("{}/api/v1/counts", url.trim_end_matches('/'));
    let deadline = Instant::now() + Duration::from_secs(60);
    // reqwest is built without a bundled TLS provider (see the workspace manifest); plain HTTP
    // needs none, but the client insists on one being installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::new();
    loop {
        let counts = async {
            let body = client
                .get(&url)
                .send()
                .await?
                .error_for_status()?
                .text()
                .await?;
            anyhow::Ok(serde_json::from_str::<PublicationCounts>(&body)?)
        }
        .await;
        match counts {
            Ok(c) if c.datasets >= ingested || Instant::now() >= deadline => return Some(c),
            Ok(_) => {}
            Err(e) if Instant::now() >= deadline => {
                warn!(error = %format!("{e:#}"), url, "the publication consumer did not answer");
                return None;
            }
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The progress bar (or, off a terminal, a log line every ten seconds).
struct Progress {
    bar: ProgressBar,
    task: tokio::task::JoinHandle<()>,
}

impl Progress {
    fn start(enabled: bool, expected: u64, tracker: Arc<Mutex<Tracker>>) -> Self {
        let bar = if enabled {
            ProgressBar::new(expected)
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template(
                "{elapsed_precise} [{wide_bar}] {pos}/{len} datasets ingested  {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let task = tokio::spawn({
            let bar = bar.clone();
            async move {
                let mut last_log = Instant::now();
                loop {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let o = lock(&tracker).outcome();
                    bar.set_position(o.datasets_ingested);
                    bar.set_message(format!(
                        "{} messages sent, {} delivered, {} dead letters",
                        o.messages_sent,
                        o.messages_delivered,
                        o.dead_letter_reasons.values().sum::<u64>()
                    ));
                    if bar.is_hidden() && last_log.elapsed() >= Duration::from_secs(10) {
                        last_log = Instant::now();
                        info!(
                            sent = o.messages_sent,
                            delivered = o.messages_delivered,
                            ingested = o.datasets_ingested,
                            expected,
                            "progress"
                        );
                    }
                }
            }
        });
        Self { bar, task }
    }

    fn finish(self) {
        self.task.abort();
        self.bar.finish_and_clear();
    }
}
