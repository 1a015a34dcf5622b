//! What the consumer records about a dataset, computed from what the registry said: its data ID
//! broken out, when its observation ended and so when its embargo ends. Pure functions, no I/O.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use schema::Timespan;
use schema::timespan::tai_ns_to_utc_unix_ns;
use uuid::Uuid;

use crate::registry::RegistryDataset;

/// Where a dataset's observation end came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndSource {
    /// The end of its exposure's timespan.
    Exposure,
    /// The end of its visit's timespan.
    Visit,
    /// No exposure or visit with a bounded timespan: the registry's ingest date.
    IngestDate,
}

impl EndSource {
    /// The name stored and served.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exposure => "exposure",
            Self::Visit => "visit",
            Self::IngestDate => "ingest_date",
        }
    }
}

/// One row of the consumer's `dataset` table.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetRecord {
    /// The dataset id.
    pub id: Uuid,
    /// Its dataset type's name.
    pub dataset_type: String,
    /// Its RUN collection.
    pub run: String,
    /// `instrument` of the data ID.
    pub instrument: Option<String>,
    /// `detector` of the data ID.
    pub detector: Option<i64>,
    /// `visit` of the data ID.
    pub visit: Option<i64>,
    /// `exposure` of the data ID.
    pub exposure: Option<i64>,
    /// The group: of the data ID, else of its exposure.
    pub group: Option<String>,
    /// The day_obs: of the data ID, else of its exposure or visit.
    pub day_obs: Option<i64>,
    /// The data ID as the registry's tags table holds it.
    pub data_id: serde_json::Value,
    /// The registry's ingest date, UTC.
    pub ingest_date: DateTime<Utc>,
    /// When the observation ended, UTC.
    pub observation_end: DateTime<Utc>,
    /// Where [`observation_end`](Self::observation_end) came from.
    pub end_source: EndSource,
    /// When the embargo ends: observation end + embargo.
    pub release_at: DateTime<Utc>,
}

/// A `visit` row (insert-if-not-exists).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct VisitRow {
    /// Instrument.
    pub instrument: String,
    /// Visit id.
    pub id: i64,
    /// Its day_obs.
    pub day_obs: Option<i64>,
    /// The end of its timespan, UTC.
    pub observation_end: Option<DateTime<Utc>>,
}

/// An `exposure` row (insert-if-not-exists).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ExposureRow {
    /// Instrument.
    pub instrument: String,
    /// Exposure id.
    pub id: i64,
    /// Its day_obs.
    pub day_obs: Option<i64>,
    /// Its group.
    pub group: Option<String>,
    /// The end of its timespan, UTC.
    pub observation_end: Option<DateTime<Utc>>,
}

/// Everything one event adds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatchRecords {
    /// The datasets the registry knows.
    pub datasets: Vec<DatasetRecord>,
    /// Their visits, once each.
    pub visits: Vec<VisitRow>,
    /// Their exposures, once each.
    pub exposures: Vec<ExposureRow>,
    /// Their groups, `(instrument, name)`, once each.
    pub groups: Vec<(String, String)>,
    /// Ids of the batch the registry does not know.
    pub unknown: Vec<Uuid>,
}

/// A TAI-nanosecond instant as UTC; `None` for daf_butler's unbounded sentinels.
pub fn tai_ns_to_utc(tai_ns: i64) -> Option<DateTime<Utc>> {
    if tai_ns <= Timespan::MIN_NSEC || tai_ns >= Timespan::MAX_NSEC {
        return None;
    }
    Some(DateTime::from_timestamp_nanos(tai_ns_to_utc_unix_ns(
        tai_ns,
    )))
}

/// The embargo as a chrono delta (saturating: a configured embargo fits comfortably).
fn delta(embargo: Duration) -> TimeDelta {
    TimeDelta::from_std(embargo).unwrap_or(TimeDelta::MAX)
}

