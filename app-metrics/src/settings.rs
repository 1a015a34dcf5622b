//! Where metrics events go, from the variables Rubin's services use for them (`METRICS_*`,
//! `SCHEMA_MANAGER_*`), plus the metrics broker's own `METRICS_KAFKA_*`: Sasquatch is another
//! Kafka cluster than the one the service works with, so its settings never share a name with
//! the service's `KAFKA_*`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use secrecy::SecretString;
use service_kit::cli::{parse_secret, seconds};
use service_kit::{ConfigError, KafkaSettings, KafkaVariables, SecurityProtocol};

/// The topic prefix Sasquatch's app-metrics chart creates topics under.
pub const DEFAULT_TOPIC_PREFIX: &str = "lsst.square.metrics.events";

/// How long publishing pauses after the schema registry or the broker failed (Safir's wait).
pub const DEFAULT_BACKOFF_SECONDS: f64 = 300.0;

/// Events waiting to be sent; more are dropped and counted.
pub const DEFAULT_QUEUE_CAPACITY: usize = 1000;

const VARIABLES: KafkaVariables = KafkaVariables {
    cluster: "METRICS_KAFKA_BOOTSTRAP_SERVERS",
    username: "METRICS_KAFKA_SASL_USERNAME",
    password: "METRICS_KAFKA_SASL_PASSWORD",
    security_protocol: "METRICS_KAFKA_SECURITY_PROTOCOL",
    ca_file: "METRICS_KAFKA_CLUSTER_CA_PATH",
};

/// The metrics flags of a service's command line (flatten into its `serve` arguments).
#[derive(Debug, Clone, Args)]
pub struct MetricsArgs {
    /// Send application metrics events to Sasquatch (`true`/`false`).
    #[arg(long, env = "METRICS_ENABLED", default_value = "false", action = clap::ArgAction::Set, value_parser = parse_bool)]
    pub metrics_enabled: bool,

    /// The application name in events and in the topic name, an Avro name (letters, digits,
    /// `_`; the service's name without dashes by default).
    #[arg(long, env = "METRICS_APPLICATION")]
    pub metrics_application: Option<String>,

    /// The events topic is `<prefix>.<application>`.
    #[arg(long, env = "METRICS_EVENTS_TOPIC_PREFIX", default_value = DEFAULT_TOPIC_PREFIX)]
    pub metrics_events_topic_prefix: String,

    /// The Confluent-compatible schema registry (Sasquatch's), `http://host:port`.
    #[arg(long, env = "SCHEMA_MANAGER_REGISTRY_URL")]
    pub schema_manager_registry_url: Option<String>,

    /// A suffix for every registered subject (for experiments in development).
    #[arg(long, env = "SCHEMA_MANAGER_SUFFIX", default_value = "")]
    pub schema_manager_suffix: String,

    /// The metrics broker's bootstrap servers (Sasquatch's Kafka).
    #[arg(long, env = "METRICS_KAFKA_BOOTSTRAP_SERVERS")]
    pub metrics_kafka_bootstrap_servers: Option<String>,

    /// `PLAINTEXT`, `SSL`, `SASL_PLAINTEXT` or `SASL_SSL` (Strimzi's KafkaAccess secret's
    /// `securityProtocol`); by default from what else is set.
    #[arg(long, env = "METRICS_KAFKA_SECURITY_PROTOCOL", value_parser = parse_protocol)]
    pub metrics_kafka_security_protocol: Option<SecurityProtocol>,

    /// SCRAM-SHA-512 user for the metrics broker.
    #[arg(long, env = "METRICS_KAFKA_SASL_USERNAME")]
    pub metrics_kafka_sasl_username: Option<String>,

    /// SCRAM-SHA-512 password for the metrics broker (never printed).
    #[arg(long, env = "METRICS_KAFKA_SASL_PASSWORD", hide_env_values = true, value_parser = parse_secret)]
    pub metrics_kafka_sasl_password: Option<SecretString>,

