//! What happened to every message and dataset sent: delivery reports, `batch-ingested`
//! announcements and dead letters, and from those the outcome of each dataset.
//!
//! Kept apart from Kafka so the accounting is tested on its own. Times are milliseconds since the
//! Unix epoch (wall clock), because the announcement time is the event's Kafka timestamp.

use std::collections::{BTreeMap, HashMap};

use uuid::Uuid;

/// Why a message was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// A worker's message.
    Original,
    /// The same bytes again, as a worker retrying its send does.
    Redelivery,
    /// A second pod on the same image: same data ids, new dataset ids. Exactly one of the pair
    /// should be ingested, the other dead-lettered as a conflict.
    Twin {
        /// Index of the original message.
        of: usize,
    },
    /// Broken JSON: should be dead-lettered, nothing ingested.
    Malformed,
}

#[derive(Debug, Clone)]
struct MessageTrack {
    kind: MessageKind,
    /// What the message was for, such as `visit 2026050100002 detector 17`.
    label: String,
    datasets: Vec<Uuid>,
    delivered: Option<bool>,
    dead_lettered: bool,
}

#[derive(Debug, Clone)]
struct DatasetTrack {
    /// The message that carried the dataset first.
    message: usize,
    sent_ms: i64,
    announced_ms: Option<i64>,
    announcements: u32,
    /// The writer's reason, once dead-lettered.
    dead_letter_reason: Option<String>,
}

/// One dataset's first announcement: when it was sent and announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrival {
    /// When the message carrying it was sent.
    pub sent_ms: i64,
    /// When its `batch-ingested` event was produced.
    pub announced_ms: i64,
}

/// The accounting of one load test.
#[derive(Debug, Default)]
pub struct Tracker {
    messages: Vec<MessageTrack>,
    datasets: HashMap<Uuid, DatasetTrack>,
    malformed: HashMap<Vec<u8>, usize>,
    arrivals: Vec<Arrival>,
    sends_ms: Vec<(i64, usize)>,
    dead_letter_reasons: BTreeMap<String, u64>,
    foreign_datasets: u64,
    foreign_dead_letters: u64,
    events: u64,
    undecodable_events: u64,
}

/// A delivered dataset that was never announced.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Unaccounted {
    /// Its id.
    pub id: Uuid,
    /// The message that carried it (`visit V detector D`, and the kind of copy).
    pub message: String,
    /// The writer's dead-letter reason; `None` when it is simply missing.
    pub dead_letter_reason: Option<String>,
    /// True for a twin's losing copy, the one rejection a run expects.
    pub expected: bool,
}

/// Counts at the end (or at any moment) of a load test.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Outcome {
    /// Messages handed to the producer (all kinds).
    pub messages_sent: u64,
    /// Messages with a successful delivery report.
    pub messages_delivered: u64,
    /// Messages whose delivery failed (reported by the producer).
    pub messages_failed: u64,
    /// Messages without a delivery report yet.
    pub messages_unacknowledged: u64,
    /// Redeliveries, twins and malformed messages among those sent.
    pub redeliveries: u64,
    /// Second-pod copies sent.
    pub twins: u64,
    /// Malformed messages sent.
    pub malformed: u64,
    /// Malformed messages seen on the dead-letter topic.
    pub malformed_dead_lettered: u64,
    /// Distinct dataset ids sent.
    pub datasets_sent: u64,
    /// Distinct dataset ids in a delivered message.
    pub datasets_delivered: u64,
    /// Delivered datasets announced in a `batch-ingested` event.
    pub datasets_ingested: u64,
    /// Delivered datasets dead-lettered and never announced, as expected (a twin's losing copy).
    pub datasets_rejected_expected: u64,
    /// Delivered datasets dead-lettered and never announced that should have been ingested.
    pub datasets_rejected_unexpected: u64,
    /// Delivered datasets neither announced nor dead-lettered: lost, or not there yet.
    pub datasets_missing: u64,
    /// Twin pairs where both copies were ingested (a conflict let through: never expected).
    pub twin_pairs_both_ingested: u64,
    /// Announcements beyond the first of a dataset (redeliveries and writer retries).
    pub repeated_announcements: u64,
    /// `batch-ingested` events read.
    pub events: u64,
    /// Events or batch files that could not be decoded.
    pub undecodable_events: u64,
    /// Dataset ids in batch files that this run did not send (another producer's).
    pub foreign_datasets: u64,
    /// Dead letters this run did not send.
    pub foreign_dead_letters: u64,
    /// Dead letters by the writer's reason header.
    pub dead_letter_reasons: BTreeMap<String, u64>,
}

