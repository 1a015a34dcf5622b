//! Timespans as daf_butler carries them: TAI nanoseconds since 1970-01-01 00:00:00 TAI, half-open
//! `[begin, end)`, with sentinels for unbounded ends; and the registry's `int8range` form.
//!
//! This module is also the one place that knows the offset between UTC and TAI.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// TAI - UTC in nanoseconds: 37 s since the leap second of 2016-12-31, and no leap second has been
/// announced since. daf_butler stores `ingest_date` and every timespan on the TAI scale, so a UTC
/// clock reading becomes a registry value by adding this (daf_butler gets the same number from
/// astropy's leap-second table; `../shared/reference/butler-registry.md`, "ingest_date").
/// Valid for instants after 2017-01-01; nothing this project writes is older.
pub const TAI_MINUS_UTC_NS: i64 = 37_000_000_000;

/// Converts a UTC instant in nanoseconds since the Unix epoch to TAI nanoseconds since
/// 1970-01-01 TAI, as daf_butler's `TimeConverter` does for current dates.
pub const fn utc_unix_ns_to_tai_ns(utc_unix_ns: i64) -> i64 {
    utc_unix_ns + TAI_MINUS_UTC_NS
}

/// Converts TAI nanoseconds back to UTC nanoseconds since the Unix epoch (current dates only).
pub const fn tai_ns_to_utc_unix_ns(tai_ns: i64) -> i64 {
    tai_ns - TAI_MINUS_UTC_NS
}

/// A daf_butler `Timespan`: `[begin, end)` in TAI nanoseconds.
///
/// On the wire it is the JSON array `[begin, end]` (what `Timespan`'s plain serializer emits).
/// daf_butler's sentinels: an unbounded begin is [`Timespan::MIN_NSEC`] (0), an unbounded end is
/// [`Timespan::MAX_NSEC`] (2100-01-01 00:00:00 TAI), and an empty timespan is `[MAX_NSEC, MIN_NSEC]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Timespan {
    /// Inclusive begin, TAI ns; `MIN_NSEC` when unbounded.
    pub begin: i64,
    /// Exclusive end, TAI ns; `MAX_NSEC` when unbounded.
    pub end: i64,
}

impl Timespan {
    /// daf_butler's `TimeConverter().min_nsec`: the begin of an unbounded timespan.
    pub const MIN_NSEC: i64 = 0;
    /// daf_butler's `TimeConverter().max_nsec`: 2100-01-01 00:00:00 TAI, the end of an unbounded
    /// timespan.
    pub const MAX_NSEC: i64 = 4_102_444_800_000_000_000;

    /// A timespan from its wire values.
    pub const fn new(begin: i64, end: i64) -> Self {
        Self { begin, end }
    }

    /// The empty timespan as daf_butler encodes it.
    pub const fn empty() -> Self {
        Self {
            begin: Self::MAX_NSEC,
            end: Self::MIN_NSEC,
        }
    }

    /// True for daf_butler's empty timespan, and for any whose end is not after its begin.
    pub const fn is_empty(&self) -> bool {
        self.end <= self.begin
    }

    /// The Postgres `int8range` literal daf_butler's `TimespanDatabaseRepresentation` stores:
    /// `[begin,end)`, with an unbounded side (a sentinel) left out, and `empty` for an empty
    /// timespan.
    pub fn to_int8range(&self) -> String {
        if self.is_empty() {
            return "empty".to_owned();
        }
        let begin = if self.begin <= Self::MIN_NSEC {
            String::new()
        } else {
            self.begin.to_string()
        };
        let end = if self.end >= Self::MAX_NSEC {
            String::new()
        } else {
            self.end.to_string()
        };
        // Postgres normalises an unbounded lower bound to `(`; writing it that way keeps the
        // literal equal to what the server would print back.
        let open = if begin.is_empty() { '(' } else { '[' };
        format!("{open}{begin},{end})")
    }
}

impl Serialize for Timespan {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        [self.begin, self.end].serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Timespan {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let [begin, end] = <[i64; 2]>::deserialize(deserializer)?;
        Ok(Self { begin, end })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int8range_literals() {
        assert_eq!(Timespan::new(10, 20).to_int8range(), "[10,20)");
        assert_eq!(Timespan::new(0, 20).to_int8range(), "(,20)");
        assert_eq!(
            Timespan::new(10, Timespan::MAX_NSEC).to_int8range(),
            "[10,)"
        );
        assert_eq!(Timespan::new(0, Timespan::MAX_NSEC).to_int8range(), "(,)");
        assert_eq!(Timespan::empty().to_int8range(), "empty");
    }

    #[test]
    fn max_nsec_is_2100_tai() {
        // 47482 days from 1970-01-01 to 2100-01-01 (130 years, 32 leap days).
        assert_eq!(Timespan::MAX_NSEC, 47_482 * 86_400 * 1_000_000_000);
    }

    #[test]
    fn utc_tai_round_trip() {
        let utc = 1_777_683_640_000_000_000;
        assert_eq!(utc_unix_ns_to_tai_ns(utc) - utc, 37_000_000_000);
        assert_eq!(tai_ns_to_utc_unix_ns(utc_unix_ns_to_tai_ns(utc)), utc);
    }
}
