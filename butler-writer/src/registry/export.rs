//! Reading a registry's datasets and dimension records back out as `pp-output` messages, so that
//! the engine can write them into another registry: the registry side of the Prompt Publication
//! Service's transfers (`transfer_from`, `transfer_dimension_records_from`) without a second SQL
//! writer. [`Registry::export_datasets`] reads what a dataset is (type, RUN, data ID, its file);
//! [`Registry::export_dimension_records`] reads records as daf_butler would hand them to
//! `insertDimensionData`; [`Placement`] says where the target's datastore rows point.

use std::collections::{BTreeMap, HashMap, HashSet};

use butler_repository::{DatabaseError, Doing, ErrorClass};
use indexmap::IndexMap;
use schema::{
    DataId, DataIdValue, PromptProcessingOutputEvent, Record, RecordValue, Region,
    SerializedDatasetRef, SerializedDimensionRecord, SerializedFileDataset, Timespan,
};
use serde_json::Value;
use sqlx::{AssertSqlSafe, Row};
use uuid::Uuid;

use super::Registry;
use super::datasets::NULL_COMPONENT;
use super::model::ident;
use crate::universe::{Element, FieldType};

/// Where the datastore rows the engine writes point.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Placement {
    /// Paths relative to the target's own datastore root, where the files are (ingest, and a
    /// transfer that copied the files: daf_butler's `transfer="copy"`).
    #[default]
    InDatastore,
    /// Absolute URIs: each relative path is joined to this root, the source's datastore root
    /// (daf_butler's `transfer="unsafe_direct"`: the target uses the source's files in place).
    Direct {
        /// The source datastore root, ending in `/` (`file:///repo/embargo/`,
        /// `s3://bucket/prefix/`).
        root: String,
    },
}

impl Placement {
    /// The path a datastore row gets for a file at `path` relative to its datastore root.
    pub fn place(&self, path: &str) -> String {
        match self {
            Self::InDatastore => path.to_owned(),
            Self::Direct { root } => format!("{root}{path}"),
        }
    }
}

/// Datasets read from a registry, ready for [`Registry::ingest_placed`] into another one.
#[derive(Debug, Clone, Default)]
pub struct ExportedDatasets {
    /// One message per file, with its datasets and no dimension records (the target must hold
    /// them already, as `transfer_from` without `transfer_dimensions` requires).
    pub events: Vec<PromptProcessingOutputEvent>,
    /// Ids the registry has no dataset for.
    pub not_in_registry: Vec<Uuid>,
    /// Ids of datasets the registry has but no datastore holds a file for.
    pub not_in_datastore: Vec<Uuid>,
}

impl ExportedDatasets {
    /// Every id of a dataset that was found with its file, in message order.
    pub fn ids(&self) -> impl Iterator<Item = Uuid> + '_ {
        self.events
            .iter()
            .flat_map(|e| e.dataset_refs().map(|(id, _, _)| *id))
    }

    /// Every file path, relative to the source's datastore root, with no repeats, leaving out
    /// files all of whose datasets are in `stored` (already in a target, with their files).
    pub fn paths_except(&self, stored: &HashSet<Uuid>) -> Vec<&str> {
        let mut seen = HashSet::new();
        self.events
            .iter()
            .flat_map(|e| e.datasets.iter())
            .filter(|f| f.refs.keys().any(|id| !stored.contains(id)))
            .map(|f| f.path.as_str())
            .filter(|p| seen.insert(*p))
            .collect()
    }
}

/// Why reading from the source registry failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The database failed or refused.
    #[error(transparent)]
    Database(#[from] DatabaseError),
    /// The source holds something the transfer does not reproduce.
    #[error("{0}")]
    Unsupported(String),
}

impl ExportError {
    /// Whether trying again may help.
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Database(error) => error.class(),
            Self::Unsupported(_) => ErrorClass::Stop,
        }
    }
}

/// One dataset's row in `dataset`, with its type and RUN.
struct DatasetRow {
    id: Uuid,
    type_name: String,
    tags_table: Option<String>,
    run_id: i64,
    run: String,
}

impl Registry {
    /// The datastores' records tables, each once.
    fn records_tables(&self) -> std::collections::BTreeSet<&str> {
        self.datastores
            .iter()
            .map(|d| d.records_table.as_str())
            .collect()
    }

