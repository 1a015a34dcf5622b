//! `publication-consumer register-batch` and `register-collections`: datasets recorded by an
//! operator as events would have recorded them.
//!
//! `register-batch` records batch files (the Prompt Publication Service's
//! `register_embargo_batch`). It re-drives an event
//! given up on (its batch file appeared after `PUBLICATION_BATCH_FILE_WAIT_SECONDS`, or was
//! restored), and registers batches that were never announced.
//!
//! Each file is read whole, its datasets looked up in the registry and recorded in one
//! transaction through the same code as an event ([`Store::record_batch`]), so it is idempotent:
//! a batch recorded before changes nothing. The failed events of the batch's id are then marked
//! resolved, so that `/api/v1/failed-events` and the counts list only what still needs a hand.
//!
//! `register-collections` backfills whole RUN collections (PPS's `register_embargo_collections`):
//! their datasets, of some dataset types if asked, are counted per type, confirmed, and recorded
//! in chunks of [`COLLECTION_CHUNK`] as batches whose ids derive from their first dataset's, so a
//! second run over unchanged collections records nothing new.

use std::collections::BTreeMap;

use butler_repository::{ButlerConfig, DatabaseError, PoolSettings, RepositoryError};
use chrono::Utc;
use resources::ResourcePath;
use schema::DatasetBatch;
use secrecy::SecretString;
use uuid::Uuid;

use crate::consume::batch_path;
use crate::model;
use crate::policy::{Origin, Policy};
use crate::registry::{CollectionsError, RegistryReader, StartError};
use crate::store::{self, BatchInfo, EventPlace, Store};

/// Where an operator's registrations are recorded as coming from, in place of a topic.
pub const OPERATOR_TOPIC: &str = "(register-batch)";
/// Where a backfill's batches are recorded as coming from.
pub const BACKFILL_TOPIC: &str = "(register-collections)";
/// Datasets per backfill batch.
pub const COLLECTION_CHUNK: usize = 10_000;
/// XORed with a chunk's first dataset id to make its batch id.
const BACKFILL_BATCH_NAMESPACE: u128 = 0x8d3a_61f0_5b2e_4c79_a1d4_0c6e_2f97_b350;

/// What `register-batch` runs with.
#[derive(Debug, Clone)]
pub struct RegisterSettings {
    /// The registry's `butler.yaml` (or its directory), local or `s3://`.
    pub butler_repository: String,
    /// Where relative batch file names are; `None`: relative to the working directory.
    pub batch_directory: Option<String>,
    /// The state database; the registry's database when `None`.
    pub database_url: Option<SecretString>,
    /// The state schema.
    pub schema: String,
    /// The db-auth file and pool size.
    pub database: PoolSettings,
    /// The release policy.
    pub policy: Policy,
    /// The origin the batches are recorded with.
    pub origin: Origin,
}

/// What registering one batch file did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// The file, as given.
    pub batch_file: String,
    /// Its batch id.
    pub batch_id: Uuid,
    /// False when the batch had been recorded before.
    pub new_batch: bool,
    /// Dataset rows added.
    pub datasets: u64,
    /// Unknown ids added.
    pub unknown: u64,
    /// Failed events of this batch marked resolved.
    pub resolved: u64,
}