/// The consumer's record of one registry dataset. The observation ends with the exposure when
/// the data ID has one, else with the visit, else (calibrations, templates, anything without a
/// bounded exposure or visit timespan) the dataset's ingest date stands in.
pub fn describe(dataset: &RegistryDataset, embargo: Duration) -> DatasetRecord {
    let text = |key: &str| {
        dataset
            .data_id
            .get(key)
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    let int = |key: &str| dataset.data_id.get(key).and_then(serde_json::Value::as_i64);
    let ingest_date = tai_ns_to_utc(dataset.ingest_date_tai_ns)
        .unwrap_or_else(|| DateTime::from_timestamp_nanos(dataset.ingest_date_tai_ns));
    let exposure = int("exposure");
    let visit = int("visit");
    let exposure_end = exposure
        .and(dataset.exposure_end_tai_ns)
        .and_then(tai_ns_to_utc);
    let visit_end = visit.and(dataset.visit_end_tai_ns).and_then(tai_ns_to_utc);
    let (observation_end, end_source) = match (exposure_end, visit_end) {
        (Some(end), _) => (end, EndSource::Exposure),
        (None, Some(end)) => (end, EndSource::Visit),
        (None, None) => (ingest_date, EndSource::IngestDate),
    };
    DatasetRecord {
        id: dataset.id,
        dataset_type: dataset.dataset_type.clone(),
        run: dataset.run.clone(),
        instrument: text("instrument"),
        detector: int("detector"),
        visit,
        exposure,
        group: text("group").or_else(|| exposure.and(dataset.exposure_group.clone())),
        day_obs: int("day_obs")
            .or(exposure.and(dataset.exposure_day_obs))
            .or(visit.and(dataset.visit_day_obs)),
        data_id: serde_json::Value::Object(dataset.data_id.clone()),
        ingest_date,
        observation_end,
        end_source,
        release_at: observation_end + delta(embargo),
    }
}

/// Everything one batch adds: a record per known dataset, its visits, exposures and groups once
/// each, and the ids the registry did not answer for.
pub fn records(ids: &[Uuid], found: &[RegistryDataset], embargo: Duration) -> BatchRecords {
    let mut visits = BTreeMap::new();
    let mut exposures = BTreeMap::new();
    let mut groups = BTreeMap::new();
    let mut datasets = Vec::with_capacity(found.len());
    for dataset in found {
        let record = describe(dataset, embargo);
        if let Some(instrument) = &record.instrument {
            if let Some(id) = record.visit {
                visits
                    .entry((instrument.clone(), id))
                    .or_insert_with(|| VisitRow {
                        instrument: instrument.clone(),
                        id,
                        day_obs: dataset.visit_day_obs,
                        observation_end: dataset.visit_end_tai_ns.and_then(tai_ns_to_utc),
                    });
            }
            if let Some(id) = record.exposure {
                exposures
                    .entry((instrument.clone(), id))
                    .or_insert_with(|| ExposureRow {
                        instrument: instrument.clone(),
                        id,
                        day_obs: dataset.exposure_day_obs,
                        group: dataset.exposure_group.clone(),
                        observation_end: dataset.exposure_end_tai_ns.and_then(tai_ns_to_utc),
                    });
            }
            if let Some(group) = &record.group {
                groups.insert((instrument.clone(), group.clone()), ());
            }
        }
        datasets.push(record);
    }
    let known: std::collections::HashSet<Uuid> = found.iter().map(|d| d.id).collect();
    let mut unknown: Vec<Uuid> = ids
        .iter()
        .filter(|id| !known.contains(id))
        .copied()
        .collect();
    unknown.sort_unstable();
    unknown.dedup();
    BatchRecords {
        datasets,
        visits: visits.into_values().collect(),
        exposures: exposures.into_values().collect(),
        groups: groups.into_keys().collect(),
        unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR_NS: i64 = 3_600_000_000_000;
    /// 2026-05-02T00:00:00Z as TAI ns.
    const T0_TAI: i64 = 1_777_680_000_000_000_000 + 37_000_000_000;

    fn utc(tai: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_nanos(tai - 37_000_000_000)
    }

    fn dataset(data_id: serde_json::Value) -> RegistryDataset {
        RegistryDataset {
            id: Uuid::from_u128(1),
            dataset_type: "preliminary_visit_image".into(),
            run: "run".into(),
            ingest_date_tai_ns: T0_TAI + 5 * HOUR_NS,
            data_id: data_id.as_object().cloned().unwrap_or_default(),
            visit_end_tai_ns: Some(T0_TAI + HOUR_NS),
            visit_day_obs: Some(20260501),
            exposure_end_tai_ns: Some(T0_TAI + 2 * HOUR_NS),
            exposure_day_obs: Some(20260501),
            exposure_group: Some("g1".into()),
        }
    }

    const EMBARGO: Duration = Duration::from_secs(80 * 3600);

    #[test]
    fn visit_datasets_end_with_their_visit() {
        let d = dataset(serde_json::json!({"instrument": "LSSTCam", "detector": 10, "visit": 7}));
        let r = describe(&d, EMBARGO);
        assert_eq!(r.end_source, EndSource::Visit);
        assert_eq!(r.observation_end, utc(T0_TAI + HOUR_NS));
        assert_eq!(r.release_at, utc(T0_TAI + 81 * HOUR_NS));
        assert_eq!(r.day_obs, Some(20260501));
        assert_eq!(r.group, None);
        assert_eq!((r.visit, r.exposure, r.detector), (Some(7), None, Some(10)));
    }

    #[test]
    fn exposure_datasets_end_with_their_exposure_and_carry_its_group() {
        let d = dataset(serde_json::json!({"instrument": "LSSTCam", "detector": 3, "exposure": 7}));
        let r = describe(&d, EMBARGO);
        assert_eq!(r.end_source, EndSource::Exposure);
        assert_eq!(r.observation_end, utc(T0_TAI + 2 * HOUR_NS));
        assert_eq!(r.group.as_deref(), Some("g1"));
    }

    #[test]
    fn without_exposure_or_visit_the_ingest_date_stands_in() {
        let d = dataset(serde_json::json!({"instrument": "LSSTCam", "detector": 3}));
        let r = describe(&d, EMBARGO);
        assert_eq!(r.end_source, EndSource::IngestDate);
        assert_eq!(r.observation_end, utc(T0_TAI + 5 * HOUR_NS));
        // An unbounded visit timespan is no end either.
        let mut unbounded = dataset(serde_json::json!({"instrument": "LSSTCam", "visit": 7}));
        unbounded.visit_end_tai_ns = Some(Timespan::MAX_NSEC);
        assert_eq!(
            describe(&unbounded, EMBARGO).end_source,
            EndSource::IngestDate
        );
    }

    #[test]
    fn records_dedupe_dimensions_and_list_unknown_ids() {
        let mut a =
            dataset(serde_json::json!({"instrument": "LSSTCam", "detector": 1, "visit": 7}));
        let mut b =
            dataset(serde_json::json!({"instrument": "LSSTCam", "detector": 2, "visit": 7}));
        let c = dataset(serde_json::json!({"instrument": "LSSTCam", "detector": 2, "exposure": 7}));
        a.id = Uuid::from_u128(1);
        b.id = Uuid::from_u128(2);
        let mut c = c;
        c.id = Uuid::from_u128(3);
        let ids = [1, 2, 3, 4, 4].map(Uuid::from_u128);
        let r = records(&ids, &[a, b, c], EMBARGO);
        assert_eq!(r.datasets.len(), 3);
        assert_eq!(r.visits.len(), 1);
        assert_eq!(r.exposures.len(), 1);
        assert_eq!(r.groups, vec![("LSSTCam".to_owned(), "g1".to_owned())]);
        assert_eq!(r.unknown, vec![Uuid::from_u128(4)]);
    }
}
