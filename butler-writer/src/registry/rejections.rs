//! The messages of a batch turned away so far, each with the first reason found for it.

use std::collections::HashMap;

use crate::outcome::{RejectReason, Rejection};

/// The rejected messages of a batch, by position.
#[derive(Debug, Clone, Default)]
pub struct Rejections(HashMap<usize, Rejection>);

impl Rejections {
    /// Rejects message `index`; the first reason found for a message is kept.
    pub fn reject(&mut self, index: usize, reason: RejectReason, error: impl Into<String>) {
        self.0.entry(index).or_insert_with(|| Rejection {
            index,
            reason,
            error: error.into(),
        });
    }

    /// Whether message `index` is rejected.
    pub fn contains(&self, index: usize) -> bool {
        self.0.contains_key(&index)
    }

    /// The rejections in message order.
    pub fn into_sorted(self) -> Vec<Rejection> {
        let mut rejected: Vec<Rejection> = self.0.into_values().collect();
        rejected.sort_by_key(|r| r.index);
        rejected
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_reason_is_kept_and_order_is_by_message() {
        let mut rejections = Rejections::default();
        rejections.reject(3, RejectReason::Conflict, "first");
        rejections.reject(3, RejectReason::Invalid, "second");
        rejections.reject(1, RejectReason::Invalid, "other");
        assert!(rejections.contains(3) && !rejections.contains(2));
        let sorted = rejections.into_sorted();
        assert_eq!(sorted.iter().map(|r| r.index).collect::<Vec<_>>(), [1, 3]);
        assert_eq!(sorted[1].error, "first");
    }
}
