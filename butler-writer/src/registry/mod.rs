//! The registry engine: one batch of `pp-output` messages in, the Embargo Butler's registry as
//! daf_butler would leave it out, and a [`BatchOutcome`] saying which datasets landed and which
//! messages were turned away.
//!
//! What the deployed writer does with two daf_butler calls per batch
//! (`insertDimensionData(skip_existing=True)` per element, then `butler.ingest(transfer=None,
//! skip_existing=True, record_validation_info=False)`), done here with a handful of set-based
//! statements, in this order:
//!
//! 1. **Prepare** every message without the database ([`prepare`], [`records`], [`datasets`]):
//!    decode, check each dimension record against the universe, compute region overlaps, resolve
//!    dataset types ([`catalog`], re-reading them when a name is new). A message that fails is
//!    rejected; the others go on.
//! 2. **Dimension records**, one transaction ([`dimension_writes`]).
//! 3. **Datasets**, one transaction: the checks ([`dataset_checks`]), then the RUNs created on
//!    first use, `dataset`, collection summaries, tags rows, `dataset_location` and the
//!    datastore records ([`dataset_writes`]).
//! 4. **Statistics** of the tags tables, refreshed when they have grown ([`statistics`]).
//!
//! Dimension records of a message whose datasets conflict stay committed, as in daf_butler, where
//! they are committed before `ingest` runs. [`open`] connects and checks the registry is one the
//! engine reproduces; [`model`] is the layout as the database describes it.
//!
//! The publication consumer's transfers use the same engine: [`export`] reads datasets and
//! dimension records back out of one registry for [`Registry::ingest_placed`] into another,
//! [`register_types`] registers the dataset types the target lacks, and [`associate`] tags
//! datasets into a TAGGED collection.

mod associate;
mod catalog;
mod dataset_checks;
mod dataset_writes;
mod datasets;
mod dimension_writes;
mod export;
pub mod model;
mod open;
pub mod order;
mod prepare;
mod records;
mod register_types;
mod rejections;
mod statistics;

use std::collections::{HashMap, HashSet};

use butler_repository::{DatabaseError, DatastoreConfig, Doing, describe};
use schema::PromptProcessingOutputEvent;
use schema::htm::HtmPixelization;
use sqlx::postgres::PgPool;
use sqlx::{Connection, PgConnection};
use tracing::{debug, info, warn};
use uuid::Uuid;

pub use self::associate::AssociateError;
pub use self::export::{ExportError, ExportedDatasets, Placement};
pub use self::open::{APPLICATION_NAME, StartupError, UnsupportedRegistry};
pub use self::records::MAX_REGION_VERTICES;
pub use self::register_types::{DatasetTypeDefinition, RegisterTypeError};

use self::catalog::Catalog;
use self::order::{BatchOrder, Unordered};
use self::prepare::{PreparedMessage, live_datasets};
use self::rejections::Rejections;
use self::statistics::Statistics;
use crate::error::EngineError;
use crate::outcome::BatchOutcome;
use crate::universe::Universe;

/// A registry the writer ingests into: its database, its layout, and caches.
#[derive(Debug)]
pub struct Registry {
    pool: PgPool,
    namespace: String,
    /// The namespace quoted for SQL.
    namespace_sql: String,
    universe: Universe,
    htm: HtmPixelization,
    datastores: Vec<DatastoreConfig>,
    catalog: Catalog,
    statistics: Statistics,
}

/// The deployed writer's timing lines (lsst.utils `time_this`) come from this logger; the
/// run-time dashboard reads them, so ours come from the same target with the same text.
pub const TIMER_TARGET: &str = "timer.lsst.queued_butler_writer.butler";

/// How often a batch's dataset step is tried when a concurrent writer wins a race between the
/// checks and the inserts (a unique violation): the checks then run again against what it wrote.
const DATASET_ATTEMPTS: u32 = 3;

impl Registry {
    /// The repository's dimension universe.
    pub fn universe(&self) -> &Universe {
        &self.universe
    }

