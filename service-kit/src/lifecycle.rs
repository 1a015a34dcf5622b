//! One lifecycle for every service: a [`CancellationToken`] that a shutdown cancels (SIGTERM,
//! Ctrl-C, a test's `shutdown()`), the service's main work run to its end with a grace period,
//! and a [`Running`] handle the service's `start` returns.
//!
//! A shutdown means: stop taking new work, finish and commit the work in hand within the grace
//! period, then close the clients. Work still unfinished when the grace runs out is dropped; it
//! was never committed, so it comes again after the restart.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::{JoinError, JoinHandle};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::errors::ConfigError;
use crate::health::Health;

/// A task of the service panicked or was cancelled.
#[derive(Debug, thiserror::Error)]
#[error("a task of the service failed")]
pub struct TaskFailed(#[source] pub JoinError);

/// Runs a service's main `work` to its end: until it returns, until `fatal` resolves (a fatal
/// error reported outside the work: the work is aborted), or until `shutdown` fires, after which
/// the work gets `grace` to finish (`stopping` runs first, to mark the service not ready).
pub async fn run_to_end<E>(
    mut work: JoinHandle<Result<(), E>>,
    shutdown: &CancellationToken,
    grace: Duration,
    fatal: impl Future<Output = E>,
    stopping: impl FnOnce(),
) -> Result<(), E>
where
    E: From<TaskFailed>,
{
    tokio::select! {
        joined = &mut work => flatten(joined),
        error = fatal => {
            work.abort();
            Err(error)
        }
        () = shutdown.cancelled() => {
            stopping();
            info!(grace_s = grace.as_secs_f64(), "stopping: finishing the work in hand");
            match tokio::time::timeout(grace, &mut work).await {
                Ok(joined) => flatten(joined),
                Err(_) => {
                    warn!("the shutdown grace period ran out; work not committed will come again");
                    work.abort();
                    Ok(())
                }
            }
        }
    }
}

fn flatten<E: From<TaskFailed>>(joined: Result<Result<(), E>, JoinError>) -> Result<(), E> {
    joined.unwrap_or_else(|e| Err(TaskFailed(e).into()))
}

/// A started service's running parts: where its endpoints listen, its health, the token a
/// shutdown cancels and the task that supervises it.
#[derive(Debug)]
pub struct Running<E> {
    http_address: SocketAddr,
    health: Arc<Health>,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), E>>,
}

impl<E: From<TaskFailed>> Running<E> {
    /// The service whose endpoints listen at `http_address` and whose supervising `task` watches
    /// `shutdown`.
    pub fn new(
        http_address: SocketAddr,
        health: Arc<Health>,
        shutdown: CancellationToken,
        task: JoinHandle<Result<(), E>>,
    ) -> Self {
        Self {
            http_address,
            health,
            shutdown,
            task,
        }
    }

    /// Waits for the service to end.
    pub async fn wait(self) -> Result<(), E> {
        flatten(self.task.await)
    }

    /// Runs until `signal` completes (or the service ends by itself), then shuts down gracefully.
    pub async fn run_until(self, signal: impl Future<Output = ()>) -> Result<(), E> {
        let Self {
            shutdown, mut task, ..
        } = self;
        tokio::select! {
            joined = &mut task => return flatten(joined),
            () = signal => {
                info!("shutdown requested");
                shutdown.cancel();
            }
        }
        flatten(task.await)
    }
}

/// What every started service offers its caller (`serve`, a test): where its endpoints listen,
/// its health, a graceful shutdown, waiting for its end. A service implements the first two
/// methods; the rest follow.
pub trait ServiceHandle: Sized {
    /// Why the service stops on an error.
    type Error: From<TaskFailed>;

    /// The service's running parts.
    fn running(&self) -> &Running<Self::Error>;

    /// Gives up the service's other handles, to wait for it.
    fn into_running(self) -> Running<Self::Error>;

    /// Where the HTTP endpoints listen.
    fn http_address(&self) -> SocketAddr {
        self.running().http_address
    }

    /// Readiness and liveness.
    fn health(&self) -> &Arc<Health> {
        &self.running().health
    }

