//! Sending like the worker fleet: each worker's message when its schedule says (or as fast as
//! the producer takes them), its files written first when asked, the injected faults beside it,
//! and a task per message waiting for its delivery report.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::FutureRecord;
use resources::ResourcePath;
use schema::PromptProcessingOutputEvent;
use tokio::task::JoinSet;
use tracing::warn;
use uuid::Uuid;

use super::warm::LoadProducer;
use super::{LoadError, LoadSettings, Mode, lock, now_ms};
use crate::focal_plane::{VisitRegions, visit_regions};
use crate::messages::{WorkerOutput, dataset_ids, default_run};
use crate::schedule::{Send, Visit};
use crate::tracker::{MessageKind, Tracker};

/// Sends a run's messages and keeps what it needs while it does.
pub(super) struct Sender<'a> {
    settings: &'a LoadSettings,
    producer: &'a LoadProducer,
    tracker: &'a Arc<Mutex<Tracker>>,
    /// The delivery-report waiters.
    waiters: JoinSet<()>,
    /// Decides the injected faults, from the plan's seed.
    rng: fastrand::Rng,
    /// Every distinct worker message sent, when asked for.
    log: Option<MessageLog>,
    /// Where files are written before their message, when asked.
    datastore: Option<ResourcePath>,
}

impl<'a> Sender<'a> {
    /// A sender for `settings`, opening the message log and the datastore root it names.
    pub(super) fn new(
        settings: &'a LoadSettings,
        producer: &'a LoadProducer,
        tracker: &'a Arc<Mutex<Tracker>>,
    ) -> Result<Self, LoadError> {
        let datastore = settings
            .datastore_root
            .as_deref()
            .map(|root| {
                ResourcePath::parse(root)
                    .map(|p| p.as_dir())
                    .map_err(|source| LoadError::Location {
                        what: "the datastore root",
                        location: root.to_owned(),
                        source,
                    })
            })
            .transpose()?;
        let log = settings
            .message_log
            .as_deref()
            .map(MessageLog::open)
            .transpose()?;
        Ok(Self {
            settings,
            producer,
            tracker,
            waiters: JoinSet::new(),
            rng: fastrand::Rng::with_seed(settings.plan.seed ^ 0xfa17),
            log,
            datastore,
        })
    }

    /// Sends every planned message (and injected faults), paced in night mode; returns the
    /// delivery-report waiters.
    pub(super) async fn send_all(
        mut self,
        visits: &[Visit],
        plan: &[Send],
    ) -> Result<JoinSet<()>, LoadError> {
        let runs: Vec<String> = visits
            .iter()
            .map(|v| self.settings.run.clone().unwrap_or_else(|| default_run(v)))
            .collect();
        let mut regions: HashMap<usize, VisitRegions> = HashMap::new();
        let start = Instant::now();
        let paced = self.settings.mode == Mode::Night;
        let first_at = plan.first().map_or(0.0, |s| s.at_s);
        for send in plan {
            if paced {
                let due =
                    start + Duration::from_secs_f64((send.at_s - first_at) / self.settings.speed);
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
                dataset_types: &self.settings.dataset_types,
            };
            self.send_worker(&output, visit, send.detector).await?;
            // Sends come in finishing order, so a visit a few back is done: drop its regions.
            regions.retain(|&v, _| v + 3 >= send.visit);
        }
        if let Some(log) = self.log.take() {
            log.finish()?;
        }
        Ok(self.waiters)
    }

    /// One worker's message (its files first), and the faults injected beside it.
    async fn send_worker(
        &mut self,
        output: &WorkerOutput<'_>,
        visit: &Visit,
        detector: u32,
    ) -> Result<(), LoadError> {
        let message = output.message(detector);
        if let Some(root) = &self.datastore {
            write_files(root, &message).await?;
        }
        let payload = message.to_json();
        self.log_message(&payload)?;
        let label = format!("visit {} detector {detector}", visit.id);
        let ids = || dataset_ids(&message).collect::<Vec<Uuid>>();
        let original = self
            .produce(&label, payload.clone(), MessageKind::Original, ids())
            .await?;
        let faults = self.settings.faults;
        if self.rng.u32(0..1000) < faults.redeliver_per_mille {
            self.produce(&label, payload.clone(), MessageKind::Redelivery, ids())
                .await?;
        }
        if self.rng.u32(0..1000) < faults.twin_per_mille {
            let twin = output.twin(&message);
            let twin_payload = twin.to_json();
            self.log_message(&twin_payload)?;
            let twin_ids = dataset_ids(&twin).collect();
            self.produce(
                &label,
                twin_payload,
                MessageKind::Twin { of: original },
                twin_ids,
            )
            .await?;
        }
        if self.rng.u32(0..1000) < faults.malformed_per_mille {
            let cut = self.rng.usize(1..payload.len() - 1);
            self.produce(
                &label,
                payload[..cut].to_vec(),
                MessageKind::Malformed,
                Vec::new(),
            )
            .await?;
        }
        Ok(())
    }

    fn log_message(&mut self, payload: &[u8]) -> Result<(), LoadError> {
        match &mut self.log {
            Some(log) => log.append(payload),
            None => Ok(()),
        }
    }

    /// Hands one message to the producer (waiting while its queue is full) and spawns the wait
    /// for its delivery report; returns the message's index in the tracker.
    async fn produce(
        &mut self,
        label: &str,
        payload: Vec<u8>,
        kind: MessageKind,
        ids: Vec<Uuid>,
    ) -> Result<usize, LoadError> {
        let index = {
            let mut tracker = lock(self.tracker);
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
            let record: FutureRecord<'_, (), [u8]> =
                FutureRecord::to(&self.settings.topic).payload(&payload);
            match self.producer.send_result(record) {
                Ok(delivery) => break delivery,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => return Err(LoadError::Produce(e)),
            }
        };
        let tracker = Arc::clone(self.tracker);
        self.waiters.spawn(async move {
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
}

/// Writes a placeholder for each file of a message under the datastore root.
async fn write_files(
    root: &ResourcePath,
    message: &PromptProcessingOutputEvent,
) -> Result<(), LoadError> {
    for file in &message.datasets {
        let file_error = |source| LoadError::Datastore {
            path: file.path.clone(),
            source,
        };
        let path = root.join(&file.path).map_err(file_error)?;
        let body = format!("record-producer placeholder for {}\n", file.path);
        path.write(body.into_bytes()).await.map_err(file_error)?;
    }
    Ok(())
}

/// Every distinct worker message sent, one JSON line each: what a clean single run of the same
/// messages needs.
struct MessageLog {
    path: PathBuf,
    file: std::io::BufWriter<std::fs::File>,
}

impl MessageLog {
    fn open(path: &Path) -> Result<Self, LoadError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| LoadError::MessageLog {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Self {
            path: path.to_path_buf(),
            file: std::io::BufWriter::new(file),
        })
    }

    fn append(&mut self, payload: &[u8]) -> Result<(), LoadError> {
        self.file
            .write_all(payload)
            .and_then(|()| self.file.write_all(b"\n"))
            .map_err(|source| self.error(source))
    }

    fn finish(mut self) -> Result<(), LoadError> {
        self.file.flush().map_err(|source| self.error(source))
    }

    fn error(&self, source: std::io::Error) -> LoadError {
        LoadError::MessageLog {
            path: self.path.clone(),
            source,
        }
    }
}
