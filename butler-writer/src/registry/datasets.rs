//! Datasets: resolved against their registered types, checked for conflicts the way daf_butler's
//! guarded import checks them, and inserted set-based (`butler.ingest(transfer=None,
//! skip_existing=True, record_validation_info=False)`; `../shared/reference/butler-registry.md`
//! §2 and §5).
//!
//! daf_butler's three conflict checks (`_validate_import`) run per batch, not per message, and
//! report which datasets conflict, so a conflicting message is turned away without the Python
//! writer's one-message-at-a-time fallback and every other message lands.

use std::collections::{BTreeSet, HashMap, HashSet};

use schema::{DataIdValue, PromptProcessingOutputEvent};
use serde_json::{Map, Value};
use sqlx::{AssertSqlSafe, PgConnection, Row};
use uuid::Uuid;

use super::dimensions::Refusal;
use super::model::{DatasetType, Table, Tables, ident};
use crate::outcome::RejectReason;
use crate::repository::DatastoreConfig;
use crate::universe::{FieldRole, Universe};

/// The component value daf_butler stores for a dataset that is not a component (a magic string,
/// not NULL and not empty: `butler-registry.md` §4, "Datastore rows").
pub const NULL_COMPONENT: &str = "__NULL_STRING__";

/// One dataset of a message, ready to insert.
#[derive(Debug, Clone)]
pub struct PreparedDataset {
    /// The dataset's UUID.
    pub id: Uuid,
    /// Its dataset type.
    pub dataset_type: DatasetType,
    /// Its RUN collection.
    pub run: String,
    /// Values of the type's required dimensions, in tags-table column order.
    pub data_id: Vec<Value>,
    /// Path relative to the datastore root.
    pub path: String,
    /// Fully qualified formatter class name.
    pub formatter: String,
    /// Index of its file within the message (datastore rows are skipped per file).
    pub file: usize,
}

impl PreparedDataset {
    /// What makes two datasets the same dataset in daf_butler's eyes: type, run and data ID.
    pub fn identity(&self) -> (i64, &str, String) {
        (
            self.dataset_type.id,
            self.run.as_str(),
            Value::Array(self.data_id.clone()).to_string(),
        )
    }
}

