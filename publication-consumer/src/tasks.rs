//! The transfer tasks, driven by the state database as the Prompt Publication Service drives
//! them (`lsst-dm/prompt_publication_service` 1.0.x, its `tasks/`): each pass looks up what is
//! eligible, moves it in chunks ([`crate::transfer`]) and records each chunk only once it has
//! landed, so a kill at any point leaves work that the next pass finishes the same way.
//!
//! | task | route | what | chunk | recorded |
//! |---|---|---|---|---|
//! | `records_<element>_prompt_prep` | embargo → prompt_prep | visit, exposure, group records | 5,000 | `<element>.prompt_prep_status` INITIAL |
//! | `unembargo` | embargo → prompt_prep | released datasets, files copied | 100 | `prompt_prep_status` PRESENT, `unembargo_time`; missing: `embargo_status` MISSING |
//! | `records_<element>_repo_main` | prompt_prep → /repo/main | the same records | 5,000 | `<element>.repo_main_status` INITIAL |
//! | `repo_main` | prompt_prep → /repo/main | every dataset, by URI | 20,000 | `repo_main_status` PRESENT; missing: `prompt_prep_status` MISSING |
//! | `records_<element>_google_int` | prompt_prep → Google | the same records | 5,000 | `<element>.google_int_status` INITIAL |
//! | `publish_to_google` | prompt_prep → Google | publish-to-public types, in place, tagged | 10,000 | `google_int_status` PRESENT; missing: `prompt_prep_status` MISSING |
//!
//! A dataset is eligible when its source status is PRESENT, its target status NEVER_PRESENT, and
//! its visit, exposure and group (those it has) are already in the target. Unembargo also needs
//! the release time the policy gave it (`dataset_release.release_at`) to have passed; a dataset
//! PPS recorded (no release of ours) is released by PPS's rule instead: its (origin, type) in the
//! policy, and an embargo of 0 h or its visit's end (`visit.time`) that many hours ago. The
//! Google publication takes only the (origin, type) pairs the policy publishes to the public.
//! Tasks run one after another; a pass that finds nothing waits [`TaskSettings::idle`], and no
//! task runs inside the quiet window.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use butler_repository::{DatabaseError, Doing};
use chrono::{DateTime, NaiveTime, Timelike, Utc};
use schema::RecordValue;
use serde::Serialize;
use service_kit::{CancellationToken, Chain};
use sqlx::{AssertSqlSafe, Row};
use tracing::{info, warn};
use uuid::Uuid;

use crate::clock::Clock;
use crate::policy::Policy;
use crate::store::{Store, dataset_status, record_status};
use crate::transfer::{self, Mode, Repository, TransferError};

/// The TAGGED collection of the Google repository that PPS's set-up makes for what is available.
pub const PUBLISHED_COLLECTION: &str = "Prompt/Available/Outputs";

/// At most this many ids per lookup, as PPS.
const LOOKUP_LIMIT: i64 = 1_000_000;

/// The daily window (UTC) in which no transfer runs: observing, when the repositories' databases
/// belong to Prompt Processing. Deployed PPS is scaled to zero from 21:30 to 12:00.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuietWindow {
    /// Start, UTC.
    pub start: NaiveTime,
    /// End, UTC (before `start`: the window spans midnight).
    pub end: NaiveTime,
}

impl QuietWindow {
    /// Parses `HH:MM-HH:MM` (UTC).
    pub fn parse(text: &str) -> Result<Self, String> {
        let (start, end) = text
            .split_once('-')
            .ok_or_else(|| format!("`{text}` is not HH:MM-HH:MM (UTC)"))?;
        let time = |t: &str| {
            NaiveTime::parse_from_str(t.trim(), "%H:%M")
                .map_err(|_| format!("`{t}` in `{text}` is not a time HH:MM"))
        };
        let window = Self {
            start: time(start)?,
            end: time(end)?,
        };
        if window.start == window.end {
            return Err(format!("`{text}` starts and ends at the same time"));
        }
        Ok(window)
    }

    /// Whether `at` falls in the window.
    pub fn contains(&self, at: DateTime<Utc>) -> bool {
        let t = at.time();
        if self.start < self.end {
            self.start <= t && t < self.end
        } else {
            t >= self.start || t < self.end
        }
    }

