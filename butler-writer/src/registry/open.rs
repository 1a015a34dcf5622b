//! Opening a registry: connect, read its layout (namespace, tables, manager versions, dimension
//! universe, the collection sequence) and refuse what the engine does not reproduce, with one line
//! naming what was found and what is supported.

use std::collections::HashMap;

use butler_repository::{
    ButlerConfig, DatabaseError, DbAuthError, Doing, ErrorClass, PoolSettings, connect_options,
    open_pool, redact,
};
use schema::HtmError;
use schema::htm::HtmPixelization;
use sqlx::{AssertSqlSafe, PgConnection, Row};
use tracing::info;

use super::Registry;
use super::catalog::Catalog;
use super::model::{self, ManagerError, Tables, ident};
use super::statistics::Statistics;
use crate::universe::{Universe, UniverseError};

/// The server shows the engine's connections under this name.
pub const APPLICATION_NAME: &str = "butler-writer";

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The database URL or the credentials file cannot be used.
    #[error(transparent)]
    Credentials(#[from] DbAuthError),
    /// The database refused or could not be reached.
    #[error("cannot open the registry database")]
    Database(#[source] DatabaseError),
    /// The registry is not one this writer can serve.
    #[error(transparent)]
    Unsupported(#[from] UnsupportedRegistry),
}

impl StartupError {
    /// Whether waiting and trying again may help (the database is down), or not.
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Database(error) => error.class().at_startup(),
            Self::Credentials(_) | Self::Unsupported(_) => ErrorClass::Stop,
        }
    }
}

impl From<DatabaseError> for StartupError {
    fn from(error: DatabaseError) -> Self {
        Self::Database(error)
    }
}

/// A registry this writer does not serve, and why.
#[derive(Debug, thiserror::Error)]
pub enum UnsupportedRegistry {
    /// The namespace `butler.yaml` names is not in the database.
    #[error(
        "the registry namespace (schema) `{namespace}` named by {location} does not exist in {database}"
    )]
    NoNamespace {
        /// The schema.
        namespace: String,
        /// Where `butler.yaml` is.
        location: String,
        /// The database URL, without a password.
        database: String,
    },
    /// A table every supported registry has is missing.
    #[error(
        "the registry in schema `{namespace}` has no `{table}` table: is {location} a daf_butler repository made by `butler create`?"
    )]
    MissingTable {
        /// The schema.
        namespace: String,
        /// The table.
        table: &'static str,
        /// Where `butler.yaml` is.
        location: String,
    },
    /// A datastore's records table is missing.
    #[error(
        "the datastore records table `{table}` does not exist in schema `{namespace}`: daf_butler creates it the first time a writeable Butler opens the repository"
    )]
    NoRecordsTable {
        /// The schema.
        namespace: String,
        /// The table.
        table: String,
    },
    /// The managers are not the ones the writer reproduces.
    #[error(transparent)]
    Managers(#[from] ManagerError),
    /// `butler_attributes` has no universe.
    #[error("butler_attributes has no `config:dimensions.json` (the dimension universe)")]
    NoUniverse,
    /// The universe is not one the writer reproduces.
    #[error(transparent)]
    Universe(#[from] UniverseError),
    /// The universe's common skypix cannot be pixelized.
    #[error("common skypix of the universe")]
    CommonSkyPix(#[source] HtmError),
    /// The collection sequence is missing.
    #[error(
        "schema `{namespace}` has no `collection_seq_collection_id` sequence, which the SynthIntKey collection manager uses"
    )]
    NoCollectionSequence {
        /// The schema.
        namespace: String,
    },
}

/// Tables every supported registry has and the engine writes or reads.
const REQUIRED_TABLES: &[&str] = &[
    "butler_attributes",
    "collection",
    "run",
    "dataset",
    "dataset_type",
    "dimension_graph_definition",
    "collection_summary_dataset_type",
    "dataset_location",
];

