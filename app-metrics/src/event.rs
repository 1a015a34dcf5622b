//! An event as Sasquatch stores it: the metadata every event carries, then the service's payload,
//! in one flat Avro record named after the event, in the namespace of its topic.
//!
//! Both halves are Rust types whose Avro schemas `apache-avro` derives; [`EventSchema::of`] joins
//! them and checks that the result is flat, because InfluxDB stores no nested field (Telegraf reads
//! unions of null and one type as that type, and nothing deeper).

use std::collections::HashSet;
use std::time::{SystemTime, UNIX_EPOCH};

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::schema::{Name, NamespaceRef, UuidSchema};
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::{AvroSchema, AvroSchemaComponent, Schema};
use serde::{Serialize, Serializer};
use uuid::Uuid;

/// A payload a service publishes: a flat struct with `#[derive(Serialize, AvroSchema)]`.
/// Durations are `f64` seconds (`*_seconds`), as Sasquatch's convention has them.
pub trait AppEvent: AvroSchema + Serialize + Send + 'static {
    /// The event's name: the Avro record's name, the last part of its schema-registry subject,
    /// and the measurement InfluxDB files it under.
    const NAME: &'static str;
}

/// What every event carries before its payload.
#[derive(Debug, Clone, Serialize, AvroSchema)]
pub struct EventMetadata {
    /// A random id (UUID4), unique per event.
    pub id: EventId,
    /// The application that sent it (`METRICS_APPLICATION`).
    pub application: String,
    /// When it was made, in milliseconds (Avro `timestamp-millis`).
    pub timestamp: TimestampMillis,
    /// The same time in nanoseconds: the timestamp Telegraf gives the InfluxDB point.
    pub timestamp_ns: i64,
}

impl EventMetadata {
    /// Metadata for an event made now.
    pub fn now(application: &str) -> Self {
        let ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        Self {
            id: EventId(Uuid::new_v4()),
            application: application.to_owned(),
            timestamp: TimestampMillis(ns / 1_000_000),
            timestamp_ns: ns,
        }
    }
}

/// An event's id: a UUID, as Avro's `uuid` logical type over a string (the form Safir's events
/// have; `apache-avro`'s own `Uuid` schema is the 16-byte fixed form).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventId(pub Uuid);

impl Serialize for EventId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0.hyphenated().to_string())
    }
}

impl AvroSchemaComponent for EventId {
    fn get_schema_in_ctxt(_: &mut HashSet<Name>, _: NamespaceRef) -> Schema {
        Schema::Uuid(UuidSchema::String)
    }
}

/// Milliseconds since the Unix epoch, as Avro's `timestamp-millis` logical type over a long.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct TimestampMillis(pub i64);

impl AvroSchemaComponent for TimestampMillis {
    fn get_schema_in_ctxt(_: &mut HashSet<Name>, _: NamespaceRef) -> Schema {
        Schema::TimestampMillis
    }
}

/// Why an event type cannot be published.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// A field is a record, an array, a map, an enum or a union other than null-or-one-type.
    #[error(
        "event {event}: field {field} is {kind}, which InfluxDB cannot store: events must be flat (primitive fields, or a union of null and one primitive)"
    )]
    NotFlat {
        /// The event.
        event: &'static str,
        /// The field.
        field: String,
        /// What it is.
        kind: String,
    },
    /// The payload repeats a metadata field's name.
    #[error("event {event}: field {field} is also a metadata field")]
    Duplicate {
        /// The event.
        event: &'static str,
        /// The field.
        field: String,
    },
    /// The payload's derived schema is not a record.
    #[error("event {event}: the payload is not a struct")]
    NotARecord {
        /// The event.
        event: &'static str,
    },
    /// `apache-avro` refused the joined schema or a value.
    #[error("event {event}: Avro")]
    Avro {
        /// The event.
        event: &'static str,
        /// Why.
        #[source]
        source: Box<apache_avro::Error>,
    },
}

/// The schema of one event type in one topic, and the text registered for it.
#[derive(Debug, Clone)]
pub struct EventSchema {
    /// The event's name.
    pub name: &'static str,
    /// The joined, flat schema.
    pub schema: Schema,
    /// Its JSON form, as registered.
    pub json: String,
}

