//! The registry engine: one batch of `pp-output` messages in, the Embargo Butler's registry as
//! daf_butler would leave it out, and a [`BatchOutcome`] saying which datasets landed and which
//! messages were turned away.
//!
//! What the deployed writer does with two daf_butler calls per batch
//! (`insertDimensionData(skip_existing=True)` per element, then `butler.ingest(transfer=None,
//! skip_existing=True, record_validation_info=False)`), done here with a handful of set-based
//! statements, in this order:
//!
//! 1. **Prepare** every message without the database: decode, check each dimension record against
//!    the universe, compute region overlaps, resolve dataset types (re-reading them when a name is
//!    new). A message that fails is rejected; the others go on.
//! 2. **Dimension records**, one transaction: de-duplicated, in dependency order, `ON CONFLICT DO
//!    NOTHING`. If the database refuses a row (a unique `obs_id` taken by another exposure), the
//!    records are inserted again message by message under savepoints, and only the messages the
//!    database refuses are rejected.
//! 3. **Datasets**, one transaction: daf_butler's three conflict checks and a check that every
//!    data ID's dimension records exist, over the whole batch at once; conflicts between messages
//!    of the batch (the first copy wins); the RUN created on first use (in name order, as
//!    daf_butler sorts them against deadlocks); `dataset`, collection summaries, tags rows,
//!    `dataset_location` and the datastore records.
//!
//! Dimension records of a message whose datasets conflict stay committed, as in daf_butler, where
//! they are committed before `ingest` runs.

pub mod datasets;
pub mod dimensions;
pub mod model;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use schema::htm::HtmPixelization;
use schema::{DecodeError, PromptProcessingOutputEvent};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection, PgConnection, Row};
use tracing::{debug, info, warn};
use uuid::Uuid;

use self::datasets::{PreparedDataset, RunState};
use self::dimensions::PreparedRecord;
use self::model::{DatasetType, Tables, ident};
use crate::db_auth;
use crate::error::{EngineError, ErrorClass, classify, describe, sqlstate};
use crate::outcome::{BatchOutcome, RejectReason, Rejection};
use crate::repository::{ButlerConfig, DatastoreConfig};
use crate::universe::{Universe, UniverseError};

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The registry is not one this writer can serve (versions, universe, missing tables), or the
    /// configuration is unusable. Retrying cannot help.
    #[error("{0}")]
    Unsupported(String),
    /// The database refused or could not be reached.
    #[error("cannot open the registry database: {message}")]
    Database {
        /// What to do about it.
        class: ErrorClass,
        /// One line, without credentials.
        message: String,
    },
}

impl StartupError {
    /// Whether waiting and trying again may help (the database is down), or not.
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Unsupported(_) => ErrorClass::Stop,
            Self::Database { class, .. } => *class,
        }
    }

    fn database(error: &sqlx::Error) -> Self {
        let class = match classify(error) {
            ErrorClass::Reject => ErrorClass::Stop,
            other => other,
        };
        Self::Database {
            class,
            message: describe(error),
        }
    }
}

impl From<UniverseError> for StartupError {
    fn from(error: UniverseError) -> Self {
        Self::Unsupported(error.to_string())
    }
}

impl From<EngineError> for StartupError {
    fn from(error: EngineError) -> Self {
        match error {
            EngineError::Retry(e) => Self::database(&e),
            EngineError::Stop(message) => Self::Unsupported(message),
        }
    }
}

/// How to connect.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// The db-auth file to look credentials up in (`$LSST_DB_AUTH` or `~/.lsst/db-auth.yaml` by
    /// default).
    pub auth_file: Option<PathBuf>,
    /// Connections in the pool. One batch uses one connection at a time; a second lets health
    /// checks and a concurrent batch proceed.
    pub max_connections: u32,
    /// How long to wait for a connection before calling the database unavailable.
    pub acquire_timeout: Duration,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self {
            auth_file: db_auth::default_auth_file(),
            max_connections: 4,
            acquire_timeout: Duration::from_secs(10),
        }
    }
}

