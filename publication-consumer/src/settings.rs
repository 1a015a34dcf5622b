//! What the consumer runs with, validated. The command line ([`crate::cli`]) builds these from
//! flags and environment variables; tests build them directly.

use std::net::SocketAddr;
use std::time::Duration;

use butler_repository::PoolSettings;
use secrecy::SecretString;
use service_kit::{ConfigError, KafkaSettings, RetrySettings};

use crate::clock::Clock;
use crate::policy::{Origin, Policy};

/// The consumer group: the Prompt Publication Service's, so that the consumer replacing it goes on
/// from its committed offsets (a deployment beside PPS sets a group of its own).
pub const DEFAULT_GROUP_ID: &str = "prompt-publication";
/// The Postgres schema of the consumer's state.
pub const DEFAULT_SCHEMA: &str = "publication_consumer";
/// The only origin the Python PPS accepts.
pub const DEFAULT_ORIGIN: &str = "prompt_processing";
/// How long a batch file that is not there yet is waited for: the writer writes the file before
/// it emits the event, but S3 listings and replicas can lag.
pub const DEFAULT_BATCH_FILE_WAIT_SECONDS: f64 = 600.0;

/// Everything the consumer runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The registry's `butler.yaml` (or its directory), local or `s3://`: where the registry
    /// database is and which schema holds it. Read-only queries only.
    pub butler_repository: String,
    /// How to reach the broker (shared with the writer: SCRAM-SHA-512, TLS).
    pub kafka: KafkaSettings,
    /// The topic of `batch-ingested` events.
    pub topic: String,
    /// The consumer group.
    pub group_id: String,
    /// The directory the writer writes batch files to (`OUTPUT_DATASET_LIST_DIRECTORY`); an
    /// event's `batch_file` is relative to it unless it is itself an absolute path or URI.
    pub batch_directory: String,
    /// The state database URL (it may hold a password, hence secret); the registry's database
    /// when `None`.
    pub database_url: Option<SecretString>,
    /// The Postgres schema of the consumer's state.
    pub schema: String,
    /// The db-auth file for database credentials and the size of each pool (state, registry).
    pub database: PoolSettings,
    /// The release policy: per (origin, dataset type), the embargo, publication and retention.
    pub policy: Policy,
    /// The event origins accepted, each one the policy knows; events of another origin are
    /// recorded as failed and skipped.
    pub origins: Vec<String>,
    /// How long a missing or unreadable batch file is retried before the event is recorded as
    /// failed and skipped.
    pub batch_file_wait: Duration,
    /// Backoff for database, registry, storage and broker retries (which never give up, except
    /// for a missing batch file).
    pub retry: RetrySettings,
    /// Address of the HTTP API and the operations endpoints.
    pub http_address: SocketAddr,
    /// How long a shutdown may take to finish the event in hand.
    pub shutdown_grace: Duration,
    /// "Now", for the embargo; tests move it.
    pub clock: Clock,
    /// `prompt_prep`'s `butler.yaml` (or directory): where released datasets are copied. The
    /// transfer tasks run only when it is set.
    pub prompt_prep_repository: Option<String>,
    /// `/repo/main`'s `butler.yaml` (or directory): where `prompt_prep`'s files are registered
    /// in place; needs `prompt_prep_repository`.
    pub repo_main_repository: Option<String>,
    /// The Google `prompt` repository's `butler.yaml` (or directory): where the types published
    /// to the public are registered in place, sharing `prompt_prep`'s files, and tagged; needs
    /// `prompt_prep_repository`.
    pub google_int_repository: Option<String>,
    /// How the transfer tasks run.
    pub tasks: crate::tasks::TaskSettings,
    /// Where application metrics events go (Sasquatch); `None`: off.
    pub metrics: Option<app_metrics::MetricsSettings>,
}

impl Settings {
    /// Settings with the defaults of `publication-consumer serve` for everything but the places.
    pub fn new(
        butler_repository: impl Into<String>,
        kafka: KafkaSettings,
        batch_directory: impl Into<String>,
    ) -> Self {
        Self {
            butler_repository: butler_repository.into(),
            kafka,
            topic: schema::topics::EVENTS_TOPIC.to_owned(),
            group_id: DEFAULT_GROUP_ID.to_owned(),
            batch_directory: batch_directory.into(),
            database_url: None,
            schema: DEFAULT_SCHEMA.to_owned(),
            database: PoolSettings::default(),
            policy: Policy::deployed(),
            origins: vec![DEFAULT_ORIGIN.to_owned()],
            batch_file_wait: Duration::from_secs_f64(DEFAULT_BATCH_FILE_WAIT_SECONDS),
            retry: RetrySettings::default(),
            http_address: SocketAddr::from(([0, 0, 0, 0], 8080)),
            shutdown_grace: Duration::from_secs(10),
            clock: Clock::system(),
            metrics: None,
            prompt_prep_repository: None,
            repo_main_repository: None,
            google_int_repository: None,
            tasks: crate::tasks::TaskSettings::default(),
        }
    }

