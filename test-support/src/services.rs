//! Where a test's broker and database come from: endpoints named by the environment, or
//! containers started for the test when a Docker engine is available.

use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use testcontainers_modules::kafka::apache::{KAFKA_PORT, Kafka};
use testcontainers_modules::postgres::Postgres;
use testcontainers_modules::testcontainers::runners::AsyncRunner;
use testcontainers_modules::testcontainers::{ContainerAsync, ImageExt};

/// The environment variable naming the broker.
pub const KAFKA_ENV: &str = "KAFKA_BOOTSTRAP_SERVERS";
/// The environment variable naming the Postgres server (a superuser URL).
pub const DATABASE_ENV: &str = "DATABASE_URL";

/// The environment variable naming a broker with transactions beside the main one (the local
/// stack's noida-db); [`TestEnv::start_transactional`] uses it when the main broker has none.
pub const TXN_KAFKA_ENV: &str = "PROMPT_KAFKA_TXN_BOOTSTRAP_SERVERS";

/// Which broker implementation the tests talk to; some guarantees can only be tested on some.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    /// nisshi, the local stack's broker: consumer groups and the idempotent producer, no
    /// transactions.
    Nisshi,
    /// noida-db, the local stack's second broker: transactions, a second implementation of the
    /// protocol beside Apache Kafka (`deploy/local/README.md` says where it differs).
    Noida,
    /// Apache Kafka (testcontainers, or an external cluster declared as `kafka`).
    ApacheKafka,
}

impl BrokerKind {
    /// Whether the broker accepts transactional producers.
    pub fn supports_transactions(self) -> bool {
        matches!(self, Self::ApacheKafka | Self::Noida)
    }

    /// Whether the broker is Apache Kafka, whose documented behaviour (KIP-98, KIP-447) the
    /// assertions that other implementations do not meet are kept for.
    pub fn is_apache_kafka(self) -> bool {
        matches!(self, Self::ApacheKafka)
    }

    /// Its name in `PROMPT_KAFKA_BROKER_KIND` and in the scenario table.
    pub fn name(self) -> &'static str {
        match self {
            Self::Nisshi => "nisshi",
            Self::Noida => "noida",
            Self::ApacheKafka => "kafka",
        }
    }

    fn parse(variable: &str, value: &str) -> anyhow::Result<Self> {
        match value {
            "nisshi" => Ok(Self::Nisshi),
            "noida" | "noida-db" => Ok(Self::Noida),
            "kafka" | "apache-kafka" => Ok(Self::ApacheKafka),
            other => bail!("{variable}={other} is not one of nisshi, noida, kafka"),
        }
    }

    fn from_env() -> anyhow::Result<Self> {
        match std::env::var("PROMPT_KAFKA_BROKER_KIND") {
            Ok(value) => Self::parse("PROMPT_KAFKA_BROKER_KIND", &value),
            // An external broker of unknown kind: assume the weaker one, so tests that need
            // transactions use a broker that has them instead of failing on one that refuses.
            Err(_) => Ok(Self::Nisshi),
        }
    }
}

/// The services of one test: dropped at the end of the test, which deletes the topics it
/// created ([`TestEnv::fresh_topics`], [`TestEnv::create_topic`]) and stops its containers.
#[derive(Debug)]
pub struct TestEnv {
    kafka_bootstrap: String,
    broker_kind: BrokerKind,
    database_url: String,
    /// The local stack's entry point, when the services are the stack's (it can restart them).
    stack: Option<PathBuf>,
    /// The broker is the stack's second, transactional one (restarted with `--txn`).
    stack_txn_broker: bool,
    /// Topics to delete at drop. Kept here rather than in `TestTopics`, which tests also build
    /// by hand (for brokers of their own) and clone: the environment knows the broker's address
    /// at the end of the test, after restarts.
    topics_to_delete: Mutex<Vec<String>>,
    kafka_container: Option<ContainerAsync<Kafka>>,
    postgres_container: Option<ContainerAsync<Postgres>>,
}

