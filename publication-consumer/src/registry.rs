//! Read-only lookups in the Butler registry: what a batch's dataset ids are (dataset type, RUN,
//! data ID, ingest date) and when their exposure or visit ended.
//!
//! The connection is opened with `default_transaction_read_only=on`, so even a bug here cannot
//! write to the registry. Tables are those of daf_butler's Postgres registry
//! (`../shared/reference/butler-registry.md` §4): `dataset`, `dataset_type`, `collection`, one
//! `dataset_tags_%08d` table per dimension group (named by `dataset_type.tag_association_table`),
//! `visit` and `exposure` with `int8range` timespans in TAI nanoseconds.

use butler_repository::{
    ButlerConfig, DatabaseError, DbAuthError, Doing, ErrorClass, PoolSettings, connect_options,
    open_pool,
};
use sqlx::postgres::PgPool;
use sqlx::{AssertSqlSafe, Row};
use uuid::Uuid;

/// The server shows the consumer's connections under this name.
pub const APPLICATION_NAME: &str = "publication-consumer";

/// One dataset as the registry knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct RegistryDataset {
    /// The dataset id.
    pub id: Uuid,
    /// `dataset_type.name`.
    pub dataset_type: String,
    /// The RUN collection's name.
    pub run: String,
    /// `dataset.ingest_date`: TAI nanoseconds.
    pub ingest_date_tai_ns: i64,
    /// The required dimensions from the tags table (`instrument`, `detector`, `visit`, ...); an
    /// empty object when the tags row is missing.
    pub data_id: serde_json::Map<String, serde_json::Value>,
    /// The visit's timespan end (TAI ns) when the data ID has a visit the registry knows.
    pub visit_end_tai_ns: Option<i64>,
    /// The visit's `day_obs`.
    pub visit_day_obs: Option<i64>,
    /// The exposure's timespan end (TAI ns) when the data ID has an exposure.
    pub exposure_end_tai_ns: Option<i64>,
    /// The exposure's `day_obs`.
    pub exposure_day_obs: Option<i64>,
    /// The exposure's group.
    pub exposure_group: Option<String>,
    /// Its exposure's `can_see_sky`, when the data ID has an exposure and the registry knows.
    pub exposure_can_see_sky: Option<bool>,
}

/// A registry opened for reading.
#[derive(Debug, Clone)]
pub struct RegistryReader {
    pool: PgPool,
    namespace: String,
}

