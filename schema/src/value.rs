//! The columns of a dimension record, kept as the JSON carried them.
//!
//! Which columns a record has depends on the repository's dimension universe, which only the writer
//! knows, so a [`Record`] is an ordered map of column name to [`RecordValue`]. The value type is
//! daf_butler's `SerializedDimensionRecord.record` union, `None | bool | int | float | str |
//! Timespan`, each strict: an integer stays an integer and a float stays a float, so a record
//! re-serializes to the bytes it came from. Typed accessors interpret what the services need.

use std::fmt;

use indexmap::IndexMap;
use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::region::{Region, RegionError};
use crate::timespan::Timespan;

/// One column value of a dimension record.
#[derive(Debug, Clone, PartialEq)]
pub enum RecordValue {
    /// JSON `null`: a nullable column without a value, or a non-finite float.
    Null,
    /// JSON `true` / `false`.
    Bool(bool),
    /// A JSON number without fraction or exponent.
    Int(i64),
    /// A JSON number with a fraction or an exponent.
    Float(f64),
    /// A JSON string: text columns, hex-encoded regions and bytes.
    String(String),
    /// A two-integer JSON array: a TAI-nanosecond timespan.
    Timespan(Timespan),
}

impl RecordValue {
    /// The JSON type name, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Null => "null",
            Self::Bool(_) => "bool",
            Self::Int(_) => "int",
            Self::Float(_) => "float",
            Self::String(_) => "str",
            Self::Timespan(_) => "timespan",
        }
    }
}

impl Serialize for RecordValue {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Null => serializer.serialize_unit(),
            Self::Bool(b) => serializer.serialize_bool(*b),
            Self::Int(i) => serializer.serialize_i64(*i),
            Self::Float(f) => serializer.serialize_f64(*f),
            Self::String(s) => serializer.serialize_str(s),
            Self::Timespan(t) => t.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for RecordValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RecordValueVisitor)
    }
}

struct RecordValueVisitor;

