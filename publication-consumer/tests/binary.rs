//! The `publication-consumer` binary: its help, its one-line configuration errors, and a run
//! from environment variables alone that records a batch and stops cleanly on SIGTERM.

// Test code: a failed expectation is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{announce, fixture, ingest};

const BIN: &str = env!("CARGO_BIN_EXE_publication-consumer");

/// Every variable the main job script sets, and the consumer's own.
const VARIABLES: &[&str] = &[
    "BUTLER_REPOSITORY",
    "KAFKA_CLUSTER",
    "KAFKA_TOPIC",
    "KAFKA_GROUP_ID",
    "KAFKA_USERNAME",
    "KAFKA_PASSWORD",
    "OUTPUT_DATASET_LIST_DIRECTORY",
    "PUBLICATION_DATABASE_URL",
    "PUBLICATION_SCHEMA",
    "PUBLICATION_POLICY_FILE",
    "PUBLICATION_RELEASE_EXPOSURE_ONLY",
    "PUBLICATION_HTTP_ADDRESS",
    "PUBLICATION_LOG_FORMAT",
    "PUBLICATION_LOG_LEVEL",
    "PUBLICATION_ORIGINS",
    "PUBLICATION_BATCH_FILE_WAIT_SECONDS",
    "PUBLICATION_KAFKA_SECURITY_PROTOCOL",
    "PUBLICATION_KAFKA_CA_FILE",
    "PUBLICATION_DB_MAX_CONNECTIONS",
    "PUBLICATION_RETRY_INITIAL_MS",
    "PUBLICATION_RETRY_MAX_MS",
    "PUBLICATION_SHUTDOWN_GRACE_SECONDS",
    "LSST_DB_AUTH",
];

#[test]
fn help_lists_every_variable_and_hides_the_password() {
    let output = Command::new(BIN)
        .args(["serve", "--help"])
        .env("KAFKA_PASSWORD", "hunter2")
        .env("PUBLICATION_DATABASE_URL", "postgresql://u:sesame@h/d")
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for variable in VARIABLES {
        assert!(
            help.contains(&format!("env: {variable}"))
                || help.contains(&format!("env: {variable}=")),
            "{variable} in\n{help}"
        );
    }
    assert!(!help.contains("hunter2"));
    assert!(!help.contains("sesame"));
}

#[test]
fn a_configuration_error_stops_at_start_up_with_one_line() {
    let output = Command::new(BIN)
        .arg("serve")
        .env_clear()
        .env("BUTLER_REPOSITORY", "/nonexistent/butler.yaml")
        .env("KAFKA_CLUSTER", "127.0.0.1:1")
        .env("OUTPUT_DATASET_LIST_DIRECTORY", "/tmp/")
        .env("PUBLICATION_SCHEMA", "Not-A-Schema")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("PUBLICATION_SCHEMA"), "{stderr}");

    // The former EMBARGO_HOURS is refused, not ignored: the policy has the embargo now.
    let output = Command::new(BIN)
        .arg("serve")
        .env_clear()
        .env("BUTLER_REPOSITORY", "/nonexistent/butler.yaml")
        .env("KAFKA_CLUSTER", "127.0.0.1:1")
        .env("OUTPUT_DATASET_LIST_DIRECTORY", "/tmp/")
        .env("EMBARGO_HOURS", "80")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("PUBLICATION_POLICY_FILE"), "{stderr}");

    // A policy file with a mistake: one line naming the file and the mistake.
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "profiles:\n  - {name: p, origin: prompt_processing, embargo_hours: 80, \
         publish_to_public: yes_please, retention_days: null, dataset_types: [a]}\n",
    )
    .unwrap();
    let output = Command::new(BIN)
        .arg("serve")
        .env_clear()
        .env("BUTLER_REPOSITORY", "/nonexistent/butler.yaml")
        .env("KAFKA_CLUSTER", "127.0.0.1:1")
        .env("OUTPUT_DATASET_LIST_DIRECTORY", "/tmp/")
        .env("PUBLICATION_POLICY_FILE", &policy)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("policy.yaml") && stderr.contains("publish_to_public"),
        "{stderr}"
    );

    // A repository that does not exist is fatal too, not retried for ever.
    let output = Command::new(BIN)
        .arg("serve")
        .env_clear()
        .env("BUTLER_REPOSITORY", "/nonexistent/butler.yaml")
        .env("KAFKA_CLUSTER", "127.0.0.1:1")
        .env("OUTPUT_DATASET_LIST_DIRECTORY", "/tmp/")
        .env("PUBLICATION_LOG_LEVEL", "off")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("/nonexistent/butler.yaml"), "{stderr}");
}

