//! Fresh daf_butler registries for tests, made by the real `butler create` through our bootstrap
//! (`deploy/local/bootstrap_registry.py`), each in its own database.
//!
//! The bootstrap builds a template database once per set of options and clones it for every
//! registry after that (`CREATE DATABASE ... TEMPLATE`), so a fresh registry costs a fraction of
//! a second instead of the several seconds `butler create` and the registrations take.

use std::path::PathBuf;
use std::process::Stdio;

use anyhow::{Context, bail};
use tempfile::TempDir;

use crate::database::drop_database;
use crate::proxy::TcpProxy;
use crate::{TestEnv, unique_name, workspace_root};

/// How a fresh registry should differ from the default (universe as daf_butler's current, the
/// output RUN registered and prepended to the CHAINED collection).
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Dimension universe version to create (for example 7, which the Embargo repository may
    /// still use); daf_butler's current one when `None`.
    pub universe_version: Option<u32>,
    /// Leave the output RUN unregistered and the chain empty, as before the initializer runs.
    pub without_output_run: bool,
}

/// A registry made for one test. When the value is dropped (also when the test panics), its
/// database is dropped (`DROP DATABASE ... WITH (FORCE)`, over a connection of its own) and its
/// repository directory (butler.yaml and the datastore root) deleted.
/// `PROMPT_KAFKA_KEEP_TEST_DATABASES=1` keeps the database, named [`TestRegistry::database`], for
/// a post-mortem ([`crate::database`]).
#[derive(Debug)]
pub struct TestRegistry {
    /// The database holding the registry.
    pub database: String,
    /// The Postgres schema of the registry's tables (daf_butler's `namespace`).
    pub namespace: String,
    /// URL of the registry database (the server's superuser credentials).
    pub database_url: String,
    /// The repository's `butler.yaml`.
    pub butler_config: PathBuf,
    /// The repository directory, also the datastore root.
    pub repo: PathBuf,
    /// The server's superuser URL, to drop the database with.
    admin_url: String,
    _dir: TempDir,
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        // Before the fields: the repository directory goes after the database.
        drop_database(&self.admin_url, &self.database);
    }
}

impl TestEnv {
    /// A registry of its own for this test, holding what the Embargo repository holds before
    /// Prompt Processing runs (LSSTCam, its filters and 189 detectors, visit systems, the output
    /// dataset types, the CHAINED output collection).
    pub async fn fresh_registry(&self) -> anyhow::Result<TestRegistry> {
        self.fresh_registry_with(RegistryOptions::default()).await
    }

