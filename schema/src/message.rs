//! The messages on Prompt Kafka's topics and the batch file, as the Python side defines them.
//!
//! - `butler-writer`: [`PromptProcessingOutputEvent`] (`"type":"pp-output"`), one per visit and
//!   detector, sent by Prompt Processing's workers. Its parts are daf_butler's
//!   [`SerializedDimensionRecord`], [`SerializedDatasetType`] and [`SerializedFileDataset`].
//! - `butler-writer-ingestion-events`: [`BatchIngestedEvent`] (`"type":"batch-ingested"`), one per
//!   batch the writer ingested, naming a [`DatasetBatch`] file.
//!
//! Field order, optional fields and defaults follow the Pydantic models
//! (`../shared/reference/real-system.md` §(b)). Unknown fields are ignored, as Pydantic's default
//! `extra="ignore"` does; nested dimension records are checked against the universe by the writer,
//! which alone knows it.

use std::fmt;

use indexmap::IndexMap;
use serde::de::{self, DeserializeOwned, Visitor};
use serde::ser::SerializeStruct;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

use crate::error::DecodeError;
use crate::region::Region;
use crate::value::Record;

/// The `type` of a [`PromptProcessingOutputEvent`].
pub const PP_OUTPUT_TYPE: &str = "pp-output";
/// The `type` of a [`BatchIngestedEvent`].
pub const BATCH_INGESTED_TYPE: &str = "batch-ingested";
/// The `origin` the writer puts in every [`BatchIngestedEvent`]; the Prompt Publication Service
/// accepts only the origins it knows, and this is the one for Prompt Processing outputs.
pub const ORIGIN_PROMPT_PROCESSING: &str = "prompt_processing";

/// One dimension record: the element it belongs to and its columns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SerializedDimensionRecord {
    /// The dimension element, such as `exposure` or `visit_detector_region`.
    pub definition: String,
    /// The element's columns, in the universe's field order as the sender wrote them.
    pub record: Record,
}

/// A dataset type definition (daf_butler `SerializedDatasetType`; camelCase keys on the wire).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SerializedDatasetType {
    /// Dataset type name.
    pub name: String,
    /// Storage class name.
    #[serde(rename = "storageClass", default)]
    pub storage_class: Option<String>,
    /// The required dimensions only.
    #[serde(default)]
    pub dimensions: Option<Vec<String>>,
    /// The parent's storage class, for a component dataset type.
    #[serde(rename = "parentStorageClass", default)]
    pub parent_storage_class: Option<String>,
    /// Whether the type is a calibration.
    #[serde(rename = "isCalibration", default)]
    pub is_calibration: bool,
}

/// A data ID value: daf_butler's `DataIdValue`, an integer or a string.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DataIdValue {
    /// An integer dimension value (`visit`, `detector`, `day_obs`...).
    Int(i64),
    /// A string dimension value (`instrument`, `band`, `group`...).
    Str(String),
}

impl fmt::Display for DataIdValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Int(i) => write!(f, "{i}"),
            Self::Str(s) => f.write_str(s),
        }
    }
}

impl Serialize for DataIdValue {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Int(i) => serializer.serialize_i64(*i),
            Self::Str(s) => serializer.serialize_str(s),
        }
    }
}

impl<'de> Deserialize<'de> for DataIdValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DataIdVisitor;
        impl Visitor<'_> for DataIdVisitor {
            type Value = DataIdValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer or a string")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<DataIdValue, E> {
                Ok(DataIdValue::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<DataIdValue, E> {
                i64::try_from(v).map(DataIdValue::Int).map_err(|_| {
                    E::custom(format_args!(
                        "data ID value {v} does not fit a 64-bit signed column"
                    ))
                })
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<DataIdValue, E> {
                Ok(DataIdValue::Str(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<DataIdValue, E> {
                Ok(DataIdValue::Str(v))
            }
        }
        deserializer.deserialize_any(DataIdVisitor)
    }
}

/// A data ID: dimension name to value, in the order the sender wrote them. Prompt Processing sends
/// expanded data IDs (required and implied dimensions).
pub type DataId = IndexMap<String, DataIdValue>;

/// One dataset of a file (daf_butler `MinimalistSerializableDatasetRef`); its UUID is the key it is
/// stored under in [`SerializedFileDataset::refs`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SerializedDatasetRef {
    /// Name of a dataset type registered in the repository.
    pub dataset_type_name: String,
    /// The RUN collection.
    pub run: String,
    /// The dataset's data ID.
    pub data_id: DataId,
}

/// A file and the datasets stored in it (daf_butler `SerializedFileDataset`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SerializedFileDataset {
    /// Dataset UUID (any version: v7 from current workers, v4 from older data, v5 for
    /// deterministic ids) to its dataset ref.
    pub refs: IndexMap<Uuid, SerializedDatasetRef>,
    /// Path relative to the datastore root.
    pub path: String,
    /// Fully qualified formatter class name.
    #[serde(default)]
    pub formatter: Option<String>,
}