/// Builds the datasets of one message, checking each against its type: the type is registered,
/// the data ID has every required dimension with the right type, the file has a formatter and a
/// path inside the datastore. A message whose own datasets collide (one data ID twice) is a
/// conflict, as `butler.ingest` reports for it.
pub fn prepare(
    event: &PromptProcessingOutputEvent,
    types: &HashMap<String, DatasetType>,
    tables: &Tables,
) -> Result<Vec<PreparedDataset>, Refusal> {
    let invalid = |text: String| (RejectReason::Invalid, text);
    let mut prepared = Vec::new();
    for (file_index, file) in event.datasets.iter().enumerate() {
        if file.refs.is_empty() {
            return Err(invalid(format!(
                "datasets[{file_index}] ({}) has no refs",
                file.path
            )));
        }
        let Some(run) = file.common_run() else {
            return Err(invalid(format!(
                "datasets[{file_index}] ({}): its refs name different RUN collections",
                file.path
            )));
        };
        let Some(formatter) = file.formatter.as_deref().filter(|f| !f.is_empty()) else {
            return Err((
                RejectReason::Unsupported,
                format!(
                    "datasets[{file_index}] ({}) has no formatter; the writer records the formatter the worker used",
                    file.path
                ),
            ));
        };
        if file.path.is_empty()
            || file.path.starts_with('/')
            || file.path.contains("://")
            || file.path.split('/').any(|p| p == "..")
        {
            return Err((
                RejectReason::Unsupported,
                format!(
                    "datasets[{file_index}]: path `{}` is not relative to the datastore root",
                    file.path
                ),
            ));
        }
        for (id, dataset_ref) in &file.refs {
            let Some(dataset_type) = types.get(&dataset_ref.dataset_type_name) else {
                return Err((
                    RejectReason::UnknownDatasetType,
                    format!(
                        "dataset {id}: dataset type `{}` is not registered in the repository",
                        dataset_ref.dataset_type_name
                    ),
                ));
            };
            let Some(table) = tables.get(&dataset_type.tags_table) else {
                return Err((
                    RejectReason::Unsupported,
                    format!(
                        "dataset {id}: tags table {} is missing",
                        dataset_type.tags_table
                    ),
                ));
            };
            let mut data_id = Vec::with_capacity(dataset_type.dimensions.len());
            for dimension in &dataset_type.dimensions {
                let Some(value) = dataset_ref.data_id.get(dimension) else {
                    return Err(invalid(format!(
                        "dataset {id} ({}): data ID lacks required dimension `{dimension}`",
                        dataset_type.name
                    )));
                };
                let integer = table
                    .column(dimension)
                    .is_some_and(super::model::Column::is_integer);
                data_id.push(match (value, integer) {
                    (DataIdValue::Int(i), true) => Value::from(*i),
                    (DataIdValue::Str(s), false) => Value::String(s.clone()),
                    (_, true) => {
                        return Err(invalid(format!(
                            "dataset {id}: data ID value `{dimension}`={value} must be an integer"
                        )));
                    }
                    (_, false) => {
                        return Err(invalid(format!(
                            "dataset {id}: data ID value `{dimension}`={value} must be a string"
                        )));
                    }
                });
            }
            prepared.push(PreparedDataset {
                id: *id,
                dataset_type: dataset_type.clone(),
                run: run.to_owned(),
                data_id,
                path: file.path.clone(),
                formatter: formatter.to_owned(),
                file: file_index,
            });
        }
    }
    // daf_butler refuses one ingest call holding the same dataset twice (`Ingest conflict`).
    let mut ids = HashSet::new();
    let mut identities = HashSet::new();
    for dataset in &prepared {
        if !ids.insert(dataset.id) {
            return Err((
                RejectReason::Conflict,
                format!("dataset {} appears twice in the message", dataset.id),
            ));
        }
        if !identities.insert(dataset.identity()) {
            return Err((
                RejectReason::Conflict,
                format!(
                    "ingest conflict: dataset {} has the same data ID as another dataset of the message",
                    dataset.id
                ),
            ));
        }
    }
    Ok(prepared)
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
pub async fn lookup_runs(
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

/// Creates a RUN collection the way `collections.register(run, RUN)` does: a `collection` row
/// numbered by the collection sequence (consumed only when the row is new), then its `run` row.
/// Safe when another writer creates the same RUN at the same moment: the unique name makes one
/// insert wait for the other and then do nothing.
pub async fn create_run(conn: &mut PgConnection, ns: &str, run: &str) -> Result<i64, sqlx::Error> {
    let sequence = format!("{ns}.{}", ident("collection_seq_collection_id"));
    let insert = format!(
        "INSERT INTO {ns}.collection (collection_id, name, type, doc)
         SELECT nextval('{}'), $1, 1, NULL WHERE NOT EXISTS (SELECT 1 FROM {ns}.collection WHERE name = $1)
         ON CONFLICT DO NOTHING",
        sequence.replace('\'', "''")
    );
    sqlx::query(AssertSqlSafe(insert))
        .bind(run)
        .execute(&mut *conn)
        .await?;
    let id: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT collection_id FROM {ns}.collection WHERE name = $1 AND type = 1"
    )))
    .bind(run)
    .fetch_one(&mut *conn)
    .await?;
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {ns}.run (collection_id) VALUES ($1) ON CONFLICT DO NOTHING"
    )))
    .bind(id)
    .execute(&mut *conn)
    .await?;
    Ok(id)
}

/// The column definitions of the JSON rows sent for one tags table (`x(id uuid, ...)`).
fn record_definition(table: &Table, dimensions: &[String], extra: &[(&str, &str)]) -> String {
    let mut columns = vec![
        "id uuid".to_owned(),
        "dataset_type_id int8".to_owned(),
        "run_id int8".to_owned(),
    ];
    for dimension in dimensions {
        let kind = table
            .column(dimension)
            .map_or("text", super::model::Column::record_type);
        columns.push(format!("{} {kind}", ident(dimension)));
    }
    for (name, kind) in extra {
        columns.push(format!("{} {kind}", ident(name)));
    }
    columns.join(", ")
}