    /// Which of `ids` a datastore of this registry holds a file for: a transfer need not copy
    /// their files again.
    pub async fn stored_datasets(&self, ids: &[Uuid]) -> Result<HashSet<Uuid>, DatabaseError> {
        let doing = "reading which datasets a datastore holds";
        let mut conn = self.pool.acquire().await.doing(doing)?;
        let mut stored = HashSet::new();
        for table in self.records_tables() {
            let found: Vec<Uuid> = sqlx::query_scalar(AssertSqlSafe(format!(
                "SELECT DISTINCT dataset_id FROM {}.{} WHERE dataset_id = ANY($1)",
                self.namespace_sql,
                ident(table)
            )))
            .bind(ids)
            .fetch_all(&mut *conn)
            .await
            .doing(doing)?;
            stored.extend(found);
        }
        Ok(stored)
    }

    /// Reads the datasets `ids` name: their type, RUN, data ID (required dimensions) and file
    /// (path relative to the datastore root, formatter). Ids the registry lacks, and datasets no
    /// datastore has a file for, are listed apart, as daf_butler's `transfer_from` reports them
    /// missing. A dataset stored as components (a disassembled composite) is refused: Prompt
    /// Processing never writes one, and the engine writes one file per dataset.
    pub async fn export_datasets(&self, ids: &[Uuid]) -> Result<ExportedDatasets, ExportError> {
        let doing = "reading datasets to transfer";
        let ns = &self.namespace_sql;
        let mut conn = self.pool.acquire().await.doing(doing)?;
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT d.id, t.name, t.tag_association_table, d.run_id, c.name AS run
             FROM {ns}.dataset d
             JOIN {ns}.dataset_type t ON t.id = d.dataset_type_id
             JOIN {ns}.collection c ON c.collection_id = d.run_id
             WHERE d.id = ANY($1)"
        )))
        .bind(ids)
        .fetch_all(&mut *conn)
        .await
        .doing(doing)?;
        let mut found: Vec<DatasetRow> = Vec::with_capacity(rows.len());
        for row in rows {
            found.push(DatasetRow {
                id: row.try_get("id").doing(doing)?,
                type_name: row.try_get("name").doing(doing)?,
                tags_table: row.try_get("tag_association_table").doing(doing)?,
                run_id: row.try_get("run_id").doing(doing)?,
                run: row.try_get("run").doing(doing)?,
            });
        }
        let present: HashSet<Uuid> = found.iter().map(|d| d.id).collect();
        let not_in_registry: Vec<Uuid> = ids
            .iter()
            .copied()
            .filter(|id| !present.contains(id))
            .collect();

        // Data IDs, one query per tags table: the row in the dataset's own RUN.
        let mut data_ids: HashMap<Uuid, DataId> = HashMap::with_capacity(found.len());
        let mut by_table: BTreeMap<&str, Vec<Uuid>> = BTreeMap::new();
        for dataset in &found {
            if let Some(table) = dataset.tags_table.as_deref() {
                by_table.entry(table).or_default().push(dataset.id);
            }
        }
        let runs: HashMap<Uuid, i64> = found.iter().map(|d| (d.id, d.run_id)).collect();
        for (table, table_ids) in by_table {
            let rows = sqlx::query(AssertSqlSafe(format!(
                "SELECT t.dataset_id, t.collection_id, to_jsonb(t) - 'dataset_id' - 'collection_id' - 'dataset_type_id' AS data_id
                 FROM {ns}.{} t WHERE t.dataset_id = ANY($1)",
                ident(table)
            )))
            .bind(&table_ids)
            .fetch_all(&mut *conn)
            .await
            .doing(doing)?;
            for row in rows {
                let id: Uuid = row.try_get("dataset_id").doing(doing)?;
                let collection: i64 = row.try_get("collection_id").doing(doing)?;
                if runs.get(&id) != Some(&collection) {
                    continue;
                }
                let value: Value = row.try_get("data_id").doing(doing)?;
                data_ids.insert(id, data_id_from_json(&value, table)?);
            }
        }

        // Files: every records table of every datastore.
        let mut files: HashMap<Uuid, (String, String)> = HashMap::with_capacity(found.len());
        let mut components: HashSet<Uuid> = HashSet::new();
        for table in self.records_tables() {
            let rows = sqlx::query(AssertSqlSafe(format!(
                "SELECT dataset_id, path, formatter, component FROM {ns}.{} WHERE dataset_id = ANY($1)",
                ident(table)
            )))
            .bind(ids)
            .fetch_all(&mut *conn)
            .await
            .doing(doing)?;
            for row in rows {
                let id: Uuid = row.try_get("dataset_id").doing(doing)?;
                let component: String = row.try_get("component").doing(doing)?;
                if component != NULL_COMPONENT {
                    components.insert(id);
                    continue;
                }
                files.entry(id).or_insert((
                    row.try_get("path").doing(doing)?,
                    row.try_get("formatter").doing(doing)?,
                ));
            }
        }
        if let Some(id) = components.iter().next() {
            return Err(ExportError::Unsupported(format!(
                "dataset {id} is stored as components (a disassembled composite), which the transfer does not copy"
            )));
        }

        // One message per file, its refs in the order the ids were asked for.
        let order: HashMap<Uuid, usize> = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        found.sort_by_key(|d| order.get(&d.id).copied().unwrap_or(usize::MAX));
        let mut by_path: IndexMap<String, SerializedFileDataset> = IndexMap::new();
        let mut not_in_datastore = Vec::new();
        for dataset in found {
            let (Some((path, formatter)), Some(data_id)) =
                (files.remove(&dataset.id), data_ids.remove(&dataset.id))
            else {
                not_in_datastore.push(dataset.id);
                continue;
            };
            let file = by_path
                .entry(path.clone())
                .or_insert_with(|| SerializedFileDataset {
                    refs: IndexMap::new(),
                    path,
                    formatter: Some(formatter),
                });
            file.refs.insert(
                dataset.id,
                SerializedDatasetRef {
                    dataset_type_name: dataset.type_name,
                    run: dataset.run,
                    data_id,
                },
            );
        }
        let events = by_path
            .into_values()
            .map(|file| PromptProcessingOutputEvent {
                dimension_records: Vec::new(),
                dataset_types: None,
                datasets: vec![file],
            })
            .collect();
        Ok(ExportedDatasets {
            events,
            not_in_registry,
            not_in_datastore,
        })
    }

    /// Reads the records of `element` whose required dimensions have the values of each of
    /// `keys` (field name to value, such as `{instrument: LSSTCam, id: 7}`), with the records
    /// daf_butler's `transfer_dimension_records_from` brings along: those of the dimensions each
    /// record requires or implies (recursively), and those of the elements its dimension
    /// populates (`visit_definition`, `visit_detector_region`, `visit_system_membership` for a
    /// visit).
    /// Governors (`instrument`) and the records they need are left out: a target repository has
    /// its instrument registered. Records come in dependency order, each once.
    pub async fn export_dimension_records(
        &self,
        element: &str,
        keys: &[Record],
    ) -> Result<Vec<SerializedDimensionRecord>, ExportError> {
        let doing = "reading dimension records to transfer";
        let mut conn = self.pool.acquire().await.doing(doing)?;
        let mut out: IndexMap<(String, String), SerializedDimensionRecord> = IndexMap::new();
        // (element, key record) still to read, and every key asked for already.
        let mut pending: Vec<(String, Vec<Record>)> = vec![(element.to_owned(), keys.to_vec())];
        let mut asked: HashSet<(String, String)> = HashSet::new();
        while let Some((name, wanted)) = pending.pop() {
            let wanted: Vec<Record> = wanted
                .into_iter()
                .filter(|k| asked.insert((name.clone(), key_text(k))))
                .collect();
            if wanted.is_empty() {
                continue;
            }
            let Some(definition) = self.universe.element(&name) else {
                return Err(ExportError::Unsupported(format!(
                    "`{name}` is not an element of the registry's dimension universe"
                )));
            };
            if definition.governor || !definition.has_table {
                continue;
            }
            let records = read_records(&mut conn, &self.namespace_sql, definition, &wanted).await?;
            // The records each record needs: its required and implied dimensions'.
            for dependency in &definition.depends_on {
                let Some(target) = self.universe.element(dependency) else {
                    continue;
                };
                let keys: Vec<Record> = records
                    .iter()
                    .filter_map(|r| key_of(target, definition, &r.record))
                    .collect();
                pending.push((dependency.clone(), keys));
            }
            // The elements this dimension populates, keyed by the same required values.
            if definition.is_dimension {
                for populated in self
                    .universe
                    .elements()
                    .iter()
                    .filter(|e| e.populated_by.as_deref() == Some(name.as_str()))
                {
                    let keys: Vec<Record> = records
                        .iter()
                        .filter_map(|r| populated_key(populated, definition, &r.record))
                        .collect();
                    pending.push((populated.name.clone(), keys));
                }
            }
            for record in records {
                let key = (record.definition.clone(), key_text(&record.record));
                out.entry(key).or_insert(record);
            }
        }
        let names: Vec<&str> = out.keys().map(|(e, _)| e.as_str()).collect();
        let order = self.universe.dependency_order(names);
        let mut ordered = Vec::with_capacity(out.len());
        for name in order {
            ordered.extend(
                out.iter()
                    .filter(|((e, _), _)| *e == name)
                    .map(|(_, r)| r.clone()),
            );
        }
        Ok(ordered)
    }
}