impl SerializedFileDataset {
    /// The RUN all refs share; `None` when there are no refs or when they disagree, which
    /// daf_butler's `FileDataset` refuses.
    pub fn common_run(&self) -> Option<&str> {
        let mut runs = self.refs.values().map(|r| r.run.as_str());
        let first = runs.next()?;
        runs.all(|r| r == first).then_some(first)
    }
}

/// A `pp-output` message: what one Prompt Processing worker produced for one visit and detector.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptProcessingOutputEvent {
    /// Dimension records the writer inserts before the datasets (may be empty).
    pub dimension_records: Vec<SerializedDimensionRecord>,
    /// Dataset type definitions. `None` when the key is absent, which is what workers send;
    /// `Some(vec![])` for the writer-side model's `"dataset_types":[]`. Each form serializes back
    /// to itself.
    pub dataset_types: Option<Vec<SerializedDatasetType>>,
    /// The files and their datasets (may be empty).
    pub datasets: Vec<SerializedFileDataset>,
}

/// Wire form of [`PromptProcessingOutputEvent`], with the discriminator still to check.
#[derive(Deserialize)]
struct RawPromptProcessingOutputEvent {
    #[serde(rename = "type")]
    kind: String,
    dimension_records: Vec<SerializedDimensionRecord>,
    #[serde(default, deserialize_with = "present_list")]
    dataset_types: Option<Vec<SerializedDatasetType>>,
    datasets: Vec<SerializedFileDataset>,
}

/// A present `dataset_types` key must hold a list (Pydantic refuses `null` for a list field).
fn present_list<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<Vec<T>>, D::Error> {
    Vec::deserialize(deserializer).map(Some)
}

/// Just the discriminator, read only when a message failed to decode, to tell "another message
/// type" from "a broken message".
#[derive(Deserialize)]
struct TypeOnly {
    #[serde(rename = "type")]
    kind: Option<String>,
}

impl PromptProcessingOutputEvent {
    const WHAT: &'static str = "pp-output message";

    /// Decodes a Kafka value. A valid message of another `type` gives
    /// [`DecodeError::OtherMessageType`].
    pub fn from_json(bytes: &[u8]) -> Result<Self, DecodeError> {
        let raw: RawPromptProcessingOutputEvent = decode(Self::WHAT, PP_OUTPUT_TYPE, bytes)?;
        if raw.kind != PP_OUTPUT_TYPE {
            return Err(DecodeError::OtherMessageType {
                found: raw.kind,
                expected: PP_OUTPUT_TYPE,
            });
        }
        Ok(Self {
            dimension_records: raw.dimension_records,
            dataset_types: raw.dataset_types,
            datasets: raw.datasets,
        })
    }

    /// Encodes as the Python producers do.
    pub fn to_json(&self) -> Vec<u8> {
        to_json_infallible(self)
    }

    /// Every dataset of the message: its UUID, ref and file, in message order.
    pub fn dataset_refs(
        &self,
    ) -> impl Iterator<Item = (&Uuid, &SerializedDatasetRef, &SerializedFileDataset)> {
        self.datasets
            .iter()
            .flat_map(|file| file.refs.iter().map(move |(id, r)| (id, r, file)))
    }

