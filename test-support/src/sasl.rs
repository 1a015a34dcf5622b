//! A nisshi broker of the test's own that requires SCRAM-SHA-512, as Prompt Kafka does, with one
//! user. nisshi creates users only through an unauthenticated listener, so the broker is first
//! started without authentication to create the user, then again on the same storage with it.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A running broker with SCRAM-SHA-512 authentication; stopped on drop.
#[derive(Debug)]
pub struct SaslBroker {
    bootstrap: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl SaslBroker {
    /// Starts a broker on a free loopback port with `user` / `password` as its only user. Needs
    /// `NISSHI_BIN` (`deploy/local/stack env` exports it).
    pub async fn start(user: &str, password: &str) -> anyhow::Result<Self> {
        let bin = std::env::var("NISSHI_BIN").context(
            "NISSHI_BIN is not set: eval \"$(deploy/local/stack env)\" exports the stack's nisshi",
        )?;
        let dir = tempfile::tempdir()?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let bootstrap = format!("127.0.0.1:{port}");

        let mut plain = spawn(&bin, port, dir.path(), false)?;
        let created = async {
            wait_for_port(&bootstrap).await?;
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                let output = tokio::process::Command::new(&bin)
                    .args(["user", "create", "--broker", &format!("tcp://{bootstrap}")])
                    .args(["--mechanism", "scram512", user, password])
                    .output()
                    .await?;
                if output.status.success() {
                    return Ok(());
                }
                if Instant::now() > deadline {
                    bail!(
                        "nisshi user create failed: {}",
                        String::from_utf8_lossy(&output.stderr)
                    );
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        .await;
        let _ = plain.kill();
        let _ = plain.wait();
        created?;

        let child = spawn(&bin, port, dir.path(), true)?;
        let broker = Self {
            bootstrap,
            child,
            _dir: dir,
        };
        wait_for_port(&broker.bootstrap).await?;
        Ok(broker)
    }

    /// `host:port` of the broker.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// A client configuration that authenticates as `user` with `password`.
    pub fn client_config(&self, user: &str, password: &str) -> rdkafka::ClientConfig {
        let mut config = rdkafka::ClientConfig::new();
        config
            .set("bootstrap.servers", &self.bootstrap)
            .set("security.protocol", "sasl_plaintext")
            .set("sasl.mechanism", "SCRAM-SHA-512")
            .set("sasl.username", user)
            .set("sasl.password", password);
        config
    }
}

impl Drop for SaslBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(
    bin: &str,
    port: u16,
    dir: &std::path::Path,
    authentication: bool,
) -> anyhow::Result<Child> {
    let url = format!("tcp://127.0.0.1:{port}");
    let mut command = Command::new(bin);
    command
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        .args(["--storage-engine", "sqlite://nisshi.db", "--silent"])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if authentication {
        command.arg("--authentication");
    }
    command
        .spawn()
        .with_context(|| format!("starting {bin} broker"))
}

async fn wait_for_port(address: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while tokio::net::TcpStream::connect(address).await.is_err() {
        if Instant::now() > deadline {
            bail!("the broker did not listen on {address} within 15 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}
