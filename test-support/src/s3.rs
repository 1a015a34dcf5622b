//! An S3 server for one test: moto's standalone server (`python -m moto.server`, from the local
//! stack's Python environment, where `deploy/local/requirements.txt` pins `moto[server]`) on a
//! free loopback port, with a fresh bucket and a user whose credentials moto then enforces.
//!
//! The server is a child process owned by the returned [`TestS3`]: dropping it (or
//! [`TestS3::stop`]) kills that child and nothing else.
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! let s3 = test_support::TestS3::start().await?;
//! let uri = s3.uri(Some("test"), "batches/one.json");
//! let env = s3.profile_env("test"); // LSST_RESOURCES_S3_PROFILE_test=http://key:secret@127.0.0.1:port
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tempfile::TempDir;

use crate::registry::python;
use crate::{TestEnv, unique_name};

/// How long moto may take to start answering (it imports Flask and botocore: about 1 s).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running moto server with one bucket and one user; stopped when dropped.
#[derive(Debug)]
pub struct TestS3 {
    endpoint: String,
    bucket: String,
    access_key_id: String,
    secret_access_key: String,
    child: Option<Child>,
    log: PathBuf,
    _dir: TempDir,
}

impl TestEnv {
    /// A fresh S3 server for this test: see [`TestS3::start`].
    pub async fn s3() -> anyhow::Result<TestS3> {
        TestS3::start().await
    }
}

impl TestS3 {
    /// Starts moto on a free 127.0.0.1 port, waits until it answers, creates a bucket with a
    /// unique name and a user allowed `s3:*`, then turns authentication on: from then on
    /// only that user's key, correctly signed, is accepted.
    pub async fn start() -> anyhow::Result<Self> {
        let python = python()?;
        let dir = tempfile::Builder::new().prefix("test-s3-").tempdir()?;
        let log = dir.path().join("moto.log");
        // A port found free can be taken before moto binds it: try a few.
        let mut last_error = None;
        for _ in 0..3 {
            let port = free_port()?;
            match start_moto(&python, port, &log).await {
                Ok(child) => {
                    let mut s3 = Self {
                        endpoint: format!("http://127.0.0.1:{port}"),
                        bucket: unique_name("s3").replace('_', "-"),
                        access_key_id: String::new(),
                        secret_access_key: String::new(),
                        child: Some(child),
                        log: log.clone(),
                        _dir: dir,
                    };
                    s3.set_up(&python).await?;
                    return Ok(s3);
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("moto did not start")))
    }

    async fn set_up(&mut self, python: &std::path::Path) -> anyhow::Result<()> {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/moto_setup.py");
        let mut command = tokio::process::Command::new(python);
        command
            .arg(&script)
            .arg(&self.endpoint)
            .arg(&self.bucket)
            .stdin(Stdio::null());
        // Only the script's explicit settings: nothing from the developer's AWS setup.
        for var in [
            "AWS_PROFILE",
            "AWS_DEFAULT_PROFILE",
            "AWS_CONFIG_FILE",
            "AWS_SHARED_CREDENTIALS_FILE",
            "AWS_CA_BUNDLE",
            "AWS_ENDPOINT_URL",
            "HTTP_PROXY",
            "http_proxy",
        ] {
            command.env_remove(var);
        }
        command.env("AWS_EC2_METADATA_DISABLED", "true");
        let output = command
            .output()
            .await
            .with_context(|| format!("running {}", script.display()))?;
        if !output.status.success() {
            bail!(
                "setting up moto at {} failed ({}): {}\nmoto log: {}",
                self.endpoint,
                output.status,
                String::from_utf8_lossy(&output.stderr).trim(),
                self.log_tail()
            );
        }
        let keys: serde_json::Value =
            serde_json::from_slice(&output.stdout).context("moto_setup.py printed no JSON")?;
        let field = |name: &str| {
            keys.get(name)
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned)
                .with_context(|| format!("moto_setup.py printed no {name}"))
        };
        self.access_key_id = field("access_key_id")?;
        self.secret_access_key = field("secret_access_key")?;
        Ok(())
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The bucket made for this test.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The access key id moto accepts.
    pub fn access_key_id(&self) -> &str {
        &self.access_key_id
    }

    /// The secret of [`TestS3::access_key_id`].
    pub fn secret_access_key(&self) -> &str {
        &self.secret_access_key
    }

    /// `s3://[profile@]BUCKET/key`.
    pub fn uri(&self, profile: Option<&str>, key: &str) -> String {
        match profile {
            Some(profile) => format!("s3://{profile}@{}/{key}", self.bucket),
            None => format!("s3://{}/{key}", self.bucket),
        }
    }

    /// `LSST_RESOURCES_S3_PROFILE_<profile>` naming this server with its credentials
    /// embedded, as lsst-resources spells it (`http://key:secret@127.0.0.1:PORT`).
    pub fn profile_env(&self, profile: &str) -> BTreeMap<String, String> {
        let url = self.endpoint.replacen(
            "http://",
            &format!(
                "http://{}:{}@",
                percent_encode(&self.access_key_id),
                percent_encode(&self.secret_access_key)
            ),
            1,
        );
        BTreeMap::from([(format!("LSST_RESOURCES_S3_PROFILE_{profile}"), url)])
    }

    /// `S3_ENDPOINT_URL` naming this server, without credentials.
    pub fn endpoint_env(&self) -> BTreeMap<String, String> {
        BTreeMap::from([("S3_ENDPOINT_URL".to_owned(), self.endpoint.clone())])
    }

    /// A shared-credentials-file section `[section]` holding this server's key.
    pub fn credentials_section(&self, section: &str) -> String {
        format!(
            "[{section}]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            self.access_key_id, self.secret_access_key
        )
    }

    /// Kills the server (only this test's child process) and waits for it to exit; clients
    /// then see connections refused.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for TestS3 {
    fn drop(&mut self) {
        self.stop();
    }
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// Spawns moto on `port` and waits until it accepts connections (it binds only once its app is
/// built, so accepting means answering).
async fn start_moto(
    python: &std::path::Path,
    port: u16,
    log: &std::path::Path,
) -> anyhow::Result<Child> {
    let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut child = Command::new(python)
        .args([
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("starting {} -m moto.server", python.display()))?;
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if text.contains("No module named") {
                bail!(
                    "moto is not installed in {}: run deploy/local/stack up (deploy/local/requirements.txt pins moto[server])",
                    python.display()
                );
            }
            bail!(
                "moto exited ({status}) before answering on port {port}: {}",
                text.trim()
            );
        }
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(child);
        }
        if started.elapsed() > START_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "moto did not answer on 127.0.0.1:{port} within {START_TIMEOUT:?} (log: {})",
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Percent-encodes what may not appear in a URL's userinfo (moto's secrets contain `/` and `+`).
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}
