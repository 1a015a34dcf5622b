//! Step 3a of a batch, inside its dataset transaction: daf_butler's checks, over the whole batch
//! at once rather than per message. A RUN name taken by another kind of collection; the three
//! conflict checks of daf_butler's guarded import (`_validate_import`) against the registry;
//! conflicts between messages of the batch (the first copy wins); data IDs naming dimension
//! records the registry does not have. Each check rejects the messages whose datasets fail it, so
//! a conflicting message is turned away without the Python writer's one-message-at-a-time
//! fallback and every other message lands.

use std::collections::{BTreeSet, HashMap};

use butler_repository::{DatabaseError, Doing};
use sqlx::{AssertSqlSafe, PgConnection, Row};
use uuid::Uuid;

use super::Registry;
use super::datasets::{DatasetColumns, PreparedDataset};
use super::model::{Table, ident};
use super::prepare::{PreparedMessage, live_datasets, per_table};
use super::rejections::Rejections;
use crate::outcome::RejectReason;
use crate::universe::{FieldRole, Universe};

/// Datasets by id, with the positions of the messages carrying them: the same dataset may be in
/// several messages (a redelivery inside the batch), and a fault of the dataset is a fault of
/// each.
type Carriers = HashMap<Uuid, Vec<usize>>;

impl Registry {
    /// Runs every check, rejecting the messages that fail one; returns the state of each RUN the
    /// surviving datasets name.
    pub(super) async fn check_datasets(
        &self,
        conn: &mut PgConnection,
        prepared: &[PreparedMessage],
        rejections: &mut Rejections,
    ) -> Result<HashMap<String, RunState>, DatabaseError> {
        let candidates = live_datasets(prepared, rejections);
        let run_names: Vec<String> = candidates
            .iter()
            .map(|(_, d)| d.run.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let runs = lookup_runs(conn, &self.namespace_sql, &run_names)
            .await
            .doing("looking up RUN collections")?;
        for (index, dataset) in &candidates {
            if runs.get(&dataset.run) == Some(&RunState::NotARun) {
                rejections.reject(
                    *index,
                    RejectReason::Conflict,
                    format!(
                        "collection `{}` exists and is not a RUN collection",
                        dataset.run
                    ),
                );
            }
        }
        let mut carriers: Carriers = HashMap::new();
        for (index, dataset) in &candidates {
            carriers.entry(dataset.id).or_default().push(*index);
        }
        // Both registry checks in one statement per tags table; applied in daf_butler's order.
        let faults = self.find_faults(conn, prepared, &runs, rejections).await?;
        let reject = |rejections: &mut Rejections, id: &Uuid, reason: RejectReason, text: &str| {
            for index in carriers.get(id).into_iter().flatten() {
                rejections.reject(*index, reason, text.to_owned());
            }
        };
        for fault in &faults {
            if let Fault::Conflict(conflict) = fault {
                reject(
                    rejections,
                    &conflict.id,
                    RejectReason::Conflict,
                    &conflict.reason,
                );
            }
        }
        reject_batch_conflicts(prepared, rejections);
        // A message already turned away keeps its first reason (`Rejections::reject`).
        for fault in &faults {
            if let Fault::MissingDimension { id, dimension } = fault {
                reject(
                    rejections,
                    id,
                    RejectReason::Invalid,
                    &format!(
                        "dataset {id}: its data ID names a `{dimension}` that is not in the registry"
                    ),
                );
            }
        }
        Ok(runs)
    }

    /// The registry checks of every live dataset, one statement per tags table.
    async fn find_faults(
        &self,
        conn: &mut PgConnection,
        prepared: &[PreparedMessage],
        runs: &HashMap<String, RunState>,
        rejections: &Rejections,
    ) -> Result<Vec<Fault>, DatabaseError> {
        let tables = self.catalog.tables();
        let mut faults = Vec::new();
        for (table, rows) in per_table(&tables, &live_datasets(prepared, rejections)) {
            faults.extend(
                find_faults(
                    conn,
                    &self.namespace_sql,
                    &self.universe,
                    table,
                    &rows,
                    runs,
                )
                .await
                .doing("checking datasets against the registry")?,
            );
        }
        Ok(faults)
    }
}

/// What makes two datasets the same dataset in daf_butler's eyes: type, RUN and data ID.
type Identity = (i64, String, String);

/// Conflicts between messages of this batch: the first copy wins. The same dataset in two
/// messages (a redelivery inside one batch) is not a conflict.
pub(super) fn reject_batch_conflicts(prepared: &[PreparedMessage], rejections: &mut Rejections) {
    let mut seen_ids: HashMap<Uuid, (usize, Identity)> = HashMap::new();
    let mut seen_identities: HashMap<Identity, (usize, Uuid)> = HashMap::new();
    let still_in: Vec<&PreparedMessage> = prepared
        .iter()
        .filter(|m| !rejections.contains(m.index))
        .collect();
    for message in still_in {
        let identity = |d: &PreparedDataset| -> Identity {
            let (type_id, run, data_id) = d.identity();
            (type_id, run.to_owned(), data_id)
        };
        let problem = message.datasets.iter().find_map(|dataset| {
            let mine = identity(dataset);
            if let Some((other, seen)) = seen_ids.get(&dataset.id)
                && *seen != mine
            {
                return Some(format!(
                    "dataset {} has another type, RUN or data ID in message {other} of this batch",
                    dataset.id
                ));
            }
            match seen_identities.get(&mine) {
                Some((other, other_id)) if *other_id != dataset.id => Some(format!(
                    "ingest conflict: dataset {} has the same {} data ID in {} as dataset {other_id} of message {other} in this batch",
                    dataset.id, dataset.dataset_type.name, dataset.run
                )),
                _ => None,
            }
        });
        match problem {
            Some(text) => rejections.reject(message.index, RejectReason::Conflict, text),
            None => {
                for dataset in &message.datasets {
                    let mine = identity(dataset);
                    seen_ids
                        .entry(dataset.id)
                        .or_insert((message.index, mine.clone()));
                    seen_identities
                        .entry(mine)
                        .or_insert((message.index, dataset.id));
                }
            }
        }
    }
}

/// A RUN collection the batch writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// It exists, with this `collection_id`.
    Exists(i64),
    /// It does not exist yet; the batch creates it.
    New,
    /// A collection of that name exists and is not a RUN.
    NotARun,
}