/// Double-quotes an identifier for SQL.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl RegistryReader {
    /// Connects (read-only) to the registry `config` names. Does not wait: the caller retries.
    pub async fn connect(config: &ButlerConfig, pool: &PoolSettings) -> Result<Self, StartError> {
        let options = connect_options(
            &config.registry_db,
            pool.auth_file.as_deref(),
            APPLICATION_NAME,
        )?
        .options([("default_transaction_read_only", "on")]);
        let doing = "connecting to the registry database";
        let pool = open_pool(options, pool).await.doing(doing)?;
        let namespace = match &config.namespace {
            Some(ns) => ns.clone(),
            None => sqlx::query_scalar("SELECT current_schema()")
                .fetch_one(&pool)
                .await
                .doing(doing)?,
        };
        let dataset_table: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_tables WHERE schemaname = $1 AND tablename = 'dataset')",
        )
        .bind(&namespace)
        .fetch_one(&pool)
        .await
        .doing(doing)?;
        if !dataset_table {
            return Err(StartError::NotARegistry {
                location: config.location.clone(),
                namespace,
            });
        }
        Ok(Self { pool, namespace })
    }

    /// The registry's schema.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Checks the database answers.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
    }

    /// The datasets of `ids` the registry has; ids it does not know are absent from the result.
    /// Two statements whatever the number of ids: which tags tables hold them, then everything
    /// else in one query over those tables.
    pub async fn lookup(&self, ids: &[Uuid]) -> Result<Vec<RegistryDataset>, DatabaseError> {
        let ns = ident(&self.namespace);
        let tables: Vec<Option<String>> = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT DISTINCT dt.tag_association_table
             FROM {ns}.dataset d JOIN {ns}.dataset_type dt ON dt.id = d.dataset_type_id
             WHERE d.id = ANY($1)"
        )))
        .bind(ids)
        .fetch_all(&self.pool)
        .await
        .doing("finding the tags tables of a batch's datasets")?;
        let tables: Vec<String> = tables.into_iter().flatten().collect();
        let tags = if tables.is_empty() {
            // No dataset is known: keep the query's shape with an empty relation.
            "SELECT NULL::uuid AS dataset_id, NULL::bigint AS collection_id, NULL::jsonb AS data_id WHERE false".to_owned()
        } else {
            tables
                .iter()
                .map(|t| {
                    format!(
                        "SELECT t.dataset_id, t.collection_id,
                                to_jsonb(t) - 'dataset_id' - 'dataset_type_id' - 'collection_id' AS data_id
                         FROM {ns}.{} t WHERE t.dataset_id = ANY($1)",
                        ident(t)
                    )
                })
                .collect::<Vec<_>>()
                .join(" UNION ALL ")
        };
        let sql = format!(
            "WITH tags AS ({tags})
             SELECT d.id, dt.name AS dataset_type, c.name AS run, d.ingest_date,
                    COALESCE(tags.data_id, '{{}}'::jsonb) AS data_id,
                    upper(v.timespan) AS visit_end, (to_jsonb(v) ->> 'day_obs')::bigint AS visit_day_obs,
                    upper(e.timespan) AS exposure_end, (to_jsonb(e) ->> 'day_obs')::bigint AS exposure_day_obs,
                    to_jsonb(e) ->> 'group' AS exposure_group,
                    (to_jsonb(e) ->> 'can_see_sky')::boolean AS exposure_can_see_sky
             FROM {ns}.dataset d
             JOIN {ns}.dataset_type dt ON dt.id = d.dataset_type_id
             JOIN {ns}.collection c ON c.collection_id = d.run_id
             LEFT JOIN tags ON tags.dataset_id = d.id AND tags.collection_id = d.run_id
             LEFT JOIN {ns}.visit v
                    ON v.instrument = tags.data_id ->> 'instrument' AND v.id = (tags.data_id ->> 'visit')::bigint
             LEFT JOIN {ns}.exposure e
                    ON e.instrument = tags.data_id ->> 'instrument' AND e.id = (tags.data_id ->> 'exposure')::bigint
             WHERE d.id = ANY($1)"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(ids)
            .fetch_all(&self.pool)
            .await
            .doing("looking a batch's datasets up in the registry")?;
        rows.into_iter()
            .map(|row| {
                let data_id: serde_json::Value = row.try_get("data_id")?;
                Ok(RegistryDataset {
                    id: row.try_get("id")?,
                    dataset_type: row.try_get("dataset_type")?,
                    run: row.try_get("run")?,
                    ingest_date_tai_ns: row.try_get("ingest_date")?,
                    data_id: match data_id {
                        serde_json::Value::Object(map) => map,
                        _ => serde_json::Map::new(),
                    },
                    visit_end_tai_ns: row.try_get("visit_end")?,
                    visit_day_obs: row.try_get("visit_day_obs")?,
                    exposure_end_tai_ns: row.try_get("exposure_end")?,
                    exposure_day_obs: row.try_get("exposure_day_obs")?,
                    exposure_group: row.try_get("exposure_group")?,
                    exposure_can_see_sky: row.try_get("exposure_can_see_sky")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .doing("reading the registry's answer")
    }
}

/// Why the datasets of collections cannot be listed.
#[derive(Debug, thiserror::Error)]
pub enum CollectionsError {
    /// A collection the registry does not have.
    #[error("the registry has no collection {0:?}")]
    Missing(String),
    /// A collection that is not a RUN.
    #[error("{name:?} is a {kind} collection; datasets are registered from RUN collections")]
    NotARun {
        /// Its name.
        name: String,
        /// `TAGGED`, `CHAINED` or `CALIBRATION`.
        kind: &'static str,
    },
    /// The query failed.
    #[error(transparent)]
    Database(#[from] DatabaseError),
}

impl RegistryReader {
    /// The ids and dataset types of the datasets in RUN collections `runs`, of `dataset_types`
    /// only when any are given, by id.
    pub async fn datasets_in_runs(
        &self,
        runs: &[String],
        dataset_types: &[String],
    ) -> Result<Vec<(Uuid, String)>, CollectionsError> {
        let ns = ident(&self.namespace);
        let found: Vec<(String, i16)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT name, type FROM {ns}.collection WHERE name = ANY($1)"
        )))
        .bind(runs)
        .fetch_all(&self.pool)
        .await
        .doing("looking collections up in the registry")?;
        for run in runs {
            match found.iter().find(|(name, _)| name == run) {
                None => return Err(CollectionsError::Missing(run.clone())),
                Some((_, 1)) => {}
                Some((name, kind)) => {
                    return Err(CollectionsError::NotARun {
                        name: name.clone(),
                        kind: match kind {
                            2 => "TAGGED",
                            3 => "CHAINED",
                            _ => "CALIBRATION",
                        },
                    });
                }
            }
        }
        let rows: Vec<(Uuid, String)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT d.id, dt.name
             FROM {ns}.dataset d
             JOIN {ns}.dataset_type dt ON dt.id = d.dataset_type_id
             JOIN {ns}.collection c ON c.collection_id = d.run_id
             WHERE c.name = ANY($1) AND (cardinality($2::text[]) = 0 OR dt.name = ANY($2))
             ORDER BY d.id"
        )))
        .bind(runs)
        .bind(dataset_types)
        .fetch_all(&self.pool)
        .await
        .doing("listing the datasets of collections")?;
        Ok(rows)
    }
}

/// Why a database could not be opened at start-up.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The registry's URL or the credentials file cannot be used.
    #[error(transparent)]
    Credentials(#[from] DbAuthError),
    /// `PUBLICATION_DATABASE_URL` or the credentials file cannot be used.
    #[error("PUBLICATION_DATABASE_URL")]
    StateUrl(#[source] DbAuthError),
    /// The database did not answer, or refused.
    #[error(transparent)]
    Database(#[from] DatabaseError),
    /// The state schema's migrations failed.
    #[error("migrating the state schema")]
    Migration(#[source] sqlx::migrate::MigrateError),
    /// The repository's database holds no registry.
    #[error("the registry named by {location} has no `dataset` table in schema `{namespace}`")]
    NotARegistry {
        /// Where `butler.yaml` is.
        location: String,
        /// The schema looked in.
        namespace: String,
    },
}

impl StartError {
    /// Whether waiting may help ([`ErrorClass::Retry`]: the server is down or busy), or not.
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Database(error) => error.class().at_startup(),
            Self::Migration(sqlx::migrate::MigrateError::Execute(error)) => {
                butler_repository::classify(error).at_startup()
            }
            Self::Credentials(_)
            | Self::StateUrl(_)
            | Self::Migration(_)
            | Self::NotARegistry { .. } => ErrorClass::Stop,
        }
    }
}
