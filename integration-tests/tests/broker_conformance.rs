//! What the writer's transactional mode relies on from the broker (KIP-98, KIP-447), checked on
//! the broker with transactions the environment gives (the local stack's noida-db; Apache Kafka
//! where a Docker engine or an external cluster is there). Where noida-db differs from Apache
//! Kafka, the assertion is Apache-Kafka-only and the test says in one line what noida-db did
//! (`deploy/local/README.md`, "Which Kafka guarantee is tested where").

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use test_support::{TestEnv, unique_name};

fn transactional_producer(bootstrap: &str, id: &str) -> ThreadedProducer<DefaultProducerContext> {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("transactional.id", id)
        .set("transaction.timeout.ms", "60000")
        .create()
        .expect("producer");
    producer
        .init_transactions(Duration::from_secs(30))
        .expect("init");
    producer
}

/// Every value of partition 0 of `topic` a new `read_committed` reader sees within `wait`.
fn read_committed(bootstrap: &str, topic: &str, wait: Duration) -> Vec<String> {
    read_committed_from(bootstrap, topic, Offset::Beginning, wait)
}

/// A consumer of `group` that has joined it and been given partition 0 of `topic`: what
/// `send_offsets_to_transaction` needs.
fn group_member(bootstrap: &str, group: &str, topic: &str) -> BaseConsumer {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while consumer.assignment().unwrap().count() == 0 {
        assert!(Instant::now() < deadline, "no assignment within 30 s");
        let _ = consumer.poll(Duration::from_millis(100));
    }
    consumer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_producer_with_the_same_transactional_id_aborts_the_open_transaction() {
    replacement_aborts_the_open_transaction(false).await;
}

/// As the writer's transactions are: the killed one had sent its consumer offsets too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_producer_aborts_an_open_transaction_holding_offsets() {
    replacement_aborts_the_open_transaction(true).await;
}

async fn replacement_aborts_the_open_transaction(with_offsets: bool) {
    let env = TestEnv::start_transactional()
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let topic = unique_name("txn_conformance");
    env.create_topic(&topic, 1).await.unwrap();
    let input = unique_name("txn_conformance_input");
    env.create_topic(&input, 1).await.unwrap();
    let bootstrap = env.kafka_bootstrap().to_owned();
    let id = unique_name("txn");
    let (b, t, i) = (bootstrap.clone(), topic.clone(), id.clone());
    let group = unique_name("txn_group");
    let seen = tokio::task::spawn_blocking(move || {
        // A writer killed inside its transaction: the record is on the broker, never committed.
        let first = transactional_producer(&b, &i);
        first.begin_transaction().unwrap();
        first
            .send(BaseRecord::<(), str>::to(&t).payload("killed"))
            .unwrap();
        first.flush(Duration::from_secs(10)).unwrap();
        if with_offsets {
            let member = group_member(&b, &group, &input);
            let mut offsets = TopicPartitionList::new();
            offsets
                .add_partition_offset(&input, 0, Offset::Offset(1))
                .unwrap();
            first
                .send_offsets_to_transaction(
                    &offsets,
                    &member.group_metadata().expect("group metadata"),
                    Duration::from_secs(30),
                )
                .unwrap();
            std::mem::forget(member);
        }
        std::mem::forget(first);
        // Its replacement: the same transactional id, a transaction of its own, committed.
        let second = transactional_producer(&b, &i);
        second.begin_transaction().unwrap();
        second
            .send(BaseRecord::<(), str>::to(&t).payload("replacement"))
            .unwrap();
        second.commit_transaction(Duration::from_secs(30)).unwrap();
        read_committed(&b, &t, Duration::from_secs(10))
    })
    .await
    .unwrap();
    eprintln!("{} read_committed: {seen:?}", env.broker_kind().name());
    assert_eq!(seen, ["replacement"]);
}

