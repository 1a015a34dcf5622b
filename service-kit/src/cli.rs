//! Value parsers the services' command lines share (clap `value_parser`s), and duration settings
//! given in seconds.

use std::convert::Infallible;
use std::fmt;
use std::marker::PhantomData;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Arg, ArgAction, ArgMatches, Args, Command, FromArgMatches};
use secrecy::SecretString;

use crate::errors::ConfigError;
use crate::kafka::{KafkaSettings, KafkaVariables, SecurityProtocol};

/// A secret from the command line or the environment (clap value parser).
pub fn parse_secret(text: &str) -> Result<SecretString, Infallible> {
    Ok(SecretString::from(text.to_owned()))
}

/// `key=value` (clap value parser for `--kafka-option`).
pub fn parse_key_value(text: &str) -> Result<(String, String), ConfigError> {
    text.split_once('=')
        .filter(|(k, _)| !k.trim().is_empty())
        .map(|(k, v)| (k.trim().to_owned(), v.to_owned()))
        .ok_or_else(|| ConfigError::new(format!("expected key=value, got {text:?}")))
}

/// A duration from a number of seconds given for the setting `name`.
pub fn seconds(value: f64, name: &str) -> Result<Duration, ConfigError> {
    Duration::try_from_secs_f64(value)
        .map_err(|_| ConfigError::new(format!("{name} must be a number of seconds >= 0")))
}

/// The environment variables a service's broker flags read (see [`KafkaArgs`]).
pub trait KafkaArgNames: Send + Sync + 'static {
    /// The variables.
    const VARIABLES: KafkaVariables;
}

/// The broker flags of a service's command line: `--kafka-cluster`, `--kafka-username`,
/// `--kafka-password`, `--kafka-security-protocol`, `--kafka-ca-file` and repeatable
/// `--kafka-option key=value`, each also read from the environment variable `N` names (the
/// writer's deployed `KAFKA_*`, the workers' `BUTLER_WRITER_KAFKA_*`...). One definition of the
/// flags, their help and their pairing rules for every service.
pub struct KafkaArgs<N> {
    /// `bootstrap.servers`.
    pub cluster: String,
    /// SCRAM-SHA-512 user.
    pub username: Option<String>,
    /// SCRAM-SHA-512 password.
    pub password: Option<SecretString>,
    /// `security.protocol`, when given.
    pub security_protocol: Option<SecurityProtocol>,
    /// CA certificate file.
    pub ca_file: Option<PathBuf>,
    /// Extra librdkafka properties.
    pub options: Vec<(String, String)>,
    names: PhantomData<N>,
}

impl<N> fmt::Debug for KafkaArgs<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaArgs")
            .field("cluster", &self.cluster)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("security_protocol", &self.security_protocol)
            .field("ca_file", &self.ca_file)
            .field("options", &self.options)
            .finish()
    }
}

impl<N: KafkaArgNames> KafkaArgs<N> {
    /// Validated settings; errors name `N`'s variables.
    pub fn into_settings(self) -> Result<KafkaSettings, ConfigError> {
        let settings = KafkaSettings::from_parts(
            self.cluster,
            self.username,
            self.password,
            self.security_protocol,
            self.ca_file,
            N::VARIABLES,
        )?;
        Ok(KafkaSettings {
            extra: self.options,
            ..settings
        })
    }
}

const CLUSTER: &str = "kafka_cluster";
const USERNAME: &str = "kafka_username";
const PASSWORD: &str = "kafka_password";
const PROTOCOL: &str = "kafka_security_protocol";
const CA_FILE: &str = "kafka_ca_file";
const OPTIONS: &str = "kafka_options";

