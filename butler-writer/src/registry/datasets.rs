//! Datasets, prepared without the database: resolved against their registered types, their data
//! IDs put in tags-table column order, and the columns every dataset statement reads
//! ([`DatasetColumns`]). [`super::dataset_checks`] checks them against the
//! registry and [`super::dataset_writes`] inserts them (`butler.ingest(transfer=None,
//! skip_existing=True, record_validation_info=False)`; `../shared/reference/butler-registry.md`
//! §2 and §5).

use std::collections::{HashMap, HashSet};

use schema::{DataId, DataIdValue, PromptProcessingOutputEvent, SerializedFileDataset};
use serde_json::Value;
use sqlx::Postgres;
use sqlx::postgres::PgArguments;
use sqlx::query::Query;
use uuid::Uuid;

use super::dataset_checks::RunState;
use super::model::{DatasetType, Table, Tables, ident};
use super::records::Refusal;
use crate::outcome::RejectReason;

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
    let mut prepared = Vec::new();
    for (file_index, file) in event.datasets.iter().enumerate() {
        let (run, formatter) = check_file(file_index, file)?;
        for (id, dataset_ref) in &file.refs {
            let dataset_type = types.get(&dataset_ref.dataset_type_name).ok_or_else(|| {
                (
                    RejectReason::UnknownDatasetType,
                    format!(
                        "dataset {id}: dataset type `{}` is not registered in the repository",
                        dataset_ref.dataset_type_name
                    ),
                )
            })?;
            let table = tables.get(&dataset_type.tags_table).ok_or_else(|| {
                (
                    RejectReason::Unsupported,
                    format!(
                        "dataset {id}: tags table {} is missing",
                        dataset_type.tags_table
                    ),
                )
            })?;
            prepared.push(PreparedDataset {
                id: *id,
                dataset_type: dataset_type.clone(),
                run: run.to_owned(),
                data_id: data_id(*id, dataset_type, table, &dataset_ref.data_id)?,
                path: file.path.clone(),
                formatter: formatter.to_owned(),
                file: file_index,
            });
        }
    }
    check_unique(&prepared)?;
    Ok(prepared)
}