    /// How long from `at` (inside the window) until it ends.
    pub fn remaining(&self, at: DateTime<Utc>) -> Duration {
        let now = i64::from(at.time().num_seconds_from_midnight());
        let end = i64::from(self.end.num_seconds_from_midnight());
        let seconds = (end - now).rem_euclid(86_400);
        Duration::from_secs(u64::try_from(seconds).unwrap_or(0))
    }
}

/// How the tasks run.
#[derive(Debug, Clone)]
pub struct TaskSettings {
    /// The wait after a pass that found nothing to do (PPS: 60 s).
    pub idle: Duration,
    /// No task runs in this daily window.
    pub quiet_window: Option<QuietWindow>,
    /// Datasets per unembargo chunk (file copies are slow; PPS: 100).
    pub unembargo_chunk: usize,
    /// Datasets per /repo/main chunk (PPS: 20,000).
    pub repo_main_chunk: usize,
    /// Records per dimension-record chunk (PPS: 5,000).
    pub records_chunk: usize,
    /// Datasets per Google publication chunk (PPS: 10,000).
    pub publish_chunk: usize,
    /// The TAGGED collection of the Google repository that published datasets are tagged into.
    pub tagged_collection: String,
}

impl Default for TaskSettings {
    fn default() -> Self {
        Self {
            idle: Duration::from_secs(60),
            quiet_window: None,
            unembargo_chunk: 100,
            repo_main_chunk: 20_000,
            records_chunk: 5_000,
            publish_chunk: 10_000,
            tagged_collection: PUBLISHED_COLLECTION.to_owned(),
        }
    }
}

/// What one task has done since the service started: the API's per-task progress.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TaskProgress {
    /// The task.
    pub task: String,
    /// Datasets (or records' keys) moved and recorded.
    pub transferred: u64,
    /// Datasets found missing from the source and recorded so.
    pub missing: u64,
    /// Passes that failed (retried on the next pass).
    pub failures: u64,
    /// When it last moved something.
    pub last_transfer: Option<DateTime<Utc>>,
    /// The last failure, until a pass succeeds.
    pub last_error: Option<String>,
}

/// Every task's progress, and the passes over them: what `/api/v1/transfers` serves.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TransferProgress {
    /// Per task.
    pub tasks: Vec<TaskProgress>,
    /// Passes over every task since the service started.
    pub passes: u64,
    /// What the last finished pass moved: 0 once the transfers have caught up with the state.
    pub last_pass_moved: u64,
}

/// Shared view of the transfers' progress.
pub type Progress = Arc<Mutex<TransferProgress>>;

/// The repositories the tasks move between; a task runs only when its target is configured.
#[derive(Debug)]
pub struct Repositories {
    /// The Embargo repository (the writer's).
    pub embargo: Repository,
    /// `prompt_prep`, where released datasets are copied.
    pub prompt_prep: Option<Repository>,
    /// `/repo/main`, where `prompt_prep`'s files are registered in place.
    pub repo_main: Option<Repository>,
    /// The Google `prompt` repository (`google_int`), whose datastore shares `prompt_prep`'s
    /// root and names: the publish-to-public datasets are registered there in place and tagged.
    pub google_int: Option<Repository>,
}

/// Where the repositories of the tasks are: each `butler.yaml` (or its directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepositoryLocations {
    /// The Embargo repository.
    pub embargo: String,
    /// `prompt_prep`.
    pub prompt_prep: String,
    /// `/repo/main`, if its tasks run.
    pub repo_main: Option<String>,
    /// The Google repository, if its tasks run.
    pub google_int: Option<String>,
}

impl Repositories {
    /// Opens every repository `locations` names.
    pub async fn open(
        locations: &RepositoryLocations,
        pool: &butler_repository::PoolSettings,
    ) -> Result<Self, transfer::OpenError> {
        let optional = |label, location: &Option<String>| {
            let location = location.clone();
            async move {
                match location {
                    Some(location) => Repository::open(label, &location, pool).await.map(Some),
                    None => Ok(None),
                }
            }
        };
        Ok(Self {
            embargo: Repository::open("embargo", &locations.embargo, pool).await?,
            prompt_prep: Some(Repository::open("prompt_prep", &locations.prompt_prep, pool).await?),
            repo_main: optional("repo_main", &locations.repo_main).await?,
            google_int: optional("google_int", &locations.google_int).await?,
        })
    }
}

