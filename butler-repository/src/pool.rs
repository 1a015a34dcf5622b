//! Connection pools to a repository's database (or any database named the same way).

use std::path::PathBuf;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

/// How a service connects: where credentials are and how large its pool is.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// The db-auth file to look credentials up in (`$LSST_DB_AUTH` or `~/.lsst/db-auth.yaml` by
    /// default).
    pub auth_file: Option<PathBuf>,
    /// Connections in the pool.
    pub max_connections: u32,
    /// Connections opened at start and kept open: a service that uses a fixed number at once
    /// keeps that many, so its first batches do not pay for connecting.
    pub min_connections: u32,
    /// How long to wait for a connection before calling the database unavailable.
    pub acquire_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            auth_file: crate::db_auth::default_auth_file(),
            max_connections: 4,
            min_connections: 0,
            acquire_timeout: Duration::from_secs(10),
        }
    }
}

/// Opens a pool with `options` (from [`crate::connect_options`], with whatever session settings
/// the caller adds) and connects once, so an unreachable server or refused credentials show at
/// once rather than at the first query.
pub async fn open_pool(
    options: PgConnectOptions,
    settings: &PoolSettings,
) -> Result<PgPool, sqlx::Error> {
    let max = settings.max_connections.max(1);
    PgPoolOptions::new()
        .max_connections(max)
        .min_connections(settings.min_connections.min(max))
        .acquire_timeout(settings.acquire_timeout)
        .connect_with(options)
        .await
}