    /// The metrics broker's CA certificate (PEM).
    #[arg(long, env = "METRICS_KAFKA_CLUSTER_CA_PATH")]
    pub metrics_kafka_cluster_ca_path: Option<PathBuf>,

    /// Client certificate (PEM) for TLS client authentication (Sasquatch's app-metrics users).
    #[arg(long, env = "METRICS_KAFKA_CLIENT_CERT_PATH")]
    pub metrics_kafka_client_cert_path: Option<PathBuf>,

    /// The client certificate's key (PEM).
    #[arg(long, env = "METRICS_KAFKA_CLIENT_KEY_PATH")]
    pub metrics_kafka_client_key_path: Option<PathBuf>,

    /// Events waiting to be sent at most; more are dropped and counted.
    #[arg(long, env = "METRICS_QUEUE_CAPACITY", default_value_t = DEFAULT_QUEUE_CAPACITY)]
    pub metrics_queue_capacity: usize,

    /// Seconds publishing pauses (dropping and counting events) after a failure.
    #[arg(long, env = "METRICS_BACKOFF_SECONDS", default_value_t = DEFAULT_BACKOFF_SECONDS)]
    pub metrics_backoff_seconds: f64,
}

/// Where a service's events go.
#[derive(Debug, Clone)]
pub struct MetricsSettings {
    /// The application name (an Avro name).
    pub application: String,
    /// The topic prefix.
    pub topic_prefix: String,
    /// The schema registry's URL.
    pub registry_url: String,
    /// A suffix for every subject.
    pub subject_suffix: String,
    /// The metrics broker.
    pub kafka: KafkaSettings,
    /// Events waiting to be sent at most.
    pub queue_capacity: usize,
    /// The pause after a failure.
    pub backoff: Duration,
}

impl MetricsArgs {
    /// The settings, or `None` when metrics are off; `default_application` names the service
    /// when `METRICS_APPLICATION` is not set.
    pub fn into_settings(
        self,
        default_application: &str,
    ) -> Result<Option<MetricsSettings>, ConfigError> {
        if !self.metrics_enabled {
            return Ok(None);
        }
        let required = |value: Option<String>, name: &str| {
            value.filter(|v| !v.trim().is_empty()).ok_or_else(|| {
                ConfigError::new(format!("METRICS_ENABLED is true but {name} is not set"))
            })
        };
        let registry_url = required(
            self.schema_manager_registry_url,
            "SCHEMA_MANAGER_REGISTRY_URL",
        )?;
        let servers = required(self.metrics_kafka_bootstrap_servers, VARIABLES.cluster)?;
        let protocol = self.metrics_kafka_security_protocol.or(
            match (
                &self.metrics_kafka_client_cert_path,
                &self.metrics_kafka_sasl_username,
            ) {
                (Some(_), None) => Some(SecurityProtocol::Ssl),
                _ => None,
            },
        );
        let mut kafka = KafkaSettings::from_parts(
            servers,
            self.metrics_kafka_sasl_username,
            self.metrics_kafka_sasl_password,
            protocol,
            self.metrics_kafka_cluster_ca_path,
            VARIABLES,
        )?;
        match (
            self.metrics_kafka_client_cert_path,
            self.metrics_kafka_client_key_path,
        ) {
            (Some(cert), Some(key)) => {
                if kafka.security_protocol != SecurityProtocol::Ssl
                    && kafka.security_protocol != SecurityProtocol::SaslSsl
                {
                    return Err(ConfigError::new(
                        "METRICS_KAFKA_CLIENT_CERT_PATH is set but the metrics broker's security protocol does not use TLS",
                    ));
                }
                for (path, name) in [
                    (&cert, "METRICS_KAFKA_CLIENT_CERT_PATH"),
                    (&key, "METRICS_KAFKA_CLIENT_KEY_PATH"),
                ] {
                    if !path.is_file() {
                        return Err(ConfigError::new(format!(
                            "{name}: {} is not a readable file",
                            path.display()
                        )));
                    }
                }
                kafka.extra.push((
                    "ssl.certificate.location".to_owned(),
                    cert.display().to_string(),
                ));
                kafka
                    .extra
                    .push(("ssl.key.location".to_owned(), key.display().to_string()));
            }
            (None, None) => {}
            _ => {
                return Err(ConfigError::new(
                    "METRICS_KAFKA_CLIENT_CERT_PATH and METRICS_KAFKA_CLIENT_KEY_PATH go together: set both or neither",
                ));
            }
        }
        let settings = MetricsSettings {
            application: self
                .metrics_application
                .unwrap_or_else(|| default_application.to_owned()),
            topic_prefix: self.metrics_events_topic_prefix,
            registry_url,
            subject_suffix: self.schema_manager_suffix,
            kafka,
            queue_capacity: self.metrics_queue_capacity,
            backoff: seconds(self.metrics_backoff_seconds, "METRICS_BACKOFF_SECONDS")?,
        };
        settings.validate()?;
        Ok(Some(settings))
    }
}

