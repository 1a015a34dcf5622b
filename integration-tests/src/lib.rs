//! End-to-end fault scenarios: the record producer loads a real writer process on the real broker
//! and Postgres while a scenario breaks something (kills the writer, stops Postgres, restarts the
//! broker, floods poison), and every scenario ends with an exact reconciliation.
//!
//! Services come from [`test_support::TestEnv`]: the environment's endpoints (this machine and CI:
//! `deploy/local/stack`), or testcontainers where a Docker engine runs. A scenario that stops
//! Postgres or restarts the broker takes the service away from everything else using it, so the
//! scenarios run one at a time and apart from the other crates' tests (`scripts/test` does).
//!
//! Each scenario runs in both delivery modes ([`Delivery`]): idempotent on the main broker
//! (nisshi, which has no transactions) and transactional on a broker with transactions (the
//! local stack's noida-db, or Apache Kafka), as production runs.
//!
//! # Layout
//! - [`Harness`]: a scenario's services, registry, topics and batch-file directory.
//! - [`WriterProcess`]: a `butler-writer serve` process (the `writer-under-test` binary, which is
//!   `butler-writer`'s own `main`), killed and restarted at will.
//! - [`Reconciliation`]: what the producer got delivery reports for, against the registry, the
//!   batch files and the events; and the registry against a clean single run of the same
//!   messages, table for table.
//! - [`Figures`]: one scenario's row of the table printed at the end of the run.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use butler_repository::{ButlerConfig, PoolSettings};
use butler_writer::registry::Registry;
use record_producer::messages::DatasetTypeSpec;
use record_producer::schedule::{NightPlan, Processing};
use record_producer::{Faults, LoadSettings, Mode, Report};
use schema::DatasetBatch;
use serde::{Deserialize, Serialize};
use service_kit::KafkaSettings;
use sqlx::{Connection, PgConnection};
use test_support::{TestEnv, TestRegistry, TestTopics};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

/// The variable that makes `writer-under-test` kill itself (SIGKILL) inside its Nth
/// transaction, once the batch's records are on the broker and before the commit.
pub const KILL_IN_TRANSACTION_ENV: &str = "WRITER_UNDER_TEST_KILL_IN_TRANSACTION";

/// The faults `writer-under-test` takes from its environment: a seam of the test binary only.
#[derive(Debug, Default)]
pub struct EnvFaults {
    kill_in_transaction: Option<u64>,
    transactions: std::sync::atomic::AtomicU64,
}

impl EnvFaults {
    /// The faults [`KILL_IN_TRANSACTION_ENV`] asks for.
    pub fn from_env() -> Self {
        Self {
            kill_in_transaction: std::env::var(KILL_IN_TRANSACTION_ENV)
                .ok()
                .and_then(|n| n.parse().ok()),
            transactions: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl butler_writer::service::faults::FaultInjector for EnvFaults {
    fn in_transaction(&self) -> Result<(), butler_writer::service::faults::InjectedFault> {
        let n = self
            .transactions
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        if self.kill_in_transaction == Some(n) {
            // A real SIGKILL, from outside the process's own code: no destructor, no abort of
            // the transaction, no flush.
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &std::process::id().to_string()])
                .status();
            std::thread::sleep(Duration::from_secs(60));
        }
        Ok(())
    }
}

/// How a scenario's writers get their results to Kafka, and so on which broker it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Idempotent producer, then the offsets, on the main broker (nisshi here).
    Idempotent,
    /// Event, dead letters and offsets in one transaction, on a broker with transactions.
    Transactional,
}

impl Delivery {
    /// `BUTLER_WRITER_DELIVERY`'s value.
    pub fn name(self) -> &'static str {
        match self {
            Self::Idempotent => "idempotent",
            Self::Transactional => "transactional",
        }
    }
}

/// A scenario's world: the services, a registry and topics of its own, a batch-file directory.
#[derive(Debug)]
pub struct Harness {
    /// The scenario's name, for logs and figures.
    pub name: String,
    /// How its writers deliver, and so which broker it runs on.
    pub delivery: Delivery,
    /// Writers are static group members (`BUTLER_WRITER_GROUP_INSTANCE_ID` = their pod's name),
    /// as the chart runs them; a scenario may turn it off to compare.
    pub static_members: bool,
    /// The broker and the database.
    pub env: TestEnv,
    /// The registry under test.
    pub registry: TestRegistry,
    /// Input, events and dead-letter topics.
    pub topics: TestTopics,
    /// Where the writers put batch files.
    pub batches: tempfile::TempDir,
    /// Logs of the writer processes and the message log of the producer.
    pub work: tempfile::TempDir,
    writer_binary: PathBuf,
    writers_started: usize,
}

