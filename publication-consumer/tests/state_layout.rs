//! The state schema against the Prompt Publication Service's: laid out from nothing it has PPS's
//! tables, columns, keys, indexes and alembic revision; a schema PPS laid out and wrote is taken
//! over with its rows untouched; and a schema of our earlier layout is converted without losing a
//! row. The expected layout below is transcribed from the reference description of PPS's revision
//! b59eced2ad76, independently of the migration that makes it.

// Test code: a failed expectation is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use butler_repository::PoolSettings;
use chrono::{DateTime, Utc};
use publication_consumer::Store;
use publication_consumer::model::{self, BatchRecords};
use publication_consumer::policy::{Origin, Policy};
use publication_consumer::registry::RegistryDataset;
use publication_consumer::store::{BatchInfo, EventPlace};
use sqlx::{AssertSqlSafe, Row};
use test_support::TestEnv;
use uuid::Uuid;

/// `(table, column, type, nullable)` of PPS's tables at revision b59eced2ad76.
fn pps_columns() -> BTreeSet<(String, String, String, bool)> {
    let statuses = |table: &str, nullable: bool| {
        [
            "embargo_status",
            "prompt_prep_status",
            "repo_main_status",
            "google_int_status",
            "google_prod_status",
        ]
        .map(|c| {
            (
                table.to_owned(),
                c.to_owned(),
                "smallint".to_owned(),
                nullable,
            )
        })
    };
    let column = |t: &str, c: &str, ty: &str, nullable: bool| {
        (t.to_owned(), c.to_owned(), ty.to_owned(), nullable)
    };
    let mut out = BTreeSet::new();
    for table in ["visit", "exposure"] {
        out.insert(column(table, "id", "bigint", false));
        out.insert(column(table, "instrument", "character varying", false));
        out.insert(column(table, "day_obs", "bigint", false));
        out.insert(column(table, "time", "timestamp with time zone", true));
        out.extend(statuses(table, true));
    }
    out.insert(column("exposure", "can_see_sky", "boolean", false));
    out.insert(column("group", "id", "character varying", false));
    out.insert(column("group", "instrument", "character varying", false));
    out.extend(statuses("group", true));
    for (c, ty, nullable) in [
        ("id", "uuid", false),
        ("origin", "smallint", false),
        ("dataset_type", "character varying", false),
        ("instrument", "character varying", true),
        ("visit", "bigint", true),
        ("exposure", "bigint", true),
        ("group", "character varying", true),
        ("butler_data_id", "json", true),
        ("unembargo_time", "timestamp with time zone", true),
    ] {
        out.insert(column("dataset", c, ty, nullable));
    }
    out.extend(statuses("dataset", false));
    out.insert(column("unknown_dataset", "id", "uuid", false));
    out.insert(column("unknown_dataset", "origin", "smallint", false));
    out.insert(column(
        "unknown_dataset",
        "error",
        "character varying",
        false,
    ));
    out.insert(column(
        "alembic_version",
        "version_num",
        "character varying",
        false,
    ));
    out
}

/// PPS's indexes beside the primary keys.
fn pps_indexes() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for repository in [
        "embargo",
        "prompt_prep",
        "repo_main",
        "google_int",
        "google_prod",
    ] {
        for table in ["visit", "exposure", "group"] {
            out.insert(format!("ix_{table}_{repository}_status"));
        }
    }
    for status in [
        "embargo_status",
        "repo_main_status",
        "google_prod_status",
        "google_int_status",
    ] {
        out.insert(format!("dataset_{status}_lookup"));
    }
    out
}

const PPS_TABLES: &[&str] = &[
    "visit",
    "exposure",
    "group",
    "dataset",
    "unknown_dataset",
    "alembic_version",
];

async fn columns(store: &Store) -> BTreeSet<(String, String, String, bool)> {
    sqlx::query(
        "SELECT table_name, column_name, data_type, is_nullable = 'YES' AS nullable
         FROM information_schema.columns
         WHERE table_schema = current_schema() AND table_name = ANY($1)",
    )
    .bind(PPS_TABLES)
    .fetch_all(store.pool())
    .await
    .unwrap()
    .into_iter()
    .map(|r| {
        (
            r.get("table_name"),
            r.get("column_name"),
            r.get("data_type"),
            r.get("nullable"),
        )
    })
    .collect()
}

