//! What every service needs to reach a daf_butler repository's database, in one place: where the
//! registry is (`butler.yaml`), the credentials daf_butler users give (`db-auth.yaml`,
//! `PGPASSWORD`), a connection pool named for the service that opens it, and the one
//! classification of database errors (retry, reject, stop) that every service acts on.
//!
//! # Layout
//! - [`config`]: the repository's `butler.yaml`: registry database, namespace, datastores.
//! - [`db_auth`]: credentials from the URL, `PGPASSWORD` or a `db-auth.yaml` file.
//! - [`pool`]: connection options and pools, with the application name the server shows.
//! - [`errors`]: SQLSTATE classes and [`DatabaseError`], a database error with what was being
//!   done.

pub mod config;
pub mod db_auth;
pub mod errors;
pub mod pool;

pub use config::{ButlerConfig, DatastoreConfig, RepositoryError};
pub use db_auth::{DbAuthError, connect_options, default_auth_file, redact};
pub use errors::{DatabaseError, Doing, ErrorClass, classify, describe, sqlstate};
pub use pool::{PoolSettings, open_pool};
