//! The `pp-output` message a worker sends for one visit and detector: the dimension records it
//! exports and its datasets, with paths from the repository's file template and UUIDv7 ids.
//!
//! Records and their field order are those of real workers (`../shared/reference/messages/`):
//! `day_obs`, `group`, `exposure`, `visit`, `visit_system`, `visit_definition`,
//! `visit_system_membership`, `visit_detector_region`. Workers send no `dataset_types` key.

use indexmap::IndexMap;
use schema::{
    DataId, DataIdValue, PromptProcessingOutputEvent, Record, RecordValue, Region,
    SerializedDatasetRef, SerializedDimensionRecord, SerializedFileDataset, Timespan,
};
use service_kit::ConfigError;
use uuid::Uuid;

use crate::focal_plane::{VisitRegions, detector_name};
use crate::schedule::Visit;

/// The instrument every message is for.
pub const INSTRUMENT: &str = "LSSTCam";

/// Which observation a dataset type is keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keyed {
    /// `{instrument, visit, detector}`: processed images and catalogs.
    Visit,
    /// `{instrument, exposure, detector}`: per-exposure products such as ISR statistics.
    Exposure,
}

/// A dataset type a worker exports: name, dimensions, file extension and formatter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetTypeSpec {
    /// Dataset type name, registered in the repository.
    pub name: String,
    /// Its dimensions.
    pub keyed: Keyed,
    /// File extension (without the dot).
    pub extension: String,
    /// Fully qualified formatter class.
    pub formatter: String,
}

impl DatasetTypeSpec {
    fn new(name: &str, keyed: Keyed, extension: &str, formatter: &str) -> Self {
        Self {
            name: name.to_owned(),
            keyed,
            extension: extension.to_owned(),
            formatter: formatter.to_owned(),
        }
    }

    /// The three dataset types of the reference messages, the default export.
    pub fn defaults() -> Vec<Self> {
        vec![
            Self::new(
                "preliminary_visit_image",
                Keyed::Visit,
                "fits",
                "lsst.obs.base.formatters.fitsExposure.FitsExposureFormatter",
            ),
            Self::new(
                "single_visit_star_unstandardized",
                Keyed::Visit,
                "parq",
                "lsst.daf.butler.formatters.parquet.ParquetFormatter",
            ),
            Self::new(
                "isr_statistics",
                Keyed::Exposure,
                "yaml",
                "lsst.daf.butler.formatters.yaml.YamlFormatter",
            ),
        ]
    }

