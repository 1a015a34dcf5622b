//! Step 2 of a batch: the dimension records of every message, in one transaction, de-duplicated
//! and in dependency order, `ON CONFLICT DO NOTHING` (`insertDimensionData(...,
//! skip_existing=True)`: the first version in the database wins), with their skypix overlap rows.
//! If the database refuses a row (a unique `obs_id` taken by another exposure), the records are
//! inserted again message by message under savepoints, and only the messages the database
//! refuses are rejected. Governor records (`instrument`) are only checked to exist.
//!
//! Rows go in as JSON with `jsonb_populate_recordset(NULL::table, $1)`, so Postgres converts
//! every value to its column's type and one statement serves any element of any universe.

use std::collections::{HashMap, HashSet};

use butler_repository::{DatabaseError, Doing, ErrorClass, classify, describe};
use indexmap::IndexMap;
use serde_json::Value;
use sqlx::{AssertSqlSafe, Connection, PgConnection};
use tracing::warn;

use super::Registry;
use super::model::{Tables, ident};
use super::prepare::PreparedMessage;
use super::records::PreparedRecord;
use super::rejections::Rejections;
use crate::error::EngineError;
use crate::outcome::RejectReason;
use crate::universe::{Element, Universe};

impl Registry {
    /// Rejects the messages whose governor records (`instrument`) are not in the registry, and
    /// drops them from `prepared`.
    pub(super) async fn check_governors(
        &self,
        conn: &mut PgConnection,
        prepared: &mut Vec<PreparedMessage>,
        rejections: &mut Rejections,
    ) -> Result<(), EngineError> {
        let tables = self.catalog.tables();
        let missing = missing_governors(
            conn,
            &self.namespace,
            &tables,
            prepared.iter().flat_map(|m| &m.records),
        )
        .await
        .doing("looking up governor dimension records")?;
        if missing.is_empty() {
            return Ok(());
        }
        for message in prepared.iter() {
            if let Some(record) = message
                .records
                .iter()
                .find(|r| r.governor && missing.contains(&r.key))
            {
                let value = record
                    .row
                    .values()
                    .next()
                    .map(ToString::to_string)
                    .unwrap_or_default();
                rejections.reject(
                    message.index,
                    RejectReason::Unsupported,
                    format!(
                        "`{}` record {value} is not in the registry, and the writer does not create governor dimensions: register it first",
                        record.element
                    ),
                );
            }
        }
        prepared.retain(|m| !rejections.contains(m.index));
        Ok(())
    }

    /// Every message's records in one transaction; if the database refuses one, again message by
    /// message under savepoints, rejecting only the messages it refuses.
    pub(super) async fn insert_dimensions(
        &self,
        conn: &mut PgConnection,
        prepared: &[PreparedMessage],
        rejections: &mut Rejections,
    ) -> Result<(), EngineError> {
        let all: Vec<&PreparedRecord> = prepared.iter().flat_map(|m| &m.records).collect();
        if all.is_empty() {
            return Ok(());
        }
        let tables = self.catalog.tables();
        let doing = "inserting dimension records";
        let mut tx = conn.begin().await.doing(doing)?;
        match insert(&mut tx, &self.namespace, &self.universe, &tables, &all).await {
            Ok(()) => {
                tx.commit().await.doing(doing)?;
                return Ok(());
            }
            Err(error) if classify(&error) == ErrorClass::Reject => {
                tx.rollback().await.doing(doing)?;
                warn!(error = %describe(&error), "the database refused a dimension record; inserting message by message to find it");
            }
            Err(error) => return Err(DatabaseError::new(doing, error).into()),
        }
        let mut tx = conn.begin().await.doing(doing)?;
        for message in prepared {
            let refs: Vec<&PreparedRecord> = message.records.iter().collect();
            let mut savepoint = (*tx).begin().await.doing(doing)?;
            match insert(
                &mut savepoint,
                &self.namespace,
                &self.universe,
                &tables,
                &refs,
            )
            .await
            {
                Ok(()) => savepoint.commit().await.doing(doing)?,
                Err(error) if classify(&error) == ErrorClass::Reject => {
                    savepoint.rollback().await.doing(doing)?;
                    rejections.reject(
                        message.index,
                        RejectReason::Invalid,
                        format!(
                            "the registry refused a dimension record: {}",
                            describe(&error)
                        ),
                    );
                }
                Err(error) => return Err(DatabaseError::new(doing, error).into()),
            }
        }
        tx.commit().await.doing(doing)?;
        Ok(())
    }
}