/// A file's RUN and formatter, once it has refs of one RUN, a formatter and a path inside the
/// datastore root (`transfer=None` ingests files in place).
fn check_file(file_index: usize, file: &SerializedFileDataset) -> Result<(&str, &str), Refusal> {
    if file.refs.is_empty() {
        return Err((
            RejectReason::Invalid,
            format!("datasets[{file_index}] ({}) has no refs", file.path),
        ));
    }
    let Some(run) = file.common_run() else {
        return Err((
            RejectReason::Invalid,
            format!(
                "datasets[{file_index}] ({}): its refs name different RUN collections",
                file.path
            ),
        ));
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
    Ok((run, formatter))
}

/// The values of the type's required dimensions, in tags-table column order, each of its
/// column's kind (integer or string).
fn data_id(
    id: Uuid,
    dataset_type: &DatasetType,
    table: &Table,
    given: &DataId,
) -> Result<Vec<Value>, Refusal> {
    let invalid = |text: String| (RejectReason::Invalid, text);
    let mut values = Vec::with_capacity(dataset_type.dimensions.len());
    for dimension in &dataset_type.dimensions {
        let Some(value) = given.get(dimension) else {
            return Err(invalid(format!(
                "dataset {id} ({}): data ID lacks required dimension `{dimension}`",
                dataset_type.name
            )));
        };
        let integer = table
            .column(dimension)
            .is_some_and(super::model::Column::is_integer);
        values.push(match (value, integer) {
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
    Ok(values)
}

/// daf_butler refuses one ingest call holding the same dataset twice (`Ingest conflict`).
fn check_unique(prepared: &[PreparedDataset]) -> Result<(), Refusal> {
    let mut ids = HashSet::new();
    let mut identities = HashSet::new();
    for dataset in prepared {
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
    Ok(())
}

/// One tags table's datasets as columns, each sent as one binary array parameter and read back
/// as rows with `unnest(...) AS n(id, dataset_type_id, run_id, <dimensions>, <extra>)`. Arrays
/// cost the server a fraction of what parsing the same rows as JSON does, and the client builds
/// them without a JSON tree.
#[derive(Debug, Clone)]
pub(super) struct DatasetColumns {
    ids: Vec<Uuid>,
    type_ids: Vec<i64>,
    run_ids: Vec<Option<i64>>,
    /// The data ID columns, in tags-table order.
    dimensions: Vec<(String, DimensionColumn)>,
    /// Further `int8` columns a statement needs (`ingest_date`).
    extra: Vec<(String, Vec<i64>)>,
}

/// The values of one data ID dimension: integers or strings, as its tags-table column is.
#[derive(Debug, Clone)]
enum DimensionColumn {
    Integer(Vec<Option<i64>>),
    Text(Vec<Option<String>>),
}

impl DatasetColumns {
    /// The columns of `datasets` (all of one tags table, so of one dimension group), with the
    /// `collection_id` of each one's RUN where it exists (NULL otherwise).
    pub(super) fn new(
        table: &Table,
        datasets: &[&PreparedDataset],
        run_ids: &HashMap<String, RunState>,
    ) -> Self {
        let names: &[String] = datasets
            .first()
            .map_or(&[], |d| d.dataset_type.dimensions.as_slice());
        let dimensions = names
            .iter()
            .enumerate()
            .map(|(position, name)| {
                let integer = table
                    .column(name)
                    .is_some_and(super::model::Column::is_integer);
                let values = datasets.iter().map(|d| d.data_id.get(position));
                let column = if integer {
                    DimensionColumn::Integer(values.map(|v| v.and_then(Value::as_i64)).collect())
                } else {
                    DimensionColumn::Text(
                        values
                            .map(|v| v.and_then(Value::as_str).map(str::to_owned))
                            .collect(),
                    )
                };
                (name.clone(), column)
            })
            .collect();
        Self {
            ids: datasets.iter().map(|d| d.id).collect(),
            type_ids: datasets.iter().map(|d| d.dataset_type.id).collect(),
            run_ids: datasets
                .iter()
                .map(|d| match run_ids.get(&d.run) {
                    Some(RunState::Exists(id)) => Some(*id),
                    _ => None,
                })
                .collect(),
            dimensions,
            extra: Vec::new(),
        }
    }

    /// Adds an `int8` column.
    pub(super) fn with_int8(mut self, name: &str, values: Vec<i64>) -> Self {
        self.extra.push((name.to_owned(), values));
        self
    }

    /// How many parameters [`source`](Self::source) takes.
    pub(super) fn parameters(&self) -> usize {
        3 + self.dimensions.len() + self.extra.len()
    }

    /// `unnest($1::uuid[], ...) AS n(id, ...)`, its parameters numbered from `$first`.
    pub(super) fn source(&self, first: usize) -> String {
        let mut kinds = vec!["uuid", "int8", "int8"];
        let mut names = vec![
            "id".to_owned(),
            "dataset_type_id".to_owned(),
            "run_id".to_owned(),
        ];
        for (name, column) in &self.dimensions {
            kinds.push(match column {
                DimensionColumn::Integer(_) => "int8",
                DimensionColumn::Text(_) => "text",
            });
            names.push(ident(name));
        }
        for (name, _) in &self.extra {
            kinds.push("int8");
            names.push(ident(name));
        }
        let arrays = kinds
            .iter()
            .enumerate()
            .map(|(i, kind)| format!("${}::{kind}[]", first + i))
            .collect::<Vec<_>>()
            .join(", ");
        format!("unnest({arrays}) AS n({})", names.join(", "))
    }

    /// Binds the columns, in [`source`](Self::source)'s order.
    pub(super) fn bind<'q>(
        &'q self,
        query: Query<'q, Postgres, PgArguments>,
    ) -> Query<'q, Postgres, PgArguments> {
        let mut query = query
            .bind(&self.ids)
            .bind(&self.type_ids)
            .bind(&self.run_ids);
        for (_, column) in &self.dimensions {
            query = match column {
                DimensionColumn::Integer(values) => query.bind(values),
                DimensionColumn::Text(values) => query.bind(values),
            };
        }
        for (_, values) in &self.extra {
            query = query.bind(values);
        }
        query
    }
}
