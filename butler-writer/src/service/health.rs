//! What `/healthz` and `/readyz` report: the service's parts set these flags as they go.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

/// When a loop last turned: what `/healthz` judges liveness by. Shared by the services.
#[derive(Debug)]
pub struct Heartbeat {
    started: Instant,
    /// Milliseconds after `started` of the loop's last turn.
    last_ms: AtomicU64,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }
}

impl Heartbeat {
    /// The loop turned.
    pub fn beat(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// How long since the loop last turned.
    pub fn since(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }
}

/// Shared state of a running writer.
#[derive(Debug)]
pub struct Health {
    heartbeat: Heartbeat,
    broker_ok: AtomicBool,
    database_ok: AtomicBool,
    /// The consumer has received an assignment (possibly empty) from the group.
    joined: AtomicBool,
    partitions: AtomicUsize,
    breaker_open: AtomicBool,
    stopping: AtomicBool,
    problem: Mutex<Option<String>>,
}

/// The `/readyz` body.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Readiness {
    /// Whether the writer is ready to do its work.
    pub ready: bool,
    /// The broker answers.
    pub broker: bool,
    /// The database answers.
    pub database: bool,
    /// The consumer is in its group with an assignment.
    pub assigned: bool,
    /// Partitions assigned to this writer.
    pub partitions: usize,
    /// The circuit breaker holds consumption.
    pub breaker_open: bool,
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
    /// A writer that has just started: not ready until it has joined its group.
    pub fn new() -> Self {
        Self {
            heartbeat: Heartbeat::default(),
            broker_ok: AtomicBool::new(true),
            database_ok: AtomicBool::new(true),
            joined: AtomicBool::new(false),
            partitions: AtomicUsize::new(0),
            breaker_open: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            problem: Mutex::new(None),
        }
    }

    /// The consume loop turned.
    pub fn beat(&self) {
        self.heartbeat.beat();
    }

    /// How long since the consume loop last turned.
    pub fn since_heartbeat(&self) -> Duration {
        self.heartbeat.since()
    }

    /// The broker answered, or stopped answering.
    pub fn set_broker(&self, ok: bool, problem: Option<String>) {
        self.broker_ok.store(ok, Ordering::Relaxed);
        self.note(problem);
    }

    /// The database answered, or stopped answering.
    pub fn set_database(&self, ok: bool, problem: Option<String>) {
        self.database_ok.store(ok, Ordering::Relaxed);
        self.note(problem);
    }

    /// The group gave this writer `partitions` partitions (`None`: they were revoked).
    pub fn set_assignment(&self, partitions: Option<usize>) {
        self.joined.store(partitions.is_some(), Ordering::Relaxed);
        self.partitions
            .store(partitions.unwrap_or(0), Ordering::Relaxed);
    }

    /// The breaker opened or closed.
    pub fn set_breaker(&self, open: bool, problem: Option<String>) {
        self.breaker_open.store(open, Ordering::Relaxed);
        self.note(problem);
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
        let broker = self.broker_ok.load(Ordering::Relaxed);
        let database = self.database_ok.load(Ordering::Relaxed);
        let assigned = self.joined.load(Ordering::Relaxed);
        let breaker_open = self.breaker_open.load(Ordering::Relaxed);
        let stopping = self.stopping.load(Ordering::Relaxed);
        let ready = broker && database && assigned && !breaker_open && !stopping;
        Readiness {
            ready,
            broker,
            database,
            assigned,
            partitions: self.partitions.load(Ordering::Relaxed),
            breaker_open,
            stopping,
            problem: if ready {
                None
            } else {
                self.problem.lock().ok().and_then(|p| p.clone())
            },
        }
    }
}