impl MetricsSettings {
    /// Settings for a plaintext metrics broker (tests, the local stack).
    pub fn plaintext(
        application: impl Into<String>,
        topic_prefix: impl Into<String>,
        registry_url: impl Into<String>,
        bootstrap_servers: impl Into<String>,
    ) -> Self {
        Self {
            application: application.into(),
            topic_prefix: topic_prefix.into(),
            registry_url: registry_url.into(),
            subject_suffix: String::new(),
            kafka: KafkaSettings::plaintext(bootstrap_servers),
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            backoff: Duration::from_secs_f64(DEFAULT_BACKOFF_SECONDS),
        }
    }

    /// The events topic, `<prefix>.<application>`, which is also every event's Avro namespace.
    pub fn topic(&self) -> String {
        format!("{}.{}", self.topic_prefix, self.application)
    }

    /// The schema-registry subject of an event: `<topic>.<event><suffix>`.
    pub fn subject(&self, event: &str) -> String {
        format!("{}.{event}{}", self.topic(), self.subject_suffix)
    }

    /// Checks what Avro and the registry need: the topic is an Avro namespace, so the prefix and
    /// the application are dot-separated Avro names (no dashes).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !is_avro_name(&self.application) {
            return Err(ConfigError::new(format!(
                "METRICS_APPLICATION {:?} is not an Avro name (letters, digits and _, not starting with a digit): it is part of every event's Avro namespace",
                self.application
            )));
        }
        if !self.topic_prefix.split('.').all(is_avro_name) {
            return Err(ConfigError::new(format!(
                "METRICS_EVENTS_TOPIC_PREFIX {:?} is not a dotted Avro namespace (names of letters, digits and _ joined by dots)",
                self.topic_prefix
            )));
        }
        if !(self.registry_url.starts_with("http://") || self.registry_url.starts_with("https://"))
        {
            return Err(ConfigError::new(format!(
                "SCHEMA_MANAGER_REGISTRY_URL {:?} is not an http:// or https:// URL",
                self.registry_url
            )));
        }
        if self.queue_capacity == 0 {
            return Err(ConfigError::new(
                "METRICS_QUEUE_CAPACITY must be at least 1",
            ));
        }
        self.kafka.validate()
    }
}

fn is_avro_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `true`/`false`, `1`/`0`, `yes`/`no`, any case (clap value parser).
pub fn parse_bool(text: &str) -> Result<bool, ConfigError> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" | "" => Ok(false),
        other => Err(ConfigError::new(format!(
            "expected true or false, got {other:?}"
        ))),
    }
}