/// What the registry holds that the engine reads again when it changes.
#[derive(Debug, Default)]
struct Catalog {
    tables: Arc<Tables>,
    dataset_types: HashMap<String, DatasetType>,
}

/// A registry the writer ingests into: its database, its layout, and caches.
#[derive(Debug)]
pub struct Registry {
    pool: PgPool,
    namespace: String,
    universe: Universe,
    htm: HtmPixelization,
    datastores: Vec<DatastoreConfig>,
    catalog: RwLock<Catalog>,
    statistics: std::sync::Mutex<HashMap<String, TableGrowth>>,
}

/// Rows this writer added to a tags table since the planner's statistics of it were last
/// refreshed, against the row count those statistics assume.
#[derive(Debug, Default, Clone, Copy)]
struct TableGrowth {
    written: u64,
    /// `pg_class.reltuples` after this writer's last `ANALYZE` of it; `None` before the first.
    estimated: Option<f64>,
}

/// A tags table is analyzed once this writer has added this many rows to it, and more rows than
/// the table held at its last analysis (the first time: always).
const ANALYZE_AFTER_ROWS: u64 = 1000;

/// Tables every supported registry has and the engine writes or reads.
const REQUIRED_TABLES: &[&str] = &[
    "butler_attributes",
    "collection",
    "run",
    "dataset",
    "dataset_type",
    "dimension_graph_definition",
    "collection_summary_dataset_type",
    "dataset_location",
];

impl Registry {
    /// Connects, reads the repository's layout and refuses what it does not support, with one
    /// line naming what was found and what is supported.
    pub async fn open(config: &ButlerConfig, options: &OpenOptions) -> Result<Self, StartupError> {
        let connect = db_auth::connect_options(&config.registry_db, options.auth_file.as_deref())
            .map_err(|e| StartupError::Unsupported(e.to_string()))?;
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect)
            .await
            .map_err(|e| StartupError::database(&e))?;
        let mut conn = pool
            .acquire()
            .await
            .map_err(|e| StartupError::database(&e))?;

        let namespace = match &config.namespace {
            Some(ns) => ns.clone(),
            None => sqlx::query_scalar("SELECT current_schema()")
                .fetch_one(&mut *conn)
                .await
                .map_err(|e| StartupError::database(&e))?,
        };
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
                .bind(&namespace)
                .fetch_one(&mut *conn)
                .await
                .map_err(|e| StartupError::database(&e))?;
        if !exists {
            return Err(StartupError::Unsupported(format!(
                "the registry namespace (schema) `{namespace}` named by {} does not exist in {}",
                config.location,
                db_auth::redact(&config.registry_db)
            )));
        }
        let tables = Tables::load(&mut conn, &namespace).await?;
        for table in REQUIRED_TABLES {
            if tables.get(table).is_none() {
                return Err(StartupError::Unsupported(format!(
                    "the registry in schema `{namespace}` has no `{table}` table: is {} a daf_butler repository made by `butler create`?",
                    config.location
                )));
            }
        }
        for datastore in &config.datastores {
            if tables.get(&datastore.records_table).is_none() {
                return Err(StartupError::Unsupported(format!(
                    "the datastore records table `{}` does not exist in schema `{namespace}`: daf_butler creates it the first time a writeable Butler opens the repository",
                    datastore.records_table
                )));
            }
        }

