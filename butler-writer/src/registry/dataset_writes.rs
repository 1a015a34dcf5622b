//! Step 3b of a batch, inside its dataset transaction, once the checks have passed: the RUNs
//! created on first use (in name order, as daf_butler sorts them against deadlocks); per tags
//! table the `dataset` rows, the collection summaries and the tags rows; then
//! `dataset_location` and the datastore records for files no datastore knows yet.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{SystemTime, UNIX_EPOCH};

use butler_repository::{DatabaseError, DatastoreConfig, Doing};
use serde_json::Value;
use sqlx::{AssertSqlSafe, PgConnection};
use tracing::info;
use uuid::Uuid;

use super::Registry;
use super::dataset_checks::RunState;
use super::datasets::{NULL_COMPONENT, PreparedDataset, record_definition, rows};
use super::model::{Table, Tables, ident};
use super::prepare::per_table;

impl Registry {
    /// Writes the datasets that passed the checks (each once) and returns the ids that were new.
    pub(super) async fn write_datasets(
        &self,
        conn: &mut PgConnection,
        datasets: &[(usize, &PreparedDataset)],
        runs: &mut HashMap<String, RunState>,
    ) -> Result<Vec<Uuid>, DatabaseError> {
        let needed: BTreeSet<&str> = datasets.iter().map(|(_, d)| d.run.as_str()).collect();
        for run in needed {
            if runs.get(run) == Some(&RunState::New) {
                let id = create_run(conn, &self.namespace_sql, run)
                    .await
                    .doing("creating a RUN collection")?;
                info!(run, collection_id = id, "RUN collection created");
                runs.insert(run.to_owned(), RunState::Exists(id));
            }
        }
        let tables = self.catalog.tables();
        let mut new_ids = Vec::new();
        for (table, rows) in per_table(&tables, datasets) {
            // daf_butler stamps `ingest_date` once per (dimension group, RUN): TAI ns at
            // microsecond resolution.
            let ingest_dates: HashMap<String, i64> =
                rows.iter().map(|d| (d.run.clone(), tai_now_ns())).collect();
            let inserted = self
                .insert_registry_rows(conn, &tables, table, &rows, runs, &ingest_dates)
                .await
                .doing("inserting datasets")?;
            new_ids.extend(inserted);
        }
        self.insert_file_records(conn, datasets)
            .await
            .doing("inserting datastore records")?;
        Ok(new_ids)
    }

