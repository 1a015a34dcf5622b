//! Step 3b of a batch, inside its dataset transaction, once the checks have passed: the RUNs
//! created on first use (in name order, as daf_butler sorts them against deadlocks); per tags
//! table the `dataset` rows, the collection summaries and the tags rows; then
//! `dataset_location` and the datastore records for files no datastore knows yet.

use std::collections::{BTreeSet, HashMap};
use std::time::{SystemTime, UNIX_EPOCH};

use butler_repository::{DatabaseError, DatastoreConfig, Doing};
use serde_json::Value;
use sqlx::{AssertSqlSafe, PgConnection, Row};
use tracing::info;
use uuid::Uuid;

use super::Registry;
use super::dataset_checks::RunState;
use super::datasets::{DatasetColumns, NULL_COMPONENT, PreparedDataset};
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
        insert_datastore_rows(conn, &self.namespace_sql, &self.datastores, datasets)
            .await
            .doing("inserting datastore records")?;
        Ok(new_ids)
    }

    /// The registry rows of one tags table's datasets in one statement: the collection
    /// summaries, `dataset` (an existing id is left as it is) and the tags rows, each `INSERT` a
    /// CTE. Foreign keys are checked at the end of the statement, so the tags rows find the
    /// summaries and `dataset` rows the statement itself wrote. `ingest_dates` gives the TAI-ns
    /// `ingest_date` of each RUN. Returns the ids that were new.
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
        let dates = datasets
            .iter()
            .map(|d| ingest_dates.get(&d.run).copied().unwrap_or_default())
            .collect();
        let columns = DatasetColumns::new(table, datasets, runs).with_int8("ingest_date", dates);
        let mut summaries = vec![type_summaries(ns, datasets, runs)];
        summaries.extend(self.governor_summaries(tables, dimensions, datasets, runs));
        let summary_ctes: String = summaries
            .iter()
            .enumerate()
            .map(|(i, (insert, _))| {
                let parameter = format!("${}", columns.parameters() + 1 + i);
                format!("summary_{i} AS ({}),\n", insert.replace("$?", &parameter))
            })
            .collect();
        let dimension_list = dimensions
            .iter()
            .map(|d| ident(d))
            .collect::<Vec<_>>()
            .join(", ");
        let separator = if dimension_list.is_empty() { "" } else { ", " };
        let sql = format!(
            "WITH n AS MATERIALIZED (SELECT * FROM {source}),
             {summary_ctes}
             new AS (
                 INSERT INTO {ns}.dataset (id, dataset_type_id, run_id, ingest_date)
                 SELECT id, dataset_type_id, run_id, ingest_date FROM n
                 ON CONFLICT (id) DO NOTHING RETURNING id),
             tagged AS (
                 INSERT INTO {ns}.{tags} (dataset_type_id, dataset_id, collection_id{separator}{dimension_list})
                 SELECT dataset_type_id, id, run_id{separator}{dimension_list} FROM n
                 ON CONFLICT (dataset_id, collection_id) DO NOTHING)
             SELECT id FROM new",
            source = columns.source(1),
            tags = ident(&table.name)
        );
        let mut query = columns.bind(sqlx::query(AssertSqlSafe(sql)));
        for (_, rows) in &summaries {
            query = query.bind(sqlx::types::Json(rows));
        }
        query
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|row| row.try_get("id"))
            .collect()
    }

    /// `collection_summary_<governor>` rows: each RUN's values of each governor dimension
    /// (`instrument`) the datasets' type has. A handful of distinct rows, computed here rather
    /// than by the server from the whole batch. Each `INSERT` reads its rows from `$?`.
    fn governor_summaries(
        &self,
        tables: &Tables,
        dimensions: &[String],
        datasets: &[&PreparedDataset],
        runs: &HashMap<String, RunState>,
    ) -> Vec<(String, Value)> {
        let mut summaries = Vec::new();
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
            summaries.push((
                format!(
                    "INSERT INTO {ns}.{table} (collection_id, {column})
                     SELECT collection_id, value FROM jsonb_to_recordset($?) AS s(collection_id int8, value {kind})
                     ON CONFLICT DO NOTHING",
                    ns = self.namespace_sql,
                    table = ident(&summary),
                    column = ident(governor),
                ),
                rows,
            ));
        }
        summaries
    }
}

