//! Dimension records: checked against the universe the way daf_butler checks them
//! (`DimensionRecord.from_simple`: every field present, no other field, strict types, keys not
//! null), turned into rows of their element's table and of its skypix overlap table, and inserted
//! set-based with `ON CONFLICT (primary key) DO NOTHING` (`insertDimensionData(...,
//! skip_existing=True)`: the first version in the database wins).
//!
//! Rows are built as JSON objects keyed by column name and inserted with
//! `jsonb_populate_recordset(NULL::table, $1)`, so Postgres converts every value to its column's
//! type (`int8range` from the timespan literal, `text` for the base64 region) and one statement
//! serves any element of any universe.

use std::collections::{HashMap, HashSet};

use indexmap::IndexMap;
use schema::htm::HtmPixelization;
use schema::{RecordValue, Region, SerializedDimensionRecord};
use serde_json::{Map, Value};
use sqlx::{AssertSqlSafe, PgConnection};

use super::model::{Tables, ident};
use crate::outcome::RejectReason;
use crate::universe::{Element, Field, FieldType, Universe};

/// The most vertices a region may have. Real regions have a few (a detector) to a few dozen (a
/// visit); the envelope of a malformed polygon costs about 10 ms per vertex (a garbage polygon
/// touches nearly every trixel), so an absurd one could hold the writer for minutes.
pub const MAX_REGION_VERTICES: usize = 256;

/// A message fault found while preparing it: the reason class and the text.
pub type Refusal = (RejectReason, String);

/// One dimension record, ready to insert.
#[derive(Debug, Clone)]
pub struct PreparedRecord {
    /// The element (and table) name.
    pub element: String,
    /// The primary-key values, as text, for de-duplication within a batch.
    pub key: String,
    /// Column name to JSON value, as `jsonb_populate_recordset` reads it.
    pub row: Map<String, Value>,
    /// HTM pixels of the region at the universe's common level (spatial elements only).
    pub overlaps: Vec<u64>,
    /// The required-dimension columns of the overlap rows, with their values.
    pub overlap_keys: Map<String, Value>,
    /// Governor records (`instrument`) are never inserted by the writer, only checked to exist.
    pub governor: bool,
}

/// Checks one record against its element and builds its rows. The error says what is wrong and
/// in which field.
pub fn prepare(
    universe: &Universe,
    tables: &Tables,
    htm: &HtmPixelization,
    record: &SerializedDimensionRecord,
) -> Result<PreparedRecord, Refusal> {
    let name = record.definition.as_str();
    let invalid = |text: String| {
        (
            RejectReason::Invalid,
            format!("dimension record of `{name}`: {text}"),
        )
    };
    let Some(element) = universe.element(name) else {
        return Err(invalid(format!(
            "`{name}` is not an element of the repository's dimension universe {} {}",
            universe.namespace, universe.version
        )));
    };
    if !element.has_table {
        return Err((
            RejectReason::Unsupported,
            format!(
                "dimension record of `{name}`: `{name}` has no table of its own (it is a view of another element)"
            ),
        ));
    }
    let Some(table) = tables.get(name) else {
        return Err((
            RejectReason::Unsupported,
            format!("dimension record of `{name}`: the registry has no `{name}` table"),
        ));
    };

    // daf_butler's record models forbid extra fields and require every declared one.
    for field in record.record.fields() {
        if !element.fields.iter().any(|f| f.name == field) {
            return Err(invalid(format!(
                "`{field}` is not a field of `{name}` (extra fields are not permitted)"
            )));
        }
    }
    let mut row = Map::with_capacity(element.fields.len());
    let mut region: Option<Region> = None;
    for field in &element.fields {
        let Some(value) = record.record.get(&field.name) else {
            return Err(invalid(format!("field `{}` is required", field.name)));
        };
        let column = table.column(&field.name);
        let converted = convert(field, value, column.and_then(|c| c.max_length)).map_err(
            |text| match text {
                Conversion::Invalid(text) => invalid(text),
                Conversion::Unsupported(text) => (
                    RejectReason::Unsupported,
                    format!("dimension record of `{name}`: {text}"),
                ),
            },
        )?;
        if field.field_type == FieldType::Region
            && let RecordValue::String(hex) = value
        {
            region = Region::from_hex(hex).ok();
        }
        row.insert(field.name.clone(), converted);
    }

    let key_values: Vec<String> = table
        .primary_key
        .iter()
        .map(|column| row.get(column).map_or_else(String::new, Value::to_string))
        .collect();
    let key = key_values.join("\u{1f}");

    let mut overlaps = Vec::new();
    let mut overlap_keys = Map::new();
    if element.spatial {
        if let Some(polygon) = region.as_ref().and_then(Region::as_convex_polygon) {
            htm.envelope_into(polygon, &mut overlaps);
        }
        for dimension in &element.required {
            if let Some(field) = element.field_for_dimension(dimension)
                && let Some(value) = row.get(&field.name)
            {
                overlap_keys.insert(dimension.clone(), value.clone());
            }
        }
    }
    Ok(PreparedRecord {
        element: name.to_owned(),
        key,
        row,
        overlaps,
        overlap_keys,
        governor: element.governor,
    })
}

enum Conversion {
    Invalid(String),
    Unsupported(String),
}

