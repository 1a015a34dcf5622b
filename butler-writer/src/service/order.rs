//! Batches in the database at once, kept in the order they were read where it matters: a batch
//! waits for an earlier one still in the database only when both write the same dataset (the
//! engine calls [`Turn::claim`] once its datasets are known). So the earlier of two conflicting
//! copies wins, as it would one batch after another, and batches that share nothing overlap.
//!
//! Claims are made strictly in the order batches were dispatched (a turnstile), so when a batch
//! claims, every earlier batch has claimed or is gone, and waits only ever point from a later
//! batch to an earlier one: no cycle, no deadlock. A batch that ends without claiming (abandoned
//! after a rebalance, or stopped) gives its turn up when its [`Turn`] is dropped.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::registry::order::BatchOrder;

#[derive(Debug, Default)]
struct State {
    /// The next turn allowed to claim.
    next: u64,
    /// Turns given up without a claim, ahead of `next`.
    passed: BTreeSet<u64>,
    /// The keys of each batch that claimed and is still in the database.
    held: HashMap<u64, HashSet<u64>>,
}

impl State {
    fn advance(&mut self) {
        while self.passed.remove(&self.next) {
            self.next += 1;
        }
    }
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    changed: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The turns of one pipeline.
#[derive(Debug, Clone, Default)]
pub struct BatchTurns {
    shared: Arc<Shared>,
    dispatched: Arc<std::sync::atomic::AtomicU64>,
}

impl BatchTurns {
    /// The next batch's turn; call in the order batches are read.
    pub fn next_turn(&self) -> Turn {
        let seq = self
            .dispatched
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Turn {
            seq,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// One batch's place in the order; dropping it ends the batch's hold.
#[derive(Debug)]
pub struct Turn {
    seq: u64,
    shared: Arc<Shared>,
}

impl BatchOrder for Turn {
    async fn claim(&self, keys: HashSet<u64>) {
        // Wait for this turn, then record the keys and note the earlier batches they overlap.
        let blockers: Vec<u64> = loop {
            let changed = self.shared.changed.notified();
            {
                let mut state = self.shared.lock();
                if state.held.contains_key(&self.seq) {
                    // Claimed on an earlier attempt (the engine ran again after an error).
                    return;
                }
                if state.next == self.seq {
                    let blockers = state
                        .held
                        .iter()
                        .filter(|(seq, held)| **seq < self.seq && !held.is_disjoint(&keys))
                        .map(|(seq, _)| *seq)
                        .collect();
                    state.held.insert(self.seq, keys);
                    state.next += 1;
                    state.advance();
                    self.shared.changed.notify_waiters();
                    break blockers;
                }
            }
            changed.await;
        };
        // Then wait until those have left the database.
        loop {
            let changed = self.shared.changed.notified();
            if !blockers
                .iter()
                .any(|seq| self.shared.lock().held.contains_key(seq))
            {
                return;
            }
            changed.await;
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        if state.held.remove(&self.seq).is_none() {
            if self.seq == state.next {
                state.next += 1;
                state.advance();
            } else if self.seq > state.next {
                state.passed.insert(self.seq);
            }
        }
        self.shared.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn keys(k: &[u64]) -> HashSet<u64> {
        k.iter().copied().collect()
    }

    async fn claimed_within(turn: &Turn, k: &[u64], ms: u64) -> bool {
        tokio::time::timeout(Duration::from_millis(ms), turn.claim(keys(k)))
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn batches_that_share_nothing_overlap() {
        let turns = BatchTurns::default();
        let (a, b) = (turns.next_turn(), turns.next_turn());
        assert!(claimed_within(&a, &[1, 2], 100).await);
        assert!(claimed_within(&b, &[3, 4], 100).await);
    }

    #[tokio::test]
    async fn a_later_batch_waits_for_an_earlier_one_with_the_same_dataset() {
        let turns = BatchTurns::default();
        let (a, b) = (turns.next_turn(), turns.next_turn());
        assert!(claimed_within(&a, &[1, 2], 100).await);
        assert!(!claimed_within(&b, &[2, 3], 100).await, "b overlaps a");
        drop(a);
        assert!(claimed_within(&b, &[2, 3], 100).await);
    }

    #[tokio::test]
    async fn claims_go_in_dispatch_order_and_a_dropped_turn_passes() {
        let turns = BatchTurns::default();
        let (a, b, c) = (turns.next_turn(), turns.next_turn(), turns.next_turn());
        // c cannot claim before a and b have claimed or gone, even with nothing in common.
        assert!(!claimed_within(&c, &[9], 100).await);
        drop(b); // abandoned before claiming: its turn passes, out of order
        assert!(!claimed_within(&c, &[9], 100).await, "a has not claimed");
        assert!(claimed_within(&a, &[1], 100).await);
        assert!(claimed_within(&c, &[9], 100).await);
    }

    #[tokio::test]
    async fn the_later_batch_claims_while_the_earlier_is_still_preparing() {
        let turns = BatchTurns::default();
        let (a, b) = (turns.next_turn(), turns.next_turn());
        let b = tokio::spawn(async move {
            b.claim(keys(&[5])).await;
            b
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!b.is_finished(), "b waits for a's turn");
        a.claim(keys(&[1])).await;
        let b = tokio::time::timeout(Duration::from_millis(500), b)
            .await
            .expect("b claims once a has")
            .expect("task");
        // A second claim of the same turn (the engine ran again) returns at once.
        assert!(claimed_within(&b, &[5], 100).await);
    }
}
