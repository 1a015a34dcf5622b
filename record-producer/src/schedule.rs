//! A night of LSSTCam observing: the visits, their times, filters and pointings, and when each
//! detector's worker finishes with it.
//!
//! About 800 visits a night: 30 s exposures, one every 32-37 s (readout, slew, settle), a few
//! filter changes (two minutes each), the pointings marching along a survey pattern (fields a
//! focal plane apart along RA in a declination band, the next band coming back the other way), the
//! sky angle changing from field to field. Identifiers follow LSSTCam's: visit = exposure =
//! `day_obs * 100000 + seq_num`, `obs_id` `MC_O_<day_obs>_<seq_num:06>`, the group named by the
//! exposure's start time.
//!
//! The plan is deterministic for a seed, so a load test can be repeated exactly (with new UUIDs).

use chrono::{DateTime, Duration, NaiveDate, NaiveTime, Utc};
use service_kit::ConfigError;

use crate::focal_plane::{DETECTORS, Pointing, RAFT_PITCH_DEG};

/// LSSTCam's filters as the registry holds them: physical filter and band.
pub const FILTERS: [(&str, &str); 6] = [
    ("r_57", "r"),
    ("i_39", "i"),
    ("z_20", "z"),
    ("g_6", "g"),
    ("y_10", "y"),
    ("u_24", "u"),
];

/// Rubin's latitude, for plausible zenith angles and azimuths.
const SITE_LATITUDE_DEG: f64 = -30.24;
/// Fields per declination band before the survey pattern moves a band south.
const FIELDS_PER_BAND: u32 = 12;
/// Seconds between TAI and UTC (since 2017): the registry's timespans are TAI nanoseconds.
pub const TAI_MINUS_UTC_S: i64 = 37;

/// What a night looks like. Defaults are LSSTCam's nominal cadence.
#[derive(Debug, Clone)]
pub struct NightPlan {
    /// The observing day (`YYYYMMDD`); the night starts in its evening (23:00 UTC, Chile's dusk).
    pub day_obs: u32,
    /// How many visits.
    pub visits: u32,
    /// The first visit's sequence number (later ones follow).
    pub first_seq_num: u32,
    /// Exposure time, seconds.
    pub exposure_time_s: f64,
    /// Shortest and longest time from one exposure's start to the next's, seconds.
    pub cadence_s: (f64, f64),
    /// Visits between filter changes.
    pub visits_per_filter: u32,
    /// How long a filter change takes, seconds.
    pub filter_change_s: f64,
    /// Random seed for cadence, pointings and sky angles.
    pub seed: u64,
}

impl NightPlan {
    /// A nominal night of `visits` visits on `day_obs`.
    pub fn new(day_obs: u32, visits: u32) -> Self {
        Self {
            day_obs,
            visits,
            first_seq_num: 1,
            exposure_time_s: 30.0,
            cadence_s: (32.0, 37.0),
            visits_per_filter: 100,
            filter_change_s: 120.0,
            seed: 1,
        }
    }
}

/// One visit (and its exposure: Prompt Processing's visits are one-to-one).
#[derive(Debug, Clone)]
pub struct Visit {
    /// The observing day, `YYYYMMDD`.
    pub day_obs: u32,
    /// Sequence number in the day.
    pub seq_num: u32,
    /// Visit id = exposure id.
    pub id: i64,
    /// `MC_O_<day_obs>_<seq_num>`.
    pub obs_id: String,
    /// The group (the exposure's `nextVisit` group): its start time, ISO with microseconds.
    pub group: String,
    /// Physical filter and band.
    pub physical_filter: &'static str,
    /// Band of the filter.
    pub band: &'static str,
    /// Start of the exposure, UTC.
    pub start: DateTime<Utc>,
    /// Exposure time, seconds.
    pub exposure_time_s: f64,
    /// Where the telescope points.
    pub pointing: Pointing,
    /// Telescope azimuth, degrees.
    pub azimuth: f64,
    /// Zenith angle, degrees.
    pub zenith_angle: f64,
    /// Seconds from the night's first exposure start to this exposure's end: when workers can
    /// start on it.
    pub end_offset_s: f64,
}

impl Visit {
    /// The exposure's timespan as the registry stores it: TAI nanoseconds, `[start, end)`.
    pub fn timespan_tai_ns(&self) -> (i64, i64) {
        let begin = tai_ns(self.start);
        let end = begin + (self.exposure_time_s * 1e9).round() as i64;
        (begin, end)
    }