/// A record's (or key's) fields as text, to tell records apart.
fn key_text(record: &Record) -> String {
    serde_json::to_string(record).unwrap_or_default()
}

/// The required-dimension values of dimension `target`, read from a record of `from`:
/// each from the record's field for the same dimension.
fn key_of(target: &Element, from: &Element, record: &Record) -> Option<Record> {
    let mut key = Record::default();
    for dimension in &target.required {
        let field = target.field_for_dimension(dimension)?;
        let source = from.field_for_dimension(dimension)?;
        let value = record.get(&source.name)?;
        if matches!(value, RecordValue::Null) {
            return None;
        }
        key.0.insert(field.name.clone(), value.clone());
    }
    Some(key)
}

/// The key of the records of `populated` (a combination such as `visit_detector_region`) that
/// belong to a record of `by`: the values of `by`'s required dimensions, under the populated
/// element's field names. Its other required dimensions (`detector`) are left free.
fn populated_key(populated: &Element, by: &Element, record: &Record) -> Option<Record> {
    let mut key = Record::default();
    for dimension in &by.required {
        let field = populated.field_for_dimension(dimension)?;
        let source = by.field_for_dimension(dimension)?;
        key.0
            .insert(field.name.clone(), record.get(&source.name)?.clone());
    }
    Some(key)
}