    /// The Postgres schema of the registry.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The names of the repository's datastores, as `dataset_location` records them.
    pub fn datastore_names(&self) -> std::collections::BTreeSet<&str> {
        self.datastores.iter().map(|d| d.name.as_str()).collect()
    }

    /// The connection pool (for health checks).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Decodes raw Kafka values and ingests them as one batch; values that do not decode are
    /// rejected (as `other_message_type` or `invalid`) and the rest go on.
    pub async fn ingest_values(&self, values: &[&[u8]]) -> Result<BatchOutcome, EngineError> {
        self.ingest_values_in_order(values, &Unordered).await
    }

    /// [`ingest_values`](Self::ingest_values) for one of several batches in the database at
    /// once: once its datasets are known, `order` holds it until no earlier batch that writes
    /// one of them is still in the database, so that the earlier of two conflicting copies wins.
    pub async fn ingest_values_in_order<O: BatchOrder>(
        &self,
        values: &[&[u8]],
        order: &O,
    ) -> Result<BatchOutcome, EngineError> {
        let (events, undecodable) = prepare::decode(values);
        let mut outcome = self
            .ingest_indexed(&events, order, &Placement::InDatastore)
            .await?;
        outcome.rejected.extend(undecodable);
        outcome.rejected.sort_by_key(|r| r.index);
        Ok(outcome)
    }

    /// Ingests decoded messages as one batch; rejections refer to positions in `events`.
    pub async fn ingest(
        &self,
        events: &[PromptProcessingOutputEvent],
    ) -> Result<BatchOutcome, EngineError> {
        self.ingest_placed(events, &Placement::InDatastore).await
    }

    /// [`ingest`](Self::ingest) with the datastore rows placed as `placement` says: the
    /// registry side of a transfer from another repository, whose datasets
    /// [`export_datasets`](Self::export_datasets) read.
    pub async fn ingest_placed(
        &self,
        events: &[PromptProcessingOutputEvent],
        placement: &Placement,
    ) -> Result<BatchOutcome, EngineError> {
        let indexed: Vec<(usize, PromptProcessingOutputEvent)> =
            events.iter().cloned().enumerate().collect();
        self.ingest_indexed(&indexed, &Unordered, placement).await
    }

    async fn ingest_indexed<O: BatchOrder>(
        &self,
        events: &[(usize, PromptProcessingOutputEvent)],
        order: &O,
        placement: &Placement,
    ) -> Result<BatchOutcome, EngineError> {
        let started = std::time::Instant::now();
        let mut conn = self.pool.acquire().await.doing("acquiring a connection")?;
        let mut rejections = Rejections::default();

        // 1. Prepare, resolving dataset types first (one query for any name not in the cache).
        self.catalog.resolve(&mut conn, events).await?;
        let mut prepared = prepare::prepare(
            &self.universe,
            &self.htm,
            &self.catalog.read(),
            events,
            &mut rejections,
        );
        if *placement != Placement::InDatastore {
            for dataset in prepared.iter_mut().flat_map(|m| m.datasets.iter_mut()) {
                dataset.path = placement.place(&dataset.path);
            }
        }
        order.claim(order::dataset_keys(&prepared)).await;

        // 2. Dimension records.
        let dimensions_started = std::time::Instant::now();
        self.check_governors(&mut conn, &mut prepared, &mut rejections)
            .await?;
        self.insert_dimensions(&mut conn, &prepared, &mut rejections)
            .await?;
        let records: usize = prepared.iter().map(|m| m.records.len()).sum();
        prepared.retain(|m| !rejections.contains(m.index));
        let dimensions = dimensions_started.elapsed();
        log_timing("dimension data records", records, events.len(), dimensions);

        // 3. Datasets.
        let datasets_started = std::time::Instant::now();
        let (ingested, already_present) = self
            .ingest_datasets_until_settled(&mut conn, &prepared, &mut rejections)
            .await?;
        let datasets: usize = prepared.iter().map(|m| m.datasets.len()).sum();
        log_timing(
            "datasets",
            datasets,
            events.len(),
            datasets_started.elapsed(),
        );

        // 4. Statistics of the tags tables that grew.
        self.statistics
            .refresh(
                &mut conn,
                &self.namespace_sql,
                written_by_table(&prepared, &ingested),
            )
            .await;

        let rejected = rejections.into_sorted();
        info!(
            messages = events.len(),
            ingested = ingested.len(),
            already_present = already_present.len(),
            rejected = rejected.len(),
            dimensions_ms = dimensions.as_millis(),
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

    /// Step 3, again when another writer won a race between our checks and our inserts (a
    /// unique violation): the checks then see what it wrote.
    async fn ingest_datasets_until_settled(
        &self,
        conn: &mut PgConnection,
        prepared: &[PreparedMessage],
        rejections: &mut Rejections,
    ) -> Result<(Vec<Uuid>, Vec<Uuid>), EngineError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut round = rejections.clone();
            match self.ingest_datasets(conn, prepared, &mut round).await {
                Ok(result) => {
                    *rejections = round;
                    return Ok(result);
                }
                Err(error)
                    if attempt < DATASET_ATTEMPTS
                        && error.sqlstate().as_deref() == Some("23505") =>
                {
                    warn!(attempt, error = %describe(&error.source), "a concurrent writer changed the rows this batch checked; checking again");
                }
                Err(error) => return Err(EngineError::from(error)),
            }
        }
    }