/// The dataset tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DatasetTask {
    /// Released datasets copied out of embargo.
    Unembargo,
    /// Every dataset of prompt_prep registered in /repo/main by URI.
    RepoMain,
    /// The publish-to-public datasets registered in the Google repository in place and tagged.
    Publish,
}

impl DatasetTask {
    fn name(self) -> &'static str {
        match self {
            Self::Unembargo => "unembargo",
            Self::RepoMain => "repo_main",
            Self::Publish => "publish_to_google",
        }
    }
}

/// A state table of dimension records, and its id's type.
#[derive(Debug, Clone, Copy)]
enum RecordTable {
    Visit,
    Exposure,
    Group,
}

impl RecordTable {
    const ALL: [Self; 3] = [Self::Visit, Self::Exposure, Self::Group];

    fn element(self) -> &'static str {
        match self {
            Self::Visit => "visit",
            Self::Exposure => "exposure",
            Self::Group => "group",
        }
    }

    /// The SQL type of its `id` (the ids travel as text and are cast once, as an array, so the
    /// primary key's index still serves the update).
    fn key_type(self) -> &'static str {
        match self {
            Self::Group => "varchar",
            Self::Visit | Self::Exposure => "bigint",
        }
    }

    fn table(self) -> &'static str {
        match self {
            Self::Visit => "visit",
            Self::Exposure => "exposure",
            Self::Group => "\"group\"",
        }
    }
}

/// One route between two repositories and the status columns that track it.
#[derive(Debug, Clone, Copy)]
struct Route<'r> {
    source: &'r Repository,
    target: &'r Repository,
    /// `embargo`, `prompt_prep`...: the `<label>_status` columns.
    source_column: &'static str,
    target_column: &'static str,
}

/// The transfer tasks over their repositories, driven by the state.
#[derive(Debug)]
pub struct Tasks {
    repositories: Repositories,
    store: Store,
    settings: TaskSettings,
    /// The release policy: PPS's unembargo rule for datasets without a release of ours, and
    /// the types published to the public.
    policy: Policy,
    clock: Clock,
    progress: Progress,
}

impl Tasks {
    /// The tasks, booking what they do in `progress`.
    pub fn new(
        repositories: Repositories,
        store: Store,
        settings: TaskSettings,
        policy: Policy,
        clock: Clock,
        progress: Progress,
    ) -> Self {
        Self {
            repositories,
            store,
            settings,
            policy,
            clock,
            progress,
        }
    }

    /// Runs the tasks until `shutdown`: a pass, then the idle wait when it moved nothing;
    /// nothing inside the quiet window.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            if let Some(window) = self.settings.quiet_window {
                let now = self.clock.now();
                if window.contains(now) {
                    let wait = window.remaining(now).max(Duration::from_secs(1));
                    info!(
                        wait_s = wait.as_secs(),
                        "transfers wait for the quiet window to end"
                    );
                    if sleep_or_stop(wait, &shutdown).await {
                        return;
                    }
                    continue;
                }
            }
            let moved = self.pass(&shutdown).await;
            if shutdown.is_cancelled() {
                return;
            }
            self.passed(moved);
            if moved == 0 && sleep_or_stop(self.settings.idle, &shutdown).await {
                return;
            }
        }
    }

    /// Runs every task, pass after pass, until a pass moves nothing (the tasks have caught up
    /// with the state), ignoring the quiet window: the Prompt Publication Service's
    /// `run_tasks`, for an operator. Returns what each task did; a task whose last pass failed
    /// has its error there.
    pub async fn run_until_caught_up(self) -> TransferProgress {
        let never = CancellationToken::new();
        loop {
            let moved = self.pass(&never).await;
            self.passed(moved);
            if moved == 0 {
                break;
            }
        }
        self.progress
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// Sleeps; true when `shutdown` came first.
async fn sleep_or_stop(wait: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => true,
        () = tokio::time::sleep(wait) => false,
    }
}

impl Tasks {
    /// Books a finished pass that moved `moved`.
    fn passed(&self, moved: u64) {
        let mut progress = self
            .progress
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        progress.passes += 1;
        progress.last_pass_moved = moved;
    }