/// Every value of partition 0 of `topic` from `offset` that a new `read_committed` reader sees
/// within `wait`.
fn read_committed_from(
    bootstrap: &str,
    topic: &str,
    offset: Offset,
    wait: Duration,
) -> Vec<String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique_name("reader"))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, 0, offset).unwrap();
    consumer.assign(&assignment).unwrap();
    let deadline = Instant::now() + wait;
    let mut values = Vec::new();
    while Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            values.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned());
        }
    }
    values
}

/// A `read_committed` reader whose fetches start after an aborted transaction (a consumer that
/// has read past it, or one resuming from a committed offset beyond it) sees the same producer's
/// later transactions: the broker lists an aborted transaction only to fetches that reach into
/// it (KIP-98).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_past_an_aborted_transaction_sees_the_producers_later_commits() {
    let env = TestEnv::start_transactional()
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let topic = unique_name("txn_conformance");
    env.create_topic(&topic, 1).await.unwrap();
    let bootstrap = env.kafka_bootstrap().to_owned();
    let (b, t) = (bootstrap.clone(), topic.clone());
    let (from_start, past_abort) = tokio::task::spawn_blocking(move || {
        // Offsets: "one" 0 (commit marker 1), "aborted" 2 (abort marker 3), "two" 4 (5),
        // "three" 6 (7).
        let producer = transactional_producer(&b, &unique_name("txn"));
        for (value, commit) in [
            ("one", true),
            ("aborted", false),
            ("two", true),
            ("three", true),
        ] {
            producer.begin_transaction().unwrap();
            producer
                .send(BaseRecord::<(), str>::to(&t).payload(value))
                .unwrap();
            if commit {
                producer
                    .commit_transaction(Duration::from_secs(30))
                    .unwrap();
            } else {
                producer.abort_transaction(Duration::from_secs(30)).unwrap();
            }
        }
        (
            read_committed_from(&b, &t, Offset::Beginning, Duration::from_secs(5)),
            read_committed_from(&b, &t, Offset::Offset(5), Duration::from_secs(5)),
        )
    })
    .await
    .unwrap();
    let kind = env.broker_kind();
    eprintln!(
        "{}: read_committed from offset 0: {from_start:?}; from offset 5: {past_abort:?}",
        kind.name()
    );
    assert_eq!(from_start, ["one", "two", "three"]);
    if kind.is_apache_kafka() || past_abort == ["two", "three"] {
        assert_eq!(past_abort, ["two", "three"]);
    } else {
        eprintln!(
            "{}: a read_committed fetch from after an aborted transaction skips that producer's later records (Apache-Kafka-only assertion)",
            kind.name()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_transaction_is_aborted_when_its_timeout_expires() {
    let env = TestEnv::start_transactional()
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let topic = unique_name("txn_conformance");
    env.create_topic(&topic, 1).await.unwrap();
    let bootstrap = env.kafka_bootstrap().to_owned();
    let (b, t) = (bootstrap.clone(), topic.clone());
    let started = Instant::now();
    let seen = tokio::task::spawn_blocking(move || {
        // A writer killed inside its transaction, never coming back under its id.
        let first: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
            .set("bootstrap.servers", &b)
            .set("transactional.id", unique_name("txn"))
            .set("transaction.timeout.ms", "5000")
            .create()
            .expect("producer");
        first.init_transactions(Duration::from_secs(30)).unwrap();
        first.begin_transaction().unwrap();
        first
            .send(BaseRecord::<(), str>::to(&t).payload("killed"))
            .unwrap();
        first.flush(Duration::from_secs(10)).unwrap();
        std::mem::forget(first);
        // Another writer's committed transaction behind it.
        let other = transactional_producer(&b, &unique_name("txn"));
        other.begin_transaction().unwrap();
        other
            .send(BaseRecord::<(), str>::to(&t).payload("other"))
            .unwrap();
        other.commit_transaction(Duration::from_secs(30)).unwrap();
        // Apache Kafka aborts it within the timeout and the cleanup interval (10 s by default).
        read_committed(&b, &t, Duration::from_secs(40))
    })
    .await
    .unwrap();
    let kind = env.broker_kind();
    eprintln!(
        "{} read_committed after {:.0} s: {seen:?}",
        kind.name(),
        started.elapsed().as_secs_f64()
    );
    if kind.is_apache_kafka() {
        assert_eq!(seen, ["other"]);
    } else {
        // noida-db 0.2.3 never times an abandoned transaction out: the last stable offset stays
        // behind it, and nothing after it reaches a read_committed reader until a producer with
        // the same transactional id initialises (the test above). The writer's pods keep their
        // transactional id across restarts, so this is harmless to them; the assertion is
        // Apache Kafka's.
        eprintln!(
            "{}: an abandoned transaction is not aborted at its timeout (Apache-Kafka-only assertion; seen {seen:?})",
            kind.name()
        );
    }
}

/// The record producer and the workers produce with the idempotent producer, without pause; a
/// broker restart in the middle must neither lose an acknowledged message nor leave the producer
/// fatally broken (Apache Kafka keeps each producer's sequence state with the log, and fsyncs or
/// replicates before it acknowledges with acks=all).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_producer_carries_on_through_a_broker_restart() {
    let mut env = TestEnv::start_transactional()
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let topic = unique_name("idempotent_conformance");
    env.create_topic(&topic, 1).await.unwrap();
    let producer: rdkafka::producer::FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", env.kafka_bootstrap())
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "60000")
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = {
        let (producer, topic, stop) = (producer.clone(), topic.clone(), stop.clone());
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut failed = Vec::new();
            let mut n = 0u64;
            // Until stopped, or until a send fails (a fatal error fails every later one).
            while !stop.load(std::sync::atomic::Ordering::SeqCst) && failed.is_empty() {
                let batch: Vec<_> = (n..n + 200)
                    .map(|i| {
                        let producer = producer.clone();
                        let topic = topic.clone();
                        async move {
                            let value = i.to_string();
                            let record = rdkafka::producer::FutureRecord::<(), str>::to(&topic)
                                .payload(&value);
                            (i, producer.send(record, Duration::from_secs(60)).await)
                        }
                    })
                    .collect();
                for (i, result) in futures_util::future::join_all(batch).await {
                    match result {
                        Ok(_) => acked.push(i),
                        Err((e, _)) => failed.push((i, e.to_string())),
                    }
                }
                n += 200;
            }
            (acked, failed)
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    env.restart_broker().await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (acked, failed) = sender.await.unwrap();
    let fatal = producer.client().fatal_error();
    let bootstrap = env.kafka_bootstrap().to_owned();
    let (b, t) = (bootstrap.clone(), topic.clone());
    let stored: std::collections::BTreeSet<u64> =
        tokio::task::spawn_blocking(move || read_committed(&b, &t, Duration::from_secs(10)))
            .await
            .unwrap()
            .iter()
            .filter_map(|v| v.parse().ok())
            .collect();
    let lost = acked.iter().filter(|i| !stored.contains(i)).count();
    let kind = env.broker_kind();
    eprintln!(
        "{}: {} acknowledged, {} failed (first: {:?}), {} stored, {lost} acknowledged but lost; fatal error {fatal:?}",
        kind.name(),
        acked.len(),
        failed.len(),
        failed.first(),
        stored.len()
    );
    if kind.is_apache_kafka() || (fatal.is_none() && lost == 0 && failed.is_empty()) {
        assert_eq!(lost, 0);
        assert!(failed.is_empty(), "{:?}", failed.first());
        assert!(fatal.is_none(), "{fatal:?}");
    } else {
        eprintln!(
            "{}: a restart under load breaks the idempotent producer or loses acknowledged messages (Apache-Kafka-only assertion)",
            kind.name()
        );
    }
}