/// Looks up the RUN collections by name.
async fn lookup_runs(
    conn: &mut PgConnection,
    ns: &str,
    runs: &[String],
) -> Result<HashMap<String, RunState>, sqlx::Error> {
    let sql = format!("SELECT name, collection_id, type FROM {ns}.collection WHERE name = ANY($1)");
    let rows = sqlx::query(AssertSqlSafe(sql))
        .bind(runs)
        .fetch_all(&mut *conn)
        .await?;
    let mut states: HashMap<String, RunState> =
        runs.iter().map(|r| (r.clone(), RunState::New)).collect();
    for row in rows {
        let name: String = row.try_get("name")?;
        let id: i64 = row.try_get("collection_id")?;
        // daf_butler's CollectionType.RUN is 1.
        let kind: i16 = row.try_get("type")?;
        states.insert(
            name,
            if kind == 1 {
                RunState::Exists(id)
            } else {
                RunState::NotARun
            },
        );
    }
    Ok(states)
}

/// A dataset that conflicts with the registry, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The incoming dataset.
    pub id: Uuid,
    /// daf_butler's message for the check that failed.
    pub reason: String,
}

/// What a registry check found wrong with an incoming dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fault {
    /// One of daf_butler's three import checks failed.
    Conflict(Conflict),
    /// Its data ID names a dimension record the registry does not have (the tags table's
    /// foreign keys would refuse it).
    MissingDimension { id: Uuid, dimension: String },
}

/// Number of the missing-dimension check in [`find_faults`]' results (1-3 are daf_butler's).
const MISSING_DIMENSION: i32 = 4;