    /// Every task once, in dependency order; returns how much moved.
    async fn pass(&self, shutdown: &CancellationToken) -> u64 {
        let Some(prompt_prep) = &self.repositories.prompt_prep else {
            return 0;
        };
        let unembargo = Route {
            source: &self.repositories.embargo,
            target: prompt_prep,
            source_column: "embargo_status",
            target_column: "prompt_prep_status",
        };
        let mut moved = self
            .route(
                unembargo,
                DatasetTask::Unembargo,
                self.settings.unembargo_chunk,
                shutdown,
            )
            .await;
        // The routes out of prompt_prep, each where its repository is configured.
        let onward = [
            (
                &self.repositories.repo_main,
                "repo_main_status",
                DatasetTask::RepoMain,
                self.settings.repo_main_chunk,
            ),
            (
                &self.repositories.google_int,
                "google_int_status",
                DatasetTask::Publish,
                self.settings.publish_chunk,
            ),
        ];
        for (target, target_column, task, chunk) in onward {
            let Some(target) = target else { continue };
            let route = Route {
                source: prompt_prep,
                target,
                source_column: "prompt_prep_status",
                target_column,
            };
            moved += self.route(route, task, chunk, shutdown).await;
        }
        moved
    }

    /// One route: its dimension records first (the datasets need them), then its datasets.
    async fn route(
        &self,
        route: Route<'_>,
        task: DatasetTask,
        chunk: usize,
        shutdown: &CancellationToken,
    ) -> u64 {
        let mut moved = 0;
        for table in RecordTable::ALL {
            if shutdown.is_cancelled() {
                return moved;
            }
            let name = format!("records_{}_{}", table.element(), route.target.label);
            moved += self
                .task(&name, self.copy_records(route, table, shutdown))
                .await;
        }
        moved
            + self
                .task(task.name(), self.datasets(route, task, chunk, shutdown))
                .await
    }

    /// Runs one task's pass and books its progress; a failure is logged and counted, and the
    /// work stays eligible for the next pass.
    async fn task(
        &self,
        name: &str,
        work: impl Future<Output = Result<(u64, u64), TaskError>>,
    ) -> u64 {
        let result = work.await;
        let mut guard = self
            .progress
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let progress = &mut guard.tasks;
        let index = match progress.iter().position(|p| p.task == name) {
            Some(index) => index,
            None => {
                progress.push(TaskProgress {
                    task: name.to_owned(),
                    ..TaskProgress::default()
                });
                progress.len() - 1
            }
        };
        let entry = &mut progress[index];
        match result {
            Ok((transferred, missing)) => {
                entry.transferred += transferred;
                entry.missing += missing;
                if transferred + missing > 0 {
                    entry.last_transfer = Some(Utc::now());
                    info!(task = name, transferred, missing, "transfer pass done");
                }
                entry.last_error = None;
                transferred + missing
            }
            Err(error) => {
                entry.failures += 1;
                let text = Chain(&error).to_string();
                warn!(task = name, error = %text, "transfer pass failed; it is tried again on the next pass");
                entry.last_error = Some(text);
                0
            }
        }
    }