/// When a scenario fails, the end of each writer's log goes to stderr (the logs themselves go
/// with the scenario's temporary directory): what the writers said is most of a diagnosis.
impl Drop for Harness {
    #[allow(clippy::print_stderr)] // The test's output, on failure.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let Ok(entries) = std::fs::read_dir(self.work.path()) else {
            return;
        };
        let mut logs: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        logs.sort();
        for log in logs {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(WRITER_LOG_TAIL)..];
            eprintln!(
                "--- {} (last {} of {} lines)\n{}",
                log.file_name().unwrap_or_default().to_string_lossy(),
                tail.len(),
                lines.len(),
                tail.join("\n")
            );
        }
    }
}

/// How many lines of each writer's log a failed scenario prints.
const WRITER_LOG_TAIL: usize = 40;

impl Harness {
    /// Services (a broker with transactions for [`Delivery::Transactional`]), a fresh registry
    /// and fresh topics (the input with `partitions` partitions); writers run `writer_binary`
    /// (the tests pass `writer-under-test`).
    pub async fn new(
        name: &str,
        delivery: Delivery,
        partitions: i32,
        writer_binary: &Path,
    ) -> anyhow::Result<Self> {
        let env = match delivery {
            Delivery::Idempotent => TestEnv::start().await?,
            Delivery::Transactional => TestEnv::start_transactional().await?,
        };
        let registry = env.fresh_registry().await?;
        let topics = env.fresh_topics(partitions).await?;
        Ok(Self {
            name: name.to_owned(),
            delivery,
            static_members: true,
            env,
            registry,
            topics,
            batches: tempfile::tempdir()?,
            work: tempfile::tempdir()?,
            writer_binary: writer_binary.to_owned(),
            writers_started: 0,
        })
    }

    /// Says in one line why the scenario does not run on this broker in this mode (an
    /// Apache-Kafka-only assertion), and saves that as its row of the table.
    #[allow(clippy::print_stderr)] // The test's one line.
    pub fn skip(&self, reason: &str) {
        eprintln!(
            "skipped on {}: {reason} (Apache-Kafka-only; deploy/local/README.md)",
            self.env.broker_kind().name()
        );
        if let Err(e) = Figures::skipped(self, reason).save() {
            eprintln!("could not save the skipped row: {e:#}");
        }
    }

    /// The producer's message log: every distinct message sent.
    pub fn message_log(&self) -> PathBuf {
        self.work.path().join("messages.jsonl")
    }

    /// A load test of `visits` visits of `detectors` detectors in `mode`, against this harness's
    /// topics, logging its messages; `settle` is how long it waits for the pipeline at the end.
    pub fn load(&self, mode: Mode, visits: u32, detectors: u32, settle: Duration) -> LoadSettings {
        let mut plan = NightPlan::new(20260501, visits);
        plan.seed = 7;
        LoadSettings {
            kafka: KafkaSettings::plaintext(self.env.kafka_bootstrap()),
            topic: self.topics.input.clone(),
            events_topic: self.topics.events.clone(),
            dead_letter_topic: Some(self.topics.dead_letter.clone()),
            output_directory: format!("{}/", self.batches.path().display()),
            mode,
            plan,
            processing: Processing {
                delay_s: 60.0,
                spread_s: 10.0,
            },
            speed: 1.0,
            detectors,
            dataset_types: DatasetTypeSpec::defaults(),
            run: None,
            faults: Faults::default(),
            datastore_root: None,
            settle_timeout: settle,
            create_topics: None,
            progress: false,
            publication_url: None,
            metrics: None,
            plot: None,
            message_log: Some(self.message_log()),
        }
    }

    /// Starts the `writer-0` pod: [`start_pod`](Self::start_pod).
    pub async fn start_writer(
        &mut self,
        args: &[&str],
        extra: &[(&str, &str)],
    ) -> anyhow::Result<WriterProcess> {
        self.start_pod("writer-0", args, extra).await
    }