/// Every check of one tags table's datasets in one statement: daf_butler's three import checks
/// (i) a dataset with this id exists with another type or RUN; (ii) a tags row with this id has
/// another type or data ID; (iii) the same type, RUN and data ID already has another id; and
/// (4) each data ID dimension has its record in the registry.
async fn find_faults(
    conn: &mut PgConnection,
    ns: &str,
    universe: &Universe,
    table: &Table,
    datasets: &[&PreparedDataset],
    run_ids: &HashMap<String, RunState>,
) -> Result<Vec<Fault>, sqlx::Error> {
    let Some(first) = datasets.first() else {
        return Ok(Vec::new());
    };
    let dimensions = &first.dataset_type.dimensions;
    let columns = DatasetColumns::new(table, datasets, run_ids);
    let mut checks = conflict_checks(ns, table, dimensions);
    checks.extend(missing_dimension_checks(ns, universe, dimensions));
    let sql = format!(
        "WITH n AS MATERIALIZED (SELECT * FROM {}) {}",
        columns.source(1),
        checks.join(" UNION ALL ")
    );
    let found = columns
        .bind(sqlx::query(AssertSqlSafe(sql)))
        .fetch_all(&mut *conn)
        .await?;
    let by_id: HashMap<Uuid, &PreparedDataset> = datasets.iter().map(|d| (d.id, *d)).collect();
    let mut faults = Vec::new();
    for row in found {
        let id: Uuid = row.try_get("id")?;
        let check: i32 = row.try_get("check_no")?;
        let other: String = row.try_get("other")?;
        let name = by_id.get(&id).map_or("?", |d| d.dataset_type.name.as_str());
        let run = by_id.get(&id).map_or("?", |d| d.run.as_str());
        let reason = match check {
            MISSING_DIMENSION => {
                faults.push(Fault::MissingDimension {
                    id,
                    dimension: other,
                });
                continue;
            }
            1 => format!(
                "dataset {id} already exists in the registry with another dataset type or RUN than {name} in {run}"
            ),
            2 => format!(
                "dataset {id} already exists in the registry with another dataset type or data ID"
            ),
            _ => format!(
                "a {name} dataset with this data ID already exists in {run} as {other}; this message's copy is {id}"
            ),
        };
        faults.push(Fault::Conflict(Conflict { id, reason }));
    }
    Ok(faults)
}

/// daf_butler's three import checks as `SELECT id, check_no, other` over the batch `n`.
fn conflict_checks(ns: &str, table: &Table, dimensions: &[String]) -> Vec<String> {
    let tags = format!("{ns}.{}", ident(&table.name));
    let dims_differ = dimensions
        .iter()
        .map(|d| format!("t.{c} IS DISTINCT FROM n.{c}", c = ident(d)))
        .collect::<Vec<_>>()
        .join(" OR ");
    let dims_equal = dimensions
        .iter()
        .map(|d| format!("t.{c} = n.{c}", c = ident(d)))
        .collect::<Vec<_>>()
        .join(" AND ");
    let dims_differ = if dims_differ.is_empty() {
        "false".to_owned()
    } else {
        dims_differ
    };
    let dims_equal = if dims_equal.is_empty() {
        "true".to_owned()
    } else {
        dims_equal
    };
    vec![
        format!(
            "SELECT n.id, 1 AS check_no, d.id::text AS other FROM n JOIN {ns}.dataset d ON d.id = n.id
              WHERE d.dataset_type_id <> n.dataset_type_id OR d.run_id IS DISTINCT FROM n.run_id"
        ),
        format!(
            "SELECT n.id, 2, t.dataset_id::text FROM n JOIN {tags} t ON t.dataset_id = n.id
              WHERE t.dataset_type_id <> n.dataset_type_id OR {dims_differ}"
        ),
        format!(
            "SELECT n.id, 3, t.dataset_id::text FROM n JOIN {tags} t
                 ON t.dataset_type_id = n.dataset_type_id AND t.collection_id = n.run_id AND {dims_equal}
              WHERE t.dataset_id <> n.id"
        ),
    ]
}

/// One `SELECT id, 4, '<dimension>'` per data ID dimension, for the datasets of `n` whose record
/// of that dimension is not in the registry.
fn missing_dimension_checks(ns: &str, universe: &Universe, dimensions: &[String]) -> Vec<String> {
    let mut checks = Vec::new();
    for dimension in dimensions {
        let Some(element) = universe.element(dimension) else {
            continue;
        };
        let conditions: Vec<String> = element
            .fields
            .iter()
            .filter(|f| f.role == FieldRole::Required)
            .filter_map(|f| {
                f.dimension
                    .as_ref()
                    .map(|d| format!("x.{} = n.{}", ident(&f.name), ident(d)))
            })
            .collect();
        if conditions.is_empty() {
            continue;
        }
        let dimension_literal = dimension.replace('\'', "''");
        checks.push(format!(
            "SELECT n.id, {MISSING_DIMENSION}, '{dimension_literal}' FROM n WHERE NOT EXISTS (SELECT 1 FROM {ns}.{} x WHERE {})",
            ident(dimension),
            conditions.join(" AND ")
        ));
    }
    checks
}
