//! The writer service on the real broker and a real registry: messages in, registry rows, batch
//! files, events, dead letters and offsets out; crashes, restarts, outages and several writers.

// Test code: a failed expectation is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use service_kit::ServiceHandle;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use butler_writer::service::faults::{FaultInjector, InjectedFault};
use butler_writer::service::{Service, ServiceError};
use rdkafka::message::Message;
use schema::topics::dead_letter_headers as headers;
use service_kit::metrics::Exposition;
use test_support::TestEnv;
use test_support::messages::{MessageFactory, to_lines};
use test_support::pipeline::{
    committed, emitted, header, http_get, ids_of, produce, reference_lines, registry_datasets,
    wait_for_datasets,
};
use test_support::writer::{env_settings, start};
use test_support::{Fixture, fixture};
use uuid::Uuid;

async fn env() -> TestEnv {
    TestEnv::start().await.unwrap_or_else(|e| panic!("{e:#}"))
}

const REFERENCE_FILES: &[&str] = &[
    "batch_a.jsonl",
    "batch_a_conflict.jsonl",
    "batch_c.jsonl",
    "dupinbatch.jsonl",
    "newrun_sql.jsonl",
    "bench_100_0.jsonl",
    "bench_1000_0.jsonl",
];

async fn stop(service: Service) {
    service.shutdown();
    service.wait().await.expect("a clean stop");
}