impl Registry {
    /// Connects, reads the repository's layout and refuses what it does not support.
    pub async fn open(config: &ButlerConfig, pool: &PoolSettings) -> Result<Self, StartupError> {
        let options = connect_options(
            &config.registry_db,
            pool.auth_file.as_deref(),
            APPLICATION_NAME,
        )?;
        let pool = open_pool(options, pool)
            .await
            .doing("connecting to the registry database")?;
        let mut conn = pool
            .acquire()
            .await
            .doing("connecting to the registry database")?;
        let namespace = find_namespace(&mut conn, config).await?;
        let tables = Tables::load(&mut conn, &namespace)
            .await
            .doing("reading the registry's tables")?;
        check_tables(&tables, config, &namespace)?;
        let universe = read_universe(&mut conn, &namespace).await?;
        let htm = HtmPixelization::new(universe.common_htm_level)
            .map_err(UnsupportedRegistry::CommonSkyPix)?;
        check_collection_sequence(&mut conn, &namespace).await?;
        let registry = Self {
            pool: pool.clone(),
            namespace_sql: ident(&namespace),
            catalog: Catalog::new(&namespace, tables),
            namespace,
            universe,
            htm,
            datastores: config.datastores.clone(),
            statistics: Statistics::default(),
        };
        registry.catalog.refresh(&mut conn, None).await?;
        info!(
            namespace = %registry.namespace,
            universe = registry.universe.version,
            dataset_types = registry.catalog.read().dataset_types.len(),
            datastores = registry.datastores.len(),
            "registry opened"
        );
        Ok(registry)
    }
}

/// The namespace `butler.yaml` names (the connection's default schema when it names none),
/// checked to exist.
async fn find_namespace(
    conn: &mut PgConnection,
    config: &ButlerConfig,
) -> Result<String, StartupError> {
    let doing = "reading the registry namespace";
    let namespace = match &config.namespace {
        Some(ns) => ns.clone(),
        None => sqlx::query_scalar("SELECT current_schema()")
            .fetch_one(&mut *conn)
            .await
            .doing(doing)?,
    };
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
            .bind(&namespace)
            .fetch_one(&mut *conn)
            .await
            .doing(doing)?;
    if !exists {
        return Err(UnsupportedRegistry::NoNamespace {
            namespace,
            location: config.location.clone(),
            database: redact(&config.registry_db),
        }
        .into());
    }
    Ok(namespace)
}

/// Every table the engine needs, and each datastore's records table, exists.
fn check_tables(
    tables: &Tables,
    config: &ButlerConfig,
    namespace: &str,
) -> Result<(), UnsupportedRegistry> {
    if let Some(table) = REQUIRED_TABLES.iter().find(|t| tables.get(t).is_none()) {
        return Err(UnsupportedRegistry::MissingTable {
            namespace: namespace.to_owned(),
            table,
            location: config.location.clone(),
        });
    }
    if let Some(datastore) = config
        .datastores
        .iter()
        .find(|d| tables.get(&d.records_table).is_none())
    {
        return Err(UnsupportedRegistry::NoRecordsTable {
            namespace: namespace.to_owned(),
            table: datastore.records_table.clone(),
        });
    }
    Ok(())
}

/// The universe `butler_attributes` stores, once its managers are checked.
async fn read_universe(conn: &mut PgConnection, namespace: &str) -> Result<Universe, StartupError> {
    let attributes: HashMap<String, String> = sqlx::query(AssertSqlSafe(format!(
        "SELECT name, value FROM {}.butler_attributes",
        ident(namespace)
    )))
    .fetch_all(&mut *conn)
    .await
    .and_then(|rows| {
        rows.into_iter()
            .map(|row| Ok((row.try_get("name")?, row.try_get("value")?)))
            .collect()
    })
    .doing("reading butler_attributes")?;
    model::check_managers(&attributes).map_err(UnsupportedRegistry::from)?;
    let universe_json = attributes
        .get("config:dimensions.json")
        .ok_or(UnsupportedRegistry::NoUniverse)?;
    Ok(Universe::from_json(universe_json).map_err(UnsupportedRegistry::from)?)
}

/// The sequence the SynthIntKey collection manager numbers collections with exists.
async fn check_collection_sequence(
    conn: &mut PgConnection,
    namespace: &str,
) -> Result<(), StartupError> {
    let sequence: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = $1 AND c.relname = 'collection_seq_collection_id' AND c.relkind = 'S')",
    )
    .bind(namespace)
    .fetch_one(&mut *conn)
    .await
    .doing("looking for the collection sequence")?;
    if !sequence {
        return Err(UnsupportedRegistry::NoCollectionSequence {
            namespace: namespace.to_owned(),
        }
        .into());
    }
    Ok(())
}