    /// The dimension-record copy of one element: records whose source status is INITIAL and
    /// target status NEVER_PRESENT, chunk by chunk, each chunk recorded INITIAL in the target
    /// once copied.
    async fn copy_records(
        &self,
        route: Route<'_>,
        table: RecordTable,
        shutdown: &CancellationToken,
    ) -> Result<(u64, u64), TaskError> {
        let doing = "looking up dimension records to copy";
        // PPS's record status columns are nullable, and NULL means never present; spelled as
        // `= 0 OR IS NULL` rather than `coalesce` so that the status indexes serve it.
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT instrument, id::text AS id FROM {t}
             WHERE {s} = $1 AND ({g} = $2 OR {g} IS NULL)
             ORDER BY instrument, id LIMIT $3",
            t = table.table(),
            s = route.source_column,
            g = route.target_column
        )))
        .bind(record_status::INITIAL)
        .bind(record_status::NEVER_PRESENT)
        .bind(LOOKUP_LIMIT)
        .fetch_all(self.store.pool())
        .await
        .doing(doing)?;
        let mut by_instrument: Vec<(String, Vec<String>)> = Vec::new();
        for row in rows {
            let instrument: String = row.try_get("instrument").doing(doing)?;
            let id: String = row.try_get("id").doing(doing)?;
            match by_instrument.last_mut() {
                Some((last, ids)) if *last == instrument => ids.push(id),
                _ => by_instrument.push((instrument, vec![id])),
            }
        }
        let mut moved = 0;
        for (instrument, ids) in by_instrument {
            for chunk in ids.chunks(self.settings.records_chunk.max(1)) {
                if shutdown.is_cancelled() {
                    return Ok((moved, 0));
                }
                let values: Vec<RecordValue> = chunk
                    .iter()
                    .map(|id| match table {
                        RecordTable::Group => RecordValue::String(id.clone()),
                        _ => RecordValue::Int(id.parse().unwrap_or_default()),
                    })
                    .collect();
                transfer::copy_dimension_records(
                    route.source,
                    route.target,
                    table.element(),
                    &instrument,
                    &values,
                )
                .await?;
                sqlx::query(AssertSqlSafe(format!(
                    "UPDATE {t} SET {g} = $1 WHERE instrument = $2 AND id = ANY($3::text[]::{k}[])
                       AND ({g} = $4 OR {g} IS NULL)",
                    t = table.table(),
                    g = route.target_column,
                    k = table.key_type()
                )))
                .bind(record_status::INITIAL)
                .bind(&instrument)
                .bind(chunk)
                .bind(record_status::NEVER_PRESENT)
                .execute(self.store.pool())
                .await
                .doing("recording copied dimension records")?;
                moved += u64::try_from(chunk.len()).unwrap_or(0);
            }
        }
        Ok((moved, 0))
    }

    /// A dataset transfer: eligible datasets chunk by chunk, each chunk's outcome recorded in
    /// one statement once it has landed (target PRESENT; missing: source MISSING).
    async fn datasets(
        &self,
        route: Route<'_>,
        task: DatasetTask,
        chunk_size: usize,
        shutdown: &CancellationToken,
    ) -> Result<(u64, u64), TaskError> {
        // Unembargo waits for the release time the policy gave the dataset when it was
        // recorded, or (recorded by PPS, no release of ours) for PPS's rule: its (origin, type)
        // listed ($4-$6: the policy), and an embargo of 0 h or its visit ended that long ago.
        // The Google publication takes the types published to the public; /repo/main takes
        // what prompt_prep has.
        let (release_join, filter) = match task {
            DatasetTask::Unembargo => (
                "LEFT JOIN dataset_release r ON r.id = d.id
                 LEFT JOIN visit v ON v.id = d.visit AND v.instrument = d.instrument
                 LEFT JOIN unnest($4::smallint[], $5::varchar[], $6::int4[]) AS p (origin, dataset_type, hours)
                   ON p.origin = d.origin AND p.dataset_type = d.dataset_type",
                "AND (r.release_at <= $3
                      OR (r.id IS NULL AND p.hours IS NOT NULL
                          AND (p.hours = 0 OR v.time <= $3 - make_interval(hours => p.hours))))",
            ),
            DatasetTask::Publish => (
                "",
                "AND (d.origin, d.dataset_type) IN (SELECT * FROM unnest($3::smallint[], $4::varchar[]))",
            ),
            DatasetTask::RepoMain => ("", ""),
        };
        let in_target = |table: &str, column: &str| {
            format!(
                "(d.{column} IS NULL OR EXISTS (SELECT 1 FROM {table} x WHERE x.id = d.{column}
                   AND x.instrument = d.instrument AND coalesce(x.{t}, 0) <> {never}))",
                t = route.target_column,
                never = record_status::NEVER_PRESENT
            )
        };
        let sql = format!(
            "SELECT d.id FROM dataset d {release_join}
             WHERE d.{s} = $1 AND d.{t} = $2 {filter}
               AND {visit} AND {exposure} AND {group}
             ORDER BY d.id LIMIT {LOOKUP_LIMIT}",
            s = route.source_column,
            t = route.target_column,
            visit = in_target("visit", "visit"),
            exposure = in_target("exposure", "exposure"),
            group = in_target("\"group\"", "\"group\""),
        );
        let mut query = sqlx::query_scalar::<_, Uuid>(AssertSqlSafe(sql))
            .bind(dataset_status::PRESENT)
            .bind(dataset_status::NEVER_PRESENT);
        let rules = self
            .policy
            .entries()
            .filter(|(_, _, rule)| task == DatasetTask::Unembargo || rule.publish_to_public);
        let mut origins: Vec<i16> = Vec::new();
        let mut types: Vec<&str> = Vec::new();
        let mut hours: Vec<i32> = Vec::new();
        for (origin, name, rule) in rules {
            origins.push(origin.code());
            types.push(name);
            hours.push(i32::try_from(rule.embargo_hours).unwrap_or(i32::MAX));
        }
        match task {
            DatasetTask::Unembargo => {
                query = query
                    .bind(self.clock.now())
                    .bind(origins)
                    .bind(types)
                    .bind(hours);
            }
            DatasetTask::Publish => query = query.bind(origins).bind(types),
            DatasetTask::RepoMain => {}
        }
        let ids = query
            .fetch_all(self.store.pool())
            .await
            .doing("looking up datasets to transfer")?;
        let (mut transferred, mut missing) = (0, 0);
        for chunk in ids.chunks(chunk_size.max(1)) {
            if shutdown.is_cancelled() {
                break;
            }
            let outcome = match task {
                DatasetTask::Unembargo => {
                    transfer::transfer_datasets(route.source, route.target, chunk, Mode::Copy)
                        .await?
                }
                DatasetTask::RepoMain => {
                    transfer::transfer_datasets(route.source, route.target, chunk, Mode::Direct)
                        .await?
                }
                DatasetTask::Publish => {
                    transfer::publish_datasets(
                        route.source,
                        route.target,
                        chunk,
                        &self.settings.tagged_collection,
                    )
                    .await?
                }
            };
            let unembargo = task == DatasetTask::Unembargo;
            let stamp = unembargo.then(Utc::now);
            let stamp_sql = if unembargo {
                ", unembargo_time = $4"
            } else {
                ""
            };
            let mut tx = self
                .store
                .pool()
                .begin()
                .await
                .doing("recording a transfer")?;
            let mut present = sqlx::query(AssertSqlSafe(format!(
                "UPDATE dataset SET {t} = $1{stamp_sql} WHERE id = ANY($2) AND {t} = $3",
                t = route.target_column
            )))
            .bind(dataset_status::PRESENT)
            .bind(&outcome.transferred)
            .bind(dataset_status::NEVER_PRESENT);
            if let Some(stamp) = stamp {
                present = present.bind(stamp);
            }
            present
                .execute(&mut *tx)
                .await
                .doing("recording a transfer")?;
            sqlx::query(AssertSqlSafe(format!(
                "UPDATE dataset SET {s} = $1 WHERE id = ANY($2)",
                s = route.source_column
            )))
            .bind(dataset_status::MISSING)
            .bind(&outcome.missing)
            .execute(&mut *tx)
            .await
            .doing("recording missing datasets")?;
            tx.commit().await.doing("recording a transfer")?;
            transferred += u64::try_from(outcome.transferred.len()).unwrap_or(0);
            missing += u64::try_from(outcome.missing.len()).unwrap_or(0);
        }
        Ok((transferred, missing))
    }
}

