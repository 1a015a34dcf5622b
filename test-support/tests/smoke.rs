//! Proof that the services the tests get are real: a registry daf_butler made, a topic on the
//! broker, a consumer group whose committed offset survives a broker restart, and (in process, on
//! librdkafka's mock cluster) a transaction that commits a consumer's offsets with its output.

// Helpers here are test code too: a failed expectation is the test failing.
#![allow(clippy::expect_used)]

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use sqlx::{AssertSqlSafe, Connection, PgConnection};
use test_support::{TestEnv, unique_name};

async fn env() -> TestEnv {
    TestEnv::start().await.unwrap_or_else(|e| panic!("{e:#}"))
}

#[tokio::test]
async fn a_fresh_registry_is_a_real_daf_butler_registry() {
    let env = env().await;
    let first = env
        .fresh_registry()
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let second = env
        .fresh_registry()
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_ne!(
        first.database, second.database,
        "each registry has its own database"
    );
    assert!(first.butler_config.is_file());

    let mut db = PgConnection::connect(&first.database_url)
        .await
        .expect("connect to the registry");
    let ns = &first.namespace;
    // The namespace is our own identifier, not input: formatting it into the SQL is safe.
    let count = |table: &str| AssertSqlSafe(format!("SELECT count(*) FROM {ns}.{table}"));
    let detectors: i64 = sqlx::query_scalar(count("detector"))
        .fetch_one(&mut db)
        .await
        .expect("detectors");
    let filters: i64 = sqlx::query_scalar(count("physical_filter"))
        .fetch_one(&mut db)
        .await
        .expect("filters");
    let types: Vec<String> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT name FROM {ns}.dataset_type ORDER BY name"
    )))
    .fetch_all(&mut db)
    .await
    .expect("dataset types");
    let universe: String = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT value FROM {ns}.butler_attributes WHERE name = 'config:dimensions.json'"
    )))
    .fetch_one(&mut db)
    .await
    .expect("the universe is stored in butler_attributes");
    let chain: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(*) FROM {ns}.collection WHERE name = 'LSSTCam/prompt/output-2026-05-01' AND type = 3"
    )))
    .fetch_one(&mut db)
    .await
    .expect("collections");

    assert_eq!(detectors, 189);
    assert_eq!(filters, 6);
    assert_eq!(
        types,
        [
            "isr_statistics",
            "preliminary_visit_image",
            "single_visit_star_unstandardized"
        ]
    );
    assert!(
        universe.contains("\"namespace\": \"daf_butler\"")
            || universe.contains("\"namespace\":\"daf_butler\"")
    );
    assert_eq!(chain, 1, "the CHAINED output collection exists");
}

#[tokio::test]
async fn a_committed_offset_survives_a_broker_restart() {
    let mut env = env().await;
    let topic = unique_name("smoke");
    env.create_topic(&topic, 1)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));

    let producer: FutureProducer = env
        .kafka_config()
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()
        .expect("producer");
    for i in 0..10 {
        let payload = format!("message {i}");
        producer
            .send(
                FutureRecord::to(&topic)
                    .key(&format!("k{i}"))
                    .payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("delivery of message {i} failed: {e}"));
    }

    let group = unique_name("group");
    let config = consumer_config(&env, &group);
    let first = tokio::task::spawn_blocking({
        let (config, topic) = (config.clone(), topic.clone());
        move || consume_and_commit(&config, &topic, 4)
    })
    .await
    .expect("first consumer");
    assert_eq!(first, ["message 0", "message 1", "message 2", "message 3"]);

    env.restart_broker()
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));

    let config = consumer_config(&env, &group);
    let rest = tokio::task::spawn_blocking(move || consume_and_commit(&config, &topic, 6))
        .await
        .expect("second consumer");
    let expected: Vec<String> = (4..10).map(|i| format!("message {i}")).collect();
    assert_eq!(
        rest, expected,
        "the group resumes exactly at its committed offset after the restart"
    );
}

