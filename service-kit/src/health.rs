//! What `/healthz` and `/readyz` report. A service's parts set these flags as they go: the main
//! loop beats, a retry loop marks its dependency down and up again, the consumer's rebalance
//! callbacks record the assignment.
//!
//! Liveness is the heartbeat alone (Kubernetes restarts a wedged process, and only that);
//! readiness is every dependency answering, an assignment from the group, no hold (the writer's
//! circuit breaker) and no shutdown under way.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::ser::{Serialize, SerializeMap, Serializer};

/// When a loop last turned: what `/healthz` judges liveness by.
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

/// Something a service needs answering to do its work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dependency {
    /// The Kafka broker.
    Broker,
    /// The service's database (the writer's registry, the consumer's state database).
    Database,
    /// The Butler registry, when it is not the service's own database.
    Registry,
    /// Where batch files are (local or S3).
    Storage,
}

impl Dependency {
    /// Its name in the `/readyz` body.
    pub fn name(self) -> &'static str {
        match self {
            Self::Broker => "broker",
            Self::Database => "database",
            Self::Registry => "registry",
            Self::Storage => "storage",
        }
    }
}

/// Shared state of a running service.
#[derive(Debug)]
pub struct Health {
    heartbeat: Heartbeat,
    dependencies: Vec<(Dependency, AtomicBool)>,
    holds: Vec<(&'static str, AtomicBool)>,
    /// The consumer has received an assignment (possibly empty) from the group.
    joined: AtomicBool,
    partitions: AtomicUsize,
    stopping: AtomicBool,
    problem: Mutex<Option<String>>,
}

impl Health {
    /// A service that depends on `dependencies` (each answering until told otherwise) and has
    /// just started: not ready until it has joined its group.
    pub fn new(dependencies: &[Dependency]) -> Self {
        Self {
            heartbeat: Heartbeat::default(),
            dependencies: dependencies
                .iter()
                .map(|d| (*d, AtomicBool::new(true)))
                .collect(),
            holds: Vec::new(),
            joined: AtomicBool::new(false),
            partitions: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            problem: Mutex::new(None),
        }
    }

    /// Adds a hold: a condition of the service's own (`breaker_open`) that keeps it not ready
    /// while set.
    #[must_use]
    pub fn with_hold(mut self, name: &'static str) -> Self {
        self.holds.push((name, AtomicBool::new(false)));
        self
    }

    /// The main loop turned.
    pub fn beat(&self) {
        self.heartbeat.beat();
    }

    /// How long since the main loop last turned.
    pub fn since_heartbeat(&self) -> Duration {
        self.heartbeat.since()
    }

    /// `dependency` answered, or stopped answering (`problem` says how).
    pub fn set(&self, dependency: Dependency, ok: bool, problem: Option<String>) {
        if let Some((_, flag)) = self.dependencies.iter().find(|(d, _)| *d == dependency) {
            flag.store(ok, Ordering::Relaxed);
        }
        self.note(problem);
    }

    /// Sets or clears the hold `name` (see [`with_hold`](Self::with_hold)).
    pub fn set_hold(&self, name: &str, held: bool, problem: Option<String>) {
        if let Some((_, flag)) = self.holds.iter().find(|(n, _)| *n == name) {
            flag.store(held, Ordering::Relaxed);
        }
        self.note(problem);
    }

    /// The group gave this consumer `partitions` partitions (`None`: they were revoked).
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
        let dependencies: Vec<(&'static str, bool)> = self
            .dependencies
            .iter()
            .map(|(d, ok)| (d.name(), ok.load(Ordering::Relaxed)))
            .collect();
        let holds: Vec<(&'static str, bool)> = self
            .holds
            .iter()
            .map(|(n, held)| (*n, held.load(Ordering::Relaxed)))
            .collect();
        let assigned = self.joined.load(Ordering::Relaxed);
        let stopping = self.stopping.load(Ordering::Relaxed);
        let ready = dependencies.iter().all(|(_, ok)| *ok)
            && holds.iter().all(|(_, held)| !*held)
            && assigned
            && !stopping;
        Readiness {
            ready,
            dependencies,
            assigned,
            partitions: self.partitions.load(Ordering::Relaxed),
            holds,
            stopping,
            problem: if ready {
                None
            } else {
                self.problem.lock().ok().and_then(|p| p.clone())
            },
        }
    }
}

/// The `/readyz` body: `ready`, then each dependency (true while it answers), `assigned`,
/// `partitions`, each hold (true while it holds), `stopping`, and the last problem seen while not
/// ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// Whether the service is ready to do its work.
    pub ready: bool,
    /// Each dependency and whether it answers.
    pub dependencies: Vec<(&'static str, bool)>,
    /// The consumer is in its group with an assignment.
    pub assigned: bool,
    /// Partitions assigned.
    pub partitions: usize,
    /// Each hold and whether it holds.
    pub holds: Vec<(&'static str, bool)>,
    /// A shutdown is under way.
    pub stopping: bool,
    /// The last problem seen, while not ready.
    pub problem: Option<String>,
}

impl Readiness {
    /// Whether `name` (a dependency) answers; `None` for a name the service does not have.
    pub fn dependency(&self, name: &str) -> Option<bool> {
        self.dependencies
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, ok)| *ok)
    }
}

impl Serialize for Readiness {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("ready", &self.ready)?;
        for (name, ok) in &self.dependencies {
            map.serialize_entry(name, ok)?;
        }
        map.serialize_entry("assigned", &self.assigned)?;
        map.serialize_entry("partitions", &self.partitions)?;
        for (name, held) in &self.holds {
            map.serialize_entry(name, held)?;
        }
        map.serialize_entry("stopping", &self.stopping)?;
        if let Some(problem) = &self.problem {
            map.serialize_entry("problem", problem)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_joined_everything_answers_and_nothing_holds() {
        let health =
            Health::new(&[Dependency::Broker, Dependency::Database]).with_hold("breaker_open");
        assert!(!health.readiness().ready);
        health.set_assignment(Some(1));
        assert!(health.readiness().ready);
        health.set(Dependency::Database, false, Some("database down".into()));
        let r = health.readiness();
        assert!(!r.ready);
        assert_eq!(r.problem.as_deref(), Some("database down"));
        assert_eq!(r.dependency("database"), Some(false));
        health.set(Dependency::Database, true, None);
        assert!(health.readiness().ready);
        health.set_hold("breaker_open", true, Some("breaker".into()));
        assert!(!health.readiness().ready);
        health.set_hold("breaker_open", false, None);
        health.set_stopping();
        assert!(!health.readiness().ready);
    }

    #[test]
    fn the_body_lists_dependencies_then_assignment_then_holds() {
        let health = Health::new(&[Dependency::Broker]).with_hold("breaker_open");
        health.set_assignment(Some(2));
        let body = serde_json::to_string(&health.readiness()).unwrap();
        assert_eq!(
            body,
            r#"{"ready":true,"broker":true,"assigned":true,"partitions":2,"breaker_open":false,"stopping":false}"#
        );
    }
}