    /// The registry rows of one tags table's datasets: `dataset` (an existing id is left as it
    /// is), the collection summaries (before the tags rows, which reference them), the tags rows.
    /// `ingest_dates` gives the TAI-ns `ingest_date` of each RUN. Returns the ids that were new.
    async fn insert_registry_rows(
        &self,
        conn: &mut PgConnection,
        tables: &Tables,
        table: &Table,
        datasets: &[&PreparedDataset],
        runs: &HashMap<String, RunState>,
        ingest_dates: &HashMap<String, i64>,
    ) -> Result<Vec<Uuid>, sqlx::Error> {
        let Some(first) = datasets.first() else {
            return Ok(Vec::new());
        };
        let dimensions = &first.dataset_type.dimensions;
        let ns = &self.namespace_sql;
        let definition = record_definition(table, dimensions, &[("ingest_date", "int8")]);
        let payload = rows(datasets, runs, |d, row| {
            row.insert(
                "ingest_date".into(),
                ingest_dates
                    .get(&d.run)
                    .map_or(Value::Null, |v| Value::from(*v)),
            );
        });
        let source = format!("jsonb_to_recordset($1) AS n({definition})");
        let new_ids: Vec<Uuid> = sqlx::query_scalar(AssertSqlSafe(format!(
            "INSERT INTO {ns}.dataset (id, dataset_type_id, run_id, ingest_date)
             SELECT id, dataset_type_id, run_id, ingest_date FROM {source}
             ON CONFLICT (id) DO NOTHING RETURNING id"
        )))
        .bind(sqlx::types::Json(&payload))
        .fetch_all(&mut *conn)
        .await?;
        insert_type_summaries(conn, ns, datasets, runs).await?;
        self.insert_governor_summaries(conn, tables, dimensions, datasets, runs)
            .await?;
        let dimension_list = dimensions
            .iter()
            .map(|d| ident(d))
            .collect::<Vec<_>>()
            .join(", ");
        let separator = if dimension_list.is_empty() { "" } else { ", " };
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {ns}.{tags} (dataset_type_id, dataset_id, collection_id{separator}{dimension_list})
             SELECT dataset_type_id, id, run_id{separator}{dimension_list} FROM {source}
             ON CONFLICT (dataset_id, collection_id) DO NOTHING",
            tags = ident(&table.name)
        )))
        .bind(sqlx::types::Json(&payload))
        .execute(&mut *conn)
        .await?;
        Ok(new_ids)
    }

    /// `collection_summary_<governor>` rows: each RUN's values of each governor dimension
    /// (`instrument`) the datasets' type has. A handful of distinct rows, computed here rather
    /// than by the server from the whole batch.
    async fn insert_governor_summaries(
        &self,
        conn: &mut PgConnection,
        tables: &Tables,
        dimensions: &[String],
        datasets: &[&PreparedDataset],
        runs: &HashMap<String, RunState>,
    ) -> Result<(), sqlx::Error> {
        for governor in self
            .universe
            .governors()
            .filter(|g| dimensions.iter().any(|d| d == g))
        {
            let summary = format!("collection_summary_{governor}");
            let Some(summary_table) = tables.get(&summary) else {
                continue;
            };
            let Some(position) = dimensions.iter().position(|d| d == governor) else {
                continue;
            };
            let pairs: BTreeSet<(i64, String)> = datasets
                .iter()
                .filter_map(|d| Some((run_id(runs, d)?, d.data_id.get(position)?.to_string())))
                .collect();
            let rows = Value::Array(
                pairs
                    .iter()
                    .filter_map(|(run, value)| {
                        let value: Value = serde_json::from_str(value).ok()?;
                        Some(serde_json::json!({"collection_id": run, "value": value}))
                    })
                    .collect(),
            );
            let kind = summary_table
                .column(governor)
                .map_or("text", super::model::Column::record_type);
            sqlx::query(AssertSqlSafe(format!(
                "INSERT INTO {ns}.{table} (collection_id, {column})
                 SELECT collection_id, value FROM jsonb_to_recordset($1) AS n(collection_id int8, value {kind})
                 ON CONFLICT DO NOTHING",
                ns = self.namespace_sql,
                table = ident(&summary),
                column = ident(governor),
            )))
            .bind(sqlx::types::Json(&rows))
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }

    /// Datastore rows for files no datastore knows yet: a file with any known dataset is skipped
    /// whole, as daf_butler's `_partition_datasets_by_known` does.
    async fn insert_file_records(
        &self,
        conn: &mut PgConnection,
        datasets: &[(usize, &PreparedDataset)],
    ) -> Result<(), sqlx::Error> {
        let ids: Vec<Uuid> = datasets.iter().map(|(_, d)| d.id).collect();
        let known = known_to_datastores(conn, &self.namespace_sql, &self.datastores, &ids).await?;
        let known_files: HashSet<(usize, usize)> = datasets
            .iter()
            .filter(|(_, d)| known.contains(&d.id))
            .map(|(index, d)| (*index, d.file))
            .collect();
        let to_record: Vec<&PreparedDataset> = datasets
            .iter()
            .filter(|(index, d)| !known_files.contains(&(*index, d.file)))
            .map(|(_, d)| *d)
            .collect();
        insert_datastore_rows(conn, &self.namespace_sql, &self.datastores, &to_record).await
    }
}

/// The `collection_id` of a dataset's RUN, once it exists.
fn run_id(runs: &HashMap<String, RunState>, dataset: &PreparedDataset) -> Option<i64> {
    match runs.get(&dataset.run) {
        Some(RunState::Exists(id)) => Some(*id),
        _ => None,
    }
}

/// `collection_summary_dataset_type` rows: each RUN's dataset types.
async fn insert_type_summaries(
    conn: &mut PgConnection,
    ns: &str,
    datasets: &[&PreparedDataset],
    runs: &HashMap<String, RunState>,
) -> Result<(), sqlx::Error> {
    let pairs: BTreeSet<(i64, i64)> = datasets
        .iter()
        .filter_map(|d| run_id(runs, d).map(|run| (run, d.dataset_type.id)))
        .collect();
    let rows = Value::Array(
        pairs
            .iter()
            .map(|(run, type_id)| serde_json::json!({"collection_id": run, "dataset_type_id": type_id}))
            .collect(),
    );
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {ns}.collection_summary_dataset_type (collection_id, dataset_type_id)
         SELECT collection_id, dataset_type_id FROM jsonb_to_recordset($1) AS n(collection_id int8, dataset_type_id int8)
         ON CONFLICT DO NOTHING"
    )))
    .bind(sqlx::types::Json(&rows))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Now, as daf_butler stamps `ingest_date`: TAI nanoseconds since 1970-01-01 TAI, at microsecond