    /// Starts a `butler-writer serve` process as pod `pod` of the StatefulSet with the deployed
    /// variables, waiting until it is ready: the pod's transactional id and (with
    /// [`static_members`](Self::static_members)) its `group.instance.id` are its own and the same
    /// across restarts, as the chart makes them. `args` go after `serve`; `extra` adds or
    /// overrides variables.
    pub async fn start_pod(
        &mut self,
        pod: &str,
        args: &[&str],
        extra: &[(&str, &str)],
    ) -> anyhow::Result<WriterProcess> {
        let mut writer = self.spawn_pod(pod, args, extra)?;
        writer.wait_ready(Duration::from_secs(60)).await?;
        Ok(writer)
    }

    /// Starts pod `pod` as [`start_pod`](Self::start_pod) does, without waiting for it.
    pub fn spawn_pod(
        &mut self,
        pod: &str,
        args: &[&str],
        extra: &[(&str, &str)],
    ) -> anyhow::Result<WriterProcess> {
        self.writers_started += 1;
        let index = self.writers_started;
        let port = free_port()?;
        let http: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let log_path = self.work.path().join(format!("{pod}-{index}.log"));
        let mut vars: BTreeMap<&str, String> = BTreeMap::from([
            (
                "BUTLER_REPOSITORY",
                self.registry.butler_config.display().to_string(),
            ),
            ("KAFKA_CLUSTER", self.env.kafka_bootstrap().to_owned()),
            ("KAFKA_TOPIC", self.topics.input.clone()),
            ("KAFKA_OUTPUT_TOPIC", self.topics.events.clone()),
            (
                "OUTPUT_DATASET_LIST_DIRECTORY",
                format!("{}/", self.batches.path().display()),
            ),
            (
                "BUTLER_WRITER_DEAD_LETTER_TOPIC",
                self.topics.dead_letter.clone(),
            ),
            ("BUTLER_WRITER_DELIVERY", self.delivery.name().to_owned()),
            (
                "BUTLER_WRITER_GROUP_ID",
                format!("{}_writers", self.topics.input),
            ),
            (
                "BUTLER_WRITER_TRANSACTIONAL_ID",
                format!("{}_txn_{pod}", self.topics.input),
            ),
            ("BUTLER_WRITER_HTTP_ADDRESS", http.to_string()),
            ("BUTLER_WRITER_RETRY_INITIAL_MS", "100".to_owned()),
            ("BUTLER_WRITER_RETRY_MAX_MS", "1000".to_owned()),
            ("BUTLER_WRITER_LOG_FORMAT", "text".to_owned()),
        ]);
        if self.static_members {
            vars.insert("BUTLER_WRITER_GROUP_INSTANCE_ID", pod.to_owned());
        }
        for (k, v) in extra {
            vars.insert(k, (*v).to_owned());
        }
        let log = std::fs::File::create(&log_path)?;
        let child = tokio::process::Command::new(&self.writer_binary)
            .arg("serve")
            .args(args)
            .envs(vars)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("starting the writer process")?;
        Ok(WriterProcess {
            child,
            http,
            log: log_path,
        })
    }

    /// Reconciles a finished load test with the registry and the batch files, and compares the
    /// registry with a clean single run of the messages that were ingested.
    pub async fn reconcile(&self, report: &Report) -> anyhow::Result<Reconciliation> {
        let registry_ids = registry_datasets(&self.registry).await?;
        let batch_counts = batch_file_counts(self.batches.path())?;
        let messages = read_message_log(&self.message_log())?;
        let sent: HashSet<Uuid> = messages.iter().flat_map(|(ids, _)| ids.clone()).collect();
        // What should be in: every delivered dataset except the expected rejections (a twin's
        // losing copy); the producer's report lists every dataset that was not announced.
        let not_announced: HashMap<Uuid, bool> = report
            .unaccounted
            .iter()
            .map(|u| (u.id, u.expected))
            .collect();
        let expected_in: HashSet<Uuid> = sent
            .iter()
            .filter(|id| not_announced.get(id).is_none_or(|expected| !expected))
            .copied()
            .collect();
        let lost: Vec<Uuid> = expected_in
            .iter()
            .filter(|id| !registry_ids.contains(id))
            .copied()
            .collect();
        let unexpected: Vec<Uuid> = registry_ids
            .iter()
            .filter(|id| !expected_in.contains(id))
            .copied()
            .collect();
        let in_batch_files = registry_ids
            .iter()
            .filter(|id| batch_counts.contains_key(id))
            .count();
        let repeated_in_batch_files: u64 = batch_counts
            .values()
            .map(|&n| u64::from(n.saturating_sub(1)))
            .sum();
        let dead_lettered = report
            .unaccounted
            .iter()
            .filter(|u| u.dead_letter_reason.is_some())
            .count() as u64;

        // The clean single run: the messages whose datasets are in, once each, into a fresh
        // registry by the same engine; then every table compared.
        let clean = self.env.fresh_registry().await?;
        let ingested_messages: Vec<&[u8]> = messages
            .iter()
            .filter(|(ids, _)| !ids.is_empty() && ids.iter().all(|id| registry_ids.contains(id)))
            .map(|(_, line)| line.as_slice())
            .collect();
        clean_run(&clean, &ingested_messages).await?;
        let comparison = compare_registries(&self.registry, &clean).await?;

        Ok(Reconciliation {
            delivered: sent.len() as u64,
            expected_in: expected_in.len() as u64,
            in_registry: registry_ids.len() as u64,
            lost,
            unexpected,
            missing_from_batch_files: registry_ids.len() as u64 - in_batch_files as u64,
            repeated_in_batch_files,
            repeated_announcements: report.outcome.repeated_announcements,
            dead_lettered,
            registries_equal: comparison.0,
            comparison: comparison.1,
        })
    }
}

