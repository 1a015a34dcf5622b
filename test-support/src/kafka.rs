//! Fresh topics with unique names, client configuration for the test broker, and reading a topic
//! back to check what a service produced.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::OwnedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::{TestEnv, unique_name};

/// The three topics of the writer, each named uniquely for one test.
#[derive(Debug, Clone)]
pub struct TestTopics {
    /// Where the workers' `pp-output` messages go (`butler-writer` in production).
    pub input: String,
    /// Where `batch-ingested` events go (`butler-writer-ingestion-events`).
    pub events: String,
    /// The dead-letter topic (`butler-writer-dlq`).
    pub dead_letter: String,
}

impl TestEnv {
    /// A client configuration pointing at the test broker, with nothing else set.
    pub fn kafka_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", self.kafka_bootstrap());
        config
    }

    /// Creates the writer's three topics with unique names; the input topic gets `partitions`
    /// partitions, the others one, as in production. They are deleted when this `TestEnv` is
    /// dropped.
    pub async fn fresh_topics(&self, partitions: i32) -> anyhow::Result<TestTopics> {
        let topics = TestTopics {
            input: unique_name("pp_output"),
            events: unique_name("ingestion_events"),
            dead_letter: unique_name("dlq"),
        };
        self.create_topic(&topics.input, partitions).await?;
        self.create_topic(&topics.events, 1).await?;
        self.create_topic(&topics.dead_letter, 1).await?;
        Ok(topics)
    }

    /// Creates one topic and waits until the broker reports it with all its partitions. It is
    /// deleted when this `TestEnv` is dropped.
    pub async fn create_topic(&self, name: &str, partitions: i32) -> anyhow::Result<()> {
        // Before creating it: also deleted if the wait below fails.
        self.delete_at_drop([name]);
        let admin: AdminClient<DefaultClientContext> = self
            .kafka_config()
            .create()
            .context("creating a Kafka admin client")?;
        let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = admin
            .create_topics([&topic], &options)
            .await
            .with_context(|| format!("creating topic {name} on {}", self.kafka_bootstrap()))?;
        for result in results {
            if let Err((topic, code)) = result {
                bail!("the broker refused to create topic {topic}: {code}");
            }
        }
        let consumer: BaseConsumer = self.kafka_config().create()?;
        let name = name.to_owned();
        tokio::task::spawn_blocking(move || wait_for_partitions(&consumer, &name, partitions))
            .await?
    }

    /// Every message of `topic` (all partitions, from the beginning), read without a consumer
    /// group: waits until `expected` messages arrived or `timeout` passed, then returns what it has.
    pub async fn read_topic(
        &self,
        topic: &str,
        expected: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<OwnedMessage>> {
        self.read_topic_isolated(topic, expected, timeout, false)
            .await
    }

    /// [`read_topic`](Self::read_topic) as a `read_committed` reader: only the messages of
    /// committed transactions (and non-transactional ones), up to the last stable offset.
    pub async fn read_topic_committed(
        &self,
        topic: &str,
        expected: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<OwnedMessage>> {
        self.read_topic_isolated(topic, expected, timeout, true)
            .await
    }

    async fn read_topic_isolated(
        &self,
        topic: &str,
        expected: usize,
        timeout: Duration,
        committed: bool,
    ) -> anyhow::Result<Vec<OwnedMessage>> {
        let mut config = self.kafka_config();
        config
            .set("enable.auto.commit", "false")
            .set("group.id", unique_name("reader"))
            .set(
                "isolation.level",
                if committed {
                    "read_committed"
                } else {
                    "read_uncommitted"
                },
            );
        let consumer: BaseConsumer = config.create()?;
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || read_all(&consumer, &topic, expected, timeout)).await?
    }
}

/// Deletes `topics` (best effort, from a `Drop`): a topic already gone is not an error; any other
/// failure is printed, never raised.
pub(crate) fn delete_topics(bootstrap: &str, topics: Vec<String>) {
    if topics.is_empty() {
        return;
    }
    if crate::cleanup::keep() {
        eprintln!(
            "test-support: keeping topics {} ({} is set)",
            topics.join(", "),
            crate::cleanup::KEEP_ENV
        );
        return;
    }
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    let names = topics.clone();
    let result = crate::cleanup::on_own_runtime(Duration::from_secs(15), move || async move {
        let admin: AdminClient<DefaultClientContext> =
            config.create().context("creating a Kafka admin client")?;
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = admin
            .delete_topics(&names, &options)
            .await
            .context("DeleteTopics")?;
        let refused: Vec<String> = results
            .into_iter()
            .filter_map(Result::err)
            .filter(|(_, code)| *code != RDKafkaErrorCode::UnknownTopicOrPartition)
            .map(|(topic, code)| format!("{topic}: {code}"))
            .collect();
        if refused.is_empty() {
            Ok(())
        } else {
            bail!("the broker refused: {}", refused.join(", "))
        }
    });
    if let Err(e) = result {
        eprintln!(
            "test-support: could not delete test topics {} on {bootstrap}: {e:#}",
            topics.join(", ")
        );
    }
}

fn wait_for_partitions(
    consumer: &BaseConsumer,
    topic: &str,
    partitions: i32,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(5))?;
        let ready = metadata.topics().iter().any(|t| {
            t.name() == topic
                && t.error().is_none()
                && t.partitions().len() == usize::try_from(partitions).unwrap_or(0)
        });
        if ready {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "topic {topic} was created but its {partitions} partitions did not appear within 15 s"
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn read_all(
    consumer: &BaseConsumer,
    topic: &str,
    expected: usize,
    timeout: Duration,
) -> anyhow::Result<Vec<OwnedMessage>> {
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut assignment = TopicPartitionList::new();
    for t in metadata.topics().iter().filter(|t| t.name() == topic) {
        for p in t.partitions() {
            assignment.add_partition_offset(topic, p.id(), Offset::Beginning)?;
        }
    }
    if assignment.count() == 0 {
        bail!("topic {topic} does not exist");
    }
    consumer.assign(&assignment)?;
    let deadline = Instant::now() + timeout;
    let mut messages = Vec::new();
    while messages.len() < expected && Instant::now() < deadline {
        if let Some(result) = consumer.poll(Duration::from_millis(100)) {
            messages.push(result.with_context(|| format!("reading {topic}"))?.detach());
        }
    }
    messages.sort_by_key(|m| (m.partition(), m.offset()));
    Ok(messages)
}
