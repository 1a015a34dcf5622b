//! Reading an events topic back and decoding it with the registered schemas: for load-test
//! reports and tests, which count what a service published.

use std::collections::HashMap;
use std::time::Duration;

use apache_avro::Schema;
use apache_avro::types::Value;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use service_kit::KafkaSettings;
use service_kit::kafka::{KafkaCallError, failed, partitions_of};

use crate::event::{decode, unframe};
use crate::registry::{RegistryError, SchemaRegistry};

/// One event read back.
#[derive(Debug, Clone)]
pub struct DecodedEvent {
    /// The schema id in its frame.
    pub schema_id: u32,
    /// The record's name: the event's name.
    pub name: String,
    /// Its fields, in order.
    pub fields: Vec<(String, Value)>,
}

impl DecodedEvent {
    /// A field's value.
    pub fn get(&self, field: &str) -> Option<&Value> {
        self.fields.iter().find(|(n, _)| n == field).map(|(_, v)| v)
    }

    /// A `long` or `int` field.
    pub fn long(&self, field: &str) -> Option<i64> {
        match self.get(field)? {
            Value::Long(n) => Some(*n),
            Value::Int(n) => Some(i64::from(*n)),
            _ => None,
        }
    }
}

/// Why an event could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The topic cannot be read.
    #[error(transparent)]
    Kafka(#[from] KafkaCallError),
    /// A schema cannot be fetched.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// Every message value on `topic`, from the beginning to the end offsets as they were at the
/// start (blocking: call it off the runtime).
pub fn read_all(kafka: &KafkaSettings, topic: &str) -> Result<Vec<Vec<u8>>, KafkaCallError> {
    let timeout = Duration::from_secs(10);
    let consumer: BaseConsumer = kafka
        .client_config(
            "app-metrics-reader",
            &[
                ("group.id", "app-metrics-reader"),
                ("enable.auto.commit", "false"),
                ("enable.partition.eof", "false"),
            ],
        )
        .create()
        .map_err(failed("creating the metrics reader"))?;
    let mut assignment = TopicPartitionList::new();
    let mut remaining = 0_i64;
    let mut ends = HashMap::new();
    for partition in partitions_of(&consumer, topic, timeout)? {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, timeout)
            .map_err(failed(format!("reading the end offsets of {topic}")))?;
        if high > low {
            assignment
                .add_partition_offset(topic, partition, Offset::Offset(low))
                .map_err(failed("assigning the metrics topic"))?;
            remaining += high - low;
            ends.insert(partition, high);
        }
    }
    let mut values = Vec::new();
    if remaining == 0 {
        return Ok(values);
    }
    consumer
        .assign(&assignment)
        .map_err(failed("assigning the metrics topic"))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !ends.is_empty() && std::time::Instant::now() < deadline {
        let Some(message) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let message = message.map_err(failed(format!("reading {topic}")))?;
        let partition = message.partition();
        if let Some(end) = ends.get(&partition).copied() {
            if message.offset() < end {
                values.push(message.payload().unwrap_or_default().to_vec());
            }
            if message.offset() + 1 >= end {
                ends.remove(&partition);
            }
        }
    }
    Ok(values)
}

/// Decodes framed values with the schemas registered in `registry`; a value that is not framed
/// or does not decode is an `Err` with the reason.
pub async fn decode_all(
    registry: &SchemaRegistry,
    values: &[Vec<u8>],
) -> Result<Vec<Result<DecodedEvent, String>>, ReadError> {
    let mut schemas: HashMap<u32, Schema> = HashMap::new();
    let mut decoded = Vec::with_capacity(values.len());
    for value in values {
        let Some((id, body)) = unframe(value) else {
            decoded.push(Err("not in the Confluent wire format".to_owned()));
            continue;
        };
        let schema = match schemas.entry(id) {
            std::collections::hash_map::Entry::Occupied(known) => known.into_mut(),
            std::collections::hash_map::Entry::Vacant(new) => {
                let text = registry.schema(id).await?;
                match Schema::parse_str(&text) {
                    Ok(schema) => new.insert(schema),
                    Err(e) => {
                        decoded.push(Err(format!("schema {id}: {e}")));
                        continue;
                    }
                }
            }
        };
        let name = match schema {
            Schema::Record(record) => record.name.name().to_owned(),
            _ => String::new(),
        };
        decoded.push(match decode(schema, body) {
            Ok(Value::Record(fields)) => Ok(DecodedEvent {
                schema_id: id,
                name,
                fields,
            }),
            Ok(other) => Err(format!("not a record: {other:?}")),
            Err(e) => Err(e.to_string()),
        });
    }
    Ok(decoded)
}