/// A `butler-writer serve` process.
#[derive(Debug)]
pub struct WriterProcess {
    child: tokio::process::Child,
    /// Its `/healthz`, `/readyz` and `/metrics` address.
    pub http: SocketAddr,
    /// Its log file (stdout and stderr).
    pub log: PathBuf,
}

impl WriterProcess {
    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "the writer exited ({status}) before it was ready:\n{}",
                    self.log_tail()
                );
            }
            if let Ok((200, _)) = http_get(self.http, "/readyz").await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "the writer was not ready in {timeout:?}:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `/readyz`: status and body.
    pub async fn readiness(&self) -> anyhow::Result<(u16, String)> {
        http_get(self.http, "/readyz").await
    }

    /// SIGKILL: no shutdown, no commit, as the kernel's OOM killer or a node loss does.
    pub async fn kill9(mut self) -> anyhow::Result<()> {
        self.child.start_kill()?;
        self.child.wait().await?;
        Ok(())
    }

    /// SIGSTOP: frozen, as a paused pod or a long stop-the-world pause is; [`resume`](Self::resume)
    /// thaws it.
    pub fn pause(&self) -> anyhow::Result<()> {
        self.signal("STOP")
    }

    /// SIGCONT.
    pub fn resume(&self) -> anyhow::Result<()> {
        self.signal("CONT")
    }

    fn signal(&self, name: &str) -> anyhow::Result<()> {
        let pid = self.child.id().context("the writer has exited")?;
        let status = std::process::Command::new("kill")
            .args([format!("-{name}"), pid.to_string()])
            .status()?;
        ensure!(status.success(), "kill -{name} {pid} failed");
        Ok(())
    }

    /// Waits for the process to end by itself (a fault, a fatal error), at most `timeout`.
    pub async fn exited(&mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        tokio::time::timeout(timeout, self.child.wait())
            .await
            .with_context(|| format!("the writer still runs after {timeout:?}"))?
            .context("waiting for the writer")
    }

    /// SIGTERM, and the exit status once it has stopped.
    pub async fn terminate(mut self) -> anyhow::Result<std::process::ExitStatus> {
        if let Some(pid) = self.child.id() {
            let status = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()?;
            ensure!(status.success(), "kill -TERM {pid} failed");
        }
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .context("the writer did not stop within 30 s of SIGTERM")??;
        Ok(status)
    }

    /// The last lines of its log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

/// A scenario's reconciliation.
#[derive(Debug, Clone)]
pub struct Reconciliation {
    /// Distinct datasets sent over the whole scenario (every load test's message log); each
    /// scenario also checks that every one had a delivery report.
    pub delivered: u64,
    /// Of those, the ones that must be in the registry (all but a twin's losing copy).
    pub expected_in: u64,
    /// Datasets in the registry.
    pub in_registry: u64,
    /// Expected and not in the registry.
    pub lost: Vec<Uuid>,
    /// In the registry and not expected (a conflict let through, or something never sent).
    pub unexpected: Vec<Uuid>,
    /// Registry datasets in no batch file.
    pub missing_from_batch_files: u64,
    /// Extra appearances of a dataset in batch files (a batch redone after a crash: allowed in
    /// idempotent delivery, and counted).
    pub repeated_in_batch_files: u64,
    /// Extra announcements the producer saw in events.
    pub repeated_announcements: u64,
    /// Delivered datasets dead-lettered.
    pub dead_lettered: u64,
    /// The registry equals a clean single run of the ingested messages, table for table.
    pub registries_equal: bool,
    /// The comparison's output.
    pub comparison: String,
}