#[tokio::test]
async fn reference_messages_land_with_events_files_dead_letters_and_offsets() {
    let Fixture {
        env,
        registry,
        topics,
        dir,
    } = fixture(1).await;

    let mut lines = Vec::new();
    for file in REFERENCE_FILES {
        lines.extend(reference_lines(file));
    }
    let conflicting = ids_of(&reference_lines("batch_a_conflict.jsonl"));
    let expected: BTreeSet<Uuid> = ids_of(&lines).difference(&conflicting).copied().collect();
    // Poison: not JSON, and a message of another type; both dead-lettered, neither blocks.
    lines.insert(3, b"not json at all".to_vec());
    lines.push(br#"{"type":"day-end","day_obs":20260501}"#.to_vec());
    let total = i64::try_from(lines.len()).unwrap();
    produce(env.kafka_bootstrap(), &topics.input, &lines, Some(0)).await;

    let mut settings = env_settings(&env, &registry, &topics, dir.path());
    // Statistics (the consumer-lag gauge) every half second instead of every five.
    settings
        .kafka
        .extra
        .push(("statistics.interval.ms".to_owned(), "500".to_owned()));
    let group = settings.group_id.clone();
    let service = start(settings).await;
    let emitted = wait_for_datasets(
        &env,
        &topics.events,
        dir.path(),
        &expected,
        Duration::from_secs(60),
    )
    .await;

    // Registry: exactly the datasets of the messages that were not rejected.
    let in_registry: BTreeSet<Uuid> = registry_datasets(&registry).await.into_iter().collect();
    assert_eq!(in_registry, expected);
    // Files list only those, never the rejected ones.
    assert_eq!(emitted.datasets, expected);

    // Dead letters: the four conflicting messages and the two poison ones, values unchanged.
    let dead = env
        .read_topic(&topics.dead_letter, 6, Duration::from_secs(20))
        .await
        .expect("dead letters");
    assert_eq!(dead.len(), 6);
    let mut reasons: Vec<String> = dead
        .iter()
        .map(|m| header(m, headers::REASON).expect("reason"))
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            "conflict",
            "conflict",
            "conflict",
            "conflict",
            "invalid",
            "other_message_type"
        ]
    );
    for message in &dead {
        let offset: usize = header(message, headers::SOURCE_OFFSET)
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(message.payload().unwrap(), lines[offset].as_slice());
        assert_eq!(
            header(message, headers::SOURCE_TOPIC).as_deref(),
            Some(topics.input.as_str())
        );
        assert_eq!(
            header(message, headers::SOURCE_PARTITION).as_deref(),
            Some("0")
        );
        assert_eq!(
            header(message, headers::WRITER_VERSION).as_deref(),
            Some(butler_writer::VERSION)
        );
        assert!(!header(message, headers::ERROR).unwrap().is_empty());
    }

    // Offsets: everything consumed is committed.
    let deadline = Instant::now() + Duration::from_secs(10);
    while committed(env.kafka_bootstrap(), &group, &topics.input, 1) != [total] {
        assert!(Instant::now() < deadline, "offsets not committed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The operations endpoints.
    let address = service.http_address();
    let (status, body) = http_get(address, "/").await;
    assert_eq!(status, 200);
    assert!(body.contains("\"name\":\"butler-writer\""), "{body}");
    assert_eq!(http_get(address, "/healthz").await.0, 200);
    let (status, body) = http_get(address, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    let (_, metrics) = http_get(address, "/metrics").await;
    for needle in [
        "butler_writer_batches_total{result=\"committed\"}",
        &format!("butler_writer_datasets_ingested_total {}", expected.len()),
        "butler_writer_messages_rejected_total{reason=\"conflict\"} 4",
        "butler_writer_database_seconds_bucket",
        "butler_writer_produce_to_commit_seconds_count",
        "butler_writer_batch_seconds_count",
    ] {
        assert!(metrics.contains(needle), "{needle} not in\n{metrics}");
    }
    // The lag gauge reaches zero once everything is consumed.
    let lag = format!(
        "butler_writer_consumer_lag{{topic=\"{}\",partition=\"0\"}} 0",
        topics.input
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, metrics) = http_get(address, "/metrics").await;
        if metrics.contains(&lag) {
            break;
        }
        assert!(Instant::now() < deadline, "{lag} not in\n{metrics}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop(service).await;
}

/// Stops the writer dead before it announces its first batch, as a kill there would.
#[derive(Debug)]
struct CrashBeforeAnnounce;

impl FaultInjector for CrashBeforeAnnounce {
    fn before_announce(&self, _announced: u64) -> Result<(), InjectedFault> {
        Err(InjectedFault("crash before the first announce".to_owned()))
    }
}

#[tokio::test]
async fn a_crash_before_the_kafka_commit_is_redelivered_and_nothing_is_doubled() {
    let Fixture {
        env,
        registry,
        topics,
        dir,
    } = fixture(1).await;
    let factory = MessageFactory::load();
    let messages = factory.batch(8_100_000, 60);
    let lines = to_lines(&messages);
    let expected = ids_of(&lines);
    produce(env.kafka_bootstrap(), &topics.input, &lines, Some(0)).await;

    // The first writer ingests a batch, writes its file, and dies before Kafka hears of it.
    let settings = env_settings(&env, &registry, &topics, dir.path());
    let crashing = Service::start_with_faults(settings.clone(), Arc::new(CrashBeforeAnnounce))
        .await
        .expect("the writer starts");
    let result = tokio::time::timeout(Duration::from_secs(60), crashing.wait())
        .await
        .expect("the writer crashes");
    assert!(
        matches!(result, Err(ServiceError::Injected(_))),
        "{result:?}"
    );
    assert!(
        !registry_datasets(&registry).await.is_empty(),
        "the database was written"
    );
    assert!(
        emitted(&env, &topics.events, dir.path())
            .await
            .events
            .is_empty()
    );
    assert_eq!(
        committed(env.kafka_bootstrap(), &settings.group_id, &topics.input, 1),
        [-1]
    );

    // The next writer gets the same messages again: already present, announced, committed.
    let service = start(settings.clone()).await;
    let emitted = wait_for_datasets(
        &env,
        &topics.events,
        dir.path(),
        &expected,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(emitted.datasets, expected);
    let in_registry = registry_datasets(&registry).await;
    assert_eq!(in_registry.len(), expected.len(), "no dataset twice");
    let (_, metrics) = http_get(service.http_address(), "/metrics").await;
    assert!(
        metrics.contains("butler_writer_datasets_already_present_total")
            && !metrics.contains("butler_writer_datasets_already_present_total 0\n"),
        "{metrics}"
    );
    stop(service).await;
    assert_eq!(
        committed(env.kafka_bootstrap(), &settings.group_id, &topics.input, 1),
        [i64::try_from(lines.len()).unwrap()]
    );
}

#[tokio::test]
async fn large_messages_are_batched_by_bytes_and_all_land() {
    let Fixture {
        env,
        registry,
        topics,
        dir,
    } = fixture(1).await;
    let factory = MessageFactory::load();
    // 24 messages of about 800 kB (under librdkafka's default 1 MB message size): each a real
    // message with a large field the parser ignores, as Pydantic does, standing for large
    // regions or many datasets.
    let messages: Vec<serde_json::Value> = factory
        .batch(8_150_000, 72)
        .into_iter()
        .map(|mut m| {
            m["padding"] = serde_json::Value::String("x".repeat(800_000));
            m
        })
        .collect();
    let lines = to_lines(&messages);
    let total: usize = lines.iter().map(Vec::len).sum();
    let mut settings = env_settings(&env, &registry, &topics, dir.path());
    settings.batch.max_bytes = 4 << 20;
    // Long enough that the byte cap, not the wait, closes the batches.
    settings.batch.max_wait = Duration::from_secs(5);
    produce(env.kafka_bootstrap(), &topics.input, &lines, Some(0)).await;
    let service = start(settings).await;
    let emitted = wait_for_datasets(
        &env,
        &topics.events,
        dir.path(),
        &ids_of(&lines),
        Duration::from_secs(120),
    )
    .await;
    assert!(emitted.listings.values().all(|n| *n == 1));
    let metrics = service.metrics().render();
    let batches = metric(&metrics, "butler_writer_batch_messages_count");
    let batched = metric(&metrics, "butler_writer_batch_messages_sum");
    // Each batch closed at the cap: at least total / cap batches, none above the cap plus the
    // message that crossed it.
    assert!(
        batches >= (total / (4 << 20)) as f64 && batched == lines.len() as f64,
        "{batches} batches for {total} bytes\n{metrics}"
    );
    let per_batch = (4 << 20) / lines[0].len() + 1;
    assert!(
        batches >= (lines.len() / per_batch) as f64,
        "{batches} batches of at most {per_batch} messages"
    );
    stop(service).await;
}

/// The value of the first sample of `name` in a Prometheus exposition.
fn metric(exposition: &str, name: &str) -> f64 {
    exposition
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{exposition}"))
}

#[tokio::test]
async fn an_idle_writer_takes_a_message_at_once_and_a_busy_one_lets_batches_fill() {
    let Fixture {
        env,
        registry,
        topics,
        dir,
    } = fixture(1).await;
    let factory = MessageFactory::load();
    // A backlog before the start: one database connection, so batches fill while one is in.
    let backlog = to_lines(&factory.batch(8_210_000, 180));
    produce(env.kafka_bootstrap(), &topics.input, &backlog, Some(0)).await;
    let mut settings = env_settings(&env, &registry, &topics, dir.path());
    // A wait far longer than the test: only eager closing can close a lone message's batch.
    settings.batch.max_wait = Duration::from_secs(60);
    settings.db_concurrency = 1;
    assert!(settings.batch.eager, "eager closing is the default");
    let service = start(settings).await;
    wait_for_datasets(
        &env,
        &topics.events,
        dir.path(),
        &ids_of(&backlog),
        Duration::from_secs(60),
    )
    .await;
    let batches = metric(
        &service.metrics().render(),
        "butler_writer_batch_messages_count",
    );
    assert!(
        batches <= 10.0,
        "{batches} batches for a backlog of {} messages",
        backlog.len()
    );

    // Idle now: a lone message is ingested and announced without waiting for company.
    let lone = to_lines(&factory.batch(8_210_100, 3));
    let sent = Instant::now();
    produce(env.kafka_bootstrap(), &topics.input, &lone, Some(0)).await;
    wait_for_datasets(
        &env,
        &topics.events,
        dir.path(),
        &ids_of(&lone),
        Duration::from_secs(20),
    )
    .await;
    assert!(
        sent.elapsed() < Duration::from_secs(10),
        "a lone message took {:?} with a 60 s batch wait",
        sent.elapsed()
    );
    stop(service).await;
}

#[tokio::test]
async fn a_restart_resumes_from_the_committed_offsets() {
    let Fixture {
        env,
        registry,
        topics,
        dir,
    } = fixture(1).await;
    let factory = MessageFactory::load();
    let first = to_lines(&factory.batch(8_200_000, 30));
    let second = to_lines(&factory.batch(8_200_010, 30));
    let settings = env_settings(&env, &registry, &topics, dir.path());

    produce(env.kafka_bootstrap(), &topics.input, &first, Some(0)).await;
    let service = start(settings.clone()).await;
    let after_first = wait_for_datasets(
        &env,
        &topics.events,
        dir.path(),
        &ids_of(&first),
        Duration::from_secs(60),
    )
    .await;
    stop(service).await;

    produce(env.kafka_bootstrap(), &topics.input, &second, Some(0)).await;
    let service = start(settings).await;
    let mut all = ids_of(&first);
    all.extend(ids_of(&second));
    let emitted = wait_for_datasets(
        &env,
        &topics.events,
        dir.path(),
        &all,
        Duration::from_secs(60),
    )
    .await;
    // The second writer announced only the new messages' datasets: nothing was read twice.
    assert!(
        emitted.listings.values().all(|n| *n == 1),
        "{:?}",
        emitted.listings
    );
    assert!(emitted.events.len() > after_first.events.len());
    stop(service).await;
}

#[tokio::test]
async fn a_database_outage_mid_run_loses_nothing() {
    let Fixture {
        env,
        registry,
        topics,
        dir,
    } = fixture(1).await;
    let factory = MessageFactory::load();

    // The writer reaches the database through a proxy the test can cut.
    let (proxy, proxied) = registry.through_proxy().await.expect("proxy");
    let mut settings = env_settings(&env, &registry, &topics, dir.path());
    settings.butler_repository = proxied.display().to_string();
    settings.database.acquire_timeout = Duration::from_secs(1);
    let service = start(settings).await;

    let before = to_lines(&factory.batch(8_300_000, 30));
    produce(env.kafka_bootstrap(), &topics.input, &before, Some(0)).await;
    wait_for_datasets(
        &env,
        &topics.events,
        dir.path(),
        &ids_of(&before),
        Duration::from_secs(60),
    )
    .await;

    proxy.cut();
    let during = to_lines(&factory.batch(8_300_010, 30));
    produce(env.kafka_bootstrap(), &topics.input, &during, Some(0)).await;
    // Not ready while the database is away, alive all the same.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = http_get(service.http_address(), "/readyz").await;
        if status == 503 && body.contains("\"database\":false") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never reported the outage: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(http_get(service.http_address(), "/healthz").await.0, 200);
    proxy.restore();

    let mut all = ids_of(&before);
    all.extend(ids_of(&during));
    let emitted = wait_for_datasets(
        &env,
        &topics.events,
        dir.path(),
        &all,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(emitted.datasets, all);
    let in_registry = registry_datasets(&registry).await;
    assert_eq!(in_registry.len(), all.len());
    let deadline = Instant::now() + Duration::from_secs(20);
    while http_get(service.http_address(), "/readyz").await.0 != 200 {
        assert!(
            Instant::now() < deadline,
            "not ready again after the outage"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop(service).await;
}

#[tokio::test]
async fn two_writers_share_a_partitioned_topic_and_each_dataset_lands_once() {
    let Fixture {
        env,
        registry,
        topics,
        dir,
    } = fixture(4).await;
    let factory = MessageFactory::load();
    let settings = env_settings(&env, &registry, &topics, dir.path());

    let mut all = BTreeSet::new();
    let first = start(settings.clone()).await;
    for (round, visit) in [8_400_000_i64, 8_400_010].into_iter().enumerate() {
        for partition in 0..4 {
            let lines = to_lines(&factory.batch(visit + i64::from(partition), 30));
            all.extend(ids_of(&lines));
            produce(
                env.kafka_bootstrap(),
                &topics.input,
                &lines,
                Some(partition),
            )
            .await;
        }
        if round == 0 {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    // A second writer joins mid-run: the group rebalances between them.
    let mut second_settings = settings.clone();
    second_settings.transactional_id = test_support::unique_name("txn");
    let second = start(second_settings).await;
    for partition in 0..4 {
        let lines = to_lines(&factory.batch(8_400_020 + i64::from(partition), 30));
        all.extend(ids_of(&lines));
        produce(
            env.kafka_bootstrap(),
            &topics.input,
            &lines,
            Some(partition),
        )
        .await;
    }
    let emitted = wait_for_datasets(
        &env,
        &topics.events,
        dir.path(),
        &all,
        Duration::from_secs(90),
    )
    .await;
    assert_eq!(emitted.datasets, all);
    let in_registry = registry_datasets(&registry).await;
    assert_eq!(
        in_registry.len(),
        all.len(),
        "no dataset twice in the registry"
    );
    stop(first).await;
    stop(second).await;
    let offsets = committed(env.kafka_bootstrap(), &settings.group_id, &topics.input, 4);
    assert!(offsets.iter().all(|o| *o == 30), "{offsets:?}");
}

#[tokio::test]
async fn the_breaker_stops_consuming_instead_of_dead_lettering_a_misconfigured_stream() {
    let Fixture {
        env,
        registry,
        topics,
        dir,
    } = fixture(1).await;
    let factory = MessageFactory::load();
    // Messages of a dataset type the registry has not registered: every one is rejected.
    let mut messages = factory.batch(8_500_000, 60);
    for message in &mut messages {
        for file in message["datasets"].as_array_mut().unwrap() {
            for dataset_ref in file["refs"].as_object_mut().unwrap().values_mut() {
                dataset_ref["dataset_type_name"] = "notRegistered".into();
            }
        }
        message.as_object_mut().unwrap().remove("dataset_types");
    }
    produce(
        env.kafka_bootstrap(),
        &topics.input,
        &to_lines(&messages),
        Some(0),
    )
    .await;
    let mut settings = env_settings(&env, &registry, &topics, dir.path());
    settings.breaker.min_messages = 10;
    settings.breaker.window = 20;
    let service = start(settings.clone()).await;

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = http_get(service.http_address(), "/readyz").await;
        if status == 503 && body.contains("\"breaker_open\":true") {
            assert!(body.contains("unknown_dataset_type"), "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the breaker never opened: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, metrics) = http_get(service.http_address(), "/metrics").await;
    assert!(
        metrics.contains("butler_writer_breaker_open 1"),
        "{metrics}"
    );
    // Nothing was dead-lettered, nothing committed: the stream waits for the fix.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let dead = env
        .read_topic(&topics.dead_letter, 1, Duration::from_secs(1))
        .await
        .expect("dead letters");
    assert!(dead.is_empty());
    assert_eq!(
        committed(env.kafka_bootstrap(), &settings.group_id, &topics.input, 1),
        [-1]
    );
    stop(service).await;
}

#[tokio::test]
async fn a_registry_it_cannot_use_stops_it_with_one_clear_line() {
    let env = env().await;
    let topics = env.fresh_topics(1).await.expect("topics");
    let dir = tempfile::tempdir().expect("dir");
    let missing = dir.path().join("no-repo/butler.yaml");
    let mut settings =
        test_support::writer::settings(env.kafka_bootstrap(), &missing, &topics, dir.path(), false);
    settings.retry.initial = Duration::from_millis(10);
    let error = Service::start(settings).await.expect_err("no repository");
    let text = service_kit::chain(&error);
    assert!(
        text.contains("no-repo/butler.yaml") && !text.contains('\n'),
        "{text}"
    );
}

/// Every committed message of `topic` on the mock cluster (read_committed, no group).
fn read_committed(
    bootstrap: &str,
    topic: &str,
    expected: usize,
    timeout: Duration,
) -> Vec<rdkafka::message::OwnedMessage> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", test_support::unique_name("reader"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .expect("consumer");
    let mut assignment = rdkafka::TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, 0, rdkafka::Offset::Beginning)
        .expect("partition");
    consumer.assign(&assignment).expect("assign");
    let deadline = Instant::now() + timeout;
    let mut messages = Vec::new();
    while messages.len() < expected && Instant::now() < deadline {
        if let Some(result) = consumer.poll(Duration::from_millis(100)) {
            messages.push(result.expect("message").detach());
        }
    }
    messages
}

#[tokio::test]
async fn transactional_delivery_on_librdkafkas_mock_cluster() {
    let env = env().await;
    let registry = env.fresh_registry().await.expect("registry");
    let dir = tempfile::tempdir().expect("dir");
    let mock = rdkafka::mocking::MockCluster::new(3).expect("mock cluster");
    let topics = test_support::TestTopics {
        input: "pp_output".to_owned(),
        events: "ingestion_events".to_owned(),
        dead_letter: "dlq".to_owned(),
    };
    for topic in [&topics.input, &topics.events, &topics.dead_letter] {
        mock.create_topic(topic, 1, 3).expect("topic");
    }
    // The mock cluster does not store transactional offsets (deploy/local/README.md).
    transactional_end_to_end(
        &mock.bootstrap_servers(),
        &registry,
        &topics,
        dir.path(),
        false,
    )
    .await;
}

#[tokio::test]
async fn transactional_delivery_on_a_broker_with_transactions() {
    let env = TestEnv::start_transactional()
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let registry = env.fresh_registry().await.expect("registry");
    let topics = env.fresh_topics(1).await.expect("topics");
    let dir = tempfile::tempdir().expect("dir");
    transactional_end_to_end(env.kafka_bootstrap(), &registry, &topics, dir.path(), true).await;
}

/// The reference messages, conflicts and a broken message through a transactional writer on
/// `bootstrap`: events and dead letters visible to a `read_committed` reader, every dataset
/// once, and (`offsets`) the offsets committed inside the transaction.
async fn transactional_end_to_end(
    bootstrap: &str,
    registry: &test_support::TestRegistry,
    topics: &test_support::TestTopics,
    dir: &std::path::Path,
    offsets: bool,
) {
    let mut lines = reference_lines("batch_a.jsonl");
    lines.extend(reference_lines("batch_a_conflict.jsonl"));
    lines.extend(reference_lines("batch_c.jsonl"));
    lines.push(b"{".to_vec());
    let mut expected = ids_of(&reference_lines("batch_a.jsonl"));
    expected.extend(ids_of(&reference_lines("batch_c.jsonl")));
    produce(bootstrap, &topics.input, &lines, Some(0)).await;

    let settings =
        test_support::writer::settings(bootstrap, &registry.butler_config, topics, dir, true);
    let group = settings.group_id.clone();
    let service = start(settings).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut announced = BTreeSet::new();
    let mut events = 0;
    while !expected.is_subset(&announced) {
        assert!(Instant::now() < deadline, "announced {announced:?}");
        let b = bootstrap.to_owned();
        let t = topics.events.clone();
        let messages = tokio::task::spawn_blocking(move || {
            read_committed(&b, &t, usize::MAX, Duration::from_millis(1500))
        })
        .await
        .expect("read");
        events = messages.len();
        for message in messages {
            let event =
                schema::BatchIngestedEvent::from_json(message.payload().unwrap()).expect("event");
            let file = test_support::pipeline::read_batch_file(dir, &event.batch_file);
            assert_eq!(file.batch_id, event.batch_id);
            announced.extend(file.datasets);
        }
    }
    assert!(events >= 1);
    assert_eq!(announced, expected);
    let (b, t) = (bootstrap.to_owned(), topics.dead_letter.clone());
    let dead =
        tokio::task::spawn_blocking(move || read_committed(&b, &t, 5, Duration::from_secs(30)))
            .await
            .expect("read");
    assert_eq!(dead.len(), 5, "four conflicts and one broken message");
    let in_registry: BTreeSet<Uuid> = registry_datasets(registry).await.into_iter().collect();
    assert_eq!(in_registry, expected);
    stop(service).await;
    if offsets {
        assert_eq!(
            committed(bootstrap, &group, &topics.input, 1),
            [lines.len() as i64],
            "the offsets committed in the transaction"
        );
    }
}

#[tokio::test]
async fn transactional_delivery_on_a_broker_without_transactions_stops_with_a_hint() {
    let env = env().await;
    if env.broker_kind().supports_transactions() {
        return; // Apache Kafka: transactional mode is the normal one there.
    }
    let registry = env.fresh_registry().await.expect("registry");
    let topics = env.fresh_topics(1).await.expect("topics");
    let dir = tempfile::tempdir().expect("dir");
    let settings = test_support::writer::settings(
        env.kafka_bootstrap(),
        &registry.butler_config,
        &topics,
        dir.path(),
        true,
    );
    let error = Service::start(settings).await.expect_err("no transactions");
    let text = service_kit::chain(&error);
    assert!(text.contains("BUTLER_WRITER_DELIVERY=idempotent"), "{text}");
}

/// `GET` with retries while the binary starts.
async fn http_get_when_up(address: std::net::SocketAddr, path: &str) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if tokio::net::TcpStream::connect(address).await.is_ok() {
            return http_get(address, path).await;
        }
        assert!(
            Instant::now() < deadline,
            "the HTTP endpoints never came up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_binary_takes_the_deployed_variables_writes_to_s3_and_stops_on_sigterm() {
    let env = env().await;
    let registry = env.fresh_registry().await.expect("registry");
    let topics = env.fresh_topics(1).await.expect("topics");
    let s3 = test_support::s3::TestS3::start().await.expect("moto");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let address: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let directory = s3.uri(Some("embargo"), "publication/prompt_processing/");
    let group = test_support::unique_name("group");
    let delivery = if env.broker_kind().supports_transactions() {
        "transactional"
    } else {
        "idempotent"
    };
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_butler-writer"))
        .arg("serve")
        .env("BUTLER_REPOSITORY", &registry.butler_config)
        .env("KAFKA_CLUSTER", env.kafka_bootstrap())
        .env("KAFKA_TOPIC", &topics.input)
        .env("KAFKA_OUTPUT_TOPIC", &topics.events)
        .env("OUTPUT_DATASET_LIST_DIRECTORY", &directory)
        // As deployed in production: the run-time dashboard reads the DEBUG timing lines.
        .env("WRITER_DEBUG_LEVEL", "DEBUG")
        .env("BUTLER_WRITER_DEAD_LETTER_TOPIC", &topics.dead_letter)
        .env("BUTLER_WRITER_GROUP_ID", &group)
        .env(
            "BUTLER_WRITER_TRANSACTIONAL_ID",
            test_support::unique_name("txn"),
        )
        .env("BUTLER_WRITER_DELIVERY", delivery)
        .env("BUTLER_WRITER_HTTP_ADDRESS", address.to_string())
        .env("BUTLER_WRITER_LOG_FORMAT", "json")
        .env("BUTLER_WRITER_BATCH_MAX_WAIT_MS", "100")
        .envs(s3.profile_env("embargo"))
        .env_remove("RUST_LOG")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start butler-writer");

    let lines = reference_lines("batch_a.jsonl");
    let expected = ids_of(&lines);
    produce(env.kafka_bootstrap(), &topics.input, &lines, Some(0)).await;
    let (status, body) = http_get_when_up(address, "/").await;
    assert_eq!(status, 200);
    let metadata: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(metadata["name"], "butler-writer");
    assert_eq!(metadata["version"], butler_writer::VERSION);

    // The event names a batch file on S3 listing the batch's datasets.
    let resolver = resources::Resolver::from_vars(s3.profile_env("embargo"));
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut announced = BTreeSet::new();
    while announced != expected {
        assert!(Instant::now() < deadline, "announced {announced:?}");
        let events = env
            .read_topic(&topics.events, usize::MAX, Duration::from_millis(1000))
            .await
            .expect("events");
        for message in events {
            let event =
                schema::BatchIngestedEvent::from_json(message.payload().unwrap()).expect("event");
            let file = resources::ResourcePath::parse(&format!("{directory}{}", event.batch_file))
                .expect("uri")
                .read_with(&resolver)
                .await
                .expect("the batch file is on S3");
            let batch = schema::DatasetBatch::from_json(&file).expect("batch file");
            assert_eq!(batch.batch_id, event.batch_id);
            announced.extend(batch.datasets);
        }
    }

    // SIGTERM: a clean stop within the grace period, offsets committed.
    let pid = child.id().expect("pid");
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let output = tokio::time::timeout(Duration::from_secs(15), child.wait_with_output())
        .await
        .expect("stopped within the grace period")
        .expect("output");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    // JSON logs, one object per line, with the committed batch and the stop.
    for line in stderr.lines() {
        let _: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    }
    assert!(
        stderr.contains("batch committed") && stderr.contains("butler-writer stopped"),
        "{stderr}"
    );
    // At DEBUG, the deployed writer's timing lines, which its run-time dashboard reads, with the
    // seconds as a `duration` field, and none of the libraries' debug lines.
    let timings: Vec<serde_json::Value> = stderr
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["target"] == "timer.lsst.queued_butler_writer.butler")
        .collect();
    let texts: Vec<&str> = timings
        .iter()
        .filter_map(|line| line["message"].as_str())
        .collect();
    let shape = |verb: &str, what: &str| {
        texts.iter().any(|t| {
            t.starts_with(verb)
                && t.contains(what)
                && t.contains(" events: Took ")
                && t.ends_with(" seconds")
        })
    };
    assert!(
        shape("inserted ", " dimension data records from ")
            && shape("ingested ", " datasets from "),
        "{texts:?}"
    );
    assert!(
        timings.iter().all(|line| line["duration"].is_f64()),
        "{timings:?}"
    );
    assert!(
        !stderr.contains("\"target\":\"sqlx"),
        "library debug lines at WRITER_DEBUG_LEVEL=DEBUG"
    );
    assert_eq!(
        committed(env.kafka_bootstrap(), &group, &topics.input, 1),
        [4]
    );
}

#[test]
fn help_documents_every_setting_and_bad_configuration_is_one_line() {
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_butler-writer"))
        .args(["serve", "--help"])
        .env("KAFKA_PASSWORD", "hunter2")
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&help.stdout);
    for variable in [
        "BUTLER_REPOSITORY",
        "KAFKA_CLUSTER",
        "KAFKA_TOPIC",
        "KAFKA_OUTPUT_TOPIC",
        "KAFKA_USERNAME",
        "KAFKA_PASSWORD",
        "KAFKA_DEBUG",
        "OUTPUT_DATASET_LIST_DIRECTORY",
        "WRITER_DEBUG_LEVEL",
        "BUTLER_WRITER_DELIVERY",
        "BUTLER_WRITER_BATCH_MAX_MESSAGES",
        "BUTLER_WRITER_BATCH_MAX_WAIT_MS",
        "BUTLER_WRITER_LOG_FORMAT",
        "BUTLER_WRITER_SHUTDOWN_GRACE_SECONDS",
    ] {
        assert!(text.contains(variable), "{variable} not in --help:\n{text}");
    }
    assert!(!text.contains("hunter2"), "the password shows in --help");

    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_butler-writer"))
        .arg("serve")
        .env("BUTLER_REPOSITORY", "/nowhere")
        .env("KAFKA_CLUSTER", "127.0.0.1:1")
        .env("KAFKA_TOPIC", "in")
        .env("KAFKA_OUTPUT_TOPIC", "out")
        .env("OUTPUT_DATASET_LIST_DIRECTORY", "/tmp/x/")
        .env("KAFKA_USERNAME", "butler-writer")
        .env_remove("KAFKA_PASSWORD")
        .output()
        .expect("run");
    assert_eq!(bad.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("KAFKA_PASSWORD"), "{stderr}");
}

/// Ingests through a nisshi of the test's own that requires SCRAM-SHA-512 (over TLS when `tls`),
/// then checks that a wrong password stops the writer with one line.
async fn authenticated_broker(tls: bool) {
    let env = env().await;
    if env.broker_kind() != test_support::BrokerKind::Nisshi {
        // The authenticated broker is a nisshi of the test's own; a foreign broker's SASL set-up
        // is not ours to create.
        return;
    }
    let registry = env.fresh_registry().await.expect("registry");
    let broker = if tls {
        test_support::sasl::SaslBroker::start_tls("butler-writer", "s3cret").await
    } else {
        test_support::sasl::SaslBroker::start("butler-writer", "s3cret").await
    }
    .unwrap_or_else(|e| panic!("{e:#}"));
    let dir = tempfile::tempdir().expect("dir");
    let topics = test_support::TestTopics {
        input: test_support::unique_name("pp_output"),
        events: test_support::unique_name("events"),
        dead_letter: test_support::unique_name("dlq"),
    };
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> = broker
        .client_config("butler-writer", "s3cret")
        .create()
        .expect("admin");
    let new_topics: Vec<rdkafka::admin::NewTopic<'_>> =
        [&topics.input, &topics.events, &topics.dead_letter]
            .into_iter()
            .map(|t| {
                rdkafka::admin::NewTopic::new(t, 1, rdkafka::admin::TopicReplication::Fixed(1))
            })
            .collect();
    for result in admin
        .create_topics(&new_topics, &rdkafka::admin::AdminOptions::new())
        .await
        .expect("create topics")
    {
        result.expect("topic created");
    }
    let lines = reference_lines("batch_a.jsonl");
    let expected = ids_of(&lines);
    let producer: rdkafka::producer::FutureProducer = broker
        .client_config("butler-writer", "s3cret")
        .create()
        .expect("producer");
    for line in &lines {
        producer
            .send(
                rdkafka::producer::FutureRecord::<(), _>::to(&topics.input)
                    .payload(line.as_slice()),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("delivery");
    }

    let settings_with = |password: &str| {
        let mut settings = test_support::writer::settings(
            broker.bootstrap(),
            &registry.butler_config,
            &topics,
            dir.path(),
            false,
        );
        settings.kafka.credentials = Some((
            "butler-writer".to_owned(),
            secrecy::SecretString::from(password.to_owned()),
        ));
        settings.kafka.security_protocol = if tls {
            service_kit::SecurityProtocol::SaslSsl
        } else {
            service_kit::SecurityProtocol::SaslPlaintext
        };
        settings.kafka.ca_file = broker.ca_file().map(std::path::Path::to_path_buf);
        settings
    };

    // The right password: the batch lands.
    let service = start(settings_with("s3cret")).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let in_registry: BTreeSet<Uuid> = registry_datasets(&registry).await.into_iter().collect();
        let files = std::fs::read_dir(dir.path())
            .map(Iterator::count)
            .unwrap_or(0);
        if in_registry == expected && files > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not ingested through the authenticated broker"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop(service).await;

    // A wrong password: the writer stops with one line, without the password.
    let failing = start(settings_with("not-the-password")).await;
    let result = tokio::time::timeout(Duration::from_secs(60), failing.wait())
        .await
        .expect("the writer stops");
    let Err(error @ ServiceError::KafkaRefused(_)) = result else {
        panic!("expected Kafka to refuse the credentials, got {result:?}");
    };
    let text = service_kit::chain(&error);
    assert!(
        text.to_lowercase().contains("authentication") && !text.contains('\n'),
        "{text}"
    );
    assert!(!text.contains("not-the-password"), "{text}");
}

#[tokio::test]
async fn scram_sha_512_authenticates_and_a_wrong_password_stops_the_writer() {
    authenticated_broker(false).await;
}

#[tokio::test]
async fn scram_sha_512_over_tls_with_a_ca_file() {
    authenticated_broker(true).await;
}