    /// A fresh registry with non-default options.
    pub async fn fresh_registry_with(
        &self,
        options: RegistryOptions,
    ) -> anyhow::Result<TestRegistry> {
        let database = unique_name("registry");
        let namespace = "embargo".to_owned();
        let dir = tempfile::Builder::new()
            .prefix("test-registry-")
            .tempdir()?;
        let repo = dir.path().join("repo");

        let python = python()?;
        let bootstrap = workspace_root().join("deploy/local/bootstrap_registry.py");
        let mut command = tokio::process::Command::new(&python);
        command
            .arg(&bootstrap)
            .args(["--admin-url", self.database_url()])
            .args(["--create-database", &database])
            .args(["--namespace", &namespace])
            .arg("--repo")
            .arg(&repo)
            .arg("--template-dir")
            .arg(template_dir()?)
            .stdin(Stdio::null());
        if let Some(state) = std::env::var_os("PROMPT_KAFKA_STATE_DIR") {
            // So that `deploy/local/stack down --purge` drops it, also on a server of one's own.
            command
                .arg("--record-databases")
                .arg(PathBuf::from(state).join("created-databases"));
        }
        if let Some(version) = options.universe_version {
            command.args(["--universe-version", &version.to_string()]);
        }
        if options.without_output_run {
            command.arg("--no-output-run");
        }
        let output = command
            .output()
            .await
            .with_context(|| format!("running {} {}", python.display(), bootstrap.display()))?;
        if !output.status.success() {
            bail!(
                "the registry bootstrap failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        let butler_config = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        if !butler_config.is_file() {
            bail!(
                "the registry bootstrap did not print a butler.yaml path (got {})",
                butler_config.display()
            );
        }
        Ok(TestRegistry {
            database_url: self.database_url_for(&database),
            database,
            namespace,
            butler_config,
            repo,
            admin_url: self.database_url().to_owned(),
            _dir: dir,
        })
    }
}

/// The Python with daf_butler: `$PROMPT_KAFKA_PYTHON`, or the workspace's `.venv`.
pub fn python() -> anyhow::Result<PathBuf> {
    let python = std::env::var_os("PROMPT_KAFKA_PYTHON")
        .map_or_else(|| workspace_root().join(".venv/bin/python"), PathBuf::from);
    if !python.is_file() {
        bail!(
            "no Python environment with daf_butler at {}: run deploy/local/stack up (it creates .venv), \
             or set PROMPT_KAFKA_PYTHON to a python that has lsst-daf-butler and psycopg2-binary",
            python.display()
        );
    }
    Ok(python)
}

/// Where the bootstrap keeps its template bookkeeping: the stack's state directory when there is
/// one, so tests and `stack registry` share templates.
fn template_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::var_os("PROMPT_KAFKA_STATE_DIR").map_or_else(
        || std::env::temp_dir().join("prompt-kafka-registry-templates"),
        |state| PathBuf::from(state).join("templates"),
    );
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

impl TestRegistry {
    /// A copy of this registry's `butler.yaml` (`proxied.yaml`, beside it) that reaches the
    /// database through a [`TcpProxy`] of its own, so a test can take the database away from
    /// one writer without stopping the server other tests use.
    pub async fn through_proxy(&self) -> anyhow::Result<(TcpProxy, PathBuf)> {
        self.through_proxy_with(None).await
    }

    /// As [`TestRegistry::through_proxy`], with the database `one_way` further away in each
    /// direction ([`TcpProxy::start_delayed`]): a remote database, `2 * one_way` of added
    /// round-trip time.
    pub async fn through_delayed_proxy(
        &self,
        one_way: std::time::Duration,
    ) -> anyhow::Result<(TcpProxy, PathBuf)> {
        self.through_proxy_with(Some(one_way)).await
    }

    async fn through_proxy_with(
        &self,
        delay: Option<std::time::Duration>,
    ) -> anyhow::Result<(TcpProxy, PathBuf)> {
        let port = self.database_port()?;
        let target = format!("127.0.0.1:{port}");
        let proxy = match delay {
            None => TcpProxy::start(&target).await?,
            Some(one_way) => TcpProxy::start_delayed(&target, one_way).await?,
        };
        let text = std::fs::read_to_string(&self.butler_config)?;
        let proxied = self.repo.join("proxied.yaml");
        std::fs::write(
            &proxied,
            text.replace(&format!(":{port}/"), &format!(":{}/", proxy.port())),
        )?;
        Ok((proxy, proxied))
    }

    /// [`TestRegistry::database_url`] through `proxy` (one of [`TestRegistry::through_proxy`]'s),
    /// for a client of the test's own to see the database as the proxied writer does.
    pub fn database_url_through(&self, proxy: &TcpProxy) -> anyhow::Result<String> {
        let port = self.database_port()?;
        Ok(self
            .database_url
            .replace(&format!(":{port}/"), &format!(":{}/", proxy.port())))
    }

    fn database_port(&self) -> anyhow::Result<u16> {
        let after_host = self
            .database_url
            .rsplit_once('@')
            .map_or(self.database_url.as_str(), |(_, h)| h);
        after_host
            .split('/')
            .next()
            .and_then(|h| h.rsplit_once(':'))
            .and_then(|(_, p)| p.parse().ok())
            .with_context(|| format!("no port in the database URL of {}", self.database))
    }
}