impl Reconciliation {
    /// Fails with the details unless nothing is lost, nothing unexpected is in, every dataset
    /// is in a batch file and the registry equals the clean run.
    pub fn assert_exact(&self) {
        assert!(
            self.lost.is_empty(),
            "{} datasets lost, such as {:?}",
            self.lost.len(),
            &self.lost[..self.lost.len().min(5)]
        );
        assert!(
            self.unexpected.is_empty(),
            "{} unexpected datasets in the registry, such as {:?}",
            self.unexpected.len(),
            &self.unexpected[..self.unexpected.len().min(5)]
        );
        assert_eq!(self.in_registry, self.expected_in);
        assert_eq!(
            self.missing_from_batch_files, 0,
            "registry datasets in no batch file"
        );
        assert!(
            self.registries_equal,
            "the registry differs from a clean single run:\n{}",
            self.comparison
        );
    }
}

/// One row of the scenario table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Figures {
    /// The scenario.
    pub scenario: String,
    /// Delivery mode and broker: `idempotent/nisshi`, `transactional/noida`.
    #[serde(default)]
    pub mode: String,
    /// Datasets with a delivery report.
    pub sent: u64,
    /// Datasets in the registry.
    pub ingested: u64,
    /// Unexpected duplicates: datasets in the registry that should not be (a conflict let
    /// through); always 0 when the scenario passes.
    pub duplicated: u64,
    /// Datasets announced twice to a `read_committed` reader (a batch redone after a kill
    /// between its announcement and its offset commit), which idempotent delivery allows and
    /// downstream tolerates; transactional delivery never announces twice.
    pub reannounced: u64,
    /// Datasets lost.
    pub lost: u64,
    /// Delivered datasets dead-lettered.
    pub dead_lettered: u64,
    /// Seconds from the fault's end to the pipeline being healthy and caught up (the longest, when
    /// there were several faults); `None` for a scenario without a fault.
    pub recovery_seconds: Option<f64>,
    /// Wall-clock seconds of the whole scenario.
    pub seconds: f64,
    /// The registry equals a clean single run.
    pub registry_equal: bool,
    /// Why the scenario did not run in this mode (an assertion the broker cannot meet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

impl Figures {
    /// The row for a reconciled scenario of harness `h`.
    pub fn new(
        h: &Harness,
        r: &Reconciliation,
        recovery_seconds: Option<f64>,
        seconds: f64,
    ) -> Self {
        Self {
            scenario: h.name.clone(),
            mode: format!("{}/{}", h.delivery.name(), h.env.broker_kind().name()),
            sent: r.delivered,
            ingested: r.in_registry,
            duplicated: r.unexpected.len() as u64,
            reannounced: r.repeated_announcements,
            lost: r.lost.len() as u64,
            dead_lettered: r.dead_lettered,
            recovery_seconds,
            seconds,
            registry_equal: r.registries_equal,
            skipped: None,
        }
    }

    /// The row of a scenario that does not run in this mode, and why.
    pub fn skipped(h: &Harness, reason: &str) -> Self {
        Self {
            scenario: h.name.clone(),
            mode: format!("{}/{}", h.delivery.name(), h.env.broker_kind().name()),
            sent: 0,
            ingested: 0,
            duplicated: 0,
            reannounced: 0,
            lost: 0,
            dead_lettered: 0,
            recovery_seconds: None,
            seconds: 0.0,
            registry_equal: false,
            skipped: Some(reason.to_owned()),
        }
    }

    /// Writes the row where [`figures_table`] finds it.
    pub fn save(&self) -> anyhow::Result<()> {
        let dir = figures_dir();
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join(format!(
                "{}.{}.json",
                self.scenario,
                self.mode.replace('/', "-")
            )),
            serde_json::to_vec_pretty(self)?,
        )?;
        Ok(())
    }
}

/// Where scenario rows go: `$SCENARIO_FIGURES_DIR`, or `target/scenario-figures` of the workspace.
pub fn figures_dir() -> PathBuf {
    std::env::var_os("SCENARIO_FIGURES_DIR").map_or_else(
        || test_support::workspace_root().join("target/scenario-figures"),
        PathBuf::from,
    )
}