/// resolution (astropy's `Time.now()` carries microseconds).
fn tai_now_ns() -> i64 {
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    let utc_ns = i64::try_from(micros).unwrap_or(i64::MAX / 1000) * 1000;
    schema::timespan::utc_unix_ns_to_tai_ns(utc_ns)
}

/// Creates a RUN collection the way `collections.register(run, RUN)` does: a `collection` row
/// numbered by the collection sequence (consumed only when the row is new), then its `run` row.
/// Safe when another writer creates the same RUN at the same moment: the unique name makes one
/// insert wait for the other and then do nothing.
async fn create_run(conn: &mut PgConnection, ns: &str, run: &str) -> Result<i64, sqlx::Error> {
    let sequence = format!("{ns}.{}", ident("collection_seq_collection_id"));
    let insert = format!(
        "INSERT INTO {ns}.collection (collection_id, name, type, doc)
         SELECT nextval('{}'), $1, 1, NULL WHERE NOT EXISTS (SELECT 1 FROM {ns}.collection WHERE name = $1)
         ON CONFLICT DO NOTHING",
        sequence.replace('\'', "''")
    );
    sqlx::query(AssertSqlSafe(insert))
        .bind(run)
        .execute(&mut *conn)
        .await?;
    let id: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT collection_id FROM {ns}.collection WHERE name = $1 AND type = 1"
    )))
    .bind(run)
    .fetch_one(&mut *conn)
    .await?;
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {ns}.run (collection_id) VALUES ($1) ON CONFLICT DO NOTHING"
    )))
    .bind(id)
    .execute(&mut *conn)
    .await?;
    Ok(id)
}

/// The ids among `ids` that some datastore already has records for (`datastore.knows_these`).
async fn known_to_datastores(
    conn: &mut PgConnection,
    ns: &str,
    datastores: &[DatastoreConfig],
    ids: &[Uuid],
) -> Result<HashSet<Uuid>, sqlx::Error> {
    let mut known = HashSet::new();
    let tables: BTreeSet<&str> = datastores
        .iter()
        .map(|d| d.records_table.as_str())
        .collect();
    for table in tables {
        let sql = format!(
            "SELECT dataset_id FROM {ns}.{} WHERE dataset_id = ANY($1)",
            ident(table)
        );
        let found: Vec<Uuid> = sqlx::query_scalar(AssertSqlSafe(sql))
            .bind(ids)
            .fetch_all(&mut *conn)
            .await?;
        known.extend(found);
    }
    Ok(known)
}

/// Inserts `dataset_location` and the records-table rows of each datastore for the datasets of
/// files no datastore knew (`record_validation_info=False`: no checksum, file size -1).
async fn insert_datastore_rows(
    conn: &mut PgConnection,
    ns: &str,
    datastores: &[DatastoreConfig],
    datasets: &[&PreparedDataset],
) -> Result<(), sqlx::Error> {
    if datasets.is_empty() {
        return Ok(());
    }
    let payload = Value::Array(
        datasets
            .iter()
            .map(|d| {
                serde_json::json!({
                    "id": d.id.to_string(),
                    "path": d.path,
                    "formatter": d.formatter,
                    "storage_class": d.dataset_type.storage_class,
                })
            })
            .collect(),
    );
    let source =
        "jsonb_to_recordset($1) AS n(id uuid, path text, formatter text, storage_class text)";
    for datastore in datastores {
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {ns}.dataset_location (datastore_name, dataset_id) SELECT $2, id FROM {source} ON CONFLICT DO NOTHING"
        )))
        .bind(sqlx::types::Json(&payload))
        .bind(&datastore.name)
        .execute(&mut *conn)
        .await?;
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {ns}.{records} (dataset_id, path, formatter, storage_class, component, checksum, file_size)
             SELECT id, path, formatter, storage_class, $2, NULL, -1 FROM {source}
             ON CONFLICT (dataset_id, component) DO NOTHING",
            records = ident(&datastore.records_table)
        )))
        .bind(sqlx::types::Json(&payload))
        .bind(NULL_COMPONENT)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}