/// A security protocol as librdkafka, Strimzi or Safir spell it (`SASL_SSL`, `sasl-ssl`...).
pub fn parse_protocol(text: &str) -> Result<SecurityProtocol, ConfigError> {
    match text.trim().to_ascii_lowercase().replace('-', "_").as_str() {
        "plaintext" => Ok(SecurityProtocol::Plaintext),
        "ssl" => Ok(SecurityProtocol::Ssl),
        "sasl_plaintext" => Ok(SecurityProtocol::SaslPlaintext),
        "sasl_ssl" => Ok(SecurityProtocol::SaslSsl),
        other => Err(ConfigError::new(format!(
            "unknown security protocol {other:?}: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        metrics: MetricsArgs,
    }

    fn parse(args: &[&str]) -> Result<Option<MetricsSettings>, String> {
        let cli = Cli::try_parse_from(std::iter::once("x").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        cli.metrics
            .into_settings("butlerwriter")
            .map_err(|e| e.to_string())
    }

    #[test]
    fn off_by_default_and_nothing_else_is_needed() {
        assert!(matches!(parse(&[]), Ok(None)));
    }

    #[test]
    fn on_needs_a_registry_and_a_broker() {
        let missing = parse(&["--metrics-enabled", "true"]);
        assert!(
            matches!(&missing, Err(e) if e.contains("SCHEMA_MANAGER_REGISTRY_URL")),
            "{missing:?}"
        );
        let missing = parse(&[
            "--metrics-enabled",
            "true",
            "--schema-manager-registry-url",
            "http://r:8081",
        ]);
        assert!(
            matches!(&missing, Err(e) if e.contains("METRICS_KAFKA_BOOTSTRAP_SERVERS")),
            "{missing:?}"
        );
    }

    #[test]
    fn topic_and_subject_follow_the_convention() -> Result<(), String> {
        let settings = parse(&[
            "--metrics-enabled",
            "True",
            "--schema-manager-registry-url",
            "http://r:8081",
            "--metrics-kafka-bootstrap-servers",
            "k:9092",
            "--schema-manager-suffix",
            "_dev",
        ])?
        .ok_or("metrics are on")?;
        assert_eq!(settings.topic(), "lsst.square.metrics.events.butlerwriter");
        assert_eq!(
            settings.subject("batch"),
            "lsst.square.metrics.events.butlerwriter.batch_dev"
        );
        assert_eq!(
            settings.kafka.security_protocol,
            SecurityProtocol::Plaintext
        );
        Ok(())
    }

    #[test]
    fn names_that_are_not_avro_names_are_refused() {
        let dashed = parse(&[
            "--metrics-enabled",
            "true",
            "--metrics-application",
            "butler-writer",
            "--schema-manager-registry-url",
            "http://r:8081",
            "--metrics-kafka-bootstrap-servers",
            "k:9092",
        ]);
        assert!(
            matches!(&dashed, Err(e) if e.contains("not an Avro name")),
            "{dashed:?}"
        );
    }

    #[test]
    fn protocols_are_read_as_strimzi_and_librdkafka_spell_them() {
        assert_eq!(parse_protocol("SSL").ok(), Some(SecurityProtocol::Ssl));
        assert_eq!(
            parse_protocol("SASL_SSL").ok(),
            Some(SecurityProtocol::SaslSsl)
        );
        assert_eq!(
            parse_protocol("sasl-plaintext").ok(),
            Some(SecurityProtocol::SaslPlaintext)
        );
        assert!(parse_protocol("tls").is_err());
    }

    #[test]
    fn a_client_certificate_needs_its_key_and_tls() {
        let half = parse(&[
            "--metrics-enabled",
            "true",
            "--schema-manager-registry-url",
            "http://r:8081",
            "--metrics-kafka-bootstrap-servers",
            "k:9092",
            "--metrics-kafka-client-cert-path",
            "/nonexistent/user.crt",
        ]);
        assert!(
            matches!(&half, Err(e) if e.contains("go together")),
            "{half:?}"
        );
    }
}