    /// The `day_obs` record's timespan: noon to noon (TAI) around the observing night, as
    /// LSSTCam's day_obs offset of 12 hours makes it.
    pub fn day_obs_timespan_tai_ns(&self) -> (i64, i64) {
        let noon = day_obs_date(self.day_obs)
            .and_time(NaiveTime::from_hms_opt(12, 0, 0).unwrap_or(NaiveTime::MIN))
            .and_utc()
            .timestamp();
        let begin = noon * 1_000_000_000;
        (begin, begin + 86_400 * 1_000_000_000)
    }

    /// The observing day as `YYYY-MM-DD`.
    pub fn day_obs_iso(&self) -> String {
        day_obs_date(self.day_obs).format("%Y-%m-%d").to_string()
    }
}

fn tai_ns(time: DateTime<Utc>) -> i64 {
    (time.timestamp() + TAI_MINUS_UTC_S) * 1_000_000_000 + i64::from(time.timestamp_subsec_nanos())
}

/// The date of a `YYYYMMDD` day; an impossible one (rejected by [`parse_day_obs`]) maps to 1970.
fn day_obs_date(day_obs: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(
        (day_obs / 10_000) as i32,
        (day_obs / 100) % 100,
        day_obs % 100,
    )
    .unwrap_or_default()
}

/// Parses a `YYYYMMDD` observing day, refusing dates that do not exist.
pub fn parse_day_obs(text: &str) -> Result<u32, ConfigError> {
    NaiveDate::parse_from_str(text, "%Y%m%d").map_err(|e| {
        ConfigError::caused_by(format!("day_obs {text:?} is not a YYYYMMDD date"), e)
    })?;
    text.parse()
        .map_err(|e| ConfigError::caused_by(format!("day_obs {text:?}"), e))
}

/// Today's observing day (UTC date, 12 hours back: the night belongs to the day it starts on).
pub fn current_day_obs() -> u32 {
    let day = (Utc::now() - Duration::hours(12)).date_naive();
    day.format("%Y%m%d").to_string().parse().unwrap_or(20260501)
}

/// The visits of a night, in order.
pub fn night(plan: &NightPlan) -> Vec<Visit> {
    let mut rng = fastrand::Rng::with_seed(plan.seed);
    let dusk = day_obs_date(plan.day_obs)
        .and_time(NaiveTime::from_hms_opt(23, 0, 0).unwrap_or(NaiveTime::MIN))
        .and_utc();
    let mut visits = Vec::with_capacity(plan.visits as usize);
    let mut offset_s = 0.0;
    let start_ra = 150.0 + rng.f64() * 60.0;
    let mut sky_angle = rng.f64() * 360.0;
    for index in 0..plan.visits {
        if index > 0 {
            let (low, high) = plan.cadence_s;
            offset_s += low + rng.f64() * (high - low);
            if plan.visits_per_filter > 0 && index.is_multiple_of(plan.visits_per_filter) {
                offset_s += plan.filter_change_s;
            }
        }
        let filter_block = index.checked_div(plan.visits_per_filter).unwrap_or(0);
        let (physical_filter, band) = FILTERS[filter_block as usize % FILTERS.len()];
        // Boustrophedon: along RA within a band, the next band south coming back.
        let band_index = index / FIELDS_PER_BAND;
        let in_band = index % FIELDS_PER_BAND;
        let step = if band_index.is_multiple_of(2) {
            in_band
        } else {
            FIELDS_PER_BAND - 1 - in_band
        };
        let dec = -10.0 - f64::from(band_index % 15) * 5.0 * RAFT_PITCH_DEG;
        let ra = (start_ra + f64::from(step) * 5.0 * RAFT_PITCH_DEG / dec.to_radians().cos())
            .rem_euclid(360.0);
        sky_angle = (sky_angle + 20.0 + rng.f64() * 40.0).rem_euclid(360.0);
        let start = dusk + Duration::microseconds((offset_s * 1e6).round() as i64);
        let seq_num = plan.first_seq_num + index;
        let zenith_angle = ((dec - SITE_LATITUDE_DEG).abs() + rng.f64() * 20.0).min(70.0);
        visits.push(Visit {
            day_obs: plan.day_obs,
            seq_num,
            id: i64::from(plan.day_obs) * 100_000 + i64::from(seq_num),
            obs_id: format!("MC_O_{}_{seq_num:06}", plan.day_obs),
            group: start.format("%Y-%m-%dT%H:%M:%S%.6f").to_string(),
            physical_filter,
            band,
            start,
            exposure_time_s: plan.exposure_time_s,
            pointing: Pointing {
                ra: round6(ra),
                dec: round6(dec),
                sky_angle: round6(sky_angle),
            },
            azimuth: round6(
                if dec < SITE_LATITUDE_DEG { 180.0 } else { 0.0 } + rng.f64() * 30.0 - 15.0,
            )
            .rem_euclid(360.0),
            zenith_angle: round6(zenith_angle),
            end_offset_s: offset_s + plan.exposure_time_s,
        });
    }
    visits
}

fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

/// When each worker of a visit finishes: seconds after the exposure ends, per detector.
#[derive(Debug, Clone, Copy)]
pub struct Processing {
    /// Time a worker takes from the end of the exposure to its message (the quickest detector).
    pub delay_s: f64,
    /// The spread of finishing times across the 189 detectors of a visit.
    pub spread_s: f64,
}

impl Default for Processing {
    fn default() -> Self {
        Self {
            delay_s: 60.0,
            spread_s: 10.0,
        }
    }
}

/// One worker's message to send: visit index, detector, and when (seconds after the night's first
/// exposure started).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Send {
    /// Index into the night's visits.
    pub visit: usize,
    /// Detector id.
    pub detector: u32,
    /// Seconds after the night started.
    pub at_s: f64,
}

/// Every message of the night in the order workers send them (by finishing time).
pub fn sends(visits: &[Visit], processing: Processing, seed: u64) -> Vec<Send> {
    let mut rng = fastrand::Rng::with_seed(seed ^ 0x5eed);
    let mut sends: Vec<Send> = visits
        .iter()
        .enumerate()
        .flat_map(|(index, visit)| {
            let mut rng = rng.fork();
            (0..DETECTORS).map(move |detector| Send {
                visit: index,
                detector,
                at_s: visit.end_offset_s + processing.delay_s + rng.f64() * processing.spread_s,
            })
        })
        .collect();
    sends.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
    sends
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nominal_night() {
        let visits = night(&NightPlan::new(20260501, 800));
        assert_eq!(visits.len(), 800);
        assert_eq!(visits[0].id, 2026050100001);
        assert_eq!(visits[0].obs_id, "MC_O_20260501_000001");
        assert_eq!(visits[799].seq_num, 800);
        let hours = visits[799].end_offset_s / 3600.0;
        assert!((7.0..9.0).contains(&hours), "800 visits take {hours} h");
        for pair in visits.windows(2) {
            let gap = (pair[1].start - pair[0].start).num_milliseconds() as f64 / 1000.0;
            let filter_change = pair[1].physical_filter != pair[0].physical_filter;
            assert!(
                (32.0..=37.0).contains(&gap) || (filter_change && gap > 150.0),
                "gap {gap}"
            );
            assert_ne!(pair[0].group, pair[1].group);
        }
        let filters: std::collections::BTreeSet<_> =
            visits.iter().map(|v| v.physical_filter).collect();
        assert!(filters.len() >= 5, "filter changes: {filters:?}");
        assert_eq!(visits[0].group, "2026-05-01T23:00:00.000000");
        let (begin, end) = visits[0].timespan_tai_ns();
        assert_eq!(end - begin, 30_000_000_000);
        assert_eq!(
            visits[0].day_obs_timespan_tai_ns().0,
            1_777_636_800_000_000_000
        );
    }

    #[test]
    fn the_same_seed_gives_the_same_night() {
        let a = night(&NightPlan::new(20260501, 30));
        let b = night(&NightPlan::new(20260501, 30));
        assert_eq!(
            a.iter().map(|v| v.pointing).collect::<Vec<_>>(),
            b.iter().map(|v| v.pointing).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_visits_workers_finish_within_the_spread() {
        let visits = night(&NightPlan::new(20260501, 3));
        let processing = Processing {
            delay_s: 60.0,
            spread_s: 10.0,
        };
        let sends = sends(&visits, processing, 7);
        assert_eq!(sends.len(), 3 * 189);
        for (index, visit) in visits.iter().enumerate() {
            let times: Vec<f64> = sends
                .iter()
                .filter(|s| s.visit == index)
                .map(|s| s.at_s)
                .collect();
            assert_eq!(times.len(), 189);
            for t in times {
                let after = t - visit.end_offset_s;
                assert!((60.0..=70.0).contains(&after), "{after}");
            }
        }
        assert!(sends.windows(2).all(|w| w[0].at_s <= w[1].at_s));
    }

    #[test]
    fn day_obs_is_checked() {
        assert_eq!(parse_day_obs("20260501").ok(), Some(20260501));
        assert!(parse_day_obs("20261301").is_err());
        assert!(parse_day_obs("tomorrow").is_err());
    }
}
