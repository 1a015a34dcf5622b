//! Where a batch, once its datasets are known, waits for earlier batches still in the database
//! that write the same datasets. With several batches in the database at once, two copies of one
//! dataset in neighbouring batches (two pods on one image) would otherwise be settled by whichever
//! transaction commits first; waiting lets the earlier copy win, as one batch after another (and
//! the Python writer) would have it.

use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};

use super::prepare::PreparedMessage;

/// What the engine calls with the keys of a batch's datasets before writing anything.
pub trait BatchOrder: Send + Sync {
    /// Returns once no earlier batch that writes one of `keys` is still in the database.
    fn claim(&self, keys: HashSet<u64>) -> impl Future<Output = ()> + Send;
}

/// No ordering: one batch at a time, or callers that do not overlap batches.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unordered;

impl BatchOrder for Unordered {
    async fn claim(&self, _keys: HashSet<u64>) {}
}

/// The keys of what `prepared` writes: each dataset's identity (type, run, data ID) and its UUID.
/// Two batches that share a key can conflict; two that share none cannot (hash collisions only
/// make a batch wait when it need not).
pub(super) fn dataset_keys(prepared: &[PreparedMessage]) -> HashSet<u64> {
    let mut keys = HashSet::new();
    for dataset in prepared.iter().flat_map(|m| &m.datasets) {
        let mut identity = DefaultHasher::new();
        (0_u8, dataset.identity()).hash(&mut identity);
        keys.insert(identity.finish());
        let mut id = DefaultHasher::new();
        (1_u8, dataset.id).hash(&mut id);
        keys.insert(id.finish());
    }
    keys
}