async fn indexes(store: &Store) -> BTreeSet<String> {
    sqlx::query_scalar(
        "SELECT indexname FROM pg_indexes
         WHERE schemaname = current_schema() AND tablename = ANY($1)
           AND indexname NOT LIKE '%pkey' AND indexname NOT LIKE '%pkc'",
    )
    .bind(PPS_TABLES)
    .fetch_all(store.pool())
    .await
    .unwrap()
    .into_iter()
    .collect()
}

async fn scalar<T>(store: &Store, sql: &str) -> T
where
    T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + Unpin,
{
    sqlx::query_scalar(AssertSqlSafe(sql.to_owned()))
        .fetch_one(store.pool())
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// 2026-05-02T00:00:00Z as TAI nanoseconds.
const T0_TAI: i64 = 1_777_680_000_000_000_000 + 37_000_000_000;

/// What the registry would say of a dataset of visit 42 and of one of exposure 42.
fn registry_datasets() -> Vec<RegistryDataset> {
    let dataset = |n: u128, dataset_type: &str, data_id: serde_json::Value| RegistryDataset {
        id: Uuid::from_u128(n),
        dataset_type: dataset_type.to_owned(),
        run: "LSSTCam/prompt/output-2026-05-01".to_owned(),
        ingest_date_tai_ns: T0_TAI,
        data_id: data_id.as_object().cloned().unwrap(),
        visit_end_tai_ns: Some(T0_TAI),
        visit_day_obs: Some(20_260_501),
        exposure_end_tai_ns: Some(T0_TAI),
        exposure_day_obs: Some(20_260_501),
        exposure_group: Some("g42".to_owned()),
        exposure_can_see_sky: None,
    };
    vec![
        dataset(
            1,
            "preliminary_visit_image",
            serde_json::json!({"instrument": "LSSTCam", "detector": 3, "visit": 42}),
        ),
        dataset(
            2,
            "isr_statistics",
            serde_json::json!({"instrument": "LSSTCam", "detector": 3, "exposure": 42, "group": "g42"}),
        ),
    ]
}

async fn record(store: &Store, records: &BatchRecords, batch: u128) {
    let place = EventPlace {
        topic: "events".to_owned(),
        partition: 0,
        offset: i64::try_from(batch).unwrap(),
    };
    let info = BatchInfo {
        batch_id: Uuid::from_u128(batch),
        origin: "prompt_processing",
        batch_file: "batch.json",
        place: &place,
    };
    let now: DateTime<Utc> = DateTime::from_timestamp(1_777_700_000, 0).unwrap();
    store.record_batch(&info, records, now).await.unwrap();
}

fn batch_records() -> BatchRecords {
    let ids = [1, 2, 99].map(Uuid::from_u128);
    model::records(
        &ids,
        &registry_datasets(),
        &Policy::deployed(),
        Origin::PromptProcessing,
    )
}

#[tokio::test]
async fn an_empty_schema_is_laid_out_as_pps_revision_b59eced2ad76_and_recorded_as_pps_would() {
    let env = TestEnv::start().await.unwrap();
    let db = env.fresh_database("pps_layout").await.unwrap();
    let store = Store::open(&db.url, &PoolSettings::default(), "public")
        .await
        .unwrap();
    assert_eq!(columns(&store).await, pps_columns());
    assert_eq!(indexes(&store).await, pps_indexes());
    let revision: String = scalar(&store, "SELECT version_num FROM alembic_version").await;
    assert_eq!(revision, "b59eced2ad76");

    record(&store, &batch_records(), 1).await;
    // As PPS records a batch: the datasets in embargo and nowhere else, their visit, exposure
    // and group with the embargo's records INITIAL, the unknown id with PPS's error.
    let statuses: String = scalar(
        &store,
        "SELECT string_agg(format('%s:%s%s%s%s%s', id, embargo_status, prompt_prep_status,
                 repo_main_status, google_int_status, google_prod_status), ' ' ORDER BY id)
         FROM dataset",
    )
    .await;
    assert_eq!(
        statuses,
        format!("{}:10000 {}:10000", Uuid::from_u128(1), Uuid::from_u128(2))
    );
    let visit: String = scalar(
        &store,
        "SELECT format('%s %s %s %s %s', id, instrument, day_obs, time AT TIME ZONE 'UTC', embargo_status)
         FROM visit",
    )
    .await;
    assert_eq!(visit, "42 LSSTCam 20260501 2026-05-02 00:00:00 1");
    let exposure: String = scalar(
        &store,
        "SELECT format('%s %s %s', id, can_see_sky, embargo_status) FROM exposure",
    )
    .await;
    assert_eq!(
        exposure, "42 t 1",
        "can_see_sky NULL in the registry is read as true"
    );
    let group: String = scalar(
        &store,
        r#"SELECT format('%s %s', id, embargo_status) FROM "group""#,
    )
    .await;
    assert_eq!(group, "g42 1");
    let data_ids: String = scalar(
        &store,
        "SELECT string_agg(format('%s %s %s %s', dataset_type, visit, exposure, butler_data_id),
                           ' | ' ORDER BY id)
         FROM dataset",
    )
    .await;
    assert_eq!(
        data_ids,
        r#"preliminary_visit_image 42  {"detector": 3} | isr_statistics  42 {"group": "g42", "detector": 3, "exposure": 42}"#
    );
    let unknown: String = scalar(
        &store,
        "SELECT format('%s %s %s', id, origin, error) FROM unknown_dataset",
    )
    .await;
    assert_eq!(
        unknown,
        format!(
            "{} 1 Dataset not found in Butler, from batch '{}'",
            Uuid::from_u128(99),
            Uuid::from_u128(1)
        )
    );
    let counts = store
        .counts(DateTime::from_timestamp(0, 0).unwrap())
        .await
        .unwrap();
    assert_eq!(counts.repositories["embargo"]["PRESENT"], 2);
    assert_eq!(counts.repositories["prompt_prep"]["NEVER_PRESENT"], 2);
    assert_eq!(
        (counts.datasets, counts.without_release, counts.unknown),
        (2, 0, 1)
    );

    // Recording the batch again changes nothing.
    record(&store, &batch_records(), 1).await;
    assert_eq!(
        scalar::<i64>(&store, "SELECT count(*) FROM dataset").await,
        2
    );
}

