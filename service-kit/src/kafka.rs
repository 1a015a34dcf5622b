//! Where the broker is and how a client authenticates: one [`KafkaSettings`] for every client of
//! every service, and the librdkafka error codes that no retry heals.

use std::path::PathBuf;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers, Message};
use secrecy::{ExposeSecret, SecretString};

use crate::errors::ConfigError;

/// librdkafka's `security.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SecurityProtocol {
    /// No TLS, no authentication.
    Plaintext,
    /// TLS, no authentication.
    Ssl,
    /// SCRAM-SHA-512 without TLS (Prompt Kafka inside the cluster).
    SaslPlaintext,
    /// SCRAM-SHA-512 over TLS.
    SaslSsl,
}

impl SecurityProtocol {
    /// The value librdkafka takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::Ssl => "ssl",
            Self::SaslPlaintext => "sasl_plaintext",
            Self::SaslSsl => "sasl_ssl",
        }
    }

    fn uses_sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }

    fn uses_tls(self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }
}

/// The names a service's broker settings go by (its environment variables), so that an error
/// names what the operator set: the writer reads `KAFKA_USERNAME`, a worker
/// `BUTLER_WRITER_KAFKA_USERNAME`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KafkaVariables {
    /// The bootstrap servers.
    pub cluster: &'static str,
    /// The SCRAM user.
    pub username: &'static str,
    /// The SCRAM password.
    pub password: &'static str,
    /// `security.protocol`.
    pub security_protocol: &'static str,
    /// The CA file.
    pub ca_file: &'static str,
}

impl KafkaVariables {
    /// Names for settings built in code rather than from the environment.
    pub const IN_CODE: Self = Self {
        cluster: "the bootstrap servers",
        username: "the Kafka username",
        password: "the Kafka password",
        security_protocol: "the security protocol",
        ca_file: "the Kafka CA file",
    };
}

/// Where the broker is and how to authenticate.
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    /// `bootstrap.servers`.
    pub bootstrap_servers: String,
    /// SCRAM-SHA-512 user and password, both or neither.
    pub credentials: Option<(String, SecretString)>,
    /// `security.protocol`.
    pub security_protocol: SecurityProtocol,
    /// CA certificate file for TLS (`ssl.ca.location`); the system's store when absent.
    pub ca_file: Option<PathBuf>,
    /// librdkafka `debug=all` (the deployed writer's `KAFKA_DEBUG=1`), for the clients a service
    /// turns it on for.
    pub debug: bool,
    /// Extra librdkafka properties for every client, applied last.
    pub extra: Vec<(String, String)>,
    /// What the settings are called where they came from, for error messages.
    pub variables: KafkaVariables,
}

impl KafkaSettings {
    /// Plaintext, no credentials.
    pub fn plaintext(bootstrap_servers: impl Into<String>) -> Self {
        Self {
            bootstrap_servers: bootstrap_servers.into(),
            credentials: None,
            security_protocol: SecurityProtocol::Plaintext,
            ca_file: None,
            debug: false,
            extra: Vec::new(),
            variables: KafkaVariables::IN_CODE,
        }
    }

    /// Settings from what a command line gives: user and password go together; without an
    /// explicit protocol, credentials mean SCRAM-SHA-512 (`sasl_plaintext`, or `sasl_ssl` with a
    /// CA file) and none mean `plaintext` (`ssl` with a CA file). Checked with
    /// [`validate`](Self::validate); the error names the variables in `variables`.
    pub fn from_parts(
        bootstrap_servers: String,
        username: Option<String>,
        password: Option<SecretString>,
        security_protocol: Option<SecurityProtocol>,
        ca_file: Option<PathBuf>,
        variables: KafkaVariables,
    ) -> Result<Self, ConfigError> {
        let credentials = match (username, password) {
            (Some(user), Some(password)) => Some((user, password)),
            (None, None) => None,
            _ => {
                return Err(ConfigError::new(format!(
                    "{} and {} go together: set both or neither",
                    variables.username, variables.password
                )));
            }
        };
        let security_protocol =
            security_protocol.unwrap_or(match (credentials.is_some(), ca_file.is_some()) {
                (true, false) => SecurityProtocol::SaslPlaintext,
                (true, true) => SecurityProtocol::SaslSsl,
                (false, false) => SecurityProtocol::Plaintext,
                (false, true) => SecurityProtocol::Ssl,
            });
        let settings = Self {
            bootstrap_servers,
            credentials,
            security_protocol,
            ca_file,
            debug: false,
            extra: Vec::new(),
            variables,
        };
        settings.validate()?;
        Ok(settings)
    }