/// Inserts prepared records: de-duplicated by primary key (the last record of the batch wins, as
/// daf_butler's `DimensionRecordSet` does), every element and its overlap rows in one statement,
/// one `INSERT` per table as a CTE, in dependency order (foreign keys are checked at the end of
/// the statement, so a row finds the rows it refers to whichever CTE wrote them). One round trip
/// instead of one per table: ten for a visit's records. Governor records are only checked to
/// exist (by [`missing_governors`]).
async fn insert(
    conn: &mut PgConnection,
    namespace: &str,
    universe: &Universe,
    tables: &Tables,
    records: &[&PreparedRecord],
) -> Result<(), sqlx::Error> {
    let mut by_element: HashMap<&str, IndexMap<&str, &PreparedRecord>> = HashMap::new();
    for record in records {
        let rows = by_element.entry(record.element.as_str()).or_default();
        // Keep the first position, take the last value.
        rows.insert(record.key.as_str(), record);
    }
    let ns = ident(namespace);
    let mut inserts: Vec<String> = Vec::new();
    let mut payloads: Vec<Value> = Vec::new();
    for name in universe.dependency_order(by_element.keys().copied()) {
        let Some(rows) = by_element.get(name.as_str()) else {
            continue;
        };
        let Some(element) = universe.element(&name) else {
            continue;
        };
        let Some(table) = tables.get(&name) else {
            continue;
        };
        if element.governor {
            // Checked by `missing_governors` before the batch; nothing to write.
            continue;
        }
        let columns: Vec<String> = element.fields.iter().map(|f| ident(&f.name)).collect();
        let column_list = columns.join(", ");
        let conflict = table
            .primary_key
            .iter()
            .map(|c| ident(c))
            .collect::<Vec<_>>()
            .join(", ");
        payloads.push(Value::Array(
            rows.values()
                .map(|r| Value::Object(r.row.clone()))
                .collect(),
        ));
        let table_name = format!("{ns}.{}", ident(&name));
        inserts.push(format!(
            "INSERT INTO {table_name} ({column_list}) SELECT {column_list} FROM jsonb_populate_recordset(NULL::{table_name}, ${}) ON CONFLICT ({conflict}) DO NOTHING",
            payloads.len()
        ));
        if element.spatial
            && let Some((sql, payload)) =
                overlaps(&ns, universe, element, tables, rows.values().copied())
        {
            payloads.push(payload);
            inserts.push(sql.replace("$?", &format!("${}", payloads.len())));
        }
    }
    if inserts.is_empty() {
        return Ok(());
    }
    let ctes = inserts
        .iter()
        .enumerate()
        .map(|(i, insert)| format!("w{i} AS ({insert})"))
        .collect::<Vec<_>>()
        .join(",\n");
    let mut query = sqlx::query(AssertSqlSafe(format!("WITH {ctes} SELECT 1")));
    for payload in &payloads {
        query = query.bind(sqlx::types::Json(payload));
    }
    query.execute(&mut *conn).await?;
    Ok(())
}

/// The `INSERT` of `<element>_skypix_overlap` rows (its parameter written `$?`) and its rows: one
/// per HTM pixel of each record's region at the common level, as daf_butler writes for every
/// record it is given (existing ones included). `None` without rows or without the table.
fn overlaps<'a>(
    ns: &str,
    universe: &Universe,
    element: &Element,
    tables: &Tables,
    records: impl Iterator<Item = &'a PreparedRecord>,
) -> Option<(String, Value)> {
    let table = format!("{}_skypix_overlap", element.name);
    tables.get(&table)?;
    let mut rows = Vec::new();
    for record in records {
        for pixel in &record.overlaps {
            let mut row = record.overlap_keys.clone();
            row.insert("skypix_system".into(), Value::from("htm"));
            row.insert(
                "skypix_level".into(),
                Value::from(universe.common_htm_level),
            );
            row.insert("skypix_index".into(), Value::from(*pixel));
            rows.push(Value::Object(row));
        }
    }
    if rows.is_empty() {
        return None;
    }
    let mut columns = vec![ident("skypix_system"), ident("skypix_level")];
    columns.extend(element.required.iter().map(|d| ident(d)));
    columns.push(ident("skypix_index"));
    let column_list = columns.join(", ");
    let table_name = format!("{ns}.{}", ident(&table));
    Some((
        format!(
            "INSERT INTO {table_name} ({column_list}) SELECT {column_list} FROM jsonb_populate_recordset(NULL::{table_name}, $?) ON CONFLICT DO NOTHING"
        ),
        Value::Array(rows),
    ))
}

/// The governor records (`instrument`) among `records` that are not in the registry. The writer
/// never creates governors: Prompt Processing requires them registered beforehand, and inserting
/// them concurrently is what deadlocked the central registry. An existing one is a no-op, as
/// daf_butler's `skip_existing` makes it.
async fn missing_governors<'a>(
    conn: &mut PgConnection,
    namespace: &str,
    tables: &Tables,
    records: impl Iterator<Item = &'a PreparedRecord>,
) -> Result<HashSet<String>, sqlx::Error> {
    let mut missing = HashSet::new();
    let mut by_element: HashMap<&str, Vec<&PreparedRecord>> = HashMap::new();
    for record in records.filter(|r| r.governor) {
        by_element
            .entry(record.element.as_str())
            .or_default()
            .push(record);
    }
    for (element, records) in by_element {
        let Some(table) = tables.get(element) else {
            continue;
        };
        let [pk] = table.primary_key.as_slice() else {
            continue;
        };
        let values: Vec<String> = records
            .iter()
            .filter_map(|r| r.row.get(pk).and_then(Value::as_str).map(str::to_owned))
            .collect();
        let sql = format!(
            "SELECT {pk} FROM {}.{} WHERE {pk} = ANY($1)",
            ident(namespace),
            ident(element),
            pk = ident(pk)
        );
        let found: Vec<String> = sqlx::query_scalar(AssertSqlSafe(sql))
            .bind(&values)
            .fetch_all(&mut *conn)
            .await?;
        for record in records {
            if !record
                .row
                .get(pk)
                .and_then(Value::as_str)
                .is_some_and(|v| found.iter().any(|f| f == v))
            {
                missing.insert(record.key.clone());
            }
        }
    }
    Ok(missing)
}