/// A schema as PPS's revision b59eced2ad76 lays it out, with rows PPS wrote: a visit and its
/// dataset already copied to prompt_prep, and an unknown id.
const PPS_SCHEMA: &str = r#"
CREATE TABLE visit (id bigint NOT NULL, instrument varchar NOT NULL, day_obs bigint NOT NULL,
    time timestamptz, embargo_status smallint, prompt_prep_status smallint,
    repo_main_status smallint, google_int_status smallint, google_prod_status smallint,
    PRIMARY KEY (id, instrument));
CREATE TABLE exposure (id bigint NOT NULL, instrument varchar NOT NULL, day_obs bigint NOT NULL,
    time timestamptz, can_see_sky boolean NOT NULL, embargo_status smallint,
    prompt_prep_status smallint, repo_main_status smallint, google_int_status smallint,
    google_prod_status smallint, PRIMARY KEY (id, instrument));
CREATE TABLE "group" (id varchar NOT NULL, instrument varchar NOT NULL, embargo_status smallint,
    prompt_prep_status smallint, repo_main_status smallint, google_int_status smallint,
    google_prod_status smallint, PRIMARY KEY (id, instrument));
CREATE TABLE dataset (id uuid PRIMARY KEY, origin smallint NOT NULL, dataset_type varchar NOT NULL,
    instrument varchar, visit bigint, exposure bigint, "group" varchar, butler_data_id json,
    embargo_status smallint NOT NULL, prompt_prep_status smallint NOT NULL,
    repo_main_status smallint NOT NULL, google_int_status smallint NOT NULL,
    google_prod_status smallint NOT NULL, unembargo_time timestamptz,
    FOREIGN KEY (visit, instrument) REFERENCES visit (id, instrument),
    FOREIGN KEY (exposure, instrument) REFERENCES exposure (id, instrument),
    FOREIGN KEY ("group", instrument) REFERENCES "group" (id, instrument));