impl Outcome {
    /// True when every delivered dataset is accounted for as expected: nothing missing, nothing
    /// wrongly rejected, no conflict ingested twice, every malformed message dead-lettered, every
    /// message acknowledged.
    pub fn is_complete(&self) -> bool {
        self.messages_unacknowledged == 0
            && self.datasets_missing == 0
            && self.datasets_rejected_unexpected == 0
            && self.twin_pairs_both_ingested == 0
            && self.malformed_dead_lettered == self.malformed
    }
}

impl Tracker {
    /// Records a message handed to the producer at `sent_ms`; returns its index.
    pub fn sent(
        &mut self,
        kind: MessageKind,
        datasets: Vec<Uuid>,
        payload: Option<&[u8]>,
        sent_ms: i64,
    ) -> usize {
        let index = self.messages.len();
        for id in &datasets {
            self.datasets.entry(*id).or_insert(DatasetTrack {
                message: index,
                sent_ms,
                announced_ms: None,
                announcements: 0,
                dead_letter_reason: None,
            });
        }
        if kind == MessageKind::Malformed
            && let Some(payload) = payload
        {
            self.malformed.insert(payload.to_vec(), index);
        }
        self.sends_ms.push((sent_ms, datasets.len()));
        self.messages.push(MessageTrack {
            kind,
            label: String::new(),
            datasets,
            delivered: None,
            dead_lettered: false,
        });
        index
    }

    /// Names what message `index` was for, for the lists of datasets that went astray.
    pub fn set_label(&mut self, index: usize, label: String) {
        if let Some(message) = self.messages.get_mut(index) {
            message.label = label;
        }
    }

    /// Records the delivery report of message `index`.
    pub fn delivered(&mut self, index: usize, ok: bool) {
        if let Some(message) = self.messages.get_mut(index) {
            message.delivered = Some(ok);
        }
    }

    /// Records a `batch-ingested` event produced at `announced_ms` whose batch file lists `ids`.
    pub fn announced(&mut self, ids: &[Uuid], announced_ms: i64) {
        self.events += 1;
        for id in ids {
            match self.datasets.get_mut(id) {
                Some(track) => {
                    track.announcements += 1;
                    if track.announced_ms.is_none() {
                        track.announced_ms = Some(announced_ms);
                        self.arrivals.push(Arrival {
                            sent_ms: track.sent_ms,
                            announced_ms,
                        });
                    }
                }
                None => self.foreign_datasets += 1,
            }
        }
    }

    /// Records an event or batch file that could not be decoded.
    pub fn undecodable_event(&mut self) {
        self.undecodable_events += 1;
    }

    /// Records a dead letter: its original value, the dataset ids in it (when it parses), and the
    /// writer's reason.
    pub fn dead_lettered(&mut self, value: &[u8], ids: &[Uuid], reason: &str) {
        *self
            .dead_letter_reasons
            .entry(reason.to_owned())
            .or_default() += 1;
        if let Some(&index) = self.malformed.get(value) {
            self.messages[index].dead_lettered = true;
            return;
        }
        let mut ours = false;
        for id in ids {
            if let Some(track) = self.datasets.get_mut(id) {
                track.dead_letter_reason = Some(reason.to_owned());
                ours = true;
            }
        }
        if !ours {
            self.foreign_dead_letters += 1;
        }
    }

    /// Every first announcement so far, in the order they were read.
    pub fn arrivals(&self) -> &[Arrival] {
        &self.arrivals
    }