    /// Decodes the `region` of every dimension record that has a non-null one, with the index of
    /// its record. The first region that does not decode is an error naming its record and element.
    pub fn decode_regions(&self) -> Result<Vec<(usize, Region)>, DecodeError> {
        let mut regions = Vec::new();
        for (index, record) in self.dimension_records.iter().enumerate() {
            if record.record.get("region").is_none() {
                continue;
            }
            match record.record.region() {
                Ok(Some(region)) => regions.push((index, region)),
                Ok(None) => {}
                Err(source) => {
                    return Err(DecodeError::Field {
                        what: Self::WHAT,
                        path: format!(
                            "dimension_records[{index}]({}).record.region",
                            record.definition
                        ),
                        source,
                    });
                }
            }
        }
        Ok(regions)
    }
}

impl Serialize for PromptProcessingOutputEvent {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let fields = if self.dataset_types.is_some() { 4 } else { 3 };
        let mut s = serializer.serialize_struct("PromptProcessingOutputEvent", fields)?;
        s.serialize_field("type", PP_OUTPUT_TYPE)?;
        s.serialize_field("dimension_records", &self.dimension_records)?;
        match &self.dataset_types {
            Some(types) => s.serialize_field("dataset_types", types)?,
            None => s.skip_field("dataset_types")?,
        }
        s.serialize_field("datasets", &self.datasets)?;
        s.end()
    }
}

/// The event the writer emits after each batch (`"type":"batch-ingested"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchIngestedEvent {
    /// The batch's id, also in the batch file.
    pub batch_id: Uuid,
    /// Where the datasets came from; [`ORIGIN_PROMPT_PROCESSING`] for the writer's batches.
    pub origin: String,
    /// The batch file's name, relative to the writer's output directory.
    pub batch_file: String,
}

#[derive(Deserialize)]
struct RawBatchIngestedEvent {
    #[serde(rename = "type")]
    kind: String,
    batch_id: Uuid,
    origin: String,
    batch_file: String,
}

impl BatchIngestedEvent {
    const WHAT: &'static str = "batch-ingested event";

    /// The event for a batch of Prompt Processing outputs.
    pub fn prompt_processing(batch_id: Uuid, batch_file: impl Into<String>) -> Self {
        Self {
            batch_id,
            origin: ORIGIN_PROMPT_PROCESSING.to_owned(),
            batch_file: batch_file.into(),
        }
    }

    /// Decodes a Kafka value. A valid message of another `type` gives
    /// [`DecodeError::OtherMessageType`].
    pub fn from_json(bytes: &[u8]) -> Result<Self, DecodeError> {
        let raw: RawBatchIngestedEvent = decode(Self::WHAT, BATCH_INGESTED_TYPE, bytes)?;
        if raw.kind != BATCH_INGESTED_TYPE {
            return Err(DecodeError::OtherMessageType {
                found: raw.kind,
                expected: BATCH_INGESTED_TYPE,
            });
        }
        Ok(Self {
            batch_id: raw.batch_id,
            origin: raw.origin,
            batch_file: raw.batch_file,
        })
    }

    /// Encodes as the Python writer does.
    pub fn to_json(&self) -> Vec<u8> {
        to_json_infallible(self)
    }
}

impl Serialize for BatchIngestedEvent {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("BatchIngestedEvent", 4)?;
        s.serialize_field("type", BATCH_INGESTED_TYPE)?;
        s.serialize_field("batch_id", &self.batch_id)?;
        s.serialize_field("origin", &self.origin)?;
        s.serialize_field("batch_file", &self.batch_file)?;
        s.end()
    }
}

/// The batch file: every dataset id of a batch that is in the registry after it (newly ingested
/// or already present), never the rejected ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetBatch {
    /// Same id as the event's.
    pub batch_id: Uuid,
    /// Dataset ids, without duplicates, in no particular order.
    pub datasets: Vec<Uuid>,
}

impl DatasetBatch {
    const WHAT: &'static str = "dataset batch file";

    /// Decodes a batch file.
    pub fn from_json(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let value = serde_path_to_error::deserialize(&mut de)
            .map_err(|e| DecodeError::from_json(Self::WHAT, e))?;
        de.end()
            .map_err(|e| DecodeError::from_serde(Self::WHAT, ".".to_owned(), &e))?;
        Ok(value)
    }

    /// Encodes as the Python writer does.
    pub fn to_json(&self) -> Vec<u8> {
        to_json_infallible(self)
    }
}

