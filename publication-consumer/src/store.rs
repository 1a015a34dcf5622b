//! The consumer's own state in Postgres: its schema and migrations, one transaction per event,
//! and the queries the HTTP API answers from.
//!
//! Every connection's `search_path` is the state schema alone, so the migrations and queries name
//! no schema and `PUBLICATION_SCHEMA` can move the whole state. Every insert is `ON CONFLICT DO
//! NOTHING`: replaying an event, or receiving it twice, changes nothing.

use std::borrow::Cow;
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::PgPool;
use sqlx::{AssertSqlSafe, Row, SqlSafeStr};
use uuid::Uuid;

use butler_repository::{
    ButlerConfig, DatabaseError, Doing, PoolSettings, connect_options, open_pool,
};
use secrecy::{ExposeSecret, SecretString};

use crate::model::BatchRecords;
use crate::policy::Origin;
use crate::registry::{APPLICATION_NAME, StartError, ident};

/// The migrations, in order; embedded so the binary carries its schema.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "state", include_str!("../migrations/0001_state.sql")),
    (
        2,
        "release policy",
        include_str!("../migrations/0002_release_policy.sql"),
    ),
    (
        3,
        "prompt publication service layout",
        include_str!("../migrations/0003_pps_layout.sql"),
    ),
    (
        4,
        "failed event resolution",
        include_str!("../migrations/0004_failed_event_resolution.sql"),
    ),
];

/// The first migration of ours that knows PPS's layout: a schema PPS laid out is adopted by
/// marking the ones before it applied (they would lay out tables of the same names).
const FIRST_PPS_MIGRATION: i64 = 3;

/// The Prompt Publication Service's dataset statuses (`DatasetLocationStatus`).
pub mod dataset_status {
    /// Never in the repository.
    pub const NEVER_PRESENT: i16 = 0;
    /// In the repository.
    pub const PRESENT: i16 = 1;
    /// Expected but not found.
    pub const MISSING: i16 = 2;
    /// Removed.
    pub const DELETED: i16 = 3;
}

/// The Prompt Publication Service's visit, exposure and group statuses
/// (`DimensionRecordStatus`).
pub mod record_status {
    /// Never in the repository.
    pub const NEVER_PRESENT: i16 = 0;
    /// The records as first written (from the raws).
    pub const INITIAL: i16 = 1;
    /// Revised records (not used yet).
    pub const REVISED: i16 = 2;
}

/// The repositories PPS tracks, by their status column's prefix.
pub const REPOSITORIES: [&str; 5] = [
    "embargo",
    "prompt_prep",
    "repo_main",
    "google_int",
    "google_prod",
];

/// A dataset status's name.
pub fn dataset_status_name(status: i16) -> &'static str {
    match status {
        dataset_status::NEVER_PRESENT => "NEVER_PRESENT",
        dataset_status::PRESENT => "PRESENT",
        dataset_status::MISSING => "MISSING",
        dataset_status::DELETED => "DELETED",
        _ => "UNKNOWN",
    }
}

/// Where an event sits in its topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventPlace {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

/// The event a batch's records came from.
#[derive(Debug, Clone)]
pub struct BatchInfo<'a> {
    /// The batch id.
    pub batch_id: Uuid,
    /// The event's origin.
    pub origin: &'a str,
    /// The event's batch file.
    pub batch_file: &'a str,
    /// Where the event is.
    pub place: &'a EventPlace,
}

/// What recording a batch changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Recorded {
    /// False when the batch had been recorded before (a replay or a duplicate event).
    pub new_batch: bool,
    /// Dataset rows added.
    pub datasets: u64,
    /// Unknown-dataset rows added.
    pub unknown: u64,
}

/// A failed event to record.
#[derive(Debug, Clone)]
pub struct FailedEvent<'a> {
    /// Where it is.
    pub place: &'a EventPlace,
    /// Why it failed, as a metric label (`malformed`, `unknown_type`, ...).
    pub reason: &'a str,
    /// The error, for people.
    pub detail: &'a str,
    /// Its batch id, when it could be read.
    pub batch_id: Option<Uuid>,
    /// Its batch file, when it could be read.
    pub batch_file: Option<&'a str>,
    /// The payload as text (lossy), capped.
    pub payload: Option<String>,
}

