//! Best-effort cleanup from `Drop`: what a test made on the shared services (databases, topics)
//! is removed when the value that owns it is dropped, also when the test panics.
//!
//! `Drop` is synchronous and usually runs on the test's own runtime, where blocking on a future is
//! refused; so the work runs on a short-lived thread with a current-thread runtime of its own,
//! under a timeout. It never panics: a failure (a server stopped by a fault test, say) is printed
//! and the test goes on.

use std::future::Future;
use std::time::Duration;

use anyhow::Context;

/// Set to `1` to keep what tests create on the services (databases, and the topics a `TestEnv`
/// created) after they end, for a post-mortem. Kept databases are listed in the state
/// directory's `kept-databases`, which `deploy/local/stack up` does not clean up.
pub const KEEP_ENV: &str = "PROMPT_KAFKA_KEEP_TEST_DATABASES";

/// Whether tests keep what they made ([`KEEP_ENV`]).
pub fn keep() -> bool {
    std::env::var(KEEP_ENV).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Runs the future `make` returns on a thread and runtime of its own and waits for it, at most
/// `timeout`.
pub(crate) fn on_own_runtime<F>(
    timeout: Duration,
    make: impl FnOnce() -> F + Send + 'static,
) -> anyhow::Result<()>
where
    F: Future<Output = anyhow::Result<()>>,
{
    let worker = std::thread::Builder::new()
        .name("test-support-cleanup".to_owned())
        .spawn(move || -> anyhow::Result<()> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting a runtime for the cleanup")?;
            runtime.block_on(async {
                tokio::time::timeout(timeout, make())
                    .await
                    .with_context(|| format!("no answer within {} s", timeout.as_secs()))?
            })
        })
        .context("starting a thread for the cleanup")?;
    worker
        .join()
        .unwrap_or_else(|_| Err(anyhow::anyhow!("the cleanup thread panicked")))
}