impl<'de> Visitor<'de> for RecordValueVisitor {
    type Value = RecordValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("null, a boolean, an integer, a float, a string or a [begin, end] timespan")
    }

    fn visit_unit<E: de::Error>(self) -> Result<RecordValue, E> {
        Ok(RecordValue::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<RecordValue, E> {
        Ok(RecordValue::Null)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<RecordValue, E> {
        Ok(RecordValue::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<RecordValue, E> {
        Ok(RecordValue::Int(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<RecordValue, E> {
        // Every integer column of the registry is a Postgres bigint.
        i64::try_from(v).map(RecordValue::Int).map_err(|_| {
            E::custom(format_args!(
                "integer {v} does not fit a 64-bit signed column"
            ))
        })
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<RecordValue, E> {
        Ok(RecordValue::Float(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<RecordValue, E> {
        Ok(RecordValue::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<RecordValue, E> {
        Ok(RecordValue::String(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RecordValue, A::Error> {
        let wrong_shape = || de::Error::custom("a timespan must be [begin, end], two integers");
        let begin: i64 = seq.next_element()?.ok_or_else(wrong_shape)?;
        let end: i64 = seq.next_element()?.ok_or_else(wrong_shape)?;
        if seq.next_element::<de::IgnoredAny>()?.is_some() {
            return Err(wrong_shape());
        }
        Ok(RecordValue::Timespan(Timespan::new(begin, end)))
    }
}

/// Why a column could not be read as the type asked for.
#[derive(Debug, thiserror::Error)]
pub enum FieldError {
    /// The record has no such column.
    #[error("field `{field}` is missing")]
    Missing {
        /// The column asked for.
        field: String,
    },
    /// The column holds another JSON type.
    #[error("field `{field}` must be {expected}, got {found}")]
    WrongType {
        /// The column asked for.
        field: String,
        /// What the accessor wanted.
        expected: &'static str,
        /// The JSON type the column holds.
        found: &'static str,
    },
    /// The column is a string that is not a decodable sphgeom region.
    #[error("field `{field}` is not a valid region: {source}")]
    Region {
        /// The column asked for.
        field: String,
        /// What the region decoder found.
        #[source]
        source: RegionError,
    },
}

/// The columns of one dimension record, in the order the message carried them.
///
/// Keys keep their first position and the last value, as a Python `dict` built from JSON does.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Record(pub IndexMap<String, RecordValue>);

impl Record {
    /// The value of a column, if present.
    pub fn get(&self, field: &str) -> Option<&RecordValue> {
        self.0.get(field)
    }

    /// Column names in message order.
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// Number of columns.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when the record has no column.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn required(&self, field: &str) -> Result<&RecordValue, FieldError> {
        self.0.get(field).ok_or_else(|| FieldError::Missing {
            field: field.to_owned(),
        })
    }

    fn wrong_type(field: &str, expected: &'static str, found: &RecordValue) -> FieldError {
        FieldError::WrongType {
            field: field.to_owned(),
            expected,
            found: found.type_name(),
        }
    }

    /// An integer column, such as an `id` or a foreign key to an integer dimension.
    pub fn get_i64(&self, field: &str) -> Result<i64, FieldError> {
        match self.required(field)? {
            RecordValue::Int(i) => Ok(*i),
            other => Err(Self::wrong_type(field, "an integer", other)),
        }
    }

    /// A string column, such as `instrument` or a string dimension's `name`.
    pub fn get_str(&self, field: &str) -> Result<&str, FieldError> {
        match self.required(field)? {
            RecordValue::String(s) => Ok(s),
            other => Err(Self::wrong_type(field, "a string", other)),
        }
    }

    /// A float column; an integer is accepted as Pydantic's strict float accepts one.
    pub fn get_f64(&self, field: &str) -> Result<Option<f64>, FieldError> {
        match self.required(field)? {
            RecordValue::Null => Ok(None),
            RecordValue::Float(f) => Ok(Some(*f)),
            // Exact for every integer a float column can sensibly hold.
            #[allow(clippy::cast_precision_loss)]
            RecordValue::Int(i) => Ok(Some(*i as f64)),
            other => Err(Self::wrong_type(field, "a float", other)),
        }
    }

    /// The `timespan` column of a temporal element; `None` when it is `null`.
    pub fn timespan(&self) -> Result<Option<Timespan>, FieldError> {
        match self.required("timespan")? {
            RecordValue::Null => Ok(None),
            RecordValue::Timespan(t) => Ok(Some(*t)),
            other => Err(Self::wrong_type(
                "timespan",
                "a [begin, end] timespan",
                other,
            )),
        }
    }

    /// The `region` column of a spatial element, decoded from sphgeom's hex encoding; `None` when
    /// it is `null`.
    pub fn region(&self) -> Result<Option<Region>, FieldError> {
        match self.required("region")? {
            RecordValue::Null => Ok(None),
            RecordValue::String(hex) => {
                Region::from_hex(hex)
                    .map(Some)
                    .map_err(|source| FieldError::Region {
                        field: "region".to_owned(),
                        source,
                    })
            }
            other => Err(Self::wrong_type("region", "a hex-encoded region", other)),
        }
    }
}

impl FromIterator<(String, RecordValue)> for Record {
    fn from_iter<I: IntoIterator<Item = (String, RecordValue)>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(json: &str) -> Record {
        match serde_json::from_str(json) {
            Ok(r) => r,
            Err(e) => panic!("test record does not parse: {e}"),
        }
    }

    #[test]
    fn values_keep_their_json_type() {
        let r = record(r#"{"a":null,"b":true,"c":3,"d":3.0,"e":"x","f":[1,2]}"#);
        let types: Vec<_> = r.0.values().map(RecordValue::type_name).collect();
        assert_eq!(types, ["null", "bool", "int", "float", "str", "timespan"]);
        assert!(matches!(r.timespan(), Err(FieldError::Missing { .. })));
        assert_eq!(r.get_i64("c").ok(), Some(3));
        assert_eq!(r.get_f64("c").ok(), Some(Some(3.0)));
        assert_eq!(r.get_f64("d").ok(), Some(Some(3.0)));
        assert!(matches!(
            r.get_i64("d"),
            Err(FieldError::WrongType { found: "float", .. })
        ));
        assert!(matches!(r.get_str("zz"), Err(FieldError::Missing { .. })));
    }

    #[test]
    fn duplicate_keys_behave_like_a_python_dict() {
        let r = record(r#"{"a":1,"b":2,"a":3}"#);
        assert_eq!(r.fields().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(r.get_i64("a").ok(), Some(3));
    }

    #[test]
    fn bad_values_are_refused() {
        for bad in [
            r#"{"t":[1]}"#,
            r#"{"t":[1,2,3]}"#,
            r#"{"t":[1.5,2]}"#,
            r#"{"t":{}}"#,
            r#"{"t":18446744073709551615}"#,
        ] {
            assert!(
                serde_json::from_str::<Record>(bad).is_err(),
                "{bad} should not parse"
            );
        }
    }

    #[test]
    fn bad_region_names_the_field() {
        let r = record(r#"{"region":"70zz"}"#);
        assert!(matches!(r.region(), Err(FieldError::Region { .. })));
        let r = record(r#"{"region":null}"#);
        assert!(matches!(r.region(), Ok(None)));
    }
}