/// The `GET /api/v1/counts` body. The keys are a contract: the main job reads them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Counts {
    /// Datasets recorded.
    pub datasets: i64,
    /// Of those, still under embargo.
    pub embargoed: i64,
    /// Of those, past their embargo.
    pub ready: i64,
    /// Of those, never released by the policy (a type it does not list, or no visit end).
    pub never_released: i64,
    /// Datasets in the state without a release of ours: recorded by the Prompt Publication
    /// Service before this consumer took its state database over.
    pub without_release: i64,
    /// Datasets per repository (`embargo`, `prompt_prep`, `repo_main`, `google_int`,
    /// `google_prod`) and status (`NEVER_PRESENT`, `PRESENT`, `MISSING`, `DELETED`), as PPS
    /// records them; statuses with no dataset are left out.
    pub repositories: BTreeMap<String, BTreeMap<String, i64>>,
    /// Distinct dataset ids the registry did not know.
    pub unknown: i64,
    /// Events processed (distinct batches).
    pub events: i64,
    /// Events recorded as failed and skipped.
    pub failed_events: i64,
}

/// A recorded dataset, as the API serves it.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct DatasetView {
    /// Dataset id.
    pub id: Uuid,
    /// Dataset type.
    pub dataset_type: String,
    /// RUN collection.
    pub run: String,
    /// Instrument.
    pub instrument: Option<String>,
    /// Detector.
    pub detector: Option<i64>,
    /// Visit.
    pub visit: Option<i64>,
    /// Exposure.
    pub exposure: Option<i64>,
    /// Group.
    pub group: Option<String>,
    /// day_obs.
    pub day_obs: Option<i64>,
    /// The required dimensions.
    pub data_id: serde_json::Value,
    /// The registry's ingest date (UTC).
    pub ingest_date: DateTime<Utc>,
    /// When the observation ended (UTC).
    pub observation_end: DateTime<Utc>,
    /// `exposure`, `visit` or `ingest_date`.
    pub observation_end_source: String,
    /// The origin of the event that announced it (`prompt_processing`, `daytime_ap_catchup`);
    /// `null` for datasets recorded before the release policy.
    pub origin: Option<String>,
    /// The policy's embargo for its (origin, dataset type), in hours; `null` when not listed.
    pub embargo_hours: Option<i32>,
    /// Whether the policy lets it go to the public repository; `null` when not listed.
    pub publish_to_public: Option<bool>,
    /// Days the policy keeps it; `null` for ever or when not listed.
    pub retention_days: Option<i32>,
    /// When the embargo ends; `null`: never.
    pub release_at: Option<DateTime<Utc>>,
    /// How `release_at` was decided: `visit_end`, `exposure_end`, `at_once`, `not_listed` or
    /// `no_end`.
    pub release_basis: Option<String>,
    /// Its status in each repository PPS tracks (`embargo`: `PRESENT`, ...).
    pub repositories: BTreeMap<String, String>,
    /// When it was copied out of embargo (`prompt_prep`), if it was.
    pub unembargo_time: Option<DateTime<Utc>>,
    /// `embargoed`, `ready` or `never`, at the time asked.
    pub status: String,
    /// The batch it was first recorded from.
    pub batch_id: Uuid,
}

/// A dataset query.
#[derive(Debug, Clone, Default)]
pub struct DatasetQuery {
    /// Only datasets whose embargo ended by this time.
    pub ready_at: Option<DateTime<Utc>>,
    /// Only this visit.
    pub visit: Option<i64>,
    /// Only this instrument.
    pub instrument: Option<String>,
    /// Only this dataset type.
    pub dataset_type: Option<String>,
    /// Continue after this `(release_at, id)` (`release_at` `None`: never, which sorts last).
    pub after: Option<(Option<DateTime<Utc>>, Uuid)>,
    /// At most this many.
    pub limit: i64,
}

/// The state database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: PgPool,
    schema: String,
}

impl Store {
    /// Connects with `search_path` set to `schema`, creates the schema if needed and runs the
    /// migrations. Does not wait: the caller retries what [`StartError::class`] says may heal.
    pub async fn open(url: &str, pool: &PoolSettings, schema: &str) -> Result<Self, StartError> {
        Self::open_at(url, pool, schema, i64::MAX).await
    }