/// One field's value, checked as daf_butler's strict record models check it, converted to what
/// its column takes.
fn convert(
    field: &Field,
    value: &RecordValue,
    max_length: Option<i32>,
) -> Result<Value, Conversion> {
    let wrong = |expected: &str| {
        Conversion::Invalid(format!(
            "field `{}` must be {expected}, got {}",
            field.name,
            value.type_name()
        ))
    };
    if matches!(value, RecordValue::Null) {
        return if field.nullable() {
            Ok(Value::Null)
        } else {
            Err(Conversion::Invalid(format!(
                "field `{}` is a key and may not be null",
                field.name
            )))
        };
    }
    match (field.field_type, value) {
        (FieldType::Int, RecordValue::Int(i)) => Ok(Value::from(*i)),
        (FieldType::Int, _) => Err(wrong("an integer")),
        // Pydantic's strict float accepts an integer.
        (FieldType::Float, RecordValue::Int(i)) => Ok(Value::from(*i)),
        (FieldType::Float, RecordValue::Float(f)) => {
            Ok(serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number))
        }
        (FieldType::Float, _) => Err(wrong("a float")),
        (FieldType::Bool, RecordValue::Bool(b)) => Ok(Value::Bool(*b)),
        (FieldType::Bool, _) => Err(wrong("a boolean")),
        (FieldType::String { .. }, RecordValue::String(s)) => {
            // The column's declared length is what Postgres enforces (daf_butler stores longer
            // declared lengths as text); a longer value would fail the whole insert.
            if let Some(max) = max_length {
                let length = s.chars().count();
                if length > usize::try_from(max).unwrap_or(usize::MAX) {
                    return Err(Conversion::Invalid(format!(
                        "field `{}` is {length} characters long; its column holds at most {max}",
                        field.name
                    )));
                }
            }
            Ok(Value::String(s.clone()))
        }
        (FieldType::String { .. }, _) => Err(wrong("a string")),
        (FieldType::Hash { .. }, RecordValue::String(hex_text)) => {
            if hex::decode(hex_text).is_err() {
                return Err(Conversion::Invalid(format!(
                    "field `{}` is not hex-encoded bytes",
                    field.name
                )));
            }
            Ok(Value::String(format!("\\x{hex_text}")))
        }
        (FieldType::Hash { .. }, _) => Err(wrong("hex-encoded bytes")),
        (FieldType::Region, RecordValue::String(hex_text)) => match Region::from_hex(hex_text) {
            Ok(region) => match region.as_convex_polygon() {
                Some(polygon) if polygon.vertices().len() > MAX_REGION_VERTICES => {
                    Err(Conversion::Unsupported(format!(
                        "field `{}` is a polygon of {} vertices; the writer accepts at most {MAX_REGION_VERTICES}",
                        field.name,
                        polygon.vertices().len()
                    )))
                }
                Some(_) => Ok(Value::String(region.to_base64())),
                None => Err(Conversion::Unsupported(format!(
                    "field `{}` holds a region kind whose HTM envelope this writer does not compute",
                    field.name
                ))),
            },
            Err(schema::RegionError::Unsupported { kind, .. }) => {
                Err(Conversion::Unsupported(format!(
                    "field `{}` is a {kind}; this writer computes HTM overlaps of convex polygons only",
                    field.name
                )))
            }
            Err(e) => Err(Conversion::Invalid(format!(
                "field `{}` is not a valid region: {e}",
                field.name
            ))),
        },
        (FieldType::Region, _) => Err(wrong("a hex-encoded region")),
        (FieldType::Timespan, RecordValue::Timespan(t)) => Ok(Value::String(t.to_int8range())),
        (FieldType::Timespan, _) => Err(wrong("a [begin, end] timespan")),
    }
}

/// Inserts prepared records: de-duplicated by primary key (the last record of the batch wins, as
/// daf_butler's `DimensionRecordSet` does), element by element in dependency order, each with its
/// overlap rows. Governor records are only checked to exist. Returns the message-level refusals
/// found by the database checks (a governor that does not exist).
pub async fn insert(
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
        let payload = Value::Array(
            rows.values()
                .map(|r| Value::Object(r.row.clone()))
                .collect(),
        );
        let table_name = format!("{ns}.{}", ident(&name));
        let sql = format!(
            "INSERT INTO {table_name} ({column_list}) SELECT {column_list} FROM jsonb_populate_recordset(NULL::{table_name}, $1) ON CONFLICT ({conflict}) DO NOTHING"
        );
        sqlx::query(AssertSqlSafe(sql))
            .bind(sqlx::types::Json(&payload))
            .execute(&mut *conn)
            .await?;

        if element.spatial {
            insert_overlaps(conn, &ns, universe, element, tables, rows.values().copied()).await?;
        }
    }
    Ok(())
}

/// `<element>_skypix_overlap` rows: one per HTM pixel of each record's region at the common
/// level, as daf_butler writes for every record it is given (existing ones included).
async fn insert_overlaps(
    conn: &mut PgConnection,
    ns: &str,
    universe: &Universe,
    element: &Element,
    tables: &Tables,
    records: impl Iterator<Item = &PreparedRecord>,
) -> Result<(), sqlx::Error> {
    let table = format!("{}_skypix_overlap", element.name);
    if tables.get(&table).is_none() {
        return Ok(());
    }
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
        return Ok(());
    }
    let mut columns = vec![ident("skypix_system"), ident("skypix_level")];
    columns.extend(element.required.iter().map(|d| ident(d)));
    columns.push(ident("skypix_index"));
    let column_list = columns.join(", ");
    let table_name = format!("{ns}.{}", ident(&table));
    let sql = format!(
        "INSERT INTO {table_name} ({column_list}) SELECT {column_list} FROM jsonb_populate_recordset(NULL::{table_name}, $1) ON CONFLICT DO NOTHING"
    );
    sqlx::query(AssertSqlSafe(sql))
        .bind(sqlx::types::Json(Value::Array(rows)))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The governor records (`instrument`) among `records` that are not in the registry. The writer
/// never creates governors: Prompt Processing requires them registered beforehand, and inserting
/// them concurrently is what deadlocked the central registry. An existing one is a no-op, as
/// daf_butler's `skip_existing` makes it.
pub async fn missing_governors<'a>(
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