impl TestEnv {
    /// Services from the environment, or containers for what it does not name. Fails, naming the
    /// variables to set, when neither is possible.
    pub async fn start() -> anyhow::Result<Self> {
        let kafka_from_env = non_empty_var(KAFKA_ENV);
        let database_from_env = non_empty_var(DATABASE_ENV);

        let (kafka_bootstrap, broker_kind, kafka_container) = match kafka_from_env {
            Some(bootstrap) => (bootstrap, BrokerKind::from_env()?, None),
            None => {
                let container = start_kafka()
                    .await
                    .map_err(|e| no_service("a Kafka broker", KAFKA_ENV, &e))?;
                let port = container.get_host_port_ipv4(KAFKA_PORT).await?;
                (
                    format!("127.0.0.1:{port}"),
                    BrokerKind::ApacheKafka,
                    Some(container),
                )
            }
        };
        let (database_url, postgres_container) = match database_from_env {
            Some(url) => (url, None),
            None => {
                let container = start_postgres()
                    .await
                    .map_err(|e| no_service("a PostgreSQL server", DATABASE_ENV, &e))?;
                let port = container.get_host_port_ipv4(5432).await?;
                (
                    format!("postgres://postgres:postgres@127.0.0.1:{port}/postgres"),
                    Some(container),
                )
            }
        };
        let stack = non_empty_var("PROMPT_KAFKA_STACK").map(PathBuf::from);
        Ok(Self {
            kafka_bootstrap,
            broker_kind,
            database_url,
            stack,
            stack_txn_broker: false,
            topics_to_delete: Mutex::new(Vec::new()),
            kafka_container,
            postgres_container,
        })
    }

    /// Services as [`start`](Self::start) gives them, on a broker with transactions: the main
    /// broker when it has them (Apache Kafka), else the one `PROMPT_KAFKA_TXN_BOOTSTRAP_SERVERS`
    /// names (the local stack's noida-db, of `PROMPT_KAFKA_TXN_BROKER_KIND`), else an Apache
    /// Kafka container. Fails, naming the variable, when none is there.
    pub async fn start_transactional() -> anyhow::Result<Self> {
        if let Some(bootstrap) = non_empty_var(TXN_KAFKA_ENV)
            && non_empty_var(KAFKA_ENV).is_some()
            && !BrokerKind::from_env()?.supports_transactions()
        {
            let kind = match non_empty_var("PROMPT_KAFKA_TXN_BROKER_KIND") {
                Some(value) => BrokerKind::parse("PROMPT_KAFKA_TXN_BROKER_KIND", &value)?,
                None => BrokerKind::Noida,
            };
            let mut env = Self::start().await?;
            env.kafka_bootstrap = bootstrap;
            env.broker_kind = kind;
            env.stack_txn_broker = true;
            return Ok(env);
        }
        let env = Self::start().await?;
        if !env.broker_kind.supports_transactions() {
            bail!(
                "this test needs a broker with transactions and {} ({}) has none: set {TXN_KAFKA_ENV} \
                 (deploy/local/stack up starts noida-db and exports it), or point {KAFKA_ENV} at \
                 Apache Kafka with PROMPT_KAFKA_BROKER_KIND=kafka",
                env.kafka_bootstrap,
                env.broker_kind.name()
            );
        }
        Ok(env)
    }

