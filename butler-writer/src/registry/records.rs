//! Dimension records, prepared without the database: checked against the universe the way
//! daf_butler checks them (`DimensionRecord.from_simple`: every field present, no other field,
//! strict types, keys not null) and turned into rows of their element's table (JSON objects keyed
//! by column name, which `jsonb_populate_recordset` converts to each column's type) and the HTM
//! pixels of their skypix overlap rows. [`super::dimension_writes`] inserts them.

use std::collections::HashMap;

use schema::htm::HtmPixelization;
use schema::{RecordValue, Region, SerializedDimensionRecord};
use serde_json::{Map, Value};

use super::model::{Table, Tables};
use crate::outcome::RejectReason;
use crate::universe::{Element, Field, FieldType, Universe};

/// The most vertices a region may have. Real regions have a few (a detector) to a few dozen (a
/// visit); the envelope of a malformed polygon costs about 10 ms per vertex (a garbage polygon
/// touches nearly every trixel), so an absurd one could hold the writer for minutes.
pub const MAX_REGION_VERTICES: usize = 256;

/// A message fault found while preparing it: the reason class and the text.
pub type Refusal = (RejectReason, String);

/// HTM envelopes already computed in a batch, by region (hex, as on the wire). Every message of
/// a visit carries the same visit record, and the envelope of its region is most of the cost of
/// preparing a message: computed once per batch instead of once per message.
#[derive(Debug, Default)]
pub struct Envelopes(HashMap<String, Vec<u64>>);

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
    envelopes: &mut Envelopes,
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
    let (row, region) = record_row(element, table, record)?;
    let key = table
        .primary_key
        .iter()
        .map(|column| row.get(column).map_or_else(String::new, Value::to_string))
        .collect::<Vec<_>>()
        .join("\u{1f}");
    let (overlaps, overlap_keys) = if element.spatial {
        overlap_rows(element, htm, envelopes, &row, region)
    } else {
        (Vec::new(), Map::new())
    };
    Ok(PreparedRecord {
        element: name.to_owned(),
        key,
        row,
        overlaps,
        overlap_keys,
        governor: element.governor,
    })
}

/// The record's table row (column name to value) and its region, checked field by field:
/// daf_butler's record models forbid extra fields, require every declared one and type each
/// strictly.
fn record_row<'r>(
    element: &Element,
    table: &Table,
    record: &'r SerializedDimensionRecord,
) -> Result<(Map<String, Value>, Option<&'r str>), Refusal> {
    let name = element.name.as_str();
    let refusal = |conversion: Conversion| match conversion {
        Conversion::Invalid(text) => (
            RejectReason::Invalid,
            format!("dimension record of `{name}`: {text}"),
        ),
        Conversion::Unsupported(text) => (
            RejectReason::Unsupported,
            format!("dimension record of `{name}`: {text}"),
        ),
    };
    for field in record.record.fields() {
        if !element.fields.iter().any(|f| f.name == field) {
            return Err(refusal(Conversion::Invalid(format!(
                "`{field}` is not a field of `{name}` (extra fields are not permitted)"
            ))));
        }
    }
    let mut row = Map::with_capacity(element.fields.len());
    let mut region: Option<&str> = None;
    for field in &element.fields {
        let Some(value) = record.record.get(&field.name) else {
            return Err(refusal(Conversion::Invalid(format!(
                "field `{}` is required",
                field.name
            ))));
        };
        let max_length = table.column(&field.name).and_then(|c| c.max_length);
        let converted = convert(field, value, max_length).map_err(refusal)?;
        if field.field_type == FieldType::Region
            && let RecordValue::String(hex) = value
        {
            region = Some(hex);
        }
        row.insert(field.name.clone(), converted);
    }
    Ok((row, region))
}

/// The HTM pixels of a spatial record's region (hex, already checked by [`convert_region`]) at
/// the universe's common level, and the required-dimension columns of its overlap rows with
/// their values.
fn overlap_rows(
    element: &Element,
    htm: &HtmPixelization,
    envelopes: &mut Envelopes,
    row: &Map<String, Value>,
    region: Option<&str>,
) -> (Vec<u64>, Map<String, Value>) {
    let overlaps = match region {
        Some(hex) => envelopes
            .0
            .entry(hex.to_owned())
            .or_insert_with(|| {
                let mut pixels = Vec::new();
                if let Some(polygon) = Region::from_hex(hex)
                    .ok()
                    .as_ref()
                    .and_then(Region::as_convex_polygon)
                {
                    htm.envelope_into(polygon, &mut pixels);
                }
                pixels
            })
            .clone(),
        None => Vec::new(),
    };
    let mut keys = Map::new();
    for dimension in &element.required {
        if let Some(field) = element.field_for_dimension(dimension)
            && let Some(value) = row.get(&field.name)
        {
            keys.insert(dimension.clone(), value.clone());
        }
    }
    (overlaps, keys)
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
        (FieldType::String { .. }, RecordValue::String(s)) => convert_string(field, s, max_length),
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
        (FieldType::Region, RecordValue::String(hex_text)) => convert_region(field, hex_text),
        (FieldType::Region, _) => Err(wrong("a hex-encoded region")),
        (FieldType::Timespan, RecordValue::Timespan(t)) => Ok(Value::String(t.to_int8range())),
        (FieldType::Timespan, _) => Err(wrong("a [begin, end] timespan")),
    }
}

/// A string, within its column's declared length: that is what Postgres enforces (daf_butler
/// stores longer declared lengths as text), and a longer value would fail the whole insert.
fn convert_string(field: &Field, text: &str, max_length: Option<i32>) -> Result<Value, Conversion> {
    if let Some(max) = max_length {
        let length = text.chars().count();
        if length > usize::try_from(max).unwrap_or(usize::MAX) {
            return Err(Conversion::Invalid(format!(
                "field `{}` is {length} characters long; its column holds at most {max}",
                field.name
            )));
        }
    }
    Ok(Value::String(text.to_owned()))
}

/// A region: hex on the wire, base64 in the registry; only convex polygons of a sane size, the
/// regions whose HTM envelope the writer computes.
fn convert_region(field: &Field, hex_text: &str) -> Result<Value, Conversion> {
    match Region::from_hex(hex_text) {
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
    }
}