        let attributes: HashMap<String, String> = sqlx::query(AssertSqlSafe(format!(
            "SELECT name, value FROM {}.butler_attributes",
            ident(&namespace)
        )))
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| StartupError::database(&e))?
        .into_iter()
        .map(|row| Ok((row.try_get("name")?, row.try_get("value")?)))
        .collect::<Result<_, sqlx::Error>>()
        .map_err(|e| StartupError::database(&e))?;
        model::check_managers(&attributes).map_err(StartupError::Unsupported)?;
        let universe_json = attributes.get("config:dimensions.json").ok_or_else(|| {
            StartupError::Unsupported(
                "butler_attributes has no `config:dimensions.json` (the dimension universe)".into(),
            )
        })?;
        let universe = Universe::from_json(universe_json)?;
        let htm = HtmPixelization::new(universe.common_htm_level).map_err(|e| {
            StartupError::Unsupported(format!("common skypix of the universe: {e}"))
        })?;

        let sequence: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relname = 'collection_seq_collection_id' AND c.relkind = 'S')",
        )
        .bind(&namespace)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| StartupError::database(&e))?;
        if !sequence {
            return Err(StartupError::Unsupported(format!(
                "schema `{namespace}` has no `collection_seq_collection_id` sequence, which the SynthIntKey collection manager uses"
            )));
        }

        let registry = Self {
            pool: pool.clone(),
            namespace,
            universe,
            htm,
            datastores: config.datastores.clone(),
            catalog: RwLock::new(Catalog {
                tables: Arc::new(tables),
                dataset_types: HashMap::new(),
            }),
            statistics: std::sync::Mutex::new(HashMap::new()),
        };
        registry.refresh_dataset_types(&mut conn, None).await?;
        let types = registry.read_catalog().dataset_types.len();
        info!(
            namespace = %registry.namespace,
            universe = registry.universe.version,
            dataset_types = types,
            datastores = registry.datastores.len(),
            "registry opened"
        );
        Ok(registry)
    }

    /// The repository's dimension universe.
    pub fn universe(&self) -> &Universe {
        &self.universe
    }

    /// The Postgres schema of the registry.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The connection pool (for health checks).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    fn read_catalog(&self) -> std::sync::RwLockReadGuard<'_, Catalog> {
        // A panic while holding the lock cannot leave the catalog half-written (every write
        // replaces whole values), so a poisoned lock is still safe to read.
        self.catalog
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write_catalog(&self) -> std::sync::RwLockWriteGuard<'_, Catalog> {
        self.catalog
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Reads dataset types (all, or the named ones) into the cache; reads the tables again when a
    /// type uses a tags table not seen before.
    async fn refresh_dataset_types(
        &self,
        conn: &mut PgConnection,
        names: Option<&[String]>,
    ) -> Result<(), EngineError> {
        let rows = model::load_dataset_types(conn, &self.namespace, names).await?;
        if rows.is_empty() {
            return Ok(());
        }
        let groups = model::load_dimension_groups(conn, &self.namespace).await?;
        let need_tables = {
            let catalog = self.read_catalog();
            rows.iter().any(|(_, _, _, tags, _)| {
                tags.as_ref()
                    .is_some_and(|t| catalog.tables.get(t).is_none())
            })
        };
        if need_tables {
            let tables = Tables::load(conn, &self.namespace).await?;
            self.write_catalog().tables = Arc::new(tables);
        }
        let mut catalog = self.write_catalog();
        for (id, name, storage_class, tags, key) in rows {
            // Calibration-only or incomplete types have no tags table for RUN datasets.
            let Some(tags_table) = tags else { continue };
            let Some(table) = catalog.tables.get(&tags_table) else {
                continue;
            };
            let declared: HashSet<&str> = groups
                .get(&key)
                .map(|g| g.iter().map(String::as_str).collect())
                .unwrap_or_default();
            // The tags table's dimension columns, in table order, are the type's required
            // dimensions (`dimension_graph_definition` names the same set).
            let dimensions: Vec<String> = table
                .columns
                .iter()
                .map(|c| c.name.clone())
                .filter(|c| {
                    !matches!(
                        c.as_str(),
                        "dataset_type_id" | "dataset_id" | "collection_id"
                    )
                })
                .collect();
            if !declared.is_empty() && dimensions.iter().any(|d| !declared.contains(d.as_str())) {
                warn!(dataset_type = %name, tags_table = %tags_table, "tags table columns differ from dimension_graph_definition");
            }
            catalog.dataset_types.insert(
                name.clone(),
                DatasetType {
                    id,
                    name,
                    storage_class,
                    tags_table,
                    dimensions,
                },
            );
        }
        Ok(())
    }

    /// Decodes raw Kafka values and ingests them as one batch; values that do not decode are
    /// rejected (as `other_message_type` or `invalid`) and the rest go on.
    pub async fn ingest_values(&self, values: &[&[u8]]) -> Result<BatchOutcome, EngineError> {
        let mut events = Vec::with_capacity(values.len());
        let mut decode_rejections = Vec::new();
        for (index, value) in values.iter().enumerate() {
            match PromptProcessingOutputEvent::from_json(value) {
                Ok(event) => events.push((index, event)),
                Err(error) => decode_rejections.push(Rejection {
                    index,
                    reason: decode_reason(&error),
                    error: error.to_string(),
                }),
            }
        }
        let mut outcome = self.ingest_indexed(&events).await?;
        outcome.rejected.extend(decode_rejections);
        outcome.rejected.sort_by_key(|r| r.index);
        Ok(outcome)
    }

    /// Ingests decoded messages as one batch; rejections refer to positions in `events`.
    pub async fn ingest(
        &self,
        events: &[PromptProcessingOutputEvent],
    ) -> Result<BatchOutcome, EngineError> {
        let indexed: Vec<(usize, PromptProcessingOutputEvent)> =
            events.iter().cloned().enumerate().collect();
        self.ingest_indexed(&indexed).await
    }

    async fn ingest_indexed(
        &self,
        events: &[(usize, PromptProcessingOutputEvent)],
    ) -> Result<BatchOutcome, EngineError> {
        let started = std::time::Instant::now();
        let mut conn = self.pool.acquire().await?;
        let mut rejected: HashMap<usize, Rejection> = HashMap::new();

        // 1. Prepare, resolving dataset types first (one query for any name not in the cache).
        let names: BTreeSet<String> = events
            .iter()
            .flat_map(|(_, e)| {
                e.dataset_refs()
                    .map(|(_, r, _)| r.dataset_type_name.clone())
            })
            .collect();
        let missing: Vec<String> = {
            let catalog = self.read_catalog();
            names
                .into_iter()
                .filter(|n| !catalog.dataset_types.contains_key(n))
                .collect()
        };
        if !missing.is_empty() {
            debug!(?missing, "dataset types not in the cache; reading them");
            self.refresh_dataset_types(&mut conn, Some(&missing))
                .await?;
        }
        let mut prepared: Vec<(usize, Vec<PreparedRecord>, Vec<PreparedDataset>)> =
            Vec::with_capacity(events.len());
        {
            let catalog = self.read_catalog();
            for (index, event) in events {
                let records: Result<Vec<PreparedRecord>, _> = event
                    .dimension_records
                    .iter()
                    .map(|r| dimensions::prepare(&self.universe, &catalog.tables, &self.htm, r))
                    .collect();
                let result = records.and_then(|records| {
                    datasets::prepare(event, &catalog.dataset_types, &catalog.tables)
                        .map(|datasets| (records, datasets))
                });
                match result {
                    Ok((records, datasets)) => prepared.push((*index, records, datasets)),
                    Err((reason, error)) => reject(&mut rejected, *index, reason, error),
                }
            }
        }

        // 2. Dimension records.
        let ns = ident(&self.namespace);
        let missing_governors = {
            let tables = Arc::clone(&self.read_catalog().tables);
            dimensions::missing_governors(
                &mut conn,
                &self.namespace,
                &tables,
                prepared.iter().flat_map(|(_, r, _)| r),
            )
            .await?
        };
        if !missing_governors.is_empty() {
            for (index, records, _) in &prepared {
                if let Some(record) = records
                    .iter()
                    .find(|r| r.governor && missing_governors.contains(&r.key))
                {
                    reject(
                        &mut rejected,
                        *index,
                        RejectReason::Unsupported,
                        format!(
                            "`{}` record {} is not in the registry, and the writer does not create governor dimensions: register it first",
                            record.element,
                            record
                                .row
                                .values()
                                .next()
                                .map(ToString::to_string)
                                .unwrap_or_default()
                        ),
                    );
                }
            }
            prepared.retain(|(index, _, _)| !rejected.contains_key(index));
        }
        let dims_started = std::time::Instant::now();
        self.insert_dimensions(&mut conn, &prepared, &mut rejected)
            .await?;
        prepared.retain(|(index, _, _)| !rejected.contains_key(index));
        let dims_elapsed = dims_started.elapsed();

        // 3. Datasets; a unique violation here means another writer won a race between our checks
        // and our inserts: the checks are run again against what it wrote.
        let datasets_started = std::time::Instant::now();
        let mut attempt = 0;
        let (ingested, already_present) = loop {
            attempt += 1;
            let mut round_rejected = rejected.clone();
            match self
                .ingest_datasets(&mut conn, &ns, &prepared, &mut round_rejected)
                .await
            {
                Ok(result) => {
                    rejected = round_rejected;
                    break result;
                }
                Err(error) if attempt < 3 && sqlstate(&error).as_deref() == Some("23505") => {
                    warn!(attempt, error = %describe(&error), "a concurrent writer changed the rows this batch checked; checking again");
                }
                Err(error) => return Err(EngineError::from(error)),
            }
        };

        let ingested_ids: HashSet<Uuid> = ingested.iter().copied().collect();
        let mut written: HashMap<&str, u64> = HashMap::new();
        for dataset in prepared.iter().flat_map(|(_, _, d)| d) {
            if ingested_ids.contains(&dataset.id) {
                *written
                    .entry(dataset.dataset_type.tags_table.as_str())
                    .or_default() += 1;
            }
        }
        self.refresh_statistics(&mut conn, &ns, written).await;

        let mut rejected: Vec<Rejection> = rejected.into_values().collect();
        rejected.sort_by_key(|r| r.index);
        info!(
            messages = events.len(),
            ingested = ingested.len(),
            already_present = already_present.len(),
            rejected = rejected.len(),
            dimensions_ms = dims_elapsed.as_millis(),
            datasets_ms = datasets_started.elapsed().as_millis(),
            elapsed_ms = started.elapsed().as_millis(),
            "batch ingested"
        );
        Ok(BatchOutcome {
            ingested,
            already_present,
            rejected,
        })
    }

    /// Step 2: every message's records in one transaction; if the database refuses one, again
    /// message by message under savepoints, rejecting only the messages it refuses.
    async fn insert_dimensions(
        &self,
        conn: &mut PgConnection,
        prepared: &[(usize, Vec<PreparedRecord>, Vec<PreparedDataset>)],
        rejected: &mut HashMap<usize, Rejection>,
    ) -> Result<(), EngineError> {
        let all: Vec<&PreparedRecord> = prepared.iter().flat_map(|(_, r, _)| r).collect();
        if all.is_empty() {
            return Ok(());
        }
        let tables = Arc::clone(&self.read_catalog().tables);
        let mut tx = conn.begin().await?;
        match dimensions::insert(&mut tx, &self.namespace, &self.universe, &tables, &all).await {
            Ok(()) => {
                tx.commit().await?;
                return Ok(());
            }
            Err(error) if classify(&error) == ErrorClass::Reject => {
                tx.rollback().await?;
                warn!(error = %describe(&error), "the database refused a dimension record; inserting message by message to find it");
            }
            Err(error) => return Err(EngineError::from(error)),
        }
        let mut tx = conn.begin().await?;
        for (index, records, _) in prepared {
            let refs: Vec<&PreparedRecord> = records.iter().collect();
            let mut savepoint = (*tx).begin().await?;
            match dimensions::insert(
                &mut savepoint,
                &self.namespace,
                &self.universe,
                &tables,
                &refs,
            )
            .await
            {
                Ok(()) => savepoint.commit().await?,
                Err(error) if classify(&error) == ErrorClass::Reject => {
                    savepoint.rollback().await?;
                    reject(
                        rejected,
                        *index,
                        RejectReason::Invalid,
                        format!(
                            "the registry refused a dimension record: {}",
                            describe(&error)
                        ),
                    );
                }
                Err(error) => return Err(EngineError::from(error)),
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Step 3, in one transaction. Returns (ingested, already present).
    async fn ingest_datasets(
        &self,
        conn: &mut PgConnection,
        ns: &str,
        prepared: &[(usize, Vec<PreparedRecord>, Vec<PreparedDataset>)],
        rejected: &mut HashMap<usize, Rejection>,
    ) -> Result<(Vec<Uuid>, Vec<Uuid>), sqlx::Error> {
        let live = |rejected: &HashMap<usize, Rejection>| -> Vec<(usize, &PreparedDataset)> {
            prepared
                .iter()
                .filter(|(index, _, _)| !rejected.contains_key(index))
                .flat_map(|(index, _, datasets)| datasets.iter().map(move |d| (*index, d)))
                .collect()
        };
        let candidates = live(rejected);
        if candidates.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let tables = Arc::clone(&self.read_catalog().tables);
        let mut tx = conn.begin().await?;

        // RUNs, by name.
        let run_names: Vec<String> = candidates
            .iter()
            .map(|(_, d)| d.run.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut runs = datasets::lookup_runs(&mut tx, ns, &run_names).await?;
        for (index, dataset) in &candidates {
            if runs.get(&dataset.run) == Some(&RunState::NotARun) {
                reject(
                    rejected,
                    *index,
                    RejectReason::Conflict,
                    format!(
                        "collection `{}` exists and is not a RUN collection",
                        dataset.run
                    ),
                );
            }
        }

        // daf_butler's conflict checks against the registry, per tags table.
        // The same dataset may be in several messages (a redelivery inside the batch): a fault of
        // the dataset is a fault of each.
        let mut by_id: HashMap<Uuid, Vec<usize>> = HashMap::new();
        for (index, dataset) in &candidates {
            by_id.entry(dataset.id).or_default().push(*index);
        }
        for (table_name, group) in group_by_table(&live(rejected)) {
            let Some(table) = tables.get(&table_name) else {
                continue;
            };
            let dimensions = &group[0].1.dataset_type.dimensions;
            let rows: Vec<&PreparedDataset> = group.iter().map(|(_, d)| *d).collect();
            for conflict in
                datasets::find_conflicts(&mut tx, ns, table, dimensions, &rows, &runs).await?
            {
                for index in by_id.get(&conflict.id).into_iter().flatten() {
                    reject(
                        rejected,
                        *index,
                        RejectReason::Conflict,
                        conflict.reason.clone(),
                    );
                }
            }
        }

        // Conflicts between messages of this batch: the first copy wins. The same dataset in two
        // messages (a redelivery inside one batch) is not a conflict.
        let mut seen_ids: HashMap<Uuid, (usize, (i64, String, String))> = HashMap::new();
        let mut seen_identities: HashMap<(i64, String, String), (usize, Uuid)> = HashMap::new();
        let still_in: HashSet<usize> = prepared
            .iter()
            .map(|(i, _, _)| *i)
            .filter(|i| !rejected.contains_key(i))
            .collect();
        for (index, _, datasets) in prepared
            .iter()
            .filter(|(index, _, _)| still_in.contains(index))
        {
            let mut problem = None;
            for dataset in datasets {
                let (type_id, run, data_id) = dataset.identity();
                let identity = (type_id, run.to_owned(), data_id);
                if let Some((other, seen)) = seen_ids.get(&dataset.id)
                    && *seen != identity
                {
                    problem = Some(format!(
                        "dataset {} has another type, RUN or data ID in message {other} of this batch",
                        dataset.id
                    ));
                    break;
                }
                if let Some((other, other_id)) = seen_identities.get(&identity)
                    && *other_id != dataset.id
                {
                    problem = Some(format!(
                        "ingest conflict: dataset {} has the same {} data ID in {} as dataset {other_id} of message {other} in this batch",
                        dataset.id, dataset.dataset_type.name, dataset.run
                    ));
                    break;
                }
            }
            match problem {
                Some(text) => reject(rejected, *index, RejectReason::Conflict, text),
                None => {
                    for dataset in datasets {
                        let (type_id, run, data_id) = dataset.identity();
                        let identity = (type_id, run.to_owned(), data_id);
                        seen_ids
                            .entry(dataset.id)
                            .or_insert((*index, identity.clone()));
                        seen_identities
                            .entry(identity)
                            .or_insert((*index, dataset.id));
                    }
                }
            }
        }

        // Data IDs must name dimension records the registry has (the tags tables' foreign keys).
        for (table_name, group) in group_by_table(&live(rejected)) {
            let Some(table) = tables.get(&table_name) else {
                continue;
            };
            let dimensions = &group[0].1.dataset_type.dimensions;
            let rows: Vec<&PreparedDataset> = group.iter().map(|(_, d)| *d).collect();
            for (id, dimension) in datasets::find_missing_dimensions(
                &mut tx,
                ns,
                &self.universe,
                table,
                dimensions,
                &rows,
            )
            .await?
            {
                for index in by_id.get(&id).into_iter().flatten() {
                    reject(
                        rejected,
                        *index,
                        RejectReason::Invalid,
                        format!(
                            "dataset {id}: its data ID names a `{dimension}` that is not in the registry"
                        ),
                    );
                }
            }
        }

        let survivors = live(rejected);
        // A dataset in two messages is written once.
        let mut unique: Vec<(usize, &PreparedDataset)> = Vec::with_capacity(survivors.len());
        let mut written: HashSet<Uuid> = HashSet::new();
        for (index, dataset) in survivors {
            if written.insert(dataset.id) {
                unique.push((index, dataset));
            }
        }
        if unique.is_empty() {
            tx.commit().await?;
            return Ok((Vec::new(), Vec::new()));
        }

        // Create the RUNs the surviving datasets need, in name order.
        let needed: BTreeSet<&str> = unique.iter().map(|(_, d)| d.run.as_str()).collect();
        for run in needed {
            if runs.get(run) == Some(&RunState::New) {
                let id = datasets::create_run(&mut tx, ns, run).await?;
                info!(run, collection_id = id, "RUN collection created");
                runs.insert(run.to_owned(), RunState::Exists(id));
            }
        }

        // daf_butler stamps `ingest_date` once per (dimension group, RUN): TAI ns at microsecond
        // resolution.
        let mut new_ids = Vec::new();
        for (table_name, group) in group_by_table(&unique) {
            let Some(table) = tables.get(&table_name) else {
                continue;
            };
            let dimensions = group[0].1.dataset_type.dimensions.clone();
            let rows: Vec<&PreparedDataset> = group.iter().map(|(_, d)| *d).collect();
            let ingest_dates: HashMap<String, i64> =
                rows.iter().map(|d| (d.run.clone(), tai_now_ns())).collect();
            let mut inserted = datasets::insert_registry_rows(
                &mut tx,
                ns,
                &self.universe,
                &tables,
                table,
                &dimensions,
                &rows,
                &runs,
                &ingest_dates,
            )
            .await?;
            new_ids.append(&mut inserted);
        }

        // Datastore rows for files no datastore knows yet (a file with any known dataset is
        // skipped whole, as `_partition_datasets_by_known` does).
        let ids: Vec<Uuid> = unique.iter().map(|(_, d)| d.id).collect();
        let known = datasets::known_to_datastores(&mut tx, ns, &self.datastores, &ids).await?;
        let mut known_files: HashSet<(usize, usize)> = HashSet::new();
        for (index, dataset) in &unique {
            if known.contains(&dataset.id) {
                known_files.insert((*index, dataset.file));
            }
        }
        let to_record: Vec<&PreparedDataset> = unique
            .iter()
            .filter(|(index, d)| !known_files.contains(&(*index, d.file)))
            .map(|(_, d)| *d)
            .collect();
        datasets::insert_datastore_rows(&mut tx, ns, &self.datastores, &to_record).await?;
        tx.commit().await?;

        let new: HashSet<Uuid> = new_ids.iter().copied().collect();
        let already_present: Vec<Uuid> =
            ids.iter().filter(|id| !new.contains(id)).copied().collect();
        Ok((new_ids, already_present))
    }
}

impl Registry {
    /// Keeps the planner's statistics of the tags tables this writer fills up to date enough.
    ///
    /// The conflict checks join a batch against its tags table, and need the unique
    /// (type, run, data ID) index. On a table whose statistics are missing or far too small (a
    /// new registry, a new dataset type: autovacuum analyzes only after its next nap) PostgreSQL
    /// picks a two-column foreign-key index instead and scans every row of the run per dataset:
    /// measured 535 ms instead of 20 ms for 3,000 datasets against 20,000 rows, growing with the
    /// table. `ANALYZE` only updates statistics; a role that does not own the table gets a
    /// warning and nothing happens, so failures are logged and ignored.
    async fn refresh_statistics(
        &self,
        conn: &mut PgConnection,
        ns: &str,
        written: HashMap<&str, u64>,
    ) {
        for (table, rows) in written {
            let due = {
                let Ok(mut stats) = self.statistics.lock() else {
                    return;
                };
                let growth = stats.entry(table.to_owned()).or_default();
                growth.written += rows;
                #[allow(clippy::cast_precision_loss)]
                let outgrown = growth.estimated.is_none_or(|e| growth.written as f64 > e);
                growth.written >= ANALYZE_AFTER_ROWS && outgrown
            };
            if !due {
                continue;
            }
            // The first time, a table with good statistics (a long-lived registry) is analyzed
            // once and then left to autovacuum, its estimate being far above what we add.
            let qualified = format!("{ns}.{}", ident(table));
            let started = std::time::Instant::now();
            let analyzed = sqlx::query(AssertSqlSafe(format!("ANALYZE {qualified}")))
                .execute(&mut *conn)
                .await;
            let estimated = match analyzed {
                Ok(_) => sqlx::query_scalar::<_, f32>(AssertSqlSafe(format!(
                    "SELECT reltuples FROM pg_class WHERE oid = '{qualified}'::regclass"
                )))
                .fetch_optional(&mut *conn)
                .await
                .ok()
                .flatten()
                .map(f64::from),
                Err(error) => {
                    warn!(table = %qualified, error = %describe(&error), "cannot refresh the planner's statistics");
                    None
                }
            };
            debug!(table = %qualified, rows = ?estimated, elapsed_ms = started.elapsed().as_millis(), "refreshed the planner's statistics");
            if let Ok(mut stats) = self.statistics.lock()
                && let Some(growth) = stats.get_mut(table)
            {
                // At least what we wrote: when ANALYZE changed nothing (not the owner, or it
                // failed), the next try waits for twice as many rows, and so on.
                #[allow(clippy::cast_precision_loss)]
                let written = growth.written as f64;
                growth.estimated = Some(estimated.unwrap_or(0.0).max(written));
                growth.written = 0;
            }
        }
    }
}

/// Records that message `index` is rejected; the first reason found for a message is kept.
fn reject(
    rejected: &mut HashMap<usize, Rejection>,
    index: usize,
    reason: RejectReason,
    error: String,
) {
    rejected.entry(index).or_insert(Rejection {
        index,
        reason,
        error,
    });
}

/// Datasets grouped by tags table, in a stable order.
fn group_by_table<'a>(
    datasets: &[(usize, &'a PreparedDataset)],
) -> Vec<(String, Vec<(usize, &'a PreparedDataset)>)> {
    let mut groups: Vec<(String, Vec<(usize, &PreparedDataset)>)> = Vec::new();
    for (index, dataset) in datasets {
        match groups
            .iter_mut()
            .find(|(t, _)| *t == dataset.dataset_type.tags_table)
        {
            Some((_, group)) => group.push((*index, dataset)),
            None => groups.push((
                dataset.dataset_type.tags_table.clone(),
                vec![(*index, dataset)],
            )),
        }
    }
    groups.sort_by(|a, b| a.0.cmp(&b.0));
    groups
}

/// Now, as daf_butler stamps `ingest_date`: TAI nanoseconds since 1970-01-01 TAI, at microsecond
/// resolution (astropy's `Time.now()` carries microseconds).
fn tai_now_ns() -> i64 {
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    let utc_ns = i64::try_from(micros).unwrap_or(i64::MAX / 1000) * 1000;
    schema::timespan::utc_unix_ns_to_tai_ns(utc_ns)
}

/// The reject reason of a value that does not decode.
fn decode_reason(error: &DecodeError) -> RejectReason {
    if error.is_other_message_type() {
        RejectReason::OtherMessageType
    } else {
        RejectReason::Invalid
    }
}