/// Why registering stopped.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
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
    /// A batch file cannot be read or is not a batch file.
    #[error("batch file {file}: {message}")]
    BatchFile {
        /// The file, as given.
        file: String,
        /// What is wrong.
        message: String,
    },
    /// The collections cannot be listed.
    #[error(transparent)]
    Collections(#[from] CollectionsError),
    /// A database failed.
    #[error(transparent)]
    Database(#[from] DatabaseError),
    /// A repository of the transfer tasks cannot be used.
    #[error(transparent)]
    Transfers(#[from] crate::transfer::OpenError),
}

/// The registry and the state database, opened for an operator's command.
struct Opened {
    registry: RegistryReader,
    store: Store,
}

async fn open(settings: &RegisterSettings) -> Result<Opened, RegisterError> {
    let config = ButlerConfig::load(&settings.butler_repository).await?;
    let registry = RegistryReader::connect(&config, &settings.database)
        .await
        .map_err(|source| RegisterError::Open {
            what: "registry",
            source,
        })?;
    let state_url = store::state_url(&config, settings.database_url.as_ref());
    let store = Store::open(&state_url, &settings.database, &settings.schema)
        .await
        .map_err(|source| RegisterError::Open {
            what: "state database",
            source,
        })?;
    Ok(Opened { registry, store })
}

/// Registers `files` in order; stops at the first that cannot be registered, the ones before
/// it recorded.
pub async fn register_batches(
    settings: &RegisterSettings,
    files: &[String],
) -> Result<Vec<Registered>, RegisterError> {
    let Opened { registry, store } = open(settings).await?;
    let directory = match &settings.batch_directory {
        Some(directory) => ResourcePath::parse(directory),
        None => ResourcePath::parse(
            &std::env::current_dir()
                .map(|d| format!("{}/", d.display()))
                .unwrap_or_else(|_| "./".to_owned()),
        ),
    }
    .map_err(|e| RegisterError::BatchFile {
        file: settings.batch_directory.clone().unwrap_or_default(),
        message: format!("not a usable directory: {e}"),
    })?
    .as_dir();
    let mut out = Vec::with_capacity(files.len());
    for (n, file) in files.iter().enumerate() {
        let bad = |message: String| RegisterError::BatchFile {
            file: file.clone(),
            message,
        };
        let path = batch_path(&directory, file).map_err(|e| bad(e.to_string()))?;
        let bytes = path.read().await.map_err(|e| bad(e.to_string()))?;
        let batch = DatasetBatch::from_json(&bytes).map_err(|e| bad(e.to_string()))?;
        let found = registry.lookup(&batch.datasets).await?;
        let records = model::records(&batch.datasets, &found, &settings.policy, settings.origin);
        let place = EventPlace {
            topic: OPERATOR_TOPIC.to_owned(),
            partition: -1,
            offset: i64::try_from(n).unwrap_or(i64::MAX),
        };
        let info = BatchInfo {
            batch_id: batch.batch_id,
            origin: settings.origin.name(),
            batch_file: file,
            place: &place,
        };
        let now = Utc::now();
        let recorded = store.record_batch(&info, &records, now).await?;
        let resolved = store
            .resolve_failed(
                batch.batch_id,
                &format!(
                    "registered by register-batch from {file}: {} datasets known, {} unknown",
                    records.datasets.len(),
                    records.unknown.len()
                ),
                now,
            )
            .await?;
        out.push(Registered {
            batch_file: file.clone(),
            batch_id: batch.batch_id,
            new_batch: recorded.new_batch,
            datasets: recorded.datasets,
            unknown: recorded.unknown,
            resolved,
        });
    }
    Ok(out)
}

/// What a backfill did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Backfilled {
    /// Datasets found, per dataset type.
    pub found: BTreeMap<String, usize>,
    /// Whether the operator confirmed (or `--yes`).
    pub confirmed: bool,
    /// Batches recorded that had not been before.
    pub new_batches: u64,
    /// Dataset rows added.
    pub datasets: u64,
}

/// Backfills the datasets of RUN collections `runs` (of `dataset_types` only, when any are
/// given): counts them per type, asks `confirm` with the counts, and records them in chunks.
pub async fn register_collections(
    settings: &RegisterSettings,
    runs: &[String],
    dataset_types: &[String],
    confirm: impl FnOnce(&BTreeMap<String, usize>) -> bool,
) -> Result<Backfilled, RegisterError> {
    let Opened { registry, store } = open(settings).await?;
    let datasets = registry.datasets_in_runs(runs, dataset_types).await?;
    let mut out = Backfilled::default();
    for (_, dataset_type) in &datasets {
        *out.found.entry(dataset_type.clone()).or_default() += 1;
    }
    if datasets.is_empty() || !confirm(&out.found) {
        return Ok(out);
    }
    out.confirmed = true;
    let ids: Vec<Uuid> = datasets.into_iter().map(|(id, _)| id).collect();
    let source = format!("collections {}", runs.join(", "));
    for (n, chunk) in ids.chunks(COLLECTION_CHUNK).enumerate() {
        // Derived from the chunk's first dataset: the same collections give the same batches.
        let batch_id = Uuid::from_u128(chunk[0].as_u128() ^ BACKFILL_BATCH_NAMESPACE);
        let found = registry.lookup(chunk).await?;
        let records = model::records(chunk, &found, &settings.policy, settings.origin);
        let place = EventPlace {
            topic: BACKFILL_TOPIC.to_owned(),
            partition: -1,
            offset: i64::try_from(n).unwrap_or(i64::MAX),
        };
        let info = BatchInfo {
            batch_id,
            origin: settings.origin.name(),
            batch_file: &source,
            place: &place,
        };
        let recorded = store.record_batch(&info, &records, Utc::now()).await?;
        out.new_batches += u64::from(recorded.new_batch);
        out.datasets += recorded.datasets;
    }
    Ok(out)
}

/// Runs the transfer tasks until they have caught up (`run-tasks`), on the state and policy of
/// `settings`, between the repositories of `locations`.
pub async fn run_tasks(
    settings: &RegisterSettings,
    locations: &crate::tasks::RepositoryLocations,
    task_settings: crate::tasks::TaskSettings,
) -> Result<crate::tasks::TransferProgress, RegisterError> {
    let store = open_store(settings).await?;
    let repositories = crate::tasks::Repositories::open(locations, &settings.database).await?;
    let tasks = crate::tasks::Tasks::new(
        repositories,
        store,
        task_settings,
        settings.policy.clone(),
        crate::Clock::system(),
        crate::tasks::Progress::default(),
    );
    Ok(tasks.run_until_caught_up().await)
}

/// The state database alone, for the commands that read or resolve failed events.
async fn open_store(settings: &RegisterSettings) -> Result<Store, RegisterError> {
    let config = ButlerConfig::load(&settings.butler_repository).await?;
    let state_url = store::state_url(&config, settings.database_url.as_ref());
    Store::open(&state_url, &settings.database, &settings.schema)
        .await
        .map_err(|source| RegisterError::Open {
            what: "state database",
            source,
        })
}

/// The failed events, oldest first: the unresolved ones, or all with `resolved`.
pub async fn failed_events(
    settings: &RegisterSettings,
    resolved: bool,
) -> Result<Vec<serde_json::Value>, RegisterError> {
    let store = open_store(settings).await?;
    Ok(store.failed_events_with(i64::MAX, resolved).await?)
}

/// Marks the failed event at `place` resolved without recording anything: an operator's
/// explicit decision to leave it (its batch will never come, it was a test, ...). False when
/// there is no unresolved failed event there.
pub async fn resolve_failed(
    settings: &RegisterSettings,
    place: &EventPlace,
    resolution: &str,
) -> Result<bool, RegisterError> {
    let store = open_store(settings).await?;
    Ok(store
        .resolve_failed_at(
            place,
            &format!("skipped by an operator: {resolution}"),
            Utc::now(),
        )
        .await?)
}