CREATE TABLE unknown_dataset (id uuid PRIMARY KEY, origin smallint NOT NULL, error varchar NOT NULL);
CREATE TABLE alembic_version (version_num varchar(32) NOT NULL,
    CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num));
INSERT INTO alembic_version VALUES ('b59eced2ad76');
INSERT INTO visit VALUES (7, 'LSSTCam', 20260430, '2026-04-30T06:00:00Z', 1, 1, 0, 0, 0);
INSERT INTO dataset VALUES ('00000000-0000-0000-0000-0000000000aa', 1, 'preliminary_visit_image',
    'LSSTCam', 7, NULL, NULL, '{"detector": 1}', 1, 1, 0, 0, 0, '2026-05-03T14:00:00Z');
INSERT INTO unknown_dataset VALUES ('00000000-0000-0000-0000-0000000000bb', 1, 'Dataset not found');
"#;

#[tokio::test]
async fn a_schema_pps_laid_out_and_wrote_is_taken_over_with_its_rows_untouched() {
    let env = TestEnv::start().await.unwrap();
    let db = env.fresh_database("pps_takeover").await.unwrap();
    let mut connection = <sqlx::PgConnection as sqlx::Connection>::connect(&db.url)
        .await
        .unwrap();
    sqlx::raw_sql(PPS_SCHEMA)
        .execute(&mut connection)
        .await
        .unwrap();
    let store = Store::open(&db.url, &PoolSettings::default(), "public")
        .await
        .unwrap();
    assert_eq!(
        columns(&store).await,
        pps_columns(),
        "PPS's columns unchanged"
    );
    let before: String = scalar(
        &store,
        "SELECT format('%s %s %s %s', id, embargo_status, prompt_prep_status, unembargo_time AT TIME ZONE 'UTC')
         FROM dataset",
    )
    .await;
    assert_eq!(
        before,
        "00000000-0000-0000-0000-0000000000aa 1 1 2026-05-03 14:00:00"
    );

    record(&store, &batch_records(), 1).await;
    assert_eq!(
        scalar::<i64>(&store, "SELECT count(*) FROM dataset").await,
        3
    );
    assert_eq!(scalar::<i64>(&store, "SELECT count(*) FROM visit").await, 2);
    assert_eq!(
        scalar::<i64>(&store, "SELECT count(*) FROM unknown_dataset").await,
        2
    );
    let counts = store
        .counts(DateTime::from_timestamp(0, 0).unwrap())
        .await
        .unwrap();
    assert_eq!((counts.datasets, counts.without_release), (3, 1));
    assert_eq!(counts.repositories["prompt_prep"]["PRESENT"], 1);
    assert_eq!(counts.repositories["prompt_prep"]["NEVER_PRESENT"], 2);
    let revision: String = scalar(&store, "SELECT version_num FROM alembic_version").await;
    assert_eq!(revision, "b59eced2ad76");

    // Opened again (a restart), nothing is migrated twice.
    drop(store);
    let store = Store::open(&db.url, &PoolSettings::default(), "public")
        .await
        .unwrap();
    assert_eq!(
        scalar::<i64>(&store, "SELECT count(*) FROM dataset").await,
        3
    );
}

