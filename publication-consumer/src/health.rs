//! What `/healthz` and `/readyz` report: the consume loop sets these flags as it goes.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use butler_writer::service::health::Heartbeat;
use serde::Serialize;

/// Shared state of a running consumer.
#[derive(Debug)]
pub struct Health {
    heartbeat: Heartbeat,
    database_ok: AtomicBool,
    registry_ok: AtomicBool,
    storage_ok: AtomicBool,
    broker_ok: AtomicBool,
    joined: AtomicBool,
    partitions: AtomicUsize,
    stopping: AtomicBool,
    problem: Mutex<Option<String>>,
}

/// The `/readyz` body.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Readiness {
    /// Whether the consumer is doing its work.
    pub ready: bool,
    /// The state database answers.
    pub database: bool,
    /// The registry answers.
    pub registry: bool,
    /// Batch files can be read (transient storage errors clear this).
    pub storage: bool,
    /// The broker answers.
    pub broker: bool,
    /// The consumer has joined its group.
    pub assigned: bool,
    /// Partitions assigned.
    pub partitions: usize,
    /// A shutdown is under way.
    pub stopping: bool,
    /// The last problem seen, while not ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    /// A consumer that has just started: not ready until it has joined its group.
    pub fn new() -> Self {
        Self {
            heartbeat: Heartbeat::default(),
            database_ok: AtomicBool::new(true),
            registry_ok: AtomicBool::new(true),
            storage_ok: AtomicBool::new(true),
            broker_ok: AtomicBool::new(true),
            joined: AtomicBool::new(false),
            partitions: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            problem: Mutex::new(None),
        }
    }

    /// The consume loop turned (or is alive while it waits for a retry).
    pub fn beat(&self) {
        self.heartbeat.beat();
    }

    /// How long since the consume loop last turned.
    pub fn since_heartbeat(&self) -> Duration {
        self.heartbeat.since()
    }

    /// The state database answered, or did not.
    pub fn set_database(&self, ok: bool, problem: Option<String>) {
        self.database_ok.store(ok, Ordering::Relaxed);
        self.note(problem);
    }

    /// The registry answered, or did not.
    pub fn set_registry(&self, ok: bool, problem: Option<String>) {
        self.registry_ok.store(ok, Ordering::Relaxed);
        self.note(problem);
    }

    /// Storage answered, or did not.
    pub fn set_storage(&self, ok: bool, problem: Option<String>) {
        self.storage_ok.store(ok, Ordering::Relaxed);
        self.note(problem);
    }

    /// The broker answered, or did not.
    pub fn set_broker(&self, ok: bool, problem: Option<String>) {
        self.broker_ok.store(ok, Ordering::Relaxed);
        self.note(problem);
    }

    /// The group gave this consumer `partitions` partitions (`None`: revoked).
    pub fn set_assignment(&self, partitions: Option<usize>) {
        self.joined.store(partitions.is_some(), Ordering::Relaxed);
        self.partitions
            .store(partitions.unwrap_or(0), Ordering::Relaxed);
    }

    /// A shutdown began.
    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    fn note(&self, problem: Option<String>) {
        if let Some(problem) = problem
            && let Ok(mut slot) = self.problem.lock()
        {
            *slot = Some(problem);
        }
    }

    /// What `/readyz` reports.
    pub fn readiness(&self) -> Readiness {
        let database = self.database_ok.load(Ordering::Relaxed);
        let registry = self.registry_ok.load(Ordering::Relaxed);
        let storage = self.storage_ok.load(Ordering::Relaxed);
        let broker = self.broker_ok.load(Ordering::Relaxed);
        let assigned = self.joined.load(Ordering::Relaxed);
        let stopping = self.stopping.load(Ordering::Relaxed);
        let ready = database && registry && storage && broker && assigned && !stopping;
        Readiness {
            ready,
            database,
            registry,
            storage,
            broker,
            assigned,
            partitions: self.partitions.load(Ordering::Relaxed),
            stopping,
            problem: if ready {
                None
            } else {
                self.problem.lock().ok().and_then(|p| p.clone())
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_joined_and_everything_answers() {
        let health = Health::new();
        assert!(!health.readiness().ready);
        health.set_assignment(Some(1));
        assert!(health.readiness().ready);
        health.set_registry(false, Some("registry down".into()));
        let r = health.readiness();
        assert!(!r.ready);
        assert_eq!(r.problem.as_deref(), Some("registry down"));
        health.set_registry(true, None);
        assert!(health.readiness().ready);
        health.set_stopping();
        assert!(!health.readiness().ready);
    }
}