    /// Send times and dataset counts, in send order.
    pub fn sends(&self) -> &[(i64, usize)] {
        &self.sends_ms
    }

    /// The counts as they stand.
    pub fn outcome(&self) -> Outcome {
        let mut out = Outcome {
            messages_sent: self.messages.len() as u64,
            dead_letter_reasons: self.dead_letter_reasons.clone(),
            events: self.events,
            undecodable_events: self.undecodable_events,
            foreign_datasets: self.foreign_datasets,
            foreign_dead_letters: self.foreign_dead_letters,
            ..Outcome::default()
        };
        for message in &self.messages {
            match message.delivered {
                Some(true) => out.messages_delivered += 1,
                Some(false) => out.messages_failed += 1,
                None => out.messages_unacknowledged += 1,
            }
            match message.kind {
                MessageKind::Redelivery => out.redeliveries += 1,
                MessageKind::Twin { .. } => out.twins += 1,
                MessageKind::Malformed => {
                    out.malformed += 1;
                    out.malformed_dead_lettered += u64::from(message.dead_lettered);
                }
                MessageKind::Original => {}
            }
        }
        out.datasets_sent = self.datasets.len() as u64;
        for track in self.datasets.values() {
            // A dataset counts as delivered if any message carrying it was delivered.
            if !self.carried_by_delivered(track.message) {
                continue;
            }
            out.datasets_delivered += 1;
            out.repeated_announcements += u64::from(track.announcements.saturating_sub(1));
            if track.announced_ms.is_some() {
                out.datasets_ingested += 1;
            } else if track.dead_letter_reason.is_some() {
                if self.is_losing_twin(track.message) {
                    out.datasets_rejected_expected += 1;
                } else {
                    out.datasets_rejected_unexpected += 1;
                }
            } else {
                out.datasets_missing += 1;
            }
        }
        for message in &self.messages {
            if let MessageKind::Twin { of } = message.kind {
                let ingested = |m: &MessageTrack| {
                    !m.datasets.is_empty()
                        && m.datasets.iter().all(|id| {
                            self.datasets
                                .get(id)
                                .is_some_and(|t| t.announced_ms.is_some())
                        })
                };
                if ingested(message) && ingested(&self.messages[of]) {
                    out.twin_pairs_both_ingested += 1;
                }
            }
        }
        out
    }

    /// Delivered datasets that were never announced: missing ones and dead-lettered ones (with
    /// the writer's reason and whether that was expected), sorted by message.
    pub fn unaccounted(&self) -> Vec<Unaccounted> {
        let mut out: Vec<Unaccounted> = self
            .datasets
            .iter()
            .filter(|(_, t)| t.announced_ms.is_none() && self.carried_by_delivered(t.message))
            .map(|(id, t)| Unaccounted {
                id: *id,
                message: self.messages[t.message].label.clone(),
                dead_letter_reason: t.dead_letter_reason.clone(),
                expected: t.dead_letter_reason.is_some() && self.is_losing_twin(t.message),
            })
            .collect();
        out.sort_by(|a, b| a.message.cmp(&b.message).then(a.id.cmp(&b.id)));
        out
    }

    /// A dataset is delivered if its first message, or a redelivery of it, was delivered.
    fn carried_by_delivered(&self, first: usize) -> bool {
        let message = &self.messages[first];
        if message.delivered == Some(true) {
            return true;
        }
        // A redelivery carries the same ids: look for one that made it.
        self.messages[first + 1..].iter().any(|m| {
            m.kind == MessageKind::Redelivery
                && m.delivered == Some(true)
                && m.datasets == message.datasets
        })
    }