    /// [`Store::open`] with the migrations up to `last` only: tests lay out an older state
    /// schema with it, to prove the later migrations keep its rows.
    #[doc(hidden)]
    pub async fn open_at(
        url: &str,
        pool: &PoolSettings,
        schema: &str,
        last: i64,
    ) -> Result<Self, StartError> {
        let options = connect_options(url, pool.auth_file.as_deref(), APPLICATION_NAME)
            .map_err(StartError::StateUrl)?
            // Postgres's notices ("schema ... already exists, skipping" at every start) are not
            // news to anyone reading the log.
            .options([("search_path", schema), ("client_min_messages", "warning")]);
        let pool = open_pool(options, pool)
            .await
            .doing("connecting to the state database")?;
        sqlx::query(AssertSqlSafe(format!(
            "CREATE SCHEMA IF NOT EXISTS {}",
            ident(schema)
        )))
        .execute(&pool)
        .await
        .doing("creating the state schema")?;
        let migrations: Vec<Migration> = MIGRATIONS
            .iter()
            .filter(|(version, _, _)| *version <= last)
            .map(|(version, description, sql)| {
                Migration::new(
                    *version,
                    Cow::Borrowed(*description),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect();
        adopt_pps_layout(&pool, &migrations)
            .await
            .doing("adopting the Prompt Publication Service's state schema")?;
        let mut migrator = Migrator::with_migrations(migrations);
        // In the state schema, not wherever the server's default search_path points.
        migrator.dangerous_set_table_name(format!("{}._sqlx_migrations", ident(schema)));
        migrator.run(&pool).await.map_err(StartError::Migration)?;
        Ok(Self {
            pool,
            schema: schema.to_owned(),
        })
    }

    /// The schema.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The pool (tests count rows through it).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Whether batch `batch_id` has been recorded.
    pub async fn has_batch(&self, batch_id: Uuid) -> Result<bool, DatabaseError> {
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM batch WHERE batch_id = $1)")
            .bind(batch_id)
            .fetch_one(&self.pool)
            .await
            .doing("looking for the batch in the state database")
    }

    /// Records a batch in one transaction: its groups, visits, exposures, datasets, unknown ids
    /// and the batch row itself, all insert-if-not-exists.
    pub async fn record_batch(
        &self,
        info: &BatchInfo<'_>,
        records: &BatchRecords,
        now: DateTime<Utc>,
    ) -> Result<Recorded, DatabaseError> {
        let mut tx = self.pool.begin().await.doing("beginning a transaction")?;
        let new_batch = sqlx::query(
            "INSERT INTO batch (batch_id, origin, batch_file, datasets, unknown_datasets, topic,
                                kafka_partition, kafka_offset, processed_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (batch_id) DO NOTHING",
        )
        .bind(info.batch_id)
        .bind(info.origin)
        .bind(info.batch_file)
        .bind(i32::try_from(records.datasets.len()).unwrap_or(i32::MAX))
        .bind(i32::try_from(records.unknown.len()).unwrap_or(i32::MAX))
        .bind(&info.place.topic)
        .bind(info.place.partition)
        .bind(info.place.offset)
        .bind(now)
        .execute(&mut *tx)
        .await
        .doing("recording the batch")?
        .rows_affected()
            == 1;

        // PPS's rows, with the statuses PPS gives them: in the embargo repository and nowhere
        // else (PPS sets every status itself; the columns have no defaults).
        let (instruments, names): (Vec<&str>, Vec<&str>) = records
            .groups
            .iter()
            .map(|(i, n)| (i.as_str(), n.as_str()))
            .unzip();
        sqlx::query(
            r#"INSERT INTO "group" (id, instrument, embargo_status, prompt_prep_status,
                                   repo_main_status, google_int_status, google_prod_status)
               SELECT name, instrument, $3, 0, 0, 0, 0
               FROM UNNEST($1::text[], $2::text[]) AS g (instrument, name)
               ON CONFLICT DO NOTHING"#,
        )
        .bind(instruments)
        .bind(names)
        .bind(record_status::INITIAL)
        .execute(&mut *tx)
        .await
        .doing("recording groups")?;

        let v = &records.visits;
        sqlx::query(
            "INSERT INTO visit (id, instrument, day_obs, time, embargo_status, prompt_prep_status,
                                repo_main_status, google_int_status, google_prod_status)
             SELECT id, instrument, coalesce(day_obs, 0), time, $5, 0, 0, 0, 0
             FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::timestamptz[])
                  AS v (instrument, id, day_obs, time)
             ON CONFLICT DO NOTHING",
        )
        .bind(v.iter().map(|r| r.instrument.as_str()).collect::<Vec<_>>())
        .bind(v.iter().map(|r| r.id).collect::<Vec<_>>())
        .bind(v.iter().map(|r| r.day_obs).collect::<Vec<_>>())
        .bind(v.iter().map(|r| r.observation_end).collect::<Vec<_>>())
        .bind(record_status::INITIAL)
        .execute(&mut *tx)
        .await
        .doing("recording visits")?;

