//! The test-only seam for breaking a running writer at a chosen point. Production never installs
//! one ([`super::Service::start`] runs with none); fault tests pass theirs to
//! [`super::Service::start_with_faults`].

use std::fmt::Debug;

/// A fault a test injected, which stops the writer dead, as a kill would.
#[derive(Debug, Clone, thiserror::Error)]
#[error("stopped by an injected fault: {0}")]
pub struct InjectedFault(pub String);

/// Where a test can break the writer. Each hook returns `Ok` by default.
pub trait FaultInjector: Debug + Send + Sync {
    /// Called for each batch that is in the database and has its file, before it is announced
    /// (its event, dead letters and offsets sent to Kafka); `announced` batches went before it.
    /// An error stops the writer there.
    fn before_announce(&self, _announced: u64) -> Result<(), InjectedFault> {
        Ok(())
    }

    /// Transactional delivery: called once a batch's event, dead letters and offsets are on the
    /// broker inside the open transaction, before the commit (on the delivery thread). An error
    /// stops the writer with the transaction left open, as a kill there would.
    fn in_transaction(&self) -> Result<(), InjectedFault> {
        Ok(())
    }
}

/// No faults: what production runs with.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoFaults;

impl FaultInjector for NoFaults {}