impl<N: KafkaArgNames> Args for KafkaArgs<N> {
    fn augment_args(command: Command) -> Command {
        let names = N::VARIABLES;
        command
            .arg(
                Arg::new(CLUSTER)
                    .long("kafka-cluster")
                    .env(names.cluster)
                    .required(true)
                    .value_name("HOST:PORT[,...]")
                    .help("Kafka bootstrap servers, `host:port[,host:port...]`"),
            )
            .arg(
                Arg::new(USERNAME)
                    .long("kafka-username")
                    .env(names.username)
                    .help("SCRAM-SHA-512 user; with --kafka-password, or neither"),
            )
            .arg(
                Arg::new(PASSWORD)
                    .long("kafka-password")
                    .env(names.password)
                    .hide_env_values(true)
                    .value_parser(parse_secret)
                    .help("SCRAM-SHA-512 password (never printed)"),
            )
            .arg(
                Arg::new(PROTOCOL)
                    .long("kafka-security-protocol")
                    .env(names.security_protocol)
                    .value_parser(clap::value_parser!(SecurityProtocol))
                    .help(
                        "`security.protocol`; by default `sasl_plaintext` with credentials \
                         (`sasl_ssl` with a CA file) and `plaintext` without (`ssl` with a CA file)",
                    ),
            )
            .arg(
                Arg::new(CA_FILE)
                    .long("kafka-ca-file")
                    .env(names.ca_file)
                    .value_parser(clap::value_parser!(PathBuf))
                    .help("CA certificate (PEM) for TLS to the brokers"),
            )
            .arg(
                Arg::new(OPTIONS)
                    .long("kafka-option")
                    .action(ArgAction::Append)
                    .value_name("KEY=VALUE")
                    .value_parser(parse_key_value)
                    .help("Extra librdkafka property for every client, `key=value`; repeatable"),
            )
    }

    fn augment_args_for_update(command: Command) -> Command {
        Self::augment_args(command)
    }
}

impl<N: KafkaArgNames> FromArgMatches for KafkaArgs<N> {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let cluster = matches.get_one::<String>(CLUSTER).cloned().ok_or_else(|| {
            clap::Error::raw(
                clap::error::ErrorKind::MissingRequiredArgument,
                format!("--kafka-cluster ({}) is required\n", N::VARIABLES.cluster),
            )
        })?;
        Ok(Self {
            cluster,
            username: matches.get_one::<String>(USERNAME).cloned(),
            password: matches.get_one::<SecretString>(PASSWORD).cloned(),
            security_protocol: matches.get_one::<SecurityProtocol>(PROTOCOL).copied(),
            ca_file: matches.get_one::<PathBuf>(CA_FILE).cloned(),
            options: matches
                .get_many::<(String, String)>(OPTIONS)
                .map(|values| values.cloned().collect())
                .unwrap_or_default(),
            names: PhantomData,
        })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Worker;

    impl KafkaArgNames for Worker {
        const VARIABLES: KafkaVariables = KafkaVariables {
            cluster: "TEST_KAFKA_CLUSTER",
            username: "TEST_KAFKA_USERNAME",
            password: "TEST_KAFKA_PASSWORD",
            security_protocol: "TEST_KAFKA_SECURITY_PROTOCOL",
            ca_file: "TEST_KAFKA_CA_FILE",
        };
    }

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        kafka: KafkaArgs<Worker>,
    }

    fn parse(args: &[&str]) -> Result<KafkaSettings, String> {
        use clap::Parser;
        let mut argv = vec!["test"];
        argv.extend_from_slice(args);
        let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
        cli.kafka.into_settings().map_err(|e| e.to_string())
    }

    #[test]
    fn kafka_flags_parse_pair_and_name_the_services_variables() {
        let settings = parse(&[
            "--kafka-cluster",
            "b:9092",
            "--kafka-option",
            "linger.ms=5",
            "--kafka-option",
            "acks=all",
        ])
        .unwrap();
        assert_eq!(settings.bootstrap_servers, "b:9092");
        assert_eq!(settings.extra.len(), 2);
        let error = parse(&["--kafka-cluster", "b:9092", "--kafka-username", "u"]).unwrap_err();
        assert!(
            error.contains("TEST_KAFKA_USERNAME and TEST_KAFKA_PASSWORD go together"),
            "{error}"
        );
        let settings = parse(&[
            "--kafka-cluster",
            "b:9092",
            "--kafka-username",
            "u",
            "--kafka-password",
            "hunter2",
        ])
        .unwrap();
        assert_eq!(settings.security_protocol, SecurityProtocol::SaslPlaintext);
        assert!(parse(&[]).is_err());
        assert!(parse(&["--kafka-cluster", "b", "--kafka-option", "x"]).is_err());
    }

    #[test]
    fn options_and_seconds_say_what_is_wrong() {
        assert_eq!(
            parse_key_value(" linger.ms=5").unwrap(),
            ("linger.ms".to_owned(), "5".to_owned())
        );
        assert!(
            parse_key_value("novalue")
                .unwrap_err()
                .to_string()
                .contains("key=value")
        );
        assert!(
            seconds(-1.0, "X_SECONDS")
                .unwrap_err()
                .to_string()
                .contains("X_SECONDS")
        );
        assert_eq!(seconds(1.5, "X").unwrap(), Duration::from_millis(1500));
    }
}
