//! A nisshi broker of the test's own that requires SCRAM-SHA-512, as Prompt Kafka does, with one
//! user, over plaintext or TLS. nisshi creates users only through an unauthenticated plaintext
//! listener, so the broker is first started that way to create the user, then again on the same
//! storage with authentication (and TLS: a throwaway CA and a certificate for 127.0.0.1, made with
//! the `openssl` command).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A running broker with SCRAM-SHA-512 authentication; stopped on drop.
#[derive(Debug)]
pub struct SaslBroker {
    bootstrap: String,
    child: Child,
    ca_file: Option<PathBuf>,
    _dir: tempfile::TempDir,
}

impl SaslBroker {
    /// Starts a broker on a free loopback port with `user` / `password` as its only user. Needs
    /// `NISSHI_BIN` (`deploy/local/stack env` exports it).
    pub async fn start(user: &str, password: &str) -> anyhow::Result<Self> {
        Self::start_with(user, password, false).await
    }

    /// As [`start`](Self::start), serving TLS only (`sasl_ssl`); [`ca_file`](Self::ca_file) is
    /// the CA that signed its certificate.
    pub async fn start_tls(user: &str, password: &str) -> anyhow::Result<Self> {
        Self::start_with(user, password, true).await
    }

    async fn start_with(user: &str, password: &str, tls: bool) -> anyhow::Result<Self> {
        let bin = std::env::var("NISSHI_BIN").context(
            "NISSHI_BIN is not set: eval \"$(deploy/local/stack env)\" exports the stack's nisshi",
        )?;
        let dir = tempfile::tempdir()?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let bootstrap = format!("127.0.0.1:{port}");

        let mut plain = spawn(&bin, port, dir.path(), false, false)?;
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

        let ca_file = if tls {
            make_certificates(dir.path())?;
            Some(dir.path().join("ca.pem"))
        } else {
            None
        };
        let child = spawn(&bin, port, dir.path(), true, tls)?;
        let broker = Self {
            bootstrap,
            child,
            ca_file,
            _dir: dir,
        };
        wait_for_port(&broker.bootstrap).await?;
        Ok(broker)
    }

    /// `host:port` of the broker.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// The CA certificate of a TLS broker.
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    /// A client configuration that authenticates as `user` with `password` (over TLS, trusting
    /// the broker's CA, for a TLS broker).
    pub fn client_config(&self, user: &str, password: &str) -> rdkafka::ClientConfig {
        let mut config = rdkafka::ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap);
        match &self.ca_file {
            Some(ca) => {
                config
                    .set("security.protocol", "sasl_ssl")
                    .set("ssl.ca.location", ca.display().to_string());
            }
            None => {
                config.set("security.protocol", "sasl_plaintext");
            }
        }
        config
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
    dir: &Path,
    authentication: bool,
    tls: bool,
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
    if tls {
        command.args(["--cert", "server.pem", "--key", "server.key"]);
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

/// A CA (`ca.pem`) and a certificate for 127.0.0.1 it signed (`server.pem`, `server.key`).
fn make_certificates(dir: &Path) -> anyhow::Result<()> {
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n")?;
    let steps: [&[&str]; 3] = [
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=prompt-kafka test CA",
        ],
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ],
    ];
    for args in steps {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .context("running openssl (apt-get install -y openssl)")?;
        if !output.status.success() {
            bail!(
                "openssl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
    Ok(())
}