fn consumer_config(env: &TestEnv, group: &str) -> ClientConfig {
    let mut config = env.kafka_config();
    config
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000");
    config
}

/// Joins the group, reads `count` messages, commits the position synchronously, leaves.
fn consume_and_commit(config: &ClientConfig, topic: &str, count: usize) -> Vec<String> {
    let consumer: BaseConsumer = config.create().expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut payloads = Vec::new();
    while payloads.len() < count {
        assert!(
            Instant::now() < deadline,
            "only {} of {count} messages within 60 s",
            payloads.len()
        );
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                payloads.push(
                    String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned(),
                );
                let mut offsets = TopicPartitionList::new();
                offsets
                    .add_partition_offset(
                        topic,
                        message.partition(),
                        Offset::Offset(message.offset() + 1),
                    )
                    .expect("offset");
                if payloads.len() == count {
                    consumer.commit(&offsets, CommitMode::Sync).expect("commit");
                }
            }
            // The restarted broker may refuse a request or two while it comes back.
            Some(Err(e)) => eprintln!("consumer: {e}"),
            None => {}
        }
    }
    consumer.unsubscribe();
    payloads
}

#[test]
fn the_mock_cluster_commits_offsets_inside_a_transaction() {
    let mock = MockCluster::new(3).expect("mock cluster");
    mock.create_topic("input", 1, 3).expect("input topic");
    mock.create_topic("output", 1, 3).expect("output topic");
    let bootstrap = mock.bootstrap_servers();
    let config = |extra: &[(&str, &str)]| {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &bootstrap);
        for (k, v) in extra {
            config.set(*k, *v);
        }
        config
    };

    let plain: BaseProducer = config(&[]).create().expect("producer");
    for i in 0..5 {
        plain
            .send(BaseRecord::<(), _>::to("input").payload(&format!("in {i}")))
            .expect("enqueue");
    }
    plain.flush(Duration::from_secs(10)).expect("flush");

    let group = [
        ("group.id", "writer"),
        ("enable.auto.commit", "false"),
        ("auto.offset.reset", "earliest"),
    ];
    let consumer: BaseConsumer = config(&group).create().expect("consumer");
    consumer.subscribe(&["input"]).expect("subscribe");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut read = 0;
    while read < 5 {
        assert!(Instant::now() < deadline, "read {read} of 5 input messages");
        if let Some(message) = consumer.poll(Duration::from_millis(200)) {
            message.expect("input message");
            read += 1;
        }
    }

    let transactional: BaseProducer = config(&[("transactional.id", "writer-0")])
        .create()
        .expect("transactional producer");
    transactional
        .init_transactions(Duration::from_secs(30))
        .expect("init_transactions");
    transactional.begin_transaction().expect("begin");
    transactional
        .send(BaseRecord::<(), _>::to("output").payload("event"))
        .expect("enqueue event");
    let position = consumer.position().expect("position");
    let metadata = consumer.group_metadata().expect("group metadata");
    transactional
        .send_offsets_to_transaction(&position, &metadata, Duration::from_secs(30))
        .expect("send_offsets_to_transaction");
    transactional
        .commit_transaction(Duration::from_secs(30))
        .expect("commit_transaction");

    // librdkafka's mock cluster validates TxnOffsetCommit but does not store the offsets (its
    // handler only checks the producer id and partitions), so what it shows is that the sequence
    // AddOffsetsToTxn, TxnOffsetCommit, EndTxn is accepted; that the offsets land is shown on
    // Apache Kafka (testcontainers), see deploy/local/README.md.
    let reader: BaseConsumer = config(&[
        ("group.id", "reader"),
        ("auto.offset.reset", "earliest"),
        ("isolation.level", "read_committed"),
    ])
    .create()
    .expect("reader");
    reader.subscribe(&["output"]).expect("subscribe output");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            Instant::now() < deadline,
            "the committed event never arrived"
        );
        if let Some(message) = reader.poll(Duration::from_millis(200)) {
            assert_eq!(message.expect("event").payload(), Some(&b"event"[..]));
            break;
        }
    }
}