/// Why a task's pass failed.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// The state database.
    #[error(transparent)]
    State(#[from] DatabaseError),
    /// A transfer.
    #[error(transparent)]
    Transfer(#[from] TransferError),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(h: u32, m: u32) -> DateTime<Utc> {
        DateTime::from_timestamp(1_777_680_000, 0)
            .unwrap()
            .with_hour(h)
            .unwrap()
            .with_minute(m)
            .unwrap()
    }

    #[test]
    fn the_deployed_quiet_window_spans_midnight() {
        let window = QuietWindow::parse("21:30-12:00").unwrap();
        assert!(window.contains(at(21, 30)));
        assert!(window.contains(at(3, 0)));
        assert!(window.contains(at(11, 59)));
        assert!(!window.contains(at(12, 0)));
        assert!(!window.contains(at(21, 29)));
        assert_eq!(window.remaining(at(11, 0)), Duration::from_secs(3600));
        assert_eq!(window.remaining(at(22, 0)), Duration::from_secs(14 * 3600));
    }

    #[test]
    fn a_window_within_the_day_and_bad_ones() {
        let window = QuietWindow::parse("01:00-02:00").unwrap();
        assert!(window.contains(at(1, 30)));
        assert!(!window.contains(at(2, 30)));
        assert!(QuietWindow::parse("21:30").is_err());
        assert!(QuietWindow::parse("25:00-01:00").is_err());
        assert!(QuietWindow::parse("01:00-01:00").is_err());
    }
}