/// The table of every saved scenario row.
pub fn figures_table() -> anyhow::Result<String> {
    let dir = figures_dir();
    let mut rows: Vec<Figures> = Vec::new();
    if dir.is_dir() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "json") {
                rows.push(serde_json::from_slice(&std::fs::read(&path)?)?);
            }
        }
    }
    rows.sort_by(|a, b| (&a.scenario, &a.mode).cmp(&(&b.scenario, &b.mode)));
    let mut out = format!(
        "{:<34}{:<21}{:>8}{:>9}{:>6}{:>11}{:>6}{:>7}{:>10}{:>8}{:>7}\n",
        "scenario",
        "mode",
        "sent",
        "ingested",
        "dup",
        "reannounce",
        "lost",
        "dead",
        "recover s",
        "total s",
        "equal"
    );
    for r in &rows {
        if let Some(reason) = &r.skipped {
            out.push_str(&format!(
                "{:<34}{:<21}  skipped: {reason}\n",
                r.scenario, r.mode
            ));
            continue;
        }
        out.push_str(&format!(
            "{:<34}{:<21}{:>8}{:>9}{:>6}{:>11}{:>6}{:>7}{:>10}{:>8.1}{:>7}\n",
            r.scenario,
            r.mode,
            r.sent,
            r.ingested,
            r.duplicated,
            r.reannounced,
            r.lost,
            r.dead_lettered,
            r.recovery_seconds
                .map_or_else(|| "-".to_owned(), |s| format!("{s:.1}")),
            r.seconds,
            if r.registry_equal { "yes" } else { "NO" },
        ));
    }
    Ok(out)
}

/// Every dataset id in a registry.
pub async fn registry_datasets(registry: &TestRegistry) -> anyhow::Result<HashSet<Uuid>> {
    let mut conn = PgConnection::connect(&registry.database_url).await?;
    let rows: Vec<(Uuid,)> =
        // The namespace is the test registry's own identifier, not input.
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT id FROM {}.dataset",
            registry.namespace
        )))
            .fetch_all(&mut conn)
            .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// How many batch files list each dataset.
fn batch_file_counts(dir: &Path) -> anyhow::Result<HashMap<Uuid, u32>> {
    let mut counts = HashMap::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "json") {
            let batch = DatasetBatch::from_json(&std::fs::read(&path)?)
                .with_context(|| format!("batch file {}", path.display()))?;
            for id in batch.datasets {
                *counts.entry(id).or_default() += 1;
            }
        }
    }
    Ok(counts)
}

/// The producer's message log: each line with its dataset ids.
fn read_message_log(path: &Path) -> anyhow::Result<Vec<(Vec<Uuid>, Vec<u8>)>> {
    let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    text.split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| {
            let message = schema::PromptProcessingOutputEvent::from_json(line)?;
            let ids = message
                .datasets
                .iter()
                .flat_map(|f| f.refs.keys().copied())
                .collect();
            Ok((ids, line.to_vec()))
        })
        .collect()
}

/// Ingests `messages` into `registry` in batches of 500, in order, with the writer's engine.
async fn clean_run(registry: &TestRegistry, messages: &[&[u8]]) -> anyhow::Result<()> {
    let config = ButlerConfig::from_path(&registry.butler_config)?;
    let engine = Registry::open(&config, &PoolSettings::default()).await?;
    for batch in messages.chunks(500) {
        let outcome = engine.ingest_values(batch).await?;
        ensure!(
            outcome.rejected.is_empty(),
            "the clean run rejected messages: {:?}",
            outcome.rejected
        );
    }
    Ok(())
}

/// daf_butler-side judge of two registries (the parity test's): `(equal, output)`.
async fn compare_registries(a: &TestRegistry, b: &TestRegistry) -> anyhow::Result<(bool, String)> {
    let python = test_support::registry::python()?;
    let script =
        test_support::workspace_root().join("butler-writer/tests/python/compare_registries.py");
    let output = tokio::process::Command::new(python)
        .arg(script)
        .args([&a.database_url, &b.database_url, &a.namespace])
        .args(["--namespace-b", &b.namespace, "--ingest-window", "3600"])
        .output()
        .await
        .context("running compare_registries.py")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    match output.status.code() {
        Some(0) => Ok((true, text)),
        Some(1) => Ok((false, text)),
        _ => bail!("compare_registries.py failed:\n{text}"),
    }
}

/// A free loopback port.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A plain HTTP/1.1 GET on loopback: status and body.
pub async fn http_get(address: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect(address),
    )
    .await??;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut response)).await??;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status")?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}