#[tokio::test]
async fn a_schema_of_our_earlier_layout_is_converted_without_losing_a_row() {
    let env = TestEnv::start().await.unwrap();
    let db = env.fresh_database("pps_convert").await.unwrap();
    let schema = "pc_state";
    let old = Store::open_at(&db.url, &PoolSettings::default(), schema, 2)
        .await
        .unwrap();
    // What migrations 1 and 2 recorded of a batch: a group, a visit, an exposure, two datasets
    // and an unknown id.
    sqlx::raw_sql(
        r#"INSERT INTO batch VALUES ('00000000-0000-0000-0000-000000000001', 'prompt_processing',
               'b.json', 2, 1, 'events', 0, 5, '2026-05-02T01:00:00Z');
           INSERT INTO "group" VALUES ('LSSTCam', 'g42');
           INSERT INTO visit VALUES ('LSSTCam', 42, 20260501, '2026-05-02T00:00:00Z');
           INSERT INTO exposure VALUES ('LSSTCam', 42, 20260501, 'g42', '2026-05-02T00:00:00Z');
           INSERT INTO dataset (id, dataset_type, run, instrument, detector, visit, exposure,
               "group", day_obs, data_id, ingest_date, observation_end, observation_end_source,
               release_at, embargo_status, batch_id, recorded_at, origin, embargo_hours,
               publish_to_public, retention_days, release_basis)
           VALUES ('00000000-0000-0000-0000-000000000011', 'preliminary_visit_image', 'run', 'LSSTCam',
               3, 42, NULL, NULL, 20260501, '{"instrument": "LSSTCam", "detector": 3, "visit": 42}',
               '2026-05-02T00:30:00Z', '2026-05-02T00:00:00Z', 'visit', '2026-05-05T08:00:00Z',
               'PRESENT', '00000000-0000-0000-0000-000000000001', '2026-05-02T01:00:00Z', 1, 80,
               true, NULL, 'visit_end'),
                  ('00000000-0000-0000-0000-000000000012', 'isr_statistics', 'run', 'LSSTCam',
               3, NULL, 42, 'g42', 20260501, '{"instrument": "LSSTCam", "detector": 3, "exposure": 42}',
               '2026-05-02T00:30:00Z', '2026-05-02T00:00:00Z', 'exposure', NULL,
               'PRESENT', '00000000-0000-0000-0000-000000000001', '2026-05-02T01:00:00Z', 1, NULL,
               NULL, NULL, 'not_listed');
           INSERT INTO unknown_dataset VALUES ('00000000-0000-0000-0000-000000000099',
               '00000000-0000-0000-0000-000000000001', 'b.json', 'events', 0, 5, '2026-05-02T01:00:00Z');"#,
    )
    .execute(old.pool())
    .await
    .unwrap();
    drop(old);

    let store = Store::open(&db.url, &PoolSettings::default(), schema)
        .await
        .unwrap();
    assert_eq!(columns(&store).await, pps_columns());
    let counts = store
        .counts(DateTime::from_timestamp(0, 0).unwrap())
        .await
        .unwrap();
    assert_eq!(
        (
            counts.datasets,
            counts.embargoed,
            counts.never_released,
            counts.without_release
        ),
        (2, 1, 1, 0)
    );
    assert_eq!((counts.unknown, counts.events), (1, 1));
    let visit: String = scalar(
        &store,
        "SELECT format('%s %s %s', id, day_obs, embargo_status) FROM visit",
    )
    .await;
    assert_eq!(visit, "42 20260501 1");
    let exposure: String = scalar(
        &store,
        "SELECT format('%s %s', id, can_see_sky) FROM exposure",
    )
    .await;
    assert_eq!(exposure, "42 t");
    let kept: String = scalar(
        &store,
        "SELECT string_agg(format('%s %s %s %s %s', d.dataset_type, d.butler_data_id, r.run,
                 r.release_at AT TIME ZONE 'UTC', r.release_basis), ' | ' ORDER BY d.id)
         FROM dataset d JOIN dataset_release r ON r.id = d.id",
    )
    .await;
    assert_eq!(
        kept,
        r#"preliminary_visit_image {"detector": 3} run 2026-05-05 08:00:00 visit_end | isr_statistics {"detector": 3, "exposure": 42} run  not_listed"#
    );
    let unknown: i64 = scalar(&store, "SELECT count(*) FROM unknown_dataset_batch").await;
    assert_eq!(unknown, 1);
}