    /// True when message `index` belongs to a twin pair whose other copy was ingested: its
    /// rejection is the conflict the writer must report.
    fn is_losing_twin(&self, index: usize) -> bool {
        let announced = |m: &MessageTrack| {
            m.datasets.iter().any(|id| {
                self.datasets
                    .get(id)
                    .is_some_and(|t| t.announced_ms.is_some())
            })
        };
        match self.messages[index].kind {
            MessageKind::Twin { of } => announced(&self.messages[of]),
            _ => self
                .messages
                .iter()
                .any(|m| matches!(m.kind, MessageKind::Twin { of } if of == index) && announced(m)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<Uuid> {
        (0..n).map(|_| Uuid::now_v7()).collect()
    }

    #[test]
    fn datasets_are_ingested_missing_or_rejected() {
        let mut t = Tracker::default();
        let a = ids(3);
        let b = ids(3);
        let m0 = t.sent(MessageKind::Original, a.clone(), None, 1_000);
        let m1 = t.sent(MessageKind::Original, b.clone(), None, 1_010);
        t.delivered(m0, true);
        t.delivered(m1, true);
        t.announced(&a, 1_300);
        let out = t.outcome();
        assert_eq!(out.datasets_ingested, 3);
        assert_eq!(out.datasets_missing, 3);
        assert!(!out.is_complete());
        t.dead_lettered(b"{}", &b, "invalid");
        let out = t.outcome();
        assert_eq!(out.datasets_rejected_unexpected, 3);
        t.set_label(m1, "visit 1 detector 2".into());
        let lost = t.unaccounted();
        assert_eq!(lost.len(), 3);
        assert!(lost.iter().all(|l| l.message == "visit 1 detector 2"
            && l.dead_letter_reason.as_deref() == Some("invalid")
            && !l.expected));
        assert_eq!(
            t.arrivals()[0],
            Arrival {
                sent_ms: 1_000,
                announced_ms: 1_300
            }
        );
    }

    #[test]
    fn redeliveries_are_ingested_once_and_may_be_announced_twice() {
        let mut t = Tracker::default();
        let a = ids(2);
        let m0 = t.sent(MessageKind::Original, a.clone(), None, 0);
        let m1 = t.sent(MessageKind::Redelivery, a.clone(), None, 5);
        t.delivered(m0, false);
        t.delivered(m1, true);
        t.announced(&a, 100);
        t.announced(&a, 200);
        let out = t.outcome();
        assert_eq!(out.datasets_delivered, 2, "the redelivery carried them");
        assert_eq!(out.datasets_ingested, 2);
        assert_eq!(out.repeated_announcements, 2);
        assert_eq!(out.messages_failed, 1);
        assert!(out.is_complete());
    }

    #[test]
    fn one_twin_wins_the_other_is_an_expected_rejection() {
        let mut t = Tracker::default();
        let a = ids(3);
        let b = ids(3);
        let m0 = t.sent(MessageKind::Original, a.clone(), None, 0);
        let m1 = t.sent(MessageKind::Twin { of: m0 }, b.clone(), None, 1);
        t.delivered(m0, true);
        t.delivered(m1, true);
        // The twin got in first (another partition): the original is the conflict.
        t.announced(&b, 50);
        t.dead_lettered(b"x", &a, "conflict");
        let out = t.outcome();
        assert_eq!(out.datasets_ingested, 3);
        assert_eq!(out.datasets_rejected_expected, 3);
        assert_eq!(out.datasets_rejected_unexpected, 0);
        assert!(out.is_complete());
        assert_eq!(out.dead_letter_reasons["conflict"], 1);
    }

    #[test]
    fn malformed_messages_are_matched_by_their_bytes() {
        let mut t = Tracker::default();
        let m = t.sent(MessageKind::Malformed, vec![], Some(b"{\"type\":"), 0);
        t.delivered(m, true);
        let out = t.outcome();
        assert!(!out.is_complete(), "not dead-lettered yet");
        t.dead_lettered(b"{\"type\":", &[], "invalid");
        t.dead_lettered(b"other", &[], "invalid");
        let out = t.outcome();
        assert_eq!(out.malformed_dead_lettered, 1);
        assert_eq!(out.foreign_dead_letters, 1);
        assert!(out.is_complete());
    }

    #[test]
    fn foreign_ids_are_counted_not_matched() {
        let mut t = Tracker::default();
        t.announced(&ids(4), 10);
        assert_eq!(t.outcome().foreign_datasets, 4);
        assert_eq!(t.outcome().events, 1);
    }
}