/// Reads the records of one element matching any of `keys` (each a set of field values).
async fn read_records(
    conn: &mut sqlx::PgConnection,
    ns: &str,
    element: &Element,
    keys: &[Record],
) -> Result<Vec<SerializedDimensionRecord>, ExportError> {
    let doing = "reading dimension records to transfer";
    let columns: Vec<String> = element
        .fields
        .iter()
        .map(|f| {
            let column = ident(&f.name);
            let expression = match f.field_type {
                FieldType::Hash { .. } => format!("encode(t.{column}, 'hex')"),
                FieldType::Timespan => format!("t.{column}::text"),
                _ => format!("t.{column}"),
            };
            format!("'{}', {expression}", f.name.replace('\'', "''"))
        })
        .collect();
    // Key columns as one JSON object per wanted record, matched by containment.
    let wanted: Vec<Value> = keys
        .iter()
        .map(|k| serde_json::to_value(k).unwrap_or(Value::Null))
        .collect();
    let key_fields: Vec<&str> = keys
        .first()
        .map(|k| k.fields().collect())
        .unwrap_or_default();
    let key_object = key_fields
        .iter()
        .map(|f| format!("'{}', t.{}", f.replace('\'', "''"), ident(f)))
        .collect::<Vec<_>>()
        .join(", ");
    // jsonb_build_object takes at most 100 arguments: elements have a few dozen fields at most.
    let sql = format!(
        "SELECT jsonb_build_object({}) AS record FROM {ns}.{} t
         WHERE jsonb_build_object({key_object}) IN (SELECT value FROM jsonb_array_elements($1))",
        columns.join(", "),
        ident(&element.name)
    );
    let rows = sqlx::query(AssertSqlSafe(sql))
        .bind(Value::Array(wanted))
        .fetch_all(&mut *conn)
        .await
        .doing(doing)?;
    let mut records = Vec::with_capacity(rows.len());
    for row in rows {
        let value: Value = row.try_get("record").doing(doing)?;
        records.push(SerializedDimensionRecord {
            definition: element.name.clone(),
            record: record_from_row(element, &value).map_err(ExportError::Unsupported)?,
        });
    }
    Ok(records)
}

