//! A real Butler Writer for tests that need one: its settings for the test broker and a fresh
//! registry, and starting it in-process. (`butler-writer` dev-depends on this crate and this crate
//! on `butler-writer`, as tokio and tokio-test do: the writer's integration tests and the other
//! crates' end-to-end tests share one fixture.)

#![allow(clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use butler_writer::service::settings::{BatchSettings, BreakerSettings};
use butler_writer::service::{DeliveryMode, Service, Settings};
use service_kit::{KafkaSettings, RetrySettings, chain};

use crate::{TestEnv, TestRegistry, TestTopics, unique_name};

/// Settings for a test writer: idempotent delivery on a broker without transactions, short
/// batches and retries, HTTP on a free loopback port, a group and transactional id of its own.
pub fn settings(
    bootstrap: &str,
    butler_config: &Path,
    topics: &TestTopics,
    output_directory: &Path,
    transactions: bool,
) -> Settings {
    let mut settings = Settings::new(
        butler_config.display().to_string(),
        KafkaSettings::plaintext(bootstrap),
        &topics.input,
        &topics.events,
        format!("{}/", output_directory.display()),
    );
    settings.dead_letter_topic = topics.dead_letter.clone();
    settings.group_id = format!("{}_group", topics.input);
    settings.transactional_id = unique_name("txn");
    settings.delivery = if transactions {
        DeliveryMode::Transactional
    } else {
        DeliveryMode::Idempotent
    };
    settings.batch = BatchSettings {
        max_messages: 500,
        max_wait: Duration::from_millis(100),
        ..settings.batch
    };
    settings.http_address = "127.0.0.1:0".parse().expect("address");
    settings.retry = RetrySettings {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(500),
    };
    settings.breaker = BreakerSettings {
        window: 200,
        min_messages: 100,
        threshold: 0.9,
        cooldown: Duration::from_millis(500),
    };
    settings.shutdown_grace = Duration::from_secs(10);
    settings
}

/// Settings for the environment's broker (transactional on Apache Kafka, idempotent on nisshi).
pub fn env_settings(
    env: &TestEnv,
    registry: &TestRegistry,
    topics: &TestTopics,
    output_directory: &Path,
) -> Settings {
    settings(
        env.kafka_bootstrap(),
        &registry.butler_config,
        topics,
        output_directory,
        env.broker_kind().supports_transactions(),
    )
}

/// Starts a writer, panicking with the reason if it cannot.
pub async fn start(settings: Settings) -> Service {
    Service::start(settings)
        .await
        .unwrap_or_else(|e| panic!("the writer did not start: {}", chain(&e)))
}