#[tokio::test]
async fn the_binary_records_a_batch_and_stops_on_sigterm() {
    let f = fixture(1).await;
    let batches = ingest(&f, 7_000_900, 1, 15).await;
    announce(&f, &batches).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut child = tokio::process::Command::new(BIN)
        .arg("serve")
        .env("BUTLER_REPOSITORY", &f.registry.butler_config)
        .env("KAFKA_CLUSTER", f.env.kafka_bootstrap())
        .env("KAFKA_TOPIC", &f.topics.events)
        .env("KAFKA_GROUP_ID", test_support::unique_name("pps"))
        .env("OUTPUT_DATASET_LIST_DIRECTORY", f.dir.path())
        .env("PUBLICATION_SCHEMA", test_support::unique_name("pps"))
        .env("PUBLICATION_HTTP_ADDRESS", address.to_string())
        .env("PUBLICATION_LOG_FORMAT", "json")
        .env_remove("PUBLICATION_DATABASE_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if tokio::net::TcpStream::connect(address).await.is_ok() {
            let counts = common::counts(address).await;
            if counts.datasets == 15 {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the binary did not record the batch"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let pid = child.id().unwrap().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the binary stops within 30 s of SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");
    let mut stderr = String::new();
    tokio::io::AsyncReadExt::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr)
        .await
        .unwrap();
    // JSON lines, one of which says the batch was recorded.
    assert!(
        stderr
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .any(|l| l["message"] == "batch recorded"),
        "{stderr}"
    );
}

#[tokio::test]
async fn the_binary_reads_batch_files_from_s3() {
    let f = fixture(1).await;
    let batches = ingest(&f, 7_001_200, 1, 9).await;
    let s3 = test_support::s3::TestS3::start().await.expect("moto");
    let directory = s3.uri(Some("embargo"), "publication/prompt_processing/");
    let name = common::batch_file_name(batches[0].batch_id);
    let resolver = resources::Resolver::from_vars(s3.profile_env("embargo"));
    resources::ResourcePath::parse(&format!("{directory}{name}"))
        .unwrap()
        .write_with(&resolver, batches[0].to_json())
        .await
        .unwrap();
    common::produce(
        f.env.kafka_bootstrap(),
        &f.topics.events,
        &[common::event(batches[0].batch_id, &name)],
        Some(0),
    )
    .await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut child = tokio::process::Command::new(BIN)
        .arg("serve")
        .env("BUTLER_REPOSITORY", &f.registry.butler_config)
        .env("KAFKA_CLUSTER", f.env.kafka_bootstrap())
        .env("KAFKA_TOPIC", &f.topics.events)
        .env("KAFKA_GROUP_ID", test_support::unique_name("pps"))
        .env("OUTPUT_DATASET_LIST_DIRECTORY", &directory)
        .env("PUBLICATION_SCHEMA", test_support::unique_name("pps"))
        .env("PUBLICATION_HTTP_ADDRESS", address.to_string())
        .envs(s3.profile_env("embargo"))
        .env_remove("PUBLICATION_DATABASE_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if tokio::net::TcpStream::connect(address).await.is_ok()
            && common::counts(address).await.datasets == 9
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the batch file on S3 was not read"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let pid = child.id().unwrap().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
}