/// A record in its wire form from its row (as `jsonb_build_object` gave it): fields in
/// daf_butler's order, regions back to hex, timespans back to `[begin, end]`.
fn record_from_row(element: &Element, row: &Value) -> Result<Record, String> {
    let mut record = Record::default();
    for field in &element.fields {
        let value = row.get(&field.name).unwrap_or(&Value::Null);
        let converted = match (field.field_type, value) {
            (_, Value::Null) => RecordValue::Null,
            (FieldType::Int, Value::Number(n)) => {
                RecordValue::Int(n.as_i64().ok_or_else(|| {
                    format!("{}.{}: {n} is not an integer", element.name, field.name)
                })?)
            }
            (FieldType::Float, Value::Number(n)) => {
                RecordValue::Float(n.as_f64().unwrap_or(f64::NAN))
            }
            (FieldType::Bool, Value::Bool(b)) => RecordValue::Bool(*b),
            (FieldType::String { .. } | FieldType::Hash { .. }, Value::String(s)) => {
                RecordValue::String(s.clone())
            }
            (FieldType::Region, Value::String(s)) => RecordValue::String(
                Region::from_base64(s)
                    .map_err(|e| format!("{}.{}: {e}", element.name, field.name))?
                    .to_hex(),
            ),
            (FieldType::Timespan, Value::String(s)) => {
                RecordValue::Timespan(parse_int8range(s).ok_or_else(|| {
                    format!("{}.{}: `{s}` is not a timespan", element.name, field.name)
                })?)
            }
            (_, other) => {
                return Err(format!(
                    "{}.{}: unexpected value {other}",
                    element.name, field.name
                ));
            }
        };
        record.0.insert(field.name.clone(), converted);
    }
    Ok(record)
}

/// A timespan from the `int8range` text Postgres prints: `[b,e)`, an unbounded side empty,
/// `empty` for an empty range.
fn parse_int8range(text: &str) -> Option<Timespan> {
    if text == "empty" {
        return Some(Timespan::empty());
    }
    let inner = text.get(1..text.len().checked_sub(1)?)?;
    let (begin, end) = inner.split_once(',')?;
    let begin = if begin.is_empty() {
        Timespan::MIN_NSEC
    } else {
        let b: i64 = begin.parse().ok()?;
        if text.starts_with('(') { b + 1 } else { b }
    };
    let end = if end.is_empty() {
        Timespan::MAX_NSEC
    } else {
        let e: i64 = end.parse().ok()?;
        if text.ends_with(']') { e + 1 } else { e }
    };
    Some(Timespan::new(begin, end))
}

/// A data ID from a tags-table row's dimension columns (as JSON).
fn data_id_from_json(value: &Value, table: &str) -> Result<DataId, ExportError> {
    let mut data_id = DataId::new();
    let Some(object) = value.as_object() else {
        return Ok(data_id);
    };
    for (dimension, v) in object {
        let converted = match v {
            Value::Number(n) => n.as_i64().map(DataIdValue::Int),
            Value::String(s) => Some(DataIdValue::Str(s.clone())),
            _ => None,
        };
        let Some(converted) = converted else {
            return Err(ExportError::Unsupported(format!(
                "{table}.{dimension} holds {v}, not a data ID value"
            )));
        };
        data_id.insert(dimension.clone(), converted);
    }
    Ok(data_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int8range_text_round_trips() {
        for span in [
            Timespan::new(10, 20),
            Timespan::new(Timespan::MIN_NSEC, 20),
            Timespan::new(10, Timespan::MAX_NSEC),
            Timespan::empty(),
        ] {
            assert_eq!(parse_int8range(&span.to_int8range()), Some(span));
        }
        assert_eq!(parse_int8range("[10,20]"), Some(Timespan::new(10, 21)));
        assert_eq!(parse_int8range("nonsense"), None);
    }

    #[test]
    fn direct_placement_joins_the_source_root() {
        let direct = Placement::Direct {
            root: "file:///repo/embargo/".into(),
        };
        assert_eq!(direct.place("a/b.fits"), "file:///repo/embargo/a/b.fits");
        assert_eq!(Placement::InDatastore.place("a/b.fits"), "a/b.fits");
    }
}
