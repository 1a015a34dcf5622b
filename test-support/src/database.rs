//! Databases a test makes on the shared server, dropped when the test is done with them (also
//! when it panics), so a test run leaves the server as it found it.
//!
//! Each database is recorded in the local stack's `created-databases` (when
//! `PROMPT_KAFKA_STATE_DIR` names the state directory), so that one a killed test could not drop
//! is dropped by the next `deploy/local/stack up`, and by `down --purge` on a server of one's own.
//! [`crate::cleanup::KEEP_ENV`] keeps them for a post-mortem.

use std::io::Write;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::PgConnectOptions;
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, PgConnection};

use crate::cleanup::{KEEP_ENV, keep, on_own_runtime};
use crate::{TestEnv, unique_name};

/// How long a drop may wait for the server, connection included: a test must not hang at its end
/// because the server is down (fault tests stop it).
const DROP_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// An empty database of the test's own on the test server, dropped when the value is dropped.
#[derive(Debug)]
pub struct TestDatabase {
    /// Its name: a prefix and 12 random hex digits.
    pub name: String,
    /// Its URL (the server's superuser credentials).
    pub url: String,
    admin_url: String,
}

impl TestEnv {
    /// Creates an empty database named `prefix` and 12 random hex digits, dropped with the
    /// returned value.
    pub async fn fresh_database(&self, prefix: &str) -> anyhow::Result<TestDatabase> {
        let name = unique_name(prefix);
        let mut admin = PgConnection::connect(self.database_url())
            .await
            .context("connecting to the test database server")?;
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut admin)
            .await
            .with_context(|| format!("CREATE DATABASE {name}"))?;
        admin.close().await.ok();
        record_in_state("created-databases", &name);
        Ok(TestDatabase {
            url: self.database_url_for(&name),
            name,
            admin_url: self.database_url().to_owned(),
        })
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        drop_database(&self.admin_url, &self.name);
    }
}

/// Drops database `name` through `admin_url`, from a `Drop`: never panics, waits at most
/// [`DROP_TIMEOUT`]. A failure is printed (the next `stack up` drops what was recorded).
pub(crate) fn drop_database(admin_url: &str, name: &str) {
    if keep() {
        record_in_state("kept-databases", name);
        eprintln!("test-support: keeping database {name} ({KEEP_ENV} is set)");
        return;
    }
    let url = admin_url.to_owned();
    // FORCE: a service the test started may still hold pooled connections to it.
    let statement = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
    let result = on_own_runtime(DROP_TIMEOUT, move || async move {
        let options = PgConnectOptions::from_str(&url)
            .context("parsing the server URL")?
            .application_name("test-support cleanup");
        let mut connection = tokio::time::timeout(CONNECT_TIMEOUT, options.connect())
            .await
            .context("the server did not answer within 5 s")?
            .context("connecting to the server")?;
        sqlx::query(AssertSqlSafe(statement))
            .execute(&mut connection)
            .await
            .context("DROP DATABASE")?;
        connection.close().await.ok();
        Ok(())
    });
    if let Err(e) = result {
        eprintln!(
            "test-support: could not drop test database {name}: {e:#} (deploy/local/stack up drops it later)"
        );
    }
}

/// Appends `name` to a list of the state directory (`created-databases`, `kept-databases`) under
/// the lock `stack up` holds while it rewrites them, so no line is lost to a rewrite; nothing
/// without a state directory.
fn record_in_state(file: &str, name: &str) {
    let Some(state) = std::env::var_os("PROMPT_KAFKA_STATE_DIR").filter(|v| !v.is_empty()) else {
        return;
    };
    let path = PathBuf::from(state).join(file);
    let result = (|| -> std::io::Result<()> {
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path.with_file_name("created-databases.lock"))?;
        lock.lock()?;
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        writeln!(out, "{name}")
    })();
    if let Err(e) = result {
        eprintln!(
            "test-support: could not record database {name} in {}: {e}",
            path.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::drop_database;

    /// A test that stopped the server (or whose server is gone) still ends: the drop is
    /// printed as failed, without a panic, at once when nothing listens.
    #[test]
    fn dropping_on_a_server_that_is_down_neither_panics_nor_hangs() {
        let started = Instant::now();
        drop_database("postgres://postgres@127.0.0.1:1/postgres", "nothing_here");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    /// `Drop` runs inside the test's runtime; dropping from there must work as well.
    #[tokio::test]
    async fn dropping_from_inside_a_runtime_does_not_panic() {
        drop_database("postgres://postgres@127.0.0.1:1/postgres", "nothing_here");
    }
}