/// JSON rows of datasets for one tags table.
fn rows(
    datasets: &[&PreparedDataset],
    run_ids: &HashMap<String, RunState>,
    extra: impl Fn(&PreparedDataset, &mut Map<String, Value>),
) -> Value {
    Value::Array(
        datasets
            .iter()
            .map(|d| {
                let mut row = Map::new();
                row.insert("id".into(), Value::String(d.id.to_string()));
                row.insert("dataset_type_id".into(), Value::from(d.dataset_type.id));
                let run_id = match run_ids.get(&d.run) {
                    Some(RunState::Exists(id)) => Value::from(*id),
                    _ => Value::Null,
                };
                row.insert("run_id".into(), run_id);
                for (dimension, value) in d.dataset_type.dimensions.iter().zip(&d.data_id) {
                    row.insert(dimension.clone(), value.clone());
                }
                extra(d, &mut row);
                Value::Object(row)
            })
            .collect(),
    )
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
pub async fn find_conflicts(
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
pub async fn find_missing_dimensions(
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

/// The ids among `ids` that some datastore already has records for (`datastore.knows_these`).
pub async fn known_to_datastores(
    conn: &mut PgConnection,
    ns: &str,
    datastores: &[DatastoreConfig],
    ids: &[Uuid],
) -> Result<HashSet<Uuid>, sqlx::Error> {
    let mut known = HashSet::new();
    let tables: BTreeSet<&str> = datastores
        .iter()
        .map(|d| d.records_table.as_str())
        .collect();
    for table in tables {
        let sql = format!(
            "SELECT dataset_id FROM {ns}.{} WHERE dataset_id = ANY($1)",
            ident(table)
        );
        let found: Vec<Uuid> = sqlx::query_scalar(AssertSqlSafe(sql))
            .bind(ids)
            .fetch_all(&mut *conn)
            .await?;
        known.extend(found);
    }
    Ok(known)
}

/// Inserts the registry rows of one tags table's datasets: `dataset` (an existing id is left as
/// it is), the collection summaries (before the tags rows, which reference them), the tags rows.
/// `ingest_dates` gives the TAI-ns `ingest_date` of each RUN (daf_butler takes the clock once per
/// dimension group and RUN). Returns the ids that were new.
#[allow(clippy::too_many_arguments)]
pub async fn insert_registry_rows(
    conn: &mut PgConnection,
    ns: &str,
    universe: &Universe,
    tables: &Tables,
    table: &Table,
    dimensions: &[String],
    datasets: &[&PreparedDataset],
    run_ids: &HashMap<String, RunState>,
    ingest_dates: &HashMap<String, i64>,
) -> Result<Vec<Uuid>, sqlx::Error> {
    if datasets.is_empty() {
        return Ok(Vec::new());
    }
    let definition = record_definition(table, dimensions, &[("ingest_date", "int8")]);
    let payload = rows(datasets, run_ids, |d, row| {
        row.insert(
            "ingest_date".into(),
            ingest_dates
                .get(&d.run)
                .map_or(Value::Null, |v| Value::from(*v)),
        );
    });
    let source = format!("jsonb_to_recordset($1) AS n({definition})");

    let new_ids: Vec<Uuid> = sqlx::query_scalar(AssertSqlSafe(format!(
        "INSERT INTO {ns}.dataset (id, dataset_type_id, run_id, ingest_date)
         SELECT id, dataset_type_id, run_id, ingest_date FROM {source}
         ON CONFLICT (id) DO NOTHING RETURNING id"
    )))
    .bind(sqlx::types::Json(&payload))
    .fetch_all(&mut *conn)
    .await?;

    // The summaries take a handful of distinct rows: computed here rather than by the server
    // from the whole batch.
    let run_id_of = |d: &PreparedDataset| match run_ids.get(&d.run) {
        Some(RunState::Exists(id)) => Some(*id),
        _ => None,
    };
    let type_pairs: BTreeSet<(i64, i64)> = datasets
        .iter()
        .filter_map(|d| run_id_of(d).map(|run| (run, d.dataset_type.id)))
        .collect();
    let summary_rows = Value::Array(
        type_pairs.iter().map(|(run, type_id)| serde_json::json!({"collection_id": run, "dataset_type_id": type_id})).collect(),
    );
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {ns}.collection_summary_dataset_type (collection_id, dataset_type_id)
         SELECT collection_id, dataset_type_id FROM jsonb_to_recordset($1) AS n(collection_id int8, dataset_type_id int8)
         ON CONFLICT DO NOTHING"
    )))
    .bind(sqlx::types::Json(&summary_rows))
    .execute(&mut *conn)
    .await?;

    for governor in universe
        .governors()
        .filter(|g| dimensions.iter().any(|d| d == g))
    {
        let summary = format!("collection_summary_{governor}");
        let Some(summary_table) = tables.get(&summary) else {
            continue;
        };
        let Some(position) = dimensions.iter().position(|d| d == governor) else {
            continue;
        };
        let pairs: BTreeSet<(i64, String)> = datasets
            .iter()
            .filter_map(|d| Some((run_id_of(d)?, d.data_id.get(position)?.to_string())))
            .collect();
        let rows = Value::Array(
            pairs
                .iter()
                .filter_map(|(run, value)| {
                    let value: Value = serde_json::from_str(value).ok()?;
                    Some(serde_json::json!({"collection_id": run, "value": value}))
                })
                .collect(),
        );
        let kind = summary_table
            .column(governor)
            .map_or("text", super::model::Column::record_type);
        let column = ident(governor);
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {ns}.{} (collection_id, {column})
             SELECT collection_id, value FROM jsonb_to_recordset($1) AS n(collection_id int8, value {kind})
             ON CONFLICT DO NOTHING",
            ident(&summary)
        )))
        .bind(sqlx::types::Json(&rows))
        .execute(&mut *conn)
        .await?;
    }

    let dimension_columns: Vec<String> = dimensions.iter().map(|d| ident(d)).collect();
    let dimension_list = dimension_columns.join(", ");
    let separator = if dimension_list.is_empty() { "" } else { ", " };
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {ns}.{tags} (dataset_type_id, dataset_id, collection_id{separator}{dimension_list})
         SELECT dataset_type_id, id, run_id{separator}{dimension_list} FROM {source}
         ON CONFLICT (dataset_id, collection_id) DO NOTHING",
        tags = ident(&table.name)
    )))
    .bind(sqlx::types::Json(&payload))
    .execute(&mut *conn)
    .await?;
    Ok(new_ids)
}