impl EventSchema {
    /// The schema of `E` in `topic`: a record named [`AppEvent::NAME`] in the namespace `topic`,
    /// with the metadata's fields and then the payload's; an error if it is not flat.
    pub fn of<E: AppEvent>(topic: &str) -> Result<Self, SchemaError> {
        let event = E::NAME;
        let avro = |source| SchemaError::Avro {
            event,
            source: Box::new(source),
        };
        let mut fields = record_fields(event, &EventMetadata::get_schema())?;
        let metadata_names: HashSet<String> = fields
            .iter()
            .filter_map(|f| f.get("name").and_then(|n| n.as_str()).map(str::to_owned))
            .collect();
        for field in record_fields(event, &E::get_schema())? {
            let name = field
                .get("name")
                .and_then(|n| n.as_str())
                .unwrap_or_default()
                .to_owned();
            if metadata_names.contains(&name) {
                return Err(SchemaError::Duplicate { event, field: name });
            }
            fields.push(field);
        }
        let joined = serde_json::json!({
            "type": "record",
            "name": event,
            "namespace": topic,
            "fields": fields,
        });
        let schema = Schema::parse(&joined).map_err(avro)?;
        check_flat(event, &schema)?;
        let json = serde_json::to_string(&schema).map_err(|e| {
            avro(apache_avro::Error::from(
                apache_avro::error::Details::ConvertJsonToString(e),
            ))
        })?;
        Ok(Self {
            name: event,
            schema,
            json,
        })
    }

    /// The Avro binary encoding of `metadata` followed by `payload` (no framing).
    pub fn encode<E: AppEvent>(
        &self,
        metadata: &EventMetadata,
        payload: &E,
    ) -> Result<Vec<u8>, SchemaError> {
        let avro = |source| SchemaError::Avro {
            event: self.name,
            source: Box::new(source),
        };
        let mut fields = record_values(self.name, apache_avro::to_value(metadata).map_err(avro)?)?;
        fields.extend(record_values(
            self.name,
            apache_avro::to_value(payload).map_err(avro)?,
        )?);
        GenericDatumWriter::builder(&self.schema)
            .build()
            .and_then(|writer| writer.write_value_to_vec(Value::Record(fields)))
            .map_err(avro)
    }
}

/// The Confluent wire format of an Avro message: magic byte 0, the schema id (4 bytes,
/// big-endian), the Avro binary body.
pub fn frame(schema_id: u32, body: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(5 + body.len());
    value.push(0);
    value.extend_from_slice(&schema_id.to_be_bytes());
    value.extend_from_slice(body);
    value
}

/// The schema id and the body of a message in the Confluent wire format; `None` if it is not
/// one.
pub fn unframe(value: &[u8]) -> Option<(u32, &[u8])> {
    match value {
        [0, a, b, c, d, body @ ..] => Some((u32::from_be_bytes([*a, *b, *c, *d]), body)),
        _ => None,
    }
}

/// Decodes an Avro binary body written with `schema`.
pub fn decode(schema: &Schema, mut body: &[u8]) -> Result<Value, apache_avro::Error> {
    GenericDatumReader::builder(schema)
        .build()?
        .read_value(&mut body)
}

/// The JSON form of a derived record schema's fields.
fn record_fields(
    event: &'static str,
    schema: &Schema,
) -> Result<Vec<serde_json::Value>, SchemaError> {
    let json = serde_json::to_value(schema).map_err(|e| SchemaError::Avro {
        event,
        source: Box::new(apache_avro::error::Details::ConvertJsonToString(e).into()),
    })?;
    match json.get("fields") {
        Some(serde_json::Value::Array(fields)) => Ok(fields.clone()),
        _ => Err(SchemaError::NotARecord { event }),
    }
}

fn record_values(event: &'static str, value: Value) -> Result<Vec<(String, Value)>, SchemaError> {
    match value {
        Value::Record(fields) => Ok(fields),
        _ => Err(SchemaError::NotARecord { event }),
    }
}

/// Every field a primitive (or a logical type over one), or a union of null and one such.
fn check_flat(event: &'static str, schema: &Schema) -> Result<(), SchemaError> {
    let Schema::Record(record) = schema else {
        return Err(SchemaError::NotARecord { event });
    };
    for field in &record.fields {
        let flat = match &field.schema {
            Schema::Union(union) => {
                let variants = union.variants();
                variants.len() == 2
                    && variants.iter().filter(|s| **s == Schema::Null).count() == 1
                    && variants
                        .iter()
                        .all(|s| *s == Schema::Null || is_primitive(s))
            }
            other => is_primitive(other),
        };
        if !flat {
            return Err(SchemaError::NotFlat {
                event,
                field: field.name.clone(),
                kind: serde_json::to_string(&field.schema).unwrap_or_else(|_| "?".to_owned()),
            });
        }
    }
    Ok(())
}

