//! Where the messages of the contract travel: the topic names Prompt Kafka deploys, and the
//! headers a dead letter carries. Every side (the writer that produces them, the consumer and the
//! load generator that read them, the tests) takes them from here.

/// The topic of `pp-output` messages (Prompt Kafka's `butler-writer`).
pub const INPUT_TOPIC: &str = "butler-writer";
/// The topic of `batch-ingested` events.
pub const EVENTS_TOPIC: &str = "butler-writer-ingestion-events";
/// The topic of messages the writer could not ingest.
pub const DEAD_LETTER_TOPIC: &str = "butler-writer-dlq";

/// The headers of a dead letter: its original key and value are kept unchanged, and these say
/// why and where from.
pub mod dead_letter_headers {
    /// The reject reason class (`conflict`, `invalid`, ...).
    pub const REASON: &str = "butler_writer.reason";
    /// What exactly was wrong.
    pub const ERROR: &str = "butler_writer.error";
    /// The topic the message came from.
    pub const SOURCE_TOPIC: &str = "butler_writer.source.topic";
    /// Its partition, in decimal.
    pub const SOURCE_PARTITION: &str = "butler_writer.source.partition";
    /// Its offset, in decimal.
    pub const SOURCE_OFFSET: &str = "butler_writer.source.offset";
    /// The writer version that rejected it.
    pub const WRITER_VERSION: &str = "butler_writer.version";
}