/// Inserts `dataset_location` and the records-table rows of each datastore for the datasets of
/// files no datastore knew (`record_validation_info=False`: no checksum, file size -1).
pub async fn insert_datastore_rows(
    conn: &mut PgConnection,
    ns: &str,
    datastores: &[DatastoreConfig],
    datasets: &[&PreparedDataset],
) -> Result<(), sqlx::Error> {
    if datasets.is_empty() {
        return Ok(());
    }
    let payload = Value::Array(
        datasets
            .iter()
            .map(|d| {
                serde_json::json!({
                    "id": d.id.to_string(),
                    "path": d.path,
                    "formatter": d.formatter,
                    "storage_class": d.dataset_type.storage_class,
                })
            })
            .collect(),
    );
    let source =
        "jsonb_to_recordset($1) AS n(id uuid, path text, formatter text, storage_class text)";
    for datastore in datastores {
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {ns}.dataset_location (datastore_name, dataset_id) SELECT $2, id FROM {source} ON CONFLICT DO NOTHING"
        )))
        .bind(sqlx::types::Json(&payload))
        .bind(&datastore.name)
        .execute(&mut *conn)
        .await?;
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {ns}.{records} (dataset_id, path, formatter, storage_class, component, checksum, file_size)
             SELECT id, path, formatter, storage_class, $2, NULL, -1 FROM {source}
             ON CONFLICT (dataset_id, component) DO NOTHING",
            records = ident(&datastore.records_table)
        )))
        .bind(sqlx::types::Json(&payload))
        .bind(NULL_COMPONENT)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}