    /// Begins a graceful shutdown: stop taking work, commit the work in hand, close the clients.
    fn shutdown(&self) {
        self.running().shutdown.cancel();
    }

    /// Waits for the service to end.
    fn wait(self) -> impl Future<Output = Result<(), Self::Error>> {
        self.into_running().wait()
    }

    /// Runs until `signal` completes, then shuts down gracefully.
    fn run_until(
        self,
        signal: impl Future<Output = ()>,
    ) -> impl Future<Output = Result<(), Self::Error>> {
        self.into_running().run_until(signal)
    }
}

/// Runs a service command to its exit status: starts the service (a SIGTERM or Ctrl-C while it
/// waits for its databases ends the command at once), runs it until SIGTERM or Ctrl-C, and stops
/// gracefully. 0 after a clean stop; 1 on an error, printed as one line with its causes after
/// `program: `.
///
/// `settings` come from the command line; when they are refused, the status is 2.
pub async fn serve<T, S, F, Fut>(
    program: &str,
    settings: Result<T, ConfigError>,
    start: F,
) -> std::process::ExitCode
where
    F: FnOnce(T) -> Fut,
    Fut: Future<Output = Result<S, S::Error>>,
    S: ServiceHandle,
    S::Error: std::error::Error + 'static,
{
    let settings = match settings {
        Ok(settings) => settings,
        Err(error) => return exit_with(program, &error, 2),
    };
    let running = tokio::select! {
        started = start(settings) => match started {
            Ok(service) => service.into_running(),
            Err(error) => return exit_with(program, &error, 1),
        },
        () = termination() => return std::process::ExitCode::SUCCESS,
    };
    match running.run_until(termination()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => exit_with(program, &error, 1),
    }
}

/// Prints `program: <the error and its causes>` on stderr and returns exit status `code`.
pub fn exit_with(
    program: &str,
    error: &(dyn std::error::Error + 'static),
    code: u8,
) -> std::process::ExitCode {
    #[allow(clippy::print_stderr)] // The command's one line for the operator.
    {
        eprintln!("{program}: {}", crate::errors::Chain(error));
    }
    std::process::ExitCode::from(code)
}

/// SIGTERM (Kubernetes) or Ctrl-C: when a service should stop.
pub async fn termination() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    enum Error {
        Fatal,
        Task,
    }

    impl From<TaskFailed> for Error {
        fn from(_: TaskFailed) -> Self {
            Self::Task
        }
    }

    #[tokio::test]
    async fn a_shutdown_gives_the_work_its_grace_then_drops_it() {
        let shutdown = CancellationToken::new();
        let finishing = {
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                shutdown.cancelled().await;
                Ok::<(), Error>(())
            })
        };
        shutdown.cancel();
        let never = std::future::pending::<Error>();
        assert_eq!(
            run_to_end(finishing, &shutdown, Duration::from_secs(5), never, || {}).await,
            Ok(())
        );
        let stuck = tokio::spawn(std::future::pending::<Result<(), Error>>());
        let started = std::time::Instant::now();
        let never = std::future::pending::<Error>();
        assert_eq!(
            run_to_end(stuck, &shutdown, Duration::from_millis(50), never, || {}).await,
            Ok(())
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    fn shutdown_never() -> bool {
        false
    }

    #[tokio::test]
    async fn a_fatal_error_ends_the_work() {
        let shutdown = CancellationToken::new();
        let stuck = tokio::spawn(std::future::pending::<Result<(), Error>>());
        let fatal = async { Error::Fatal };
        assert_eq!(
            run_to_end(stuck, &shutdown, Duration::from_secs(5), fatal, || {}).await,
            Err(Error::Fatal)
        );
        let panicked = tokio::spawn(async {
            if shutdown_never() {
                return Ok(());
            }
            panic!("boom")
        });
        let never = std::future::pending::<Error>();
        assert_eq!(
            run_to_end::<Error>(panicked, &shutdown, Duration::from_secs(5), never, || {}).await,
            Err(Error::Task)
        );
    }
}
