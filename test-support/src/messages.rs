//! Realistic pp-output messages for new visits, made from a fixture message: the same records
//! and datasets a worker sends, with the visit, exposure, group, detector, UUIDs and paths
//! changed, so a test or benchmark can make as many distinct messages as it needs.
//!
//! A fixture that does not have the expected shape is a broken test set-up, not data from
//! outside: these helpers panic with the reason rather than return errors.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use serde_json::Value;
use uuid::Uuid;

/// Makes messages from the first message of `batch_c.jsonl`.
#[derive(Debug)]
pub struct MessageFactory {
    template: Value,
    template_visit: i64,
    template_detector: i64,
}

/// `R{raft}_S{sensor}` of a science detector, as the reference repository names them.
pub fn detector_name(id: i64) -> String {
    format!("R{:02}_S{}{}", id / 9, (id % 9) / 3, id % 3)
}

impl MessageFactory {
    /// Loads the template from the fixture messages.
    pub fn load() -> Self {
        let path = crate::fixtures_dir().join("messages/batch_c.jsonl");
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let first = text.lines().next().expect("batch_c.jsonl has a message");
        let template: Value = serde_json::from_str(first).expect("template parses");
        let exposure = record(&template, "exposure");
        let template_visit = exposure["id"].as_i64().expect("exposure id");
        let template_detector = record(&template, "visit_detector_region")["detector"]
            .as_i64()
            .expect("detector");
        Self {
            template,
            template_visit,
            template_detector,
        }
    }

    /// A message for `detector` of a new visit `visit` (its own exposure and group), carrying the
    /// first `datasets` datasets of the template (1 to 3) with fresh UUIDs.
    pub fn message(&self, visit: i64, detector: i64, datasets: usize) -> Value {
        let mut message = self.template.clone();
        let obs_id = format!("MC_O_20260501_{:06}", visit % 1_000_000);
        let group = format!(
            "2026-05-02T{:02}:{:02}:{:02}.{:06}",
            (visit / 3600) % 24,
            (visit / 60) % 60,
            visit % 60,
            visit % 1_000_000
        );
        for entry in message["dimension_records"]
            .as_array_mut()
            .expect("records")
        {
            let definition = entry["definition"].as_str().unwrap_or_default().to_owned();
            let record = &mut entry["record"];
            match Some(definition.as_str()) {
                Some("group") => record["name"] = group.clone().into(),
                Some("exposure") => {
                    record["id"] = visit.into();
                    record["obs_id"] = obs_id.clone().into();
                    record["group"] = group.clone().into();
                }
                Some("visit") => {
                    record["id"] = visit.into();
                    record["name"] = obs_id.clone().into();
                }
                Some("visit_definition") => {
                    record["exposure"] = visit.into();
                    record["visit"] = visit.into();
                }
                Some("visit_system_membership") => record["visit"] = visit.into(),
                Some("visit_detector_region") => {
                    record["visit"] = visit.into();
                    record["detector"] = detector.into();
                }
                _ => {}
            }
        }
        let old_visit = self.template_visit.to_string();
        let old_detector = detector_name(self.template_detector);
        let files = message["datasets"].as_array_mut().expect("datasets");
        files.truncate(datasets.clamp(1, 3));
        for file in files {
            let path = file["path"]
                .as_str()
                .expect("path")
                .replace(&old_visit, &visit.to_string())
                .replace(&old_detector, &detector_name(detector));
            file["path"] = path.into();
            let refs = file["refs"].as_object_mut().expect("refs");
            let (_, mut dataset_ref) = refs
                .iter()
                .next()
                .map(|(k, v)| (k.clone(), v.clone()))
                .expect("one ref");
            let data_id = &mut dataset_ref["data_id"];
            data_id["detector"] = detector.into();
            if data_id.get("visit").is_some() {
                data_id["visit"] = visit.into();
            }
            if data_id.get("exposure").is_some() {
                data_id["exposure"] = visit.into();
            }
            if data_id.get("group").is_some() {
                data_id["group"] = group.clone().into();
            }
            refs.clear();
            refs.insert(Uuid::new_v4().to_string(), dataset_ref);
        }
        message
    }

    /// A batch of `datasets` datasets of new visits starting at `first_visit`: three datasets
    /// per message (one detector each), the last message holding the remainder.
    pub fn batch(&self, first_visit: i64, datasets: usize) -> Vec<Value> {
        let mut out = Vec::new();
        let mut left = datasets;
        let mut detector = 0;
        let mut visit = first_visit;
        while left > 0 {
            let n = left.min(3);
            out.push(self.message(visit, detector, n));
            left -= n;
            detector += 1;
            if detector == 189 {
                detector = 0;
                visit += 1;
            }
        }
        out
    }
}

/// The record of `element` in a message.
pub fn record<'a>(message: &'a Value, element: &str) -> &'a Value {
    message["dimension_records"]
        .as_array()
        .and_then(|records| records.iter().find(|r| r["definition"] == element))
        .map(|r| &r["record"])
        .unwrap_or_else(|| panic!("no {element} record"))
}

/// The record of `element` in a message, to change it.
pub fn record_mut<'a>(message: &'a mut Value, element: &str) -> &'a mut Value {
    message["dimension_records"]
        .as_array_mut()
        .and_then(|records| records.iter_mut().find(|r| r["definition"] == element))
        .map(|r| &mut r["record"])
        .unwrap_or_else(|| panic!("no {element} record"))
}

/// Every dataset id of a message.
pub fn dataset_ids(message: &Value) -> Vec<Uuid> {
    message["datasets"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|file| {
            file["refs"]
                .as_object()
                .into_iter()
                .flat_map(|refs| refs.keys())
        })
        .map(|k| k.parse().expect("uuid key"))
        .collect()
}

/// JSON lines as the writer receives them.
pub fn to_lines(messages: &[Value]) -> Vec<Vec<u8>> {
    messages
        .iter()
        .map(|m| serde_json::to_vec(m).expect("serialize"))
        .collect()
}
