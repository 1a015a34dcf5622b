//! A schema registry for tests of application metrics events: the stack's
//! (`PROMPT_KAFKA_SCHEMA_REGISTRY_URL`), or `deploy/local/schema_registry.py` started for the
//! test alone on a free loopback port (it needs only Python's standard library). Tests keep apart
//! by giving their events a topic prefix of their own, which is part of every subject.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tempfile::TempDir;
use tokio::process::{Child, Command};

use crate::s3::free_port;
use crate::workspace_root;

/// A registry for one test.
#[derive(Debug)]
pub struct TestSchemaRegistry {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    child: Option<Child>,
    _dir: Option<TempDir>,
}

impl TestSchemaRegistry {
    /// The stack's registry, or one of the test's own.
    pub async fn start() -> anyhow::Result<Self> {
        if let Ok(url) = std::env::var("PROMPT_KAFKA_SCHEMA_REGISTRY_URL")
            && !url.is_empty()
        {
            return Ok(Self {
                url,
                child: None,
                _dir: None,
            });
        }
        let dir = tempfile::Builder::new()
            .prefix("test-schema-registry-")
            .tempdir()?;
        let port = free_port()?;
        let script = workspace_root().join("deploy/local/schema_registry.py");
        let log = std::fs::File::create(dir.path().join("registry.log"))?;
        let child = Command::new("python3")
            .arg(&script)
            .args(["--port", &port.to_string(), "--data"])
            .arg(dir.path().join("registry.json"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", script.display()))?;
        let registry = Self {
            url: format!("http://127.0.0.1:{port}"),
            child: Some(child),
            _dir: Some(dir),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if Instant::now() > deadline {
                bail!("the test schema registry did not listen on 127.0.0.1:{port} within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(registry)
    }
}

impl Drop for TestSchemaRegistry {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.start_kill();
        }
    }
}

/// Each framed value decoded by `deploy/local/decode_metrics.py`: Python's fastavro with the
/// schemas in the registry, an Avro implementation independent of ours. One JSON object per
/// value: `{"schema_id", "name", "namespace", "event": {...}}`, or `{"error": ...}`.
pub fn decode_with_fastavro(
    registry_url: &str,
    values: &[Vec<u8>],
) -> anyhow::Result<Vec<serde_json::Value>> {
    use base64::Engine;
    use std::io::Write;
    let script = workspace_root().join("deploy/local/decode_metrics.py");
    let mut child = std::process::Command::new(crate::registry::python()?)
        .arg(&script)
        .args(["--registry", registry_url])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", script.display()))?;
    {
        let mut stdin = child.stdin.take().context("the decoder's stdin")?;
        for value in values {
            writeln!(
                stdin,
                "{}",
                base64::engine::general_purpose::STANDARD.encode(value)
            )?;
        }
    }
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!(
            "decode_metrics.py failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    String::from_utf8(output.stdout)?
        .lines()
        .map(|line| serde_json::from_str(line).context("decode_metrics.py printed no JSON"))
        .collect()
}

/// A loopback URL where nothing listens: a registry or broker that is down.
pub fn nothing_listens() -> anyhow::Result<String> {
    Ok(format!("127.0.0.1:{}", free_port()?))
}