    /// A client's configuration: the connection and authentication every client shares, its
    /// `client.id`, then the client's own `properties`, then [`extra`](Self::extra), which wins
    /// over both.
    pub fn client_config(&self, client_id: &str, properties: &[(&str, &str)]) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.bootstrap_servers)
            .set("security.protocol", self.security_protocol.as_str())
            .set("client.id", client_id);
        if let Some((user, password)) = &self.credentials {
            config
                .set("sasl.mechanism", "SCRAM-SHA-512")
                .set("sasl.username", user)
                .set("sasl.password", password.expose_secret());
        }
        if let Some(ca) = &self.ca_file {
            config.set("ssl.ca.location", ca.display().to_string());
        }
        for (key, value) in properties {
            config.set(*key, *value);
        }
        for (key, value) in &self.extra {
            config.set(key, value);
        }
        config
    }

    /// A producer's configuration: [`client_config`](Self::client_config) with the idempotent
    /// producer (no duplicate and no reordering on a retried send), every replica's
    /// acknowledgement, and 5 ms of lingering to batch a burst of sends, then `properties`.
    pub fn producer_config(&self, client_id: &str, properties: &[(&str, &str)]) -> ClientConfig {
        let mut all: Vec<(&str, &str)> = vec![
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("linger.ms", "5"),
        ];
        all.extend_from_slice(properties);
        self.client_config(client_id, &all)
    }

    /// Checks that the protocol and the credentials agree and that a CA file exists.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let names = self.variables;
        if self.bootstrap_servers.trim().is_empty() {
            return Err(ConfigError::new(format!("{} is empty", names.cluster)));
        }
        if self.security_protocol.uses_sasl() != self.credentials.is_some() {
            return Err(ConfigError::new(if self.credentials.is_some() {
                format!(
                    "Kafka credentials are set but the security protocol is {}: use sasl_plaintext or sasl_ssl",
                    self.security_protocol.as_str()
                )
            } else {
                format!(
                    "the security protocol {} needs {} and {}",
                    self.security_protocol.as_str(),
                    names.username,
                    names.password
                )
            }));
        }
        if self.ca_file.is_some() && !self.security_protocol.uses_tls() {
            return Err(ConfigError::new(format!(
                "{} is set but the security protocol {} does not use TLS",
                names.ca_file,
                self.security_protocol.as_str()
            )));
        }
        if let Some(ca) = &self.ca_file
            && !ca.is_file()
        {
            return Err(ConfigError::new(format!(
                "{} {} does not exist",
                names.ca_file,
                ca.display()
            )));
        }
        Ok(())
    }
}

/// Errors that no retry will heal: the credentials or the ACLs are wrong, the configuration is
/// refused, or another client took over this one's transactional id or static membership.
pub fn is_fatal_code(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::Authentication
            | RDKafkaErrorCode::SaslAuthenticationFailed
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::GroupAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed
            | RDKafkaErrorCode::TransactionalIdAuthorizationFailed
            | RDKafkaErrorCode::UnsupportedSASLMechanism
            | RDKafkaErrorCode::IllegalSASLState
            | RDKafkaErrorCode::InvalidConfig
            | RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::Fenced
            // Another consumer took this one's group.instance.id: this process is the zombie.
            | RDKafkaErrorCode::FencedInstanceId
            // librdkafka raised a fatal error; the client is unusable from here on.
            | RDKafkaErrorCode::Fatal
    )
}

/// The value of header `name` of a message, as text (a dead letter's reason, say).
pub fn header_text(message: &impl Message, name: &str) -> Option<String> {
    message
        .headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// A request to the broker that failed.
#[derive(Debug, thiserror::Error)]
pub enum KafkaCallError {
    /// The broker refused or did not answer.
    #[error("{doing}")]
    Failed {
        /// What was being done ("reading the metadata of butler-writer").
        doing: String,
        /// librdkafka's error.
        #[source]
        source: KafkaError,
    },
    /// The topic does not exist.
    #[error("topic {0} does not exist (it has no partitions)")]
    NoTopic(String),
}

/// `.map_err(failed("what was being done"))` on a librdkafka result.
pub fn failed(doing: impl Into<String>) -> impl FnOnce(KafkaError) -> KafkaCallError {
    let doing = doing.into();
    move |source| KafkaCallError::Failed { doing, source }
}

/// The partitions of `topic`, from the broker's metadata; an error when it has none.
pub fn partitions_of<X: ConsumerContext + 'static>(
    client: &impl Consumer<X>,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<i32>, KafkaCallError> {
    let metadata = client
        .fetch_metadata(Some(topic), timeout)
        .map_err(failed(format!("reading the metadata of {topic}")))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(KafkaCallError::NoTopic(topic.to_owned()));
    }
    Ok(partitions)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WORKER: KafkaVariables = KafkaVariables {
        cluster: "BUTLER_WRITER_KAFKA_CLUSTER",
        username: "BUTLER_WRITER_KAFKA_USERNAME",
        password: "BUTLER_WRITER_KAFKA_PASSWORD",
        security_protocol: "RECORD_PRODUCER_KAFKA_SECURITY_PROTOCOL",
        ca_file: "RECORD_PRODUCER_KAFKA_CA_FILE",
    };

    fn parts(
        user: Option<&str>,
        password: Option<&str>,
        protocol: Option<SecurityProtocol>,
    ) -> Result<KafkaSettings, ConfigError> {
        KafkaSettings::from_parts(
            "broker:9092".to_owned(),
            user.map(str::to_owned),
            password.map(|p| SecretString::from(p.to_owned())),
            protocol,
            None,
            WORKER,
        )
    }

    #[test]
    fn credentials_pair_and_errors_name_the_services_variables() {
        let error = parts(Some("u"), None, None).unwrap_err().to_string();
        assert_eq!(
            error,
            "BUTLER_WRITER_KAFKA_USERNAME and BUTLER_WRITER_KAFKA_PASSWORD go together: set both or neither"
        );
        let error = parts(None, None, Some(SecurityProtocol::SaslSsl))
            .unwrap_err()
            .to_string();
        assert!(error.contains("BUTLER_WRITER_KAFKA_USERNAME"), "{error}");
        let settings = parts(Some("u"), Some("hunter2"), None).unwrap();
        assert_eq!(settings.security_protocol, SecurityProtocol::SaslPlaintext);
        assert!(!format!("{settings:?}").contains("hunter2"));
    }

    #[test]
    fn the_client_id_is_the_callers_and_extra_properties_win() {
        let mut settings = KafkaSettings::plaintext("b:1");
        settings.extra = vec![("linger.ms".into(), "7".into())];
        let config = settings.client_config("record-producer", &[("linger.ms", "5")]);
        assert_eq!(config.get("client.id"), Some("record-producer"));
        assert_eq!(config.get("linger.ms"), Some("7"));
    }
}
