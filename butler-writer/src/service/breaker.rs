//! The circuit breaker: stop consuming when nearly every recent message is rejected for a reason
//! that points at the writer's set-up (an invalid message, an unknown dataset type, something
//! unsupported) rather than at one message (a conflict, a message of another type). Dead-lettering
//! the whole topic because a dataset type was not registered yet would turn an operator's
//! five-minute fix into a re-drive of thousands of messages.

use std::collections::VecDeque;
use std::time::Duration;

use crate::outcome::{BatchOutcome, RejectReason};

/// When the breaker trips.
#[derive(Debug, Clone, Copy)]
pub struct BreakerSettings {
    /// How many of the most recent messages the breaker looks at.
    pub window: usize,
    /// It never trips on fewer messages than this; 0 turns the breaker off.
    pub min_messages: usize,
    /// It trips when at least this fraction of the window is rejected.
    pub threshold: f64,
    /// How long it waits before trying the held batch again.
    pub cooldown: Duration,
}

/// What to do with a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Let it through. `closed`: the breaker was open and this batch closes it.
    Pass {
        /// The breaker closed with this batch.
        closed: bool,
    },
    /// Hold it, commit nothing, and try it again after the cooldown. `opened`: the breaker was
    /// closed and this batch trips it.
    Hold {
        /// The breaker opened with this batch.
        opened: bool,
    },
}

/// The breaker and its memory of the recent messages it let through.
#[derive(Debug)]
pub struct Breaker {
    settings: BreakerSettings,
    /// Per recent message let through: rejected for a set-up reason?
    recent: VecDeque<bool>,
    open: bool,
}

impl Breaker {
    /// A closed breaker with an empty window.
    pub fn new(settings: BreakerSettings) -> Self {
        Self {
            settings,
            recent: VecDeque::with_capacity(settings.window),
            open: false,
        }
    }

    /// Whether a rejection of this kind counts against the set-up.
    pub fn is_systemic(reason: RejectReason) -> bool {
        matches!(
            reason,
            RejectReason::Invalid | RejectReason::UnknownDatasetType | RejectReason::Unsupported
        )
    }

    /// Whether the breaker holds consumption.
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// How long a held batch waits before it is tried again.
    pub fn cooldown(&self) -> Duration {
        self.settings.cooldown
    }

    /// Judges a batch of `messages` messages with this outcome: lets it through (and remembers
    /// its verdicts) unless the window would then be nearly all rejected.
    pub fn judge(&mut self, messages: usize, outcome: &BatchOutcome) -> Decision {
        let verdicts = verdicts(messages, outcome);
        if self.would_trip(&verdicts) {
            let opened = !self.open;
            self.open = true;
            return Decision::Hold { opened };
        }
        self.remember(&verdicts);
        let closed = self.open;
        self.open = false;
        Decision::Pass { closed }
    }

    /// Would a batch with these verdicts leave nearly all of the window rejected?
    fn would_trip(&self, verdicts: &[bool]) -> bool {
        if self.settings.min_messages == 0 {
            return false;
        }
        let window = self.settings.window;
        let from_batch = verdicts.len().min(window);
        let from_recent = (window - from_batch).min(self.recent.len());
        let considered = from_batch + from_recent;
        if considered < self.settings.min_messages {
            return false;
        }
        let bad = verdicts[verdicts.len() - from_batch..]
            .iter()
            .chain(self.recent.iter().rev().take(from_recent))
            .filter(|b| **b)
            .count();
        #[allow(clippy::cast_precision_loss)]
        let fraction = bad as f64 / considered as f64;
        fraction >= self.settings.threshold
    }

    fn remember(&mut self, verdicts: &[bool]) {
        for verdict in verdicts {
            if self.recent.len() == self.settings.window {
                self.recent.pop_front();
            }
            self.recent.push_back(*verdict);
        }
    }
}

/// Per message of a batch: rejected for a set-up reason?
fn verdicts(messages: usize, outcome: &BatchOutcome) -> Vec<bool> {
    let mut verdicts = vec![false; messages];
    for rejection in &outcome.rejected {
        if Breaker::is_systemic(rejection.reason)
            && let Some(v) = verdicts.get_mut(rejection.index)
        {
            *v = true;
        }
    }
    verdicts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::Rejection;

    fn breaker(window: usize, min_messages: usize) -> Breaker {
        Breaker::new(BreakerSettings {
            window,
            min_messages,
            threshold: 0.9,
            cooldown: Duration::from_secs(1),
        })
    }

    /// A batch of `messages` messages, the first `bad` rejected as `reason`.
    fn outcome(bad: usize, reason: RejectReason) -> BatchOutcome {
        BatchOutcome {
            rejected: (0..bad)
                .map(|index| Rejection {
                    index,
                    reason,
                    error: String::new(),
                })
                .collect(),
            ..BatchOutcome::default()
        }
    }

    #[test]
    fn the_breaker_trips_only_on_a_full_enough_window_of_rejections() {
        let invalid = RejectReason::Invalid;
        let mut b = breaker(10, 5);
        // Too few messages to judge.
        assert_eq!(
            b.judge(4, &outcome(4, invalid)),
            Decision::Pass { closed: false }
        );
        // Nine good ones in the window dilute a bad message.
        let mut b2 = breaker(10, 5);
        assert_eq!(
            b2.judge(9, &outcome(0, invalid)),
            Decision::Pass { closed: false }
        );
        assert_eq!(
            b2.judge(1, &outcome(1, invalid)),
            Decision::Pass { closed: false }
        );
        // A large bad batch fills the window on its own, and is held until it goes through.
        assert_eq!(
            b.judge(10, &outcome(10, invalid)),
            Decision::Hold { opened: true }
        );
        assert!(b.is_open());
        assert_eq!(
            b.judge(10, &outcome(10, invalid)),
            Decision::Hold { opened: false }
        );
        assert_eq!(
            b.judge(10, &outcome(0, invalid)),
            Decision::Pass { closed: true }
        );
        assert!(!b.is_open());
        // Conflicts point at messages, not at the set-up.
        assert_eq!(
            b.judge(10, &outcome(10, RejectReason::Conflict)),
            Decision::Pass { closed: false }
        );
        // Disabled.
        assert_eq!(
            breaker(10, 0).judge(10, &outcome(10, invalid)),
            Decision::Pass { closed: false }
        );
    }

    #[test]
    fn the_window_keeps_only_the_most_recent_messages() {
        let mut b = breaker(4, 4);
        assert_eq!(
            b.judge(4, &outcome(0, RejectReason::Invalid)),
            Decision::Pass { closed: false }
        );
        // Three bad ones let through: [false, true, true, true] remain.
        assert_eq!(
            b.judge(3, &outcome(3, RejectReason::Invalid)),
            Decision::Pass { closed: false }
        );
        assert_eq!(b.recent.len(), 4);
        // One more bad one: the last four are all bad.
        assert_eq!(
            b.judge(1, &outcome(1, RejectReason::Invalid)),
            Decision::Hold { opened: true }
        );
    }
}