        let e = &records.exposures;
        sqlx::query(
            "INSERT INTO exposure (id, instrument, day_obs, time, can_see_sky, embargo_status,
                                   prompt_prep_status, repo_main_status, google_int_status,
                                   google_prod_status)
             SELECT id, instrument, coalesce(day_obs, 0), time, can_see_sky, $6, 0, 0, 0, 0
             FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::timestamptz[], $5::bool[])
                  AS e (instrument, id, day_obs, time, can_see_sky)
             ON CONFLICT DO NOTHING",
        )
        .bind(e.iter().map(|r| r.instrument.as_str()).collect::<Vec<_>>())
        .bind(e.iter().map(|r| r.id).collect::<Vec<_>>())
        .bind(e.iter().map(|r| r.day_obs).collect::<Vec<_>>())
        .bind(e.iter().map(|r| r.observation_end).collect::<Vec<_>>())
        .bind(e.iter().map(|r| r.can_see_sky).collect::<Vec<_>>())
        .bind(record_status::INITIAL)
        .execute(&mut *tx)
        .await
        .doing("recording exposures")?;

        let d = &records.datasets;
        let ids: Vec<Uuid> = d.iter().map(|r| r.id).collect();
        let datasets = sqlx::query(
            r#"INSERT INTO dataset (id, origin, dataset_type, instrument, visit, exposure, "group",
                                    butler_data_id, embargo_status, prompt_prep_status,
                                    repo_main_status, google_int_status, google_prod_status,
                                    unembargo_time)
               SELECT x.id, x.origin, x.dataset_type, x.instrument, x.visit, x.exposure, x.grp,
                      x.butler_data_id::json, $9, 0, 0, 0, 0, NULL
               FROM UNNEST($1::uuid[], $2::int2[], $3::text[], $4::text[], $5::int8[],
                           $6::int8[], $7::text[], $8::jsonb[])
                    AS x (id, origin, dataset_type, instrument, visit, exposure, grp,
                          butler_data_id)
               ON CONFLICT (id) DO NOTHING"#,
        )
        .bind(&ids)
        .bind(d.iter().map(|r| r.origin.code()).collect::<Vec<_>>())
        .bind(
            d.iter()
                .map(|r| r.dataset_type.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            d.iter()
                .map(|r| r.instrument.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(d.iter().map(|r| r.visit).collect::<Vec<_>>())
        .bind(d.iter().map(|r| r.exposure).collect::<Vec<_>>())
        .bind(d.iter().map(|r| r.group.as_deref()).collect::<Vec<_>>())
        .bind(
            d.iter()
                .map(|r| r.butler_data_id.clone())
                .collect::<Vec<_>>(),
        )
        .bind(dataset_status::PRESENT)
        .execute(&mut *tx)
        .await
        .doing("recording datasets")?
        .rows_affected();

        // Ours: the rest of what the registry said, and the release under the policy.
        sqlx::query(
            "INSERT INTO dataset_release (id, run, detector, day_obs, data_id, ingest_date,
                                          observation_end, observation_end_source, release_at,
                                          embargo_hours, publish_to_public, retention_days,
                                          release_basis, batch_id, recorded_at)
             SELECT x.*, $14, $15 FROM UNNEST($1::uuid[], $2::text[], $3::int8[], $4::int8[],
                 $5::jsonb[], $6::timestamptz[], $7::timestamptz[], $8::text[],
                 $9::timestamptz[], $10::int4[], $11::bool[], $12::int4[], $13::text[]) AS x
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(&ids)
        .bind(d.iter().map(|r| r.run.as_str()).collect::<Vec<_>>())
        .bind(d.iter().map(|r| r.detector).collect::<Vec<_>>())
        .bind(d.iter().map(|r| r.day_obs).collect::<Vec<_>>())
        .bind(d.iter().map(|r| r.data_id.clone()).collect::<Vec<_>>())
        .bind(d.iter().map(|r| r.ingest_date).collect::<Vec<_>>())
        .bind(d.iter().map(|r| r.observation_end).collect::<Vec<_>>())
        .bind(d.iter().map(|r| r.end_source.as_str()).collect::<Vec<_>>())
        .bind(d.iter().map(|r| r.release_at).collect::<Vec<_>>())
        .bind(
            d.iter()
                .map(|r| r.rule.map(|rule| clamp_i32(rule.embargo_hours)))
                .collect::<Vec<_>>(),
        )
        .bind(
            d.iter()
                .map(|r| r.rule.map(|rule| rule.publish_to_public))
                .collect::<Vec<_>>(),
        )
        .bind(
            d.iter()
                .map(|r| r.rule.and_then(|rule| rule.retention_days).map(clamp_i32))
                .collect::<Vec<_>>(),
        )
        .bind(
            d.iter()
                .map(|r| r.release_basis.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(info.batch_id)
        .bind(now)
        .execute(&mut *tx)
        .await
        .doing("recording datasets' releases")?;

        // PPS's record of an unknown id (its origin and error), and ours of the batch that
        // listed it.
        sqlx::query(
            "INSERT INTO unknown_dataset (id, origin, error)
             SELECT id, $2, format('Dataset not found in Butler, from batch ''%s''', $3::uuid)
             FROM UNNEST($1::uuid[]) AS id
             ON CONFLICT DO NOTHING",
        )
        .bind(&records.unknown)
        .bind(origin_code(info.origin))
        .bind(info.batch_id)
        .execute(&mut *tx)
        .await
        .doing("recording unknown datasets")?;
        let unknown = sqlx::query(
            "INSERT INTO unknown_dataset_batch (dataset_id, batch_id, batch_file, topic,
                                                kafka_partition, kafka_offset, recorded_at)
             SELECT id, $2, $3, $4, $5, $6, $7 FROM UNNEST($1::uuid[]) AS id
             ON CONFLICT DO NOTHING",
        )
        .bind(&records.unknown)
        .bind(info.batch_id)
        .bind(info.batch_file)
        .bind(&info.place.topic)
        .bind(info.place.partition)
        .bind(info.place.offset)
        .bind(now)
        .execute(&mut *tx)
        .await
        .doing("recording unknown datasets")?
        .rows_affected();

        tx.commit().await.doing("committing the batch")?;
        Ok(Recorded {
            new_batch,
            datasets,
            unknown,
        })
    }

    /// Records an event that is skipped; false when it had been recorded before.
    pub async fn record_failed(
        &self,
        failed: &FailedEvent<'_>,
        now: DateTime<Utc>,
    ) -> Result<bool, DatabaseError> {
        let inserted = sqlx::query(
            "INSERT INTO failed_event (topic, kafka_partition, kafka_offset, reason, detail,
                                       batch_id, batch_file, payload, recorded_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING",
        )
        .bind(&failed.place.topic)
        .bind(failed.place.partition)
        .bind(failed.place.offset)
        .bind(failed.reason)
        .bind(failed.detail)
        .bind(failed.batch_id)
        .bind(failed.batch_file)
        .bind(failed.payload.as_deref())
        .bind(now)
        .execute(&self.pool)
        .await
        .doing("recording a failed event")?
        .rows_affected();
        Ok(inserted == 1)
    }

    /// The counts of `GET /api/v1/counts` at time `at`.
    pub async fn counts(&self, at: DateTime<Utc>) -> Result<Counts, DatabaseError> {
        let row = sqlx::query(
            "SELECT (SELECT count(*) FROM dataset) AS datasets,
                    (SELECT count(*) FROM dataset_release WHERE release_at > $1) AS embargoed,
                    (SELECT count(*) FROM dataset_release WHERE release_at <= $1) AS ready,
                    (SELECT count(*) FROM dataset_release WHERE release_at IS NULL)
                        AS never_released,
                    (SELECT count(*) FROM dataset d
                     WHERE NOT EXISTS (SELECT 1 FROM dataset_release r WHERE r.id = d.id))
                        AS without_release,
                    (SELECT count(*) FROM unknown_dataset) AS unknown,
                    (SELECT count(*) FROM batch) AS events,
                    (SELECT count(*) FROM failed_event WHERE resolved_at IS NULL)
                        AS failed_events",
        )
        .bind(at)
        .fetch_one(&self.pool)
        .await
        .doing("counting")?;
        let statuses = sqlx::query(
            "SELECT s.repository, s.status, count(*) AS n
             FROM dataset,
                  LATERAL (VALUES ('embargo', embargo_status),
                                  ('prompt_prep', prompt_prep_status),
                                  ('repo_main', repo_main_status),
                                  ('google_int', google_int_status),
                                  ('google_prod', google_prod_status)) AS s (repository, status)
             GROUP BY s.repository, s.status",
        )
        .fetch_all(&self.pool)
        .await
        .doing("counting statuses")?;
        let read = || -> Result<Counts, sqlx::Error> {
            let mut repositories: BTreeMap<String, BTreeMap<String, i64>> = REPOSITORIES
                .iter()
                .map(|r| ((*r).to_owned(), BTreeMap::new()))
                .collect();
            for status in &statuses {
                repositories
                    .entry(status.try_get("repository")?)
                    .or_default()
                    .insert(
                        dataset_status_name(status.try_get("status")?).to_owned(),
                        status.try_get("n")?,
                    );
            }
            Ok(Counts {
                datasets: row.try_get("datasets")?,
                embargoed: row.try_get("embargoed")?,
                ready: row.try_get("ready")?,
                never_released: row.try_get("never_released")?,
                without_release: row.try_get("without_release")?,
                unknown: row.try_get("unknown")?,
                events: row.try_get("events")?,
                failed_events: row.try_get("failed_events")?,
                repositories,
            })
        };
        read().doing("counting")
    }

    /// Datasets matching `query`, ordered by `(release_at, id)`; statuses as of `at`.
    pub async fn datasets(
        &self,
        query: &DatasetQuery,
        at: DateTime<Utc>,
    ) -> Result<Vec<DatasetView>, DatabaseError> {
        let rows = sqlx::query(
            r#"SELECT d.id, d.dataset_type, r.run, d.instrument, r.detector, d.visit, d.exposure,
                      d."group", r.day_obs, r.data_id, r.ingest_date, r.observation_end,
                      r.observation_end_source, d.origin, r.embargo_hours, r.publish_to_public,
                      r.retention_days, r.release_at, r.release_basis, r.batch_id,
                      d.embargo_status, d.prompt_prep_status, d.repo_main_status,
                      d.google_int_status, d.google_prod_status, d.unembargo_time
               FROM dataset d JOIN dataset_release r ON r.id = d.id
               WHERE ($1::timestamptz IS NULL OR r.release_at <= $1)
                 AND ($2::int8 IS NULL OR d.visit = $2)
                 AND ($3::text IS NULL OR d.instrument = $3)
                 AND ($4::text IS NULL OR d.dataset_type = $4)
                 AND ($6::uuid IS NULL OR CASE WHEN $5::timestamptz IS NULL
                          THEN r.release_at IS NULL AND r.id > $6
                          ELSE r.release_at IS NULL OR (r.release_at, r.id) > ($5, $6) END)
               ORDER BY r.release_at NULLS LAST, r.id
               LIMIT $7"#,
        )
        .bind(query.ready_at)
        .bind(query.visit)
        .bind(query.instrument.as_deref())
        .bind(query.dataset_type.as_deref())
        .bind(query.after.and_then(|(t, _)| t))
        .bind(query.after.map(|(_, id)| id))
        .bind(query.limit)
        .fetch_all(&self.pool)
        .await
        .doing("listing datasets")?;
        rows.into_iter()
            .map(|row| view(&row, at))
            .collect::<Result<_, _>>()
            .doing("reading datasets")
    }

    /// One dataset, if recorded.
    pub async fn dataset(
        &self,
        id: Uuid,
        at: DateTime<Utc>,
    ) -> Result<Option<DatasetView>, DatabaseError> {
        let row = sqlx::query(
            r#"SELECT d.id, d.dataset_type, r.run, d.instrument, r.detector, d.visit, d.exposure,
                      d."group", r.day_obs, r.data_id, r.ingest_date, r.observation_end,
                      r.observation_end_source, d.origin, r.embargo_hours, r.publish_to_public,
                      r.retention_days, r.release_at, r.release_basis, r.batch_id,
                      d.embargo_status, d.prompt_prep_status, d.repo_main_status,
                      d.google_int_status, d.google_prod_status, d.unembargo_time
               FROM dataset d JOIN dataset_release r ON r.id = d.id WHERE d.id = $1"#,
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .doing("reading a dataset")?;
        row.map(|row| view(&row, at))
            .transpose()
            .doing("reading a dataset")
    }

    /// Failed events not yet resolved, oldest first, after `(topic, partition, offset)` ordering
    /// by recorded time.
    pub async fn failed_events(&self, limit: i64) -> Result<Vec<serde_json::Value>, DatabaseError> {
        self.failed_events_with(limit, false).await
    }

    /// Failed events, oldest first, the resolved ones too when `resolved` (with `resolved_at`
    /// and `resolution`).
    pub async fn failed_events_with(
        &self,
        limit: i64,
        resolved: bool,
    ) -> Result<Vec<serde_json::Value>, DatabaseError> {
        let rows = sqlx::query(
            "SELECT topic, kafka_partition, kafka_offset, reason, detail, batch_id, batch_file,
                    recorded_at, resolved_at, resolution
             FROM failed_event WHERE $2 OR resolved_at IS NULL
             ORDER BY recorded_at, topic, kafka_partition, kafka_offset LIMIT $1",
        )
        .bind(limit)
        .bind(resolved)
        .fetch_all(&self.pool)
        .await
        .doing("listing failed events")?;
        rows.into_iter()
            .map(|row| {
                let mut event = serde_json::json!({
                    "topic": row.try_get::<String, _>("topic")?,
                    "partition": row.try_get::<i32, _>("kafka_partition")?,
                    "offset": row.try_get::<i64, _>("kafka_offset")?,
                    "reason": row.try_get::<String, _>("reason")?,
                    "detail": row.try_get::<String, _>("detail")?,
                    "batch_id": row.try_get::<Option<Uuid>, _>("batch_id")?,
                    "batch_file": row.try_get::<Option<String>, _>("batch_file")?,
                    "recorded_at": row.try_get::<DateTime<Utc>, _>("recorded_at")?,
                });
                if resolved {
                    event["resolved_at"] =
                        serde_json::json!(row.try_get::<Option<DateTime<Utc>>, _>("resolved_at")?);
                    event["resolution"] =
                        serde_json::json!(row.try_get::<Option<String>, _>("resolution")?);
                }
                Ok(event)
            })
            .collect::<Result<_, sqlx::Error>>()
            .doing("reading failed events")
    }

    /// Marks the failed event at `place` resolved, saying how; false when there is no such
    /// event or it was resolved before.
    pub async fn resolve_failed_at(
        &self,
        place: &EventPlace,
        resolution: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, DatabaseError> {
        sqlx::query(
            "UPDATE failed_event SET resolved_at = $4, resolution = $5
             WHERE topic = $1 AND kafka_partition = $2 AND kafka_offset = $3
               AND resolved_at IS NULL",
        )
        .bind(&place.topic)
        .bind(place.partition)
        .bind(place.offset)
        .bind(now)
        .bind(resolution)
        .execute(&self.pool)
        .await
        .doing("marking a failed event resolved")
        .map(|r| r.rows_affected() == 1)
    }

    /// Marks the unresolved failed events of batch `batch_id` resolved, saying how; returns how
    /// many.
    pub async fn resolve_failed(
        &self,
        batch_id: Uuid,
        resolution: &str,
        now: DateTime<Utc>,
    ) -> Result<u64, DatabaseError> {
        sqlx::query(
            "UPDATE failed_event SET resolved_at = $3, resolution = $2
             WHERE batch_id = $1 AND resolved_at IS NULL",
        )
        .bind(batch_id)
        .bind(resolution)
        .bind(now)
        .execute(&self.pool)
        .await
        .doing("marking failed events resolved")
        .map(|r| r.rows_affected())
    }

    /// Checks the database answers.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
    }
}

fn view(row: &sqlx::postgres::PgRow, at: DateTime<Utc>) -> Result<DatasetView, sqlx::Error> {
    let release_at: Option<DateTime<Utc>> = row.try_get("release_at")?;
    let origin: Option<i16> = row.try_get("origin")?;
    Ok(DatasetView {
        id: row.try_get("id")?,
        dataset_type: row.try_get("dataset_type")?,
        run: row.try_get("run")?,
        instrument: row.try_get("instrument")?,
        detector: row.try_get("detector")?,
        visit: row.try_get("visit")?,
        exposure: row.try_get("exposure")?,
        group: row.try_get("group")?,
        day_obs: row.try_get("day_obs")?,
        data_id: row.try_get("data_id")?,
        ingest_date: row.try_get("ingest_date")?,
        observation_end: row.try_get("observation_end")?,
        observation_end_source: row.try_get("observation_end_source")?,
        origin: origin
            .and_then(Origin::from_code)
            .map(|o| o.name().to_owned()),
        embargo_hours: row.try_get("embargo_hours")?,
        publish_to_public: row.try_get("publish_to_public")?,
        retention_days: row.try_get("retention_days")?,
        release_at,
        release_basis: row.try_get("release_basis")?,
        repositories: REPOSITORIES
            .iter()
            .map(|r| {
                let code: i16 = row.try_get(format!("{r}_status").as_str())?;
                Ok(((*r).to_owned(), dataset_status_name(code).to_owned()))
            })
            .collect::<Result<_, sqlx::Error>>()?,
        unembargo_time: row.try_get("unembargo_time")?,
        status: match release_at {
            None => "never",
            Some(t) if t <= at => "ready",
            Some(_) => "embargoed",
        }
        .to_owned(),
        batch_id: row.try_get("batch_id")?,
    })
}

/// The state database's URL: the one given, else the registry's database.
pub fn state_url(config: &ButlerConfig, database_url: Option<&SecretString>) -> String {
    database_url.map_or_else(
        || config.registry_db.clone(),
        |url| url.expose_secret().to_owned(),
    )
}

/// The state database's code of an event origin the settings accepted.
fn origin_code(origin: &str) -> i16 {
    Origin::from_name(origin).map_or(Origin::PromptProcessing.code(), Origin::code)
}

/// Takes over a state schema the Prompt Publication Service laid out (its `alembic_version`
/// there, no migrations of ours): the migrations before [`FIRST_PPS_MIGRATION`], which would
/// lay out tables of the same names, are recorded as applied, so that migration 3 adds only
/// this consumer's own tables beside PPS's and leaves PPS's rows as they are.
async fn adopt_pps_layout(pool: &PgPool, migrations: &[Migration]) -> Result<(), sqlx::Error> {
    let pps_only: bool = sqlx::query_scalar(
        "SELECT to_regclass('alembic_version') IS NOT NULL
            AND to_regclass('_sqlx_migrations') IS NULL",
    )
    .fetch_one(pool)
    .await?;
    if !pps_only {
        return Ok(());
    }
    let mut tx = pool.begin().await?;
    // The table as sqlx's migrator makes it.
    sqlx::query(
        "CREATE TABLE _sqlx_migrations (
             version BIGINT PRIMARY KEY,
             description TEXT NOT NULL,
             installed_on TIMESTAMPTZ NOT NULL DEFAULT now(),
             success BOOLEAN NOT NULL,
             checksum BYTEA NOT NULL,
             execution_time BIGINT NOT NULL)",
    )
    .execute(&mut *tx)
    .await?;
    for migration in migrations
        .iter()
        .filter(|m| m.version < FIRST_PPS_MIGRATION)
    {
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
             VALUES ($1, $2, TRUE, $3, -1)",
        )
        .bind(migration.version)
        .bind(migration.description.as_ref())
        .bind(migration.checksum.as_ref())
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

/// A policy number as the `integer` column holds it (policies stay far below `i32::MAX`).
fn clamp_i32(value: u32) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}
