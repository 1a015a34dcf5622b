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
use super::datasets::{PreparedDataset, record_definition, rows};
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
        self.reject_registry_conflicts(conn, prepared, &runs, &carriers, rejections)
            .await?;
        reject_batch_conflicts(prepared, rejections);
        self.reject_missing_dimensions(conn, prepared, &carriers, rejections)
            .await?;
        Ok(runs)
    }

    /// daf_butler's conflict checks against the registry, per tags table.
    async fn reject_registry_conflicts(
        &self,
        conn: &mut PgConnection,
        prepared: &[PreparedMessage],
        runs: &HashMap<String, RunState>,
        carriers: &Carriers,
        rejections: &mut Rejections,
    ) -> Result<(), DatabaseError> {
        let tables = self.catalog.tables();
        for (table, rows) in per_table(&tables, &live_datasets(prepared, rejections)) {
            let dimensions = &rows[0].dataset_type.dimensions;
            let conflicts =
                find_conflicts(conn, &self.namespace_sql, table, dimensions, &rows, runs)
                    .await
                    .doing("checking datasets for conflicts")?;
            for conflict in conflicts {
                for index in carriers.get(&conflict.id).into_iter().flatten() {
                    rejections.reject(*index, RejectReason::Conflict, conflict.reason.clone());
                }
            }
        }
        Ok(())
    }

    /// Data IDs must name dimension records the registry has (the tags tables' foreign keys).
    async fn reject_missing_dimensions(
        &self,
        conn: &mut PgConnection,
        prepared: &[PreparedMessage],
        carriers: &Carriers,
        rejections: &mut Rejections,
    ) -> Result<(), DatabaseError> {
        let tables = self.catalog.tables();
        for (table, rows) in per_table(&tables, &live_datasets(prepared, rejections)) {
            let dimensions = &rows[0].dataset_type.dimensions;
            let missing = find_missing_dimensions(
                conn,
                &self.namespace_sql,
                &self.universe,
                table,
                dimensions,
                &rows,
            )
            .await
            .doing("checking the dimension records of data IDs")?;
            for (id, dimension) in missing {
                for index in carriers.get(&id).into_iter().flatten() {
                    rejections.reject(
                        *index,
                        RejectReason::Invalid,
                        format!(
                            "dataset {id}: its data ID names a `{dimension}` that is not in the registry"
                        ),
                    );
                }
            }
        }
        Ok(())
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

/// daf_butler's three import checks, for every dataset of one tags table at once:
/// (i) a dataset with this id exists with another type or RUN; (ii) a tags row with this id has
/// another type or data ID; (iii) the same type, RUN and data ID already has another id.
async fn find_conflicts(
    conn: &mut PgConnection,
    ns: &str,
    table: &Table,
    dimensions: &[String],
    datasets: &[&PreparedDataset],
    run_ids: &HashMap<String, RunState>,
) -> Result<Vec<Conflict>, sqlx::Error> {
    if datasets.is_empty() {
        return Ok(Vec::new());
    }
    let tags = format!("{ns}.{}", ident(&table.name));
    let definition = record_definition(table, dimensions, &[]);
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
    let sql = format!(
        "WITH n AS (SELECT * FROM jsonb_to_recordset($1) AS x({definition}))
         SELECT n.id, 1 AS check_no, d.id::text AS other FROM n JOIN {ns}.dataset d ON d.id = n.id
          WHERE d.dataset_type_id <> n.dataset_type_id OR d.run_id IS DISTINCT FROM n.run_id
         UNION ALL
         SELECT n.id, 2, t.dataset_id::text FROM n JOIN {tags} t ON t.dataset_id = n.id
          WHERE t.dataset_type_id <> n.dataset_type_id OR {dims_differ}
         UNION ALL
         SELECT n.id, 3, t.dataset_id::text FROM n JOIN {tags} t
             ON t.dataset_type_id = n.dataset_type_id AND t.collection_id = n.run_id AND {dims_equal}
          WHERE t.dataset_id <> n.id"
    );
    let payload = rows(datasets, run_ids, |_, _| {});
    let found = sqlx::query(AssertSqlSafe(sql))
        .bind(sqlx::types::Json(&payload))
        .fetch_all(&mut *conn)
        .await?;
    let by_id: HashMap<Uuid, &PreparedDataset> = datasets.iter().map(|d| (d.id, *d)).collect();
    let mut conflicts = Vec::new();
    for row in found {
        let id: Uuid = row.try_get("id")?;
        let check: i32 = row.try_get("check_no")?;
        let other: String = row.try_get("other")?;
        let name = by_id.get(&id).map_or("?", |d| d.dataset_type.name.as_str());
        let run = by_id.get(&id).map_or("?", |d| d.run.as_str());
        let reason = match check {
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
        conflicts.push(Conflict { id, reason });
    }
    Ok(conflicts)
}

/// Datasets whose data ID names a dimension record the registry does not have (the tags table's
/// foreign keys would refuse them), with the missing dimension.
async fn find_missing_dimensions(
    conn: &mut PgConnection,
    ns: &str,
    universe: &Universe,
    table: &Table,
    dimensions: &[String],
    datasets: &[&PreparedDataset],
) -> Result<Vec<(Uuid, String)>, sqlx::Error> {
    if datasets.is_empty() {
        return Ok(Vec::new());
    }
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
            "SELECT n.id, '{dimension_literal}' AS dimension FROM n WHERE NOT EXISTS (SELECT 1 FROM {ns}.{} x WHERE {})",
            ident(dimension),
            conditions.join(" AND ")
        ));
    }
    if checks.is_empty() {
        return Ok(Vec::new());
    }
    let definition = record_definition(table, dimensions, &[]);
    let sql = format!(
        "WITH n AS (SELECT * FROM jsonb_to_recordset($1) AS x({definition})) {}",
        checks.join(" UNION ALL ")
    );
    let payload = rows(datasets, &HashMap::new(), |_, _| {});
    let found = sqlx::query(AssertSqlSafe(sql))
        .bind(sqlx::types::Json(&payload))
        .fetch_all(&mut *conn)
        .await?;
    found
        .into_iter()
        .map(|row| Ok((row.try_get("id")?, row.try_get("dimension")?)))
        .collect()
}
