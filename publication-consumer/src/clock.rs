//! "Now", injectable: the embargo is a matter of time, and tests must be able to move past it
//! without waiting 80 hours.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, TimeDelta, Utc};

/// The consumer's clock: the system's, or a manual one a test sets and advances. Clones share
/// the same time.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    manual: Option<Arc<Mutex<DateTime<Utc>>>>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Self { manual: None }
    }

    /// A clock that stands at `at` until told otherwise.
    pub fn manual(at: DateTime<Utc>) -> Self {
        Self {
            manual: Some(Arc::new(Mutex::new(at))),
        }
    }

    /// The current time.
    pub fn now(&self) -> DateTime<Utc> {
        match &self.manual {
            None => Utc::now(),
            Some(at) => at
                .lock()
                .map_or_else(|poisoned| *poisoned.into_inner(), |at| *at),
        }
    }

    /// Moves a manual clock to `at`; the system clock ignores it.
    pub fn set(&self, at: DateTime<Utc>) {
        if let Some(slot) = &self.manual
            && let Ok(mut slot) = slot.lock()
        {
            *slot = at;
        }
    }

    /// Moves a manual clock forward by `by`; the system clock ignores it.
    pub fn advance(&self, by: TimeDelta) {
        self.set(self.now() + by);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told_and_clones_share_it() {
        let start = DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default();
        let clock = Clock::manual(start);
        let copy = clock.clone();
        assert_eq!(clock.now(), start);
        copy.advance(TimeDelta::hours(81));
        assert_eq!(clock.now(), start + TimeDelta::hours(81));
    }
}