    /// Deletes these topics when this `TestEnv` is dropped.
    pub(crate) fn delete_at_drop<'a>(&self, topics: impl IntoIterator<Item = &'a str>) {
        let mut list = self
            .topics_to_delete
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        list.extend(topics.into_iter().map(str::to_owned));
    }

    /// `host:port` of the broker, for `bootstrap.servers`.
    pub fn kafka_bootstrap(&self) -> &str {
        &self.kafka_bootstrap
    }

    /// What the broker is, and so which guarantees it can show.
    pub fn broker_kind(&self) -> BrokerKind {
        self.broker_kind
    }

    /// A superuser URL of the Postgres server (its maintenance database).
    pub fn database_url(&self) -> &str {
        &self.database_url
    }

    /// The URL of database `name` on the same server with the same credentials.
    pub fn database_url_for(&self, name: &str) -> String {
        with_database(&self.database_url, name)
    }

    /// Stops the broker and starts it again on the same storage, as an operator's restart would;
    /// returns the bootstrap address, which a container may change.
    pub async fn restart_broker(&mut self) -> anyhow::Result<String> {
        if let Some(container) = &self.kafka_container {
            container
                .stop()
                .await
                .context("stopping the Kafka container")?;
            container
                .start()
                .await
                .context("starting the Kafka container again")?;
            let port = container.get_host_port_ipv4(KAFKA_PORT).await?;
            self.kafka_bootstrap = format!("127.0.0.1:{port}");
            return Ok(self.kafka_bootstrap.clone());
        }
        if self.stack_txn_broker {
            self.run_stack(&["restart-broker", "--txn"]).await?;
        } else {
            self.run_stack(&["restart-broker"]).await?;
        }
        Ok(self.kafka_bootstrap.clone())
    }

    /// Stops the Postgres server (fault tests); [`TestEnv::start_postgres`] brings it back.
    pub async fn stop_postgres(&self) -> anyhow::Result<()> {
        match &self.postgres_container {
            Some(container) => container
                .pause()
                .await
                .context("pausing the Postgres container"),
            None => self.run_stack(&["stop-postgres"]).await,
        }
    }

    /// Starts the Postgres server stopped by [`TestEnv::stop_postgres`].
    pub async fn start_postgres(&self) -> anyhow::Result<()> {
        match &self.postgres_container {
            Some(container) => container
                .unpause()
                .await
                .context("resuming the Postgres container"),
            None => self.run_stack(&["start-postgres"]).await,
        }
    }

    /// Runs a subcommand of the local stack, which owns the services when no container does.
    pub(crate) async fn run_stack(&self, args: &[&str]) -> anyhow::Result<()> {
        let Some(stack) = &self.stack else {
            bail!(
                "the services were given by {KAFKA_ENV}/{DATABASE_ENV} without the local stack, so this \
                 test cannot restart them: set PROMPT_KAFKA_STACK (eval \"$(deploy/local/stack env)\")"
            );
        };
        let output = tokio::process::Command::new(stack)
            .args(args)
            .output()
            .await
            .with_context(|| format!("running {} {}", stack.display(), args.join(" ")))?;
        if !output.status.success() {
            bail!(
                "{} {} failed ({}): {}",
                stack.display(),
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(())
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        // Before the fields: the broker's container, if any, still runs.
        let topics = std::mem::take(
            self.topics_to_delete
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner),
        );
        crate::kafka::delete_topics(&self.kafka_bootstrap, topics);
    }
}

fn non_empty_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The error for a service neither the environment nor Docker can provide.
fn no_service(what: &str, variable: &str, cause: &anyhow::Error) -> anyhow::Error {
    anyhow!(
        "this test needs {what}: set {variable} (on this machine and in CI: eval \"$(deploy/local/stack env)\" \
         after deploy/local/stack up), or run a Docker engine so testcontainers can start one ({cause:#})"
    )
}

async fn start_kafka() -> anyhow::Result<ContainerAsync<Kafka>> {
    // A single broker must hold the transaction log alone, or transactional producers wait for
    // replicas that never come.
    Kafka::default()
        .with_env_var("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
        .with_env_var("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
        .with_env_var("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "500")
        .with_startup_timeout(Duration::from_secs(120))
        .start()
        .await
        .map_err(Into::into)
}

async fn start_postgres() -> anyhow::Result<ContainerAsync<Postgres>> {
    // The official image has btree_gist among its contrib extensions; daf_butler needs it.
    Postgres::default()
        .with_tag("15")
        .with_startup_timeout(Duration::from_secs(120))
        .start()
        .await
        .map_err(Into::into)
}

/// `url` with its database (path) replaced by `database`, query parameters kept.
pub(crate) fn with_database(url: &str, database: &str) -> String {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let path_start = url[after_scheme..]
        .find('/')
        .map_or(url.len(), |i| after_scheme + i);
    let query_start = url[path_start..]
        .find('?')
        .map_or(url.len(), |i| path_start + i);
    format!("{}/{}{}", &url[..path_start], database, &url[query_start..])
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn database_is_replaced_in_urls() {
        assert_eq!(
            with_database("postgres://u@h:5/postgres", "x"),
            "postgres://u@h:5/x"
        );
        assert_eq!(with_database("postgres://u@h:5", "x"), "postgres://u@h:5/x");
        assert_eq!(
            with_database("postgres://u:p@h/db?sslmode=disable", "x"),
            "postgres://u:p@h/x?sslmode=disable"
        );
    }
}