fn is_primitive(schema: &Schema) -> bool {
    matches!(
        schema,
        Schema::Boolean
            | Schema::Int
            | Schema::Long
            | Schema::Float
            | Schema::Double
            | Schema::String
            | Schema::Uuid(UuidSchema::String)
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, AvroSchema)]
    struct Flat {
        messages: i64,
        engine_seconds: f64,
        origin: String,
        lag: Option<i64>,
    }
    impl AppEvent for Flat {
        const NAME: &'static str = "flat";
    }

    #[derive(Serialize, AvroSchema)]
    struct Inner {
        x: i64,
    }
    #[derive(Serialize, AvroSchema)]
    struct Nested {
        inner: Inner,
    }
    impl AppEvent for Nested {
        const NAME: &'static str = "nested";
    }

    #[derive(Serialize, AvroSchema)]
    struct Listy {
        reasons: Vec<String>,
    }
    impl AppEvent for Listy {
        const NAME: &'static str = "listy";
    }

    #[derive(Serialize, AvroSchema)]
    struct Clash {
        application: String,
    }
    impl AppEvent for Clash {
        const NAME: &'static str = "clash";
    }

    #[test]
    fn a_flat_event_joins_metadata_and_payload_under_its_name_and_topic() -> anyhow::Result<()> {
        let schema = EventSchema::of::<Flat>("lsst.square.metrics.events.app")?;
        let json: serde_json::Value = serde_json::from_str(&schema.json)?;
        assert_eq!(json["name"], "flat");
        assert_eq!(json["namespace"], "lsst.square.metrics.events.app");
        let names: Vec<&str> = json["fields"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f["name"].as_str())
            .collect();
        assert_eq!(
            names,
            [
                "id",
                "application",
                "timestamp",
                "timestamp_ns",
                "messages",
                "engine_seconds",
                "origin",
                "lag"
            ]
        );
        assert_eq!(json["fields"][0]["type"]["logicalType"], "uuid");
        assert_eq!(json["fields"][2]["type"]["logicalType"], "timestamp-millis");
        assert_eq!(json["fields"][5]["type"], "double");
        Ok(())
    }

    #[test]
    fn nested_and_repeated_fields_are_refused_with_the_field_named() {
        let nested = EventSchema::of::<Nested>("t")
            .map(|_| ())
            .map_err(|e| e.to_string());
        assert!(
            matches!(&nested, Err(e) if e.contains("field inner") && e.contains("flat")),
            "{nested:?}"
        );
        let listy = EventSchema::of::<Listy>("t")
            .map(|_| ())
            .map_err(|e| e.to_string());
        assert!(
            matches!(&listy, Err(e) if e.contains("field reasons")),
            "{listy:?}"
        );
        let clash = EventSchema::of::<Clash>("t")
            .map(|_| ())
            .map_err(|e| e.to_string());
        assert!(
            matches!(&clash, Err(e) if e.contains("application") && e.contains("metadata")),
            "{clash:?}"
        );
    }

    #[test]
    fn an_encoded_event_decodes_to_the_same_fields() -> anyhow::Result<()> {
        let schema = EventSchema::of::<Flat>("t")?;
        let metadata = EventMetadata::now("app");
        let payload = Flat {
            messages: 12,
            engine_seconds: 0.25,
            origin: "o".to_owned(),
            lag: None,
        };
        let bytes = schema.encode(&metadata, &payload)?;
        let framed = frame(7, &bytes);
        assert_eq!(unframe(&framed), Some((7, bytes.as_slice())));
        assert_eq!(unframe(b"{\"json\": 1}"), None);
        let decoded = decode(&schema.schema, &bytes)?;
        let Value::Record(fields) = decoded else {
            anyhow::bail!("not a record: {decoded:?}");
        };
        let get = |name: &str| {
            fields
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(get("application"), Some(Value::String("app".to_owned())));
        assert_eq!(
            get("timestamp_ns"),
            Some(Value::Long(metadata.timestamp_ns))
        );
        assert_eq!(
            get("timestamp"),
            Some(Value::TimestampMillis(metadata.timestamp.0))
        );
        assert_eq!(get("id"), Some(Value::Uuid(metadata.id.0)));
        assert_eq!(get("messages"), Some(Value::Long(12)));
        assert_eq!(get("engine_seconds"), Some(Value::Double(0.25)));
        assert_eq!(get("lag"), Some(Value::Union(0, Box::new(Value::Null))));
        Ok(())
    }
}