    /// Step 3, in one transaction. Returns (ingested, already present).
    async fn ingest_datasets(
        &self,
        conn: &mut PgConnection,
        prepared: &[PreparedMessage],
        rejections: &mut Rejections,
    ) -> Result<(Vec<Uuid>, Vec<Uuid>), DatabaseError> {
        if live_datasets(prepared, rejections).is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let doing = "ingesting datasets";
        let mut tx = conn.begin().await.doing(doing)?;
        let mut runs = self.check_datasets(&mut tx, prepared, rejections).await?;
        // A dataset in two messages is written once.
        let mut seen: HashSet<Uuid> = HashSet::new();
        let unique: Vec<_> = live_datasets(prepared, rejections)
            .into_iter()
            .filter(|(_, d)| seen.insert(d.id))
            .collect();
        if unique.is_empty() {
            tx.commit().await.doing(doing)?;
            return Ok((Vec::new(), Vec::new()));
        }
        let new_ids = self.write_datasets(&mut tx, &unique, &mut runs).await?;
        tx.commit().await.doing(doing)?;
        let new: HashSet<Uuid> = new_ids.iter().copied().collect();
        let already_present = unique
            .iter()
            .map(|(_, d)| d.id)
            .filter(|id| !new.contains(id))
            .collect();
        Ok((new_ids, already_present))
    }
}

/// The deployed writer's timing line at DEBUG: `inserted N dimension data records from M events:
/// Took X.XXXX seconds`, `ingested N datasets from M events: Took X.XXXX seconds`, with the
/// seconds also as a `duration` field.
fn log_timing(what: &str, count: usize, events: usize, took: std::time::Duration) {
    let verb = if what == "datasets" {
        "ingested"
    } else {
        "inserted"
    };
    let duration = took.as_secs_f64();
    debug!(
        target: TIMER_TARGET,
        duration,
        "{verb} {count} {what} from {events} events: Took {duration:.4} seconds"
    );
}

/// Rows a batch added to each tags table.
fn written_by_table<'a>(
    prepared: &'a [PreparedMessage],
    ingested: &[Uuid],
) -> HashMap<&'a str, u64> {
    let ingested: HashSet<&Uuid> = ingested.iter().collect();
    let mut written: HashMap<&str, u64> = HashMap::new();
    for dataset in prepared.iter().flat_map(|m| &m.datasets) {
        if ingested.contains(&dataset.id) {
            *written
                .entry(dataset.dataset_type.tags_table.as_str())
                .or_default() += 1;
        }
    }
    written
}