    /// A dataset type from the command line: a name of [`DatasetTypeSpec::defaults`], or
    /// `NAME:visit|exposure:EXTENSION:FORMATTER` for one registered in the repository.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        if let Some(known) = Self::defaults().into_iter().find(|d| d.name == text) {
            return Ok(known);
        }
        let parts: Vec<&str> = text.split(':').collect();
        let [name, keyed, extension, formatter] = parts[..] else {
            return Err(ConfigError::new(format!(
                "dataset type {text:?}: give one of {} or NAME:visit|exposure:EXTENSION:FORMATTER",
                Self::defaults()
                    .iter()
                    .map(|d| d.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        let keyed = match keyed {
            "visit" => Keyed::Visit,
            "exposure" => Keyed::Exposure,
            other => {
                return Err(ConfigError::new(format!(
                    "dataset type {text:?}: dimensions {other:?} are not `visit` or `exposure`"
                )));
            }
        };
        if name.is_empty() || extension.is_empty() || formatter.is_empty() {
            return Err(ConfigError::new(format!(
                "dataset type {text:?}: a part is empty"
            )));
        }
        Ok(Self::new(name, keyed, extension, formatter))
    }
}

/// The output RUN Prompt Processing writes a day's outputs to.
pub fn default_run(visit: &Visit) -> String {
    format!(
        "{INSTRUMENT}/prompt/output-{}/ApPipe/prompt-proto-service-lsstcam",
        visit.day_obs_iso()
    )
}

/// Builds the messages of a visit's workers.
#[derive(Debug)]
pub struct WorkerOutput<'a> {
    /// The visit.
    pub visit: &'a Visit,
    /// Its regions.
    pub regions: &'a VisitRegions,
    /// The RUN collection of its datasets.
    pub run: &'a str,
    /// What each worker exports.
    pub dataset_types: &'a [DatasetTypeSpec],
}

fn record(fields: impl IntoIterator<Item = (&'static str, RecordValue)>) -> Record {
    fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

fn text(s: &str) -> RecordValue {
    RecordValue::String(s.to_owned())
}

fn dimension(definition: &str, record: Record) -> SerializedDimensionRecord {
    SerializedDimensionRecord {
        definition: definition.to_owned(),
        record,
    }
}

impl WorkerOutput<'_> {
    /// The message for `detector`, with a fresh UUIDv7 per dataset.
    pub fn message(&self, detector: u32) -> PromptProcessingOutputEvent {
        PromptProcessingOutputEvent {
            dimension_records: self.dimension_records(detector),
            dataset_types: None,
            datasets: self
                .dataset_types
                .iter()
                .map(|spec| self.file(spec, detector, Uuid::now_v7()))
                .collect(),
        }
    }

    /// The same message sent by a second pod on the same image: the same data ids and paths, new
    /// dataset ids.
    pub fn twin(&self, message: &PromptProcessingOutputEvent) -> PromptProcessingOutputEvent {
        let mut twin = message.clone();
        for file in &mut twin.datasets {
            file.refs = std::mem::take(&mut file.refs)
                .into_values()
                .map(|r| (Uuid::now_v7(), r))
                .collect();
        }
        twin
    }

    fn dimension_records(&self, detector: u32) -> Vec<SerializedDimensionRecord> {
        let v = self.visit;
        let instrument = || ("instrument", text(INSTRUMENT));
        let (begin, end) = v.timespan_tai_ns();
        let timespan = RecordValue::Timespan(Timespan::new(begin, end));
        let (day_begin, day_end) = v.day_obs_timespan_tai_ns();
        let visit_region = Region::from(self.regions.visit.clone()).to_hex();
        let detector_region =
            Region::from(self.regions.detectors[detector as usize].clone()).to_hex();
        let day_obs = RecordValue::Int(i64::from(v.day_obs));
        let seq_num = RecordValue::Int(i64::from(v.seq_num));
        vec![
            dimension(
                "day_obs",
                record([
                    instrument(),
                    ("id", day_obs.clone()),
                    (
                        "timespan",
                        RecordValue::Timespan(Timespan::new(day_begin, day_end)),
                    ),
                ]),
            ),
            dimension("group", record([instrument(), ("name", text(&v.group))])),
            dimension(
                "exposure",
                record([
                    instrument(),
                    ("id", RecordValue::Int(v.id)),
                    ("day_obs", day_obs.clone()),
                    ("group", text(&v.group)),
                    ("physical_filter", text(v.physical_filter)),
                    ("obs_id", text(&v.obs_id)),
                    ("exposure_time", RecordValue::Float(v.exposure_time_s)),
                    ("dark_time", RecordValue::Float(v.exposure_time_s + 0.5)),
                    ("observation_type", text("science")),
                    ("observation_reason", text("survey")),
                    ("seq_num", seq_num.clone()),
                    ("seq_start", seq_num.clone()),
                    ("seq_end", seq_num.clone()),
                    ("target_name", text("lsst_wfd")),
                    ("science_program", text("BLOCK-365")),
                    ("tracking_ra", RecordValue::Float(v.pointing.ra)),
                    ("tracking_dec", RecordValue::Float(v.pointing.dec)),
                    ("sky_angle", RecordValue::Float(v.pointing.sky_angle)),
                    ("azimuth", RecordValue::Float(v.azimuth)),
                    ("zenith_angle", RecordValue::Float(v.zenith_angle)),
                    ("has_simulated", RecordValue::Bool(false)),
                    ("can_see_sky", RecordValue::Bool(true)),
                    ("timespan", timespan.clone()),
                ]),
            ),
            dimension(
                "visit",
                record([
                    instrument(),
                    ("id", RecordValue::Int(v.id)),
                    ("day_obs", day_obs),
                    ("physical_filter", text(v.physical_filter)),
                    ("name", text(&v.obs_id)),
                    ("seq_num", seq_num),
                    ("exposure_time", RecordValue::Float(v.exposure_time_s)),
                    ("target_name", text("lsst_wfd")),
                    ("observation_reason", text("survey")),
                    ("science_program", text("BLOCK-365")),
                    ("azimuth", RecordValue::Float(v.azimuth)),
                    ("zenith_angle", RecordValue::Float(v.zenith_angle)),
                    ("region", RecordValue::String(visit_region)),
                    ("timespan", timespan),
                ]),
            ),
            dimension(
                "visit_system",
                record([
                    instrument(),
                    ("id", RecordValue::Int(0)),
                    ("name", text("one-to-one")),
                ]),
            ),
            dimension(
                "visit_definition",
                record([
                    instrument(),
                    ("exposure", RecordValue::Int(v.id)),
                    ("visit", RecordValue::Int(v.id)),
                ]),
            ),
            dimension(
                "visit_system_membership",
                record([
                    instrument(),
                    ("visit_system", RecordValue::Int(0)),
                    ("visit", RecordValue::Int(v.id)),
                ]),
            ),
            dimension(
                "visit_detector_region",
                record([
                    instrument(),
                    ("detector", RecordValue::Int(i64::from(detector))),
                    ("visit", RecordValue::Int(v.id)),
                    ("region", RecordValue::String(detector_region)),
                ]),
            ),
        ]
    }

    /// One exported file: its dataset, data id (expanded, as workers send it) and templated path.
    fn file(&self, spec: &DatasetTypeSpec, detector: u32, id: Uuid) -> SerializedFileDataset {
        let v = self.visit;
        let int = |i: i64| DataIdValue::Int(i);
        let string = |s: &str| DataIdValue::Str(s.to_owned());
        let mut data_id = DataId::new();
        data_id.insert("instrument".into(), string(INSTRUMENT));
        data_id.insert("detector".into(), int(i64::from(detector)));
        data_id.insert(
            match spec.keyed {
                Keyed::Visit => "visit",
                Keyed::Exposure => "exposure",
            }
            .into(),
            int(v.id),
        );
        data_id.insert("band".into(), string(v.band));
        data_id.insert("day_obs".into(), int(i64::from(v.day_obs)));
        if spec.keyed == Keyed::Exposure {
            data_id.insert("group".into(), string(&v.group));
        }
        data_id.insert("physical_filter".into(), string(v.physical_filter));
        let run_part = self.run.replace('/', "_");
        let detector = detector_name(detector);
        let name = &spec.name;
        // The repository's file template: visit-keyed products under band/filter/visit,
        // exposure-keyed ones under the obs_id.
        let path = match spec.keyed {
            Keyed::Visit => format!(
                "{run}/{name}/{day_obs}/{band}/{filter}/{visit}/{name}_{INSTRUMENT}_{band}_{filter}_{visit}_{detector}_{run_part}.{ext}",
                run = self.run,
                day_obs = v.day_obs,
                band = v.band,
                filter = v.physical_filter,
                visit = v.id,
                ext = spec.extension,
            ),
            Keyed::Exposure => format!(
                "{run}/{name}/{day_obs}/{obs_id}/{name}_{INSTRUMENT}_{filter}_{obs_id}_{detector}_{run_part}.{ext}",
                run = self.run,
                day_obs = v.day_obs,
                obs_id = v.obs_id,
                filter = v.physical_filter,
                ext = spec.extension,
            ),
        };
        let mut refs = IndexMap::new();
        refs.insert(
            id,
            SerializedDatasetRef {
                dataset_type_name: spec.name.clone(),
                run: self.run.to_owned(),
                data_id,
            },
        );
        SerializedFileDataset {
            refs,
            path,
            formatter: Some(spec.formatter.clone()),
        }
    }
}

/// Every dataset id of a message.
pub fn dataset_ids(message: &PromptProcessingOutputEvent) -> impl Iterator<Item = Uuid> + '_ {
    message.datasets.iter().flat_map(|f| f.refs.keys().copied())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::focal_plane::visit_regions;
    use crate::schedule::{NightPlan, night};
    use serde_json::Value;

    /// The first message of the fixtures' `batch_c.jsonl`, whose visit we rebuild.
    fn reference() -> Value {
        let path = test_support::fixtures_dir().join("messages/batch_c.jsonl");
        let text = std::fs::read_to_string(&path).expect("reference message");
        serde_json::from_str(text.lines().next().expect("a line")).expect("json")
    }

    fn keys(value: &Value) -> Vec<String> {
        value.as_object().expect("object").keys().cloned().collect()
    }

    #[test]
    fn messages_have_the_shape_of_the_reference_ones() {
        let visits = night(&NightPlan::new(20260501, 2));
        let regions = visit_regions(visits[1].pointing);
        let types = DatasetTypeSpec::defaults();
        let run = default_run(&visits[1]);
        let output = WorkerOutput {
            visit: &visits[1],
            regions: &regions,
            run: &run,
            dataset_types: &types,
        };
        let message = output.message(0);
        let bytes = message.to_json();
        let ours: Value = serde_json::from_slice(&bytes).expect("json");
        let theirs = reference();
        assert!(
            ours.get("dataset_types").is_none(),
            "workers send no dataset_types"
        );
        let records = |m: &Value| -> Vec<(String, Vec<String>)> {
            m["dimension_records"]
                .as_array()
                .expect("records")
                .iter()
                .map(|r| {
                    (
                        r["definition"].as_str().expect("definition").to_owned(),
                        keys(&r["record"]),
                    )
                })
                .collect()
        };
        assert_eq!(
            records(&ours),
            records(&theirs),
            "same records, same fields"
        );
        let files = |m: &Value| -> Vec<(Vec<String>, String)> {
            m["datasets"]
                .as_array()
                .expect("datasets")
                .iter()
                .map(|f| {
                    let r = f["refs"]
                        .as_object()
                        .expect("refs")
                        .values()
                        .next()
                        .expect("a ref");
                    (
                        keys(&r["data_id"]),
                        f["formatter"].as_str().expect("formatter").to_owned(),
                    )
                })
                .collect()
        };
        assert_eq!(files(&ours), files(&theirs), "same data ids and formatters");
        // The reference is visit 2 of 2026-05-01, r_57, detector 0: the paths must agree.
        let their_paths: Vec<&str> = theirs["datasets"]
            .as_array()
            .expect("datasets")
            .iter()
            .map(|f| f["path"].as_str().expect("path"))
            .collect();
        let our_paths: Vec<&str> = ours["datasets"]
            .as_array()
            .expect("datasets")
            .iter()
            .map(|f| f["path"].as_str().expect("path"))
            .collect();
        let their_visit_paths: Vec<_> = their_paths[..2].to_vec();
        assert_eq!(our_paths[..2], their_visit_paths[..]);
        assert_eq!(our_paths[2], their_paths[2]);
        // Round trip through the schema crate, as the writer parses it.
        let parsed = PromptProcessingOutputEvent::from_json(&bytes).expect("parses");
        assert_eq!(parsed, message);
        assert!(parsed.decode_regions().expect("regions").len() == 2);
        for id in dataset_ids(&message) {
            assert_eq!(id.get_version_num(), 7);
        }
    }

    #[test]
    fn a_twin_has_the_same_data_ids_and_new_ids() {
        let visits = night(&NightPlan::new(20260501, 1));
        let regions = visit_regions(visits[0].pointing);
        let types = DatasetTypeSpec::defaults();
        let run = default_run(&visits[0]);
        let output = WorkerOutput {
            visit: &visits[0],
            regions: &regions,
            run: &run,
            dataset_types: &types,
        };
        let message = output.message(5);
        let twin = output.twin(&message);
        for (a, b) in message.datasets.iter().zip(&twin.datasets) {
            assert_eq!(a.path, b.path);
            assert_ne!(a.refs.keys().next(), b.refs.keys().next());
            assert_eq!(a.refs.values().next(), b.refs.values().next());
        }
    }

    #[test]
    fn dataset_types_parse() {
        assert_eq!(
            DatasetTypeSpec::parse("isr_statistics")
                .expect("known")
                .keyed,
            Keyed::Exposure
        );
        let custom = DatasetTypeSpec::parse("difference_image:visit:fits:a.B").expect("custom");
        assert_eq!(custom.extension, "fits");
        assert!(DatasetTypeSpec::parse("nope").is_err());
        assert!(DatasetTypeSpec::parse("x:night:fits:f").is_err());
    }
}
