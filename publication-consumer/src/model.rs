//! What the consumer records about a dataset, computed from what the registry said: its data ID
//! broken out, when its observation ended, and when the release policy lets it out of embargo.
//! Pure functions, no I/O.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schema::Timespan;
use schema::timespan::tai_ns_to_utc_unix_ns;
use uuid::Uuid;

use crate::policy::{Origin, Policy, ReleaseBasis, ReleaseClocks, Rule};
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
    /// The data ID without `instrument` and `visit`: PPS's `butler_data_id`.
    pub butler_data_id: serde_json::Value,
    /// The registry's ingest date, UTC.
    pub ingest_date: DateTime<Utc>,
    /// When the observation ended, UTC.
    pub observation_end: DateTime<Utc>,
    /// Where [`observation_end`](Self::observation_end) came from.
    pub end_source: EndSource,
    /// The origin of the event that announced it.
    pub origin: Origin,
    /// The policy's rule for its (origin, dataset type), if listed.
    pub rule: Option<Rule>,
    /// When its embargo ends; `None`: the policy never releases it.
    pub release_at: Option<DateTime<Utc>>,
    /// How [`release_at`](Self::release_at) was decided.
    pub release_basis: ReleaseBasis,
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
    /// Whether it could see the sky; the registry's NULL is read as true, as PPS does.
    pub can_see_sky: bool,
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

/// The consumer's record of one registry dataset of `origin`. The observation ends with the
/// exposure when the data ID has one, else with the visit, else (calibrations, templates,
/// anything without a bounded exposure or visit timespan) the dataset's ingest date stands in.
/// The release follows `policy`, which counts from the visit's end (see [`crate::policy`]).
pub fn describe(dataset: &RegistryDataset, policy: &Policy, origin: Origin) -> DatasetRecord {
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
    let release = policy.release(
        origin,
        &dataset.dataset_type,
        ReleaseClocks {
            visit_end,
            exposure_end: if visit.is_none() { exposure_end } else { None },
            ingest_date,
        },
    );
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
        butler_data_id: serde_json::Value::Object(
            dataset
                .data_id
                .iter()
                .filter(|(k, _)| *k != "instrument" && *k != "visit")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        ingest_date,
        observation_end,
        end_source,
        origin,
        rule: release.rule,
        release_at: release.at,
        release_basis: release.basis,
    }
}

/// Everything one batch of `origin` adds: a record per known dataset, its visits, exposures and
/// groups once each, and the ids the registry did not answer for.
pub fn records(
    ids: &[Uuid],
    found: &[RegistryDataset],
    policy: &Policy,
    origin: Origin,
) -> BatchRecords {
    let mut visits = BTreeMap::new();
    let mut exposures = BTreeMap::new();
    let mut groups = BTreeMap::new();
    let mut datasets = Vec::with_capacity(found.len());
    for dataset in found {
        let record = describe(dataset, policy, origin);
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
                        can_see_sky: dataset.exposure_can_see_sky.unwrap_or(true),
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
            exposure_can_see_sky: None,
        }
    }

    const PP: Origin = Origin::PromptProcessing;

    #[test]
    fn visit_datasets_end_with_their_visit() {
        let d = dataset(serde_json::json!({"instrument": "LSSTCam", "detector": 10, "visit": 7}));
        let r = describe(&d, &Policy::deployed(), PP);
        assert_eq!(r.end_source, EndSource::Visit);
        assert_eq!(r.observation_end, utc(T0_TAI + HOUR_NS));
        assert_eq!(r.release_at, Some(utc(T0_TAI + 81 * HOUR_NS)));
        assert_eq!(r.release_basis, ReleaseBasis::VisitEnd);
        assert!(r.rule.is_some_and(|rule| rule.publish_to_public));
        assert_eq!(r.day_obs, Some(20260501));
        assert_eq!(r.group, None);
        assert_eq!((r.visit, r.exposure, r.detector), (Some(7), None, Some(10)));
        // PPS's butler_data_id: the data ID without instrument and visit.
        assert_eq!(r.butler_data_id, serde_json::json!({"detector": 10}));
    }

    #[test]
    fn exposure_datasets_end_with_their_exposure_and_carry_its_group() {
        let d = dataset(serde_json::json!({"instrument": "LSSTCam", "detector": 3, "exposure": 7}));
        let mut policy = Policy::deployed();
        let r = describe(&d, &policy, PP);
        assert_eq!(r.end_source, EndSource::Exposure);
        assert_eq!(r.observation_end, utc(T0_TAI + 2 * HOUR_NS));
        assert_eq!(r.group.as_deref(), Some("g1"));
        // An exposure but no visit: the deployed service never releases it; the option does,
        // from the exposure's end.
        assert_eq!((r.release_at, r.release_basis), (None, ReleaseBasis::NoEnd));
        policy.release_exposure_only = true;
        let r = describe(&d, &policy, PP);
        assert_eq!(r.release_at, Some(utc(T0_TAI + 82 * HOUR_NS)));
        // A type the policy does not list is never released, whatever its data ID.
        let mut unlisted = d.clone();
        unlisted.dataset_type = "isr_statistics".into();
        let r = describe(&unlisted, &policy, PP);
        assert_eq!(
            (r.release_at, r.release_basis),
            (None, ReleaseBasis::NotListed)
        );
    }

    #[test]
    fn without_exposure_or_visit_the_ingest_date_stands_in() {
        let d = dataset(serde_json::json!({"instrument": "LSSTCam", "detector": 3}));
        let r = describe(&d, &Policy::deployed(), PP);
        assert_eq!(r.end_source, EndSource::IngestDate);
        assert_eq!(r.observation_end, utc(T0_TAI + 5 * HOUR_NS));
        // An unbounded visit timespan is no end either.
        let mut unbounded = dataset(serde_json::json!({"instrument": "LSSTCam", "visit": 7}));
        unbounded.visit_end_tai_ns = Some(Timespan::MAX_NSEC);
        assert_eq!(
            describe(&unbounded, &Policy::deployed(), PP).end_source,
            EndSource::IngestDate
        );
        // ...and with an embargo, no release: the deployed service needs the visit's end.
        assert_eq!(
            describe(&unbounded, &Policy::deployed(), PP).release_at,
            None
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
        let r = records(&ids, &[a, b, c], &Policy::deployed(), PP);
        assert_eq!(r.datasets.len(), 3);
        assert_eq!(r.visits.len(), 1);
        assert_eq!(r.exposures.len(), 1);
        assert_eq!(r.groups, vec![("LSSTCam".to_owned(), "g1".to_owned())]);
        assert_eq!(r.unknown, vec![Uuid::from_u128(4)]);
    }
}
