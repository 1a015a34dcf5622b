//! Creating the writer's topics on a broker of one's own (Strimzi creates the deployed ones).

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use service_kit::KafkaSettings;
use service_kit::kafka::failed;

use super::{CLIENT_ID, LoadError};

/// Creates `topics` (name, partitions) where missing, replication 1.
pub async fn create_topics(kafka: &KafkaSettings, topics: &[(&str, i32)]) -> Result<(), LoadError> {
    let admin: AdminClient<DefaultClientContext> = kafka
        .client_config(CLIENT_ID, &[])
        .create()
        .map_err(failed("creating the Kafka admin client"))?;
    let topics: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|&(name, partitions)| NewTopic::new(name, partitions, TopicReplication::Fixed(1)))
        .collect();
    let results = admin
        .create_topics(&topics, &AdminOptions::new())
        .await
        .map_err(failed("creating topics"))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(LoadError::TopicRefused { topic, code }),
        }
    }
    Ok(())
}