/// The `collection_id` of a dataset's RUN, once it exists.
fn run_id(runs: &HashMap<String, RunState>, dataset: &PreparedDataset) -> Option<i64> {
    match runs.get(&dataset.run) {
        Some(RunState::Exists(id)) => Some(*id),
        _ => None,
    }
}

/// `collection_summary_dataset_type` rows (each RUN's dataset types), read from `$?`.
fn type_summaries(
    ns: &str,
    datasets: &[&PreparedDataset],
    runs: &HashMap<String, RunState>,
) -> (String, Value) {
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
    (
        format!(
            "INSERT INTO {ns}.collection_summary_dataset_type (collection_id, dataset_type_id)
             SELECT collection_id, dataset_type_id FROM jsonb_to_recordset($?) AS s(collection_id int8, dataset_type_id int8)
             ON CONFLICT DO NOTHING"
        ),
        rows,
    )
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

/// `dataset_location` and the records-table rows of each datastore (`record_validation_info=False`:
/// no checksum, file size -1) for the datasets of files no datastore knows, in one statement: its
/// CTEs all read the registry as it was before any of them wrote, so the files known are those
/// known before this batch. A dataset is known when a records table has a row for it (one index
/// probe per dataset, whatever the planner's statistics of a new table say).
async fn insert_datastore_rows(
    conn: &mut PgConnection,
    ns: &str,
    datastores: &[DatastoreConfig],
    datasets: &[(usize, &PreparedDataset)],
) -> Result<(), sqlx::Error> {
    let names: BTreeSet<&str> = datastores.iter().map(|d| d.name.as_str()).collect();
    let records_tables: BTreeSet<&str> = datastores
        .iter()
        .map(|d| d.records_table.as_str())
        .collect();
    if datasets.is_empty() || names.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = datasets.iter().map(|(_, d)| d.id).collect();
    // A file is a message's file: (message position, file position).
    let position = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    let messages: Vec<i64> = datasets.iter().map(|(index, _)| position(*index)).collect();
    let files: Vec<i64> = datasets.iter().map(|(_, d)| position(d.file)).collect();
    let paths: Vec<&str> = datasets.iter().map(|(_, d)| d.path.as_str()).collect();
    let formatters: Vec<&str> = datasets.iter().map(|(_, d)| d.formatter.as_str()).collect();
    let storage_classes: Vec<&str> = datasets
        .iter()
        .map(|(_, d)| d.dataset_type.storage_class.as_str())
        .collect();
    let known = records_tables
        .iter()
        .map(|table| {
            format!(
                "SELECT n.message, n.file FROM n, LATERAL (SELECT 1 FROM {ns}.{} r WHERE r.dataset_id = n.id LIMIT 1) AS k",
                ident(table)
            )
        })
        .collect::<Vec<_>>()
        .join(" UNION ");
    // Parameters: $1-$6 the columns, $7 the component, then one per datastore name.
    let mut writes: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(i, _)| {
            format!(
                "location_{i} AS (INSERT INTO {ns}.dataset_location (datastore_name, dataset_id)
                 SELECT ${}, id FROM todo ON CONFLICT DO NOTHING)",
                8 + i
            )
        })
        .collect();
    writes.extend(records_tables.iter().enumerate().map(|(i, table)| {
        format!(
            "records_{i} AS (INSERT INTO {ns}.{} (dataset_id, path, formatter, storage_class, component, checksum, file_size)
             SELECT id, path, formatter, storage_class, $7, NULL, -1 FROM todo
             ON CONFLICT (dataset_id, component) DO NOTHING)",
            ident(table)
        )
    }));
    let sql = format!(
        "WITH n AS MATERIALIZED (
             SELECT * FROM unnest($1::uuid[], $2::int8[], $3::int8[], $4::text[], $5::text[], $6::text[])
             AS n(id, message, file, path, formatter, storage_class)),
         known AS ({known}),
         todo AS MATERIALIZED (SELECT * FROM n WHERE (n.message, n.file) NOT IN (SELECT message, file FROM known)),
         {}
         SELECT count(*) FROM todo",
        writes.join(",\n")
    );
    let mut query = sqlx::query(AssertSqlSafe(sql))
        .bind(&ids)
        .bind(&messages)
        .bind(&files)
        .bind(&paths)
        .bind(&formatters)
        .bind(&storage_classes)
        .bind(NULL_COMPONENT);
    for name in &names {
        query = query.bind(*name);
    }
    query.execute(&mut *conn).await?;
    Ok(())
}