    /// Checks what can be checked without the network; the message names what to change.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.kafka.validate()?;
        if let Some(metrics) = &self.metrics {
            metrics.validate()?;
        }
        if self.topic.is_empty() {
            return Err(ConfigError::new("KAFKA_TOPIC is empty"));
        }
        if self.group_id.is_empty() {
            return Err(ConfigError::new("KAFKA_GROUP_ID is empty"));
        }
        validate_schema(&self.schema)?;
        if self.origins.is_empty() || self.origins.iter().any(String::is_empty) {
            return Err(ConfigError::new(
                "PUBLICATION_ORIGINS needs at least one non-empty origin",
            ));
        }
        if let Some(unknown) = self.origins.iter().find(|o| Origin::from_name(o).is_none()) {
            return Err(ConfigError::new(format!(
                "PUBLICATION_ORIGINS: unknown origin {unknown:?} (known: {})",
                Origin::ALL.map(Origin::name).join(", ")
            )));
        }
        if !self.retry.is_valid() {
            return Err(ConfigError::new(
                "PUBLICATION_RETRY_INITIAL_MS must be above 0 and at most PUBLICATION_RETRY_MAX_MS",
            ));
        }
        if self.database.max_connections < 2 {
            return Err(ConfigError::new(
                "PUBLICATION_DB_MAX_CONNECTIONS must be at least 2",
            ));
        }
        if self.repo_main_repository.is_some() && self.prompt_prep_repository.is_none() {
            return Err(ConfigError::new(
                "PUBLICATION_REPO_MAIN_REPOSITORY needs PUBLICATION_PROMPT_PREP_REPOSITORY: /repo/main registers prompt_prep's files",
            ));
        }
        if self.google_int_repository.is_some() && self.prompt_prep_repository.is_none() {
            return Err(ConfigError::new(
                "PUBLICATION_GOOGLE_INT_REPOSITORY needs PUBLICATION_PROMPT_PREP_REPOSITORY: the Google repository registers prompt_prep's files",
            ));
        }
        if self.google_int_repository.is_some() && self.tasks.tagged_collection.trim().is_empty() {
            return Err(ConfigError::new(
                "PUBLICATION_GOOGLE_TAGGED_COLLECTION must name the Google repository's TAGGED collection",
            ));
        }
        if self.tasks.unembargo_chunk == 0 || self.tasks.repo_main_chunk == 0 {
            return Err(ConfigError::new(
                "PUBLICATION_UNEMBARGO_CHUNK must be at least 1",
            ));
        }
        resources::ResourcePath::parse(&self.batch_directory).map_err(|e| {
            ConfigError::caused_by(
                format!(
                    "OUTPUT_DATASET_LIST_DIRECTORY {} is not a usable location",
                    self.batch_directory
                ),
                e,
            )
        })?;
        Ok(())
    }
}

/// Refuses a `PUBLICATION_SCHEMA` that is not a plain identifier.
pub fn validate_schema(schema: &str) -> Result<(), ConfigError> {
    if is_identifier(schema) {
        Ok(())
    } else {
        Err(ConfigError::new(format!(
            "PUBLICATION_SCHEMA {schema:?} is not a plain Postgres identifier (lowercase letters, digits, _)"
        )))
    }
}

/// A schema name we can interpolate into SQL without quoting surprises.
pub fn is_identifier(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_later_repository_without_prompt_prep_is_refused() {
        let mut settings = Settings::new(
            "/repo/embargo",
            KafkaSettings::plaintext("localhost:9092"),
            "/batches/",
        );
        settings.google_int_repository = Some("/repo/google".into());
        let error = settings.validate().expect_err("no prompt_prep").to_string();
        assert!(
            error.contains("PUBLICATION_GOOGLE_INT_REPOSITORY needs"),
            "{error}"
        );
        settings.prompt_prep_repository = Some("/repo/prep".into());
        settings.tasks.tagged_collection = " ".into();
        let error = settings.validate().expect_err("no collection").to_string();
        assert!(
            error.contains("PUBLICATION_GOOGLE_TAGGED_COLLECTION"),
            "{error}"
        );
        settings.tasks.tagged_collection = "Prompt/Available/Outputs".into();
        settings.validate().expect("valid");
    }

    #[test]
    fn schema_names_are_plain_identifiers() {
        assert!(is_identifier("publication_consumer"));
        assert!(is_identifier("_x1"));
        assert!(!is_identifier("1x"));
        assert!(!is_identifier("Public"));
        assert!(!is_identifier("a;drop"));
        assert!(!is_identifier(""));
    }
}