/// Decodes one JSON document into `T`, reporting the path of a fault. When decoding fails but the
/// bytes are a JSON object whose `type` is a string other than `expected_type`, the error is
/// [`DecodeError::OtherMessageType`]: a message of another kind is not a broken one.
fn decode<T: DeserializeOwned>(
    what: &'static str,
    expected_type: &'static str,
    bytes: &[u8],
) -> Result<T, DecodeError> {
    // The plain decoder first: tracking the path costs about as much as decoding, and only an
    // error needs it, so a value that fails is decoded again with the path kept.
    if let Ok(value) = serde_json::from_slice(bytes) {
        return Ok(value);
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let decoded = serde_path_to_error::deserialize(&mut de)
        .map_err(|e| DecodeError::from_json(what, e))
        .and_then(|value| {
            de.end()
                .map_err(|e| DecodeError::from_serde(what, ".".to_owned(), &e))?;
            Ok(value)
        });
    decoded.map_err(|error| match serde_json::from_slice::<TypeOnly>(bytes) {
        Ok(TypeOnly { kind: Some(found) }) if found != expected_type => {
            DecodeError::OtherMessageType {
                found,
                expected: expected_type,
            }
        }
        _ => error,
    })
}

/// Serialization of these types cannot fail: every map key is a string and writing to a `Vec`
/// does no I/O.
fn to_json_infallible<T: Serialize>(value: &T) -> Vec<u8> {
    crate::json::to_vec(value).unwrap_or_else(|e| unreachable!("serializing a message failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"{"type":"pp-output","dimension_records":[],"datasets":[]}"#;

    #[test]
    fn minimal_message_round_trips_without_dataset_types() {
        let event = PromptProcessingOutputEvent::from_json(MINIMAL.as_bytes());
        let event = event.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(event.dataset_types, None);
        assert_eq!(event.to_json(), MINIMAL.as_bytes());
    }

    #[test]
    fn other_message_type_is_recognised() {
        let day_end = br#"{"type":"day-end","instrument":"LSSTCam","day_obs":20240923}"#;
        let err = PromptProcessingOutputEvent::from_json(day_end).err();
        assert!(
            matches!(err, Some(DecodeError::OtherMessageType { ref found, .. }) if found == "day-end"),
            "{err:?}"
        );
    }

    #[test]
    fn unknown_top_level_fields_are_ignored() {
        let with_extra =
            br#"{"type":"pp-output","root_directory":"x","dimension_records":[],"datasets":[]}"#;
        let event =
            PromptProcessingOutputEvent::from_json(with_extra).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(event.to_json(), MINIMAL.as_bytes());
    }

    #[test]
    fn null_dataset_types_is_refused() {
        let bad =
            br#"{"type":"pp-output","dimension_records":[],"dataset_types":null,"datasets":[]}"#;
        let err = PromptProcessingOutputEvent::from_json(bad).err();
        assert!(
            matches!(err, Some(DecodeError::Invalid { ref path, .. }) if path == "dataset_types"),
            "{err:?}"
        );
    }

    #[test]
    fn batch_ingested_event_is_byte_identical() {
        let text = r#"{"type":"batch-ingested","batch_id":"5f0c1d7e-3b2a-4c51-9a8e-0d1f2e3a4b5c","origin":"prompt_processing","batch_file":"2025-12-04T19-03-27-123456-5f0c1d7e-3b2a-4c51-9a8e-0d1f2e3a4b5c.json"}"#;
        let event =
            BatchIngestedEvent::from_json(text.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(event.origin, ORIGIN_PROMPT_PROCESSING);
        assert_eq!(event.to_json(), text.as_bytes());
        let pp = BatchIngestedEvent::from_json(MINIMAL.as_bytes()).err();
        assert!(
            matches!(pp, Some(DecodeError::OtherMessageType { .. })),
            "{pp:?}"
        );
    }

    #[test]
    fn dataset_batch_is_byte_identical() {
        let text = r#"{"batch_id":"5f0c1d7e-3b2a-4c51-9a8e-0d1f2e3a4b5c","datasets":["26c6235f-2ea3-5a15-8009-a3056e49c379","07f98c57-9075-5e6c-a710-8aa4bfbe74a3"]}"#;
        let batch = DatasetBatch::from_json(text.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(batch.to_json(), text.as_bytes());
    }
}
