//! The physical yardstick of the benchmarks: the registry rows a writer wrote, dumped with
//! `COPY ... TO` and loaded with `COPY ... FROM` into a clone of the same registry (the same
//! bootstrap: indexes, foreign keys and triggers on). What Postgres itself needs for exactly those
//! rows is the floor no writer can beat with this schema.
//!
//! Rows are told apart by the transaction that wrote them: [`mark`] reads the current transaction
//! id before a batch, and [`rows_between`] takes every row whose `xmin` lies between two marks
//! (a fresh cluster has not wrapped around, so 32-bit `xmin` and `txid_current()` compare).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::Context;
use futures_util::TryStreamExt;
use sqlx::{Connection, PgConnection};

use crate::TestRegistry;

/// The rows one stretch of transactions wrote, table by table in foreign-key order.
#[derive(Debug, Clone, Default)]
pub struct WrittenRows {
    /// `(table, COPY text data)`, parents before children.
    pub tables: Vec<(String, Vec<u8>)>,
}

impl WrittenRows {
    /// Bytes of COPY data.
    pub fn bytes(&self) -> usize {
        self.tables.iter().map(|(_, data)| data.len()).sum()
    }
}

/// The next transaction id of `registry`'s database: rows written after this call have an
/// `xmin` at or above it.
pub async fn mark(registry: &TestRegistry) -> anyhow::Result<i64> {
    let mut conn = PgConnection::connect(&registry.database_url).await?;
    let (xid,): (i64,) = sqlx::query_as("SELECT txid_current()")
        .fetch_one(&mut conn)
        .await?;
    // txid_current() consumed this id; the next writer gets a later one.
    Ok(xid + 1)
}

/// Every row of the registry's tables written by transactions in `[from, to)`.
pub async fn rows_between(
    registry: &TestRegistry,
    from: i64,
    to: i64,
) -> anyhow::Result<WrittenRows> {
    let mut conn = PgConnection::connect(&registry.database_url).await?;
    let mut written = WrittenRows::default();
    for table in tables_in_fk_order(&mut conn, &registry.namespace).await? {
        let statement = format!(
            "COPY (SELECT * FROM \"{ns}\".\"{table}\" WHERE xmin::text::bigint >= {from} \
             AND xmin::text::bigint < {to}) TO STDOUT",
            ns = registry.namespace
        );
        let chunks: Vec<_> = conn
            .copy_out_raw(&statement)
            .await
            .with_context(|| format!("COPY {table} TO"))?
            .try_collect()
            .await?;
        let data: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        if !data.is_empty() {
            written.tables.push((table, data));
        }
    }
    Ok(written)
}

/// Loads `rows` into `registry` in one transaction, one `COPY ... FROM STDIN` per table, with
/// `psql`: the time from BEGIN to the end of COMMIT, by the server's clock.
///
/// psql rather than sqlx: libpq turns Nagle's algorithm off, sqlx does not, and a COPY's data and
/// its end go as two small writes, so over TCP every table then waits out a delayed ACK (about
/// 40 ms, measured here), which would make the floor a client artefact.
pub async fn load(registry: &TestRegistry, rows: &WrittenRows) -> anyhow::Result<Duration> {
    let mut child = tokio::process::Command::new("psql")
        .args(["-X", "-q", "-A", "-t", "-d", &registry.database_url])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("starting psql")?;
    {
        use tokio::io::AsyncWriteExt;
        // Written piece by piece rather than as one script: the rows of a whole backlog run to
        // hundreds of megabytes, and a second copy of them would only cost memory. Nothing but
        // writes to the pipe happens between BEGIN and COMMIT, as with one script.
        let mut stdin = child.stdin.take().context("psql's stdin")?;
        stdin
            .write_all(
                b"\\set ON_ERROR_STOP 1\nSELECT clock_timestamp() AS copy_started \\gset\nBEGIN;\n",
            )
            .await?;
        for (table, data) in &rows.tables {
            let copy = format!("COPY \"{}\".\"{table}\" FROM STDIN;\n", registry.namespace);
            stdin.write_all(copy.as_bytes()).await?;
            stdin.write_all(data).await?;
            stdin.write_all(b"\\.\n").await?;
        }
        stdin
            .write_all(
                b"COMMIT;\nSELECT extract(epoch FROM clock_timestamp() - :'copy_started'::timestamptz);\n",
            )
            .await?;
    }
    let output = child.wait_with_output().await?;
    anyhow::ensure!(
        output.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let seconds: f64 = String::from_utf8_lossy(&output.stdout)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .context("psql printed no time")?
        .trim()
        .parse()
        .context("psql's time")?;
    Ok(Duration::from_secs_f64(seconds))
}

/// The namespace's tables, every table after the tables its foreign keys point to.
async fn tables_in_fk_order(
    conn: &mut PgConnection,
    namespace: &str,
) -> anyhow::Result<Vec<String>> {
    let tables: Vec<(String,)> =
        sqlx::query_as("SELECT tablename::text FROM pg_tables WHERE schemaname = $1 ORDER BY 1")
            .bind(namespace)
            .fetch_all(&mut *conn)
            .await?;
    let edges: Vec<(String, String)> = sqlx::query_as(
        "SELECT c.relname::text, p.relname::text FROM pg_constraint k \
         JOIN pg_class c ON c.oid = k.conrelid JOIN pg_class p ON p.oid = k.confrelid \
         JOIN pg_namespace n ON n.oid = k.connamespace \
         WHERE k.contype = 'f' AND n.nspname = $1 AND k.conrelid <> k.confrelid",
    )
    .bind(namespace)
    .fetch_all(&mut *conn)
    .await?;
    let mut parents: BTreeMap<String, BTreeSet<String>> = tables
        .into_iter()
        .map(|(t,)| (t, BTreeSet::new()))
        .collect();
    for (child, parent) in edges {
        if parents.contains_key(&parent)
            && let Some(set) = parents.get_mut(&child)
        {
            set.insert(parent);
        }
    }
    let mut ordered = Vec::new();
    while !parents.is_empty() {
        let ready: Vec<String> = parents
            .iter()
            .filter(|(_, p)| p.is_empty())
            .map(|(t, _)| t.clone())
            .collect();
        anyhow::ensure!(!ready.is_empty(), "a foreign-key cycle among {parents:?}");
        for table in &ready {
            parents.remove(table);
        }
        for set in parents.values_mut() {
            for table in &ready {
                set.remove(table);
            }
        }
        ordered.extend(ready);
    }
    Ok(ordered)
}
