//! S3 through object_store: the [`Resolver`] that turns an environment into one client per
//! (profile, bucket), the three operations, and the classification of S3 failures.

use std::collections::HashMap;
use std::error::Error as _;
use std::fmt;
use std::sync::{Arc, Mutex, Once, OnceLock};
use std::time::Duration;

use futures_util::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::client::{HttpError, HttpErrorKind};
use object_store::path::Path as ObjectPath;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig,
};
use secrecy::ExposeSecret;
use tracing::debug;

use crate::config::{self, ConfigError, Env, S3Settings};
use crate::error::{Error, ErrorKind, Operation};
use crate::path::ResourcePath;

/// Connecting to an endpoint that does not answer within this is a network failure.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A whole request; batch files and butler.yaml are kilobytes, so this only bounds a hung server.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// object_store's own retries only ride out a blip (a dropped connection, one 503): callers own
/// the long retry with backoff, and an outage must reach them as [`ErrorKind::Transient`]
/// within seconds so that readiness can report it, not after object_store's default 3 minutes.
fn retry_config() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            base: 2.0,
        },
        max_retries: 3,
        retry_timeout: Duration::from_secs(20),
    }
}

/// One client per (profile, bucket).
type Stores = HashMap<(Option<String>, String), Arc<AmazonS3>>;

/// Resolves S3 locations against an environment, and keeps one client per (profile, bucket).
///
/// [`Resolver::global`] reads the process environment once, at first use; tests build their
/// own with [`Resolver::from_vars`] instead of changing the process environment. `Debug` shows
/// variable names, never values.
pub struct Resolver {
    env: Env,
    stores: Mutex<Stores>,
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cached = self.stores.lock().map(|s| s.len()).unwrap_or(0);
        f.debug_struct("Resolver")
            .field("env", &self.env)
            .field("cached_clients", &cached)
            .finish()
    }
}

impl Resolver {
    /// A resolver over a snapshot of the process environment (variables that are not UTF-8 are
    /// skipped).
    pub fn from_process_env() -> Self {
        Self::with_env(Env::from_process())
    }

    /// A resolver over exactly these variables.
    pub fn from_vars<I, K, V>(vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Self::with_env(Env::from_vars(vars))
    }

    fn with_env(env: Env) -> Self {
        Self {
            env,
            stores: Mutex::new(HashMap::new()),
        }
    }

    /// The process-wide resolver the plain [`ResourcePath`] operations use: the process
    /// environment as it was at first use.
    pub fn global() -> &'static Self {
        static GLOBAL: OnceLock<Resolver> = OnceLock::new();
        GLOBAL.get_or_init(Self::from_process_env)
    }

    /// The endpoint, credentials and region for `profile` (`None` for `s3://bucket/...`), as
    /// described in the crate documentation. Reads the shared credentials file when it comes
    /// to that.
    pub fn s3_settings(&self, profile: Option<&str>) -> Result<S3Settings, ConfigError> {
        config::resolve(&self.env, profile)
    }

    /// The client for `path`'s (profile, bucket), built on first use. Resolution failures are
    /// not cached: a credentials file that appears later is picked up.
    fn store(&self, op: Operation, path: &ResourcePath) -> Result<Arc<AmazonS3>, Error> {
        let Some((profile, bucket, _)) = path.s3_parts() else {
            return Err(Error::new(
                ErrorKind::Fatal,
                op,
                path,
                "not an S3 location",
                None,
            ));
        };
        let key = (profile.map(str::to_owned), bucket.to_owned());
        if let Some(store) = self.lock_stores().get(&key) {
            return Ok(Arc::clone(store));
        }
        let settings = self
            .s3_settings(profile)
            .map_err(|e| Error::new(ErrorKind::Configuration, op, path, e.to_string(), None))?;
        let store = Arc::new(build_store(&settings, bucket).map_err(|e| {
            Error::new(
                ErrorKind::Configuration,
                op,
                path,
                "cannot build the S3 client",
                Some(Box::new(e)),
            )
        })?);
        debug!(
            profile = profile.unwrap_or(""),
            bucket,
            endpoint = settings.endpoint.as_deref().unwrap_or("AWS"),
            endpoint_variable = settings.endpoint_variable.as_deref().unwrap_or(""),
            region = %settings.region,
            credentials = %settings.credentials.source,
            "s3 client created"
        );
        // Two tasks racing here build two equivalent clients; the first one stored wins.
        Ok(Arc::clone(self.lock_stores().entry(key).or_insert(store)))
    }

    fn lock_stores(&self) -> std::sync::MutexGuard<'_, Stores> {
        // The map holds no invariant a panicking holder could break.
        self.stores
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn build_store(settings: &S3Settings, bucket: &str) -> object_store::Result<AmazonS3> {
    install_crypto_provider();
    let credentials = &settings.credentials;
    let mut builder = AmazonS3Builder::new()
        .with_bucket_name(bucket)
        .with_region(&settings.region)
        .with_access_key_id(&credentials.access_key_id)
        .with_secret_access_key(credentials.secret_access_key.expose_secret())
        // Path-style (endpoint/bucket/key), which Ceph RGW endpoints need; AWS accepts it too.
        .with_virtual_hosted_style_request(false)
        .with_retry(retry_config())
        .with_client_options(
            ClientOptions::new()
                .with_allow_http(settings.allow_http)
                .with_connect_timeout(CONNECT_TIMEOUT)
                .with_timeout(REQUEST_TIMEOUT),
        );
    if let Some(token) = &credentials.session_token {
        builder = builder.with_token(token.expose_secret());
    }
    if let Some(endpoint) = &settings.endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    // No checksum algorithm is set, so requests carry no flexible checksums: what boto3 does
    // with AWS_REQUEST_CHECKSUM_CALCULATION=WHEN_REQUIRED, which Ceph RGW needs.
    builder.build()
}

/// reqwest is built without a bundled rustls provider (see the workspace Cargo.toml): install
/// ring as the process default once, unless the program installed one of its own.
fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            // Err means another thread installed one first, which serves as well.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
    });
}

fn object_path(op: Operation, path: &ResourcePath, key: &str) -> Result<ObjectPath, Error> {
    ObjectPath::parse(key).map_err(|e| {
        Error::new(
            ErrorKind::InvalidUri,
            op,
            path,
            format!("the key cannot be used with object_store: {e}"),
            None,
        )
    })
}

pub(crate) async fn read(resolver: &Resolver, path: &ResourcePath) -> Result<Vec<u8>, Error> {
    let op = Operation::Read;
    let key = file_key(op, path)?;
    let store = resolver.store(op, path)?;
    let location = object_path(op, path, key)?;
    let result = store
        .get(&location)
        .await
        .map_err(|e| classify(op, path, e))?;
    let bytes = result.bytes().await.map_err(|e| classify(op, path, e))?;
    Ok(Vec::from(bytes))
}

pub(crate) async fn write(
    resolver: &Resolver,
    path: &ResourcePath,
    data: Vec<u8>,
) -> Result<(), Error> {
    let op = Operation::Write;
    let key = file_key(op, path)?;
    let store = resolver.store(op, path)?;
    let location = object_path(op, path, key)?;
    // One PUT: S3 makes the object visible whole or not at all.
    store
        .put(&location, PutPayload::from(data))
        .await
        .map_err(|e| classify(op, path, e))?;
    Ok(())
}

/// A file: HEAD on its key. A directory: something under its prefix (S3 has no directories; a
/// prefix exists when an object does under it). The bucket root: the bucket exists.
pub(crate) async fn exists(resolver: &Resolver, path: &ResourcePath) -> Result<bool, Error> {
    let op = Operation::Exists;
    let Some((_, _, key)) = path.s3_parts() else {
        return Err(Error::new(
            ErrorKind::Fatal,
            op,
            path,
            "not an S3 location",
            None,
        ));
    };
    let store = resolver.store(op, path)?;
    let outcome = if path.is_dir() {
        let prefix = key.trim_end_matches('/');
        let prefix = if prefix.is_empty() {
            None
        } else {
            Some(object_path(op, path, prefix)?)
        };
        let is_root = prefix.is_none();
        let mut listing = store.list(prefix.as_ref());
        match listing.next().await {
            None => Ok(is_root),
            Some(Ok(_)) => Ok(true),
            Some(Err(e)) => Err(e),
        }
    } else {
        store.head(&object_path(op, path, key)?).await.map(|_| true)
    };
    match outcome.map_err(|e| classify(op, path, e)) {
        Ok(found) => Ok(found),
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(e),
    }
}

fn file_key(op: Operation, path: &ResourcePath) -> Result<&str, Error> {
    match path.s3_parts() {
        Some((_, _, key)) if !path.is_dir() => Ok(key),
        Some(_) => Err(Error::new(
            ErrorKind::InvalidUri,
            op,
            path,
            "a directory, not a file",
            None,
        )),
        None => Err(Error::new(
            ErrorKind::Fatal,
            op,
            path,
            "not an S3 location",
            None,
        )),
    }
}

/// What the caller must do about an object_store error.
///
/// object_store maps 404, 401 and 403 to variants of its own for object requests, but not for
/// listings; anything else arrives as `Generic` around its private retry error. A network
/// failure shows as an [`HttpError`] in the cause chain; an HTTP status only in the retry
/// error's message ("... status code: 503 ..."), which is where this looks for it.
fn classify(op: Operation, path: &ResourcePath, err: object_store::Error) -> Error {
    let (kind, reason) = match &err {
        object_store::Error::NotFound { .. } => status_kind(op, 404),
        object_store::Error::PermissionDenied { .. } => status_kind(op, 403),
        object_store::Error::Unauthenticated { .. } => status_kind(op, 401),
        other => classify_generic(op, other),
    };
    Error::new(kind, op, path, reason, Some(Box::new(err)))
}

fn classify_generic(op: Operation, err: &object_store::Error) -> (ErrorKind, String) {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = err.source();
    let mut status = None;
    while let Some(current) = cause {
        if let Some(http) = current.downcast_ref::<HttpError>() {
            let what = match http.kind() {
                HttpErrorKind::Connect => "cannot connect to the S3 endpoint",
                HttpErrorKind::Timeout => "the S3 request timed out",
                HttpErrorKind::Request | HttpErrorKind::Interrupted => "the S3 request failed",
                HttpErrorKind::Decode => "the S3 response could not be read",
                _ => "HTTP error talking to S3",
            };
            return (ErrorKind::Transient, what.to_owned());
        }
        status = status.or_else(|| status_in(&current.to_string()));
        cause = current.source();
    }
    match status {
        Some(code) => status_kind(op, code),
        None => (ErrorKind::Fatal, "S3 request failed".to_owned()),
    }
}

/// What an HTTP status from S3 asks of the caller.
fn status_kind(op: Operation, code: u16) -> (ErrorKind, String) {
    match code {
        // On a PUT, only the bucket can be missing.
        404 if op == Operation::Write => (
            ErrorKind::Configuration,
            "S3 answered 404 to a PUT: the bucket does not exist".to_owned(),
        ),
        404 => (ErrorKind::NotFound, String::new()),
        403 => (
            ErrorKind::PermissionDenied,
            "S3 answered 403 (bad credentials, or not allowed)".to_owned(),
        ),
        401 => (
            ErrorKind::PermissionDenied,
            "S3 answered 401 (not authenticated)".to_owned(),
        ),
        408 | 429 | 500..=599 => (ErrorKind::Transient, format!("S3 answered {code}")),
        _ => (ErrorKind::Fatal, format!("S3 answered {code}")),
    }
}

/// The status in object_store's "Server returned non-2xx status code: 503 Service Unavailable:
/// ..." message.
fn status_in(message: &str) -> Option<u16> {
    const MARKER: &str = "status code: ";
    let start = message.find(MARKER)? + MARKER.len();
    let digits = message.get(start..start + 3)?;
    digits.parse().ok().filter(|code| (100..600).contains(code))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_from_messages() {
        assert_eq!(
            status_in(
                "Error performing GET http://x in 1s - Server returned non-2xx status code: 503 Service Unavailable: "
            ),
            Some(503)
        );
        assert_eq!(status_in("status code: 4"), None);
        assert_eq!(status_in("no status"), None);
    }

    #[test]
    fn resolver_debug_hides_values() {
        let resolver = Resolver::from_vars([("AWS_SECRET_ACCESS_KEY", "hunter2")]);
        let debug = format!("{resolver:?}");
        assert!(debug.contains("AWS_SECRET_ACCESS_KEY") && !debug.contains("hunter2"));
    }

    #[tokio::test]
    async fn configuration_errors_name_the_resource() {
        let resolver = Resolver::from_vars([("HOME", "/nonexistent-home")]);
        let path = ResourcePath::parse("s3://embargo@bucket/x.json").unwrap();
        let err = ResourcePath::read_with(&path, &resolver).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Configuration);
        let message = err.to_string();
        assert!(message.starts_with("reading s3://embargo@bucket/x.json: bad configuration"));
        assert!(
            message.contains("LSST_RESOURCES_S3_PROFILE_embargo"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn directories_cannot_be_read_or_written() {
        let resolver =
            Resolver::from_vars([("AWS_ACCESS_KEY_ID", "K"), ("AWS_SECRET_ACCESS_KEY", "S")]);
        let dir = ResourcePath::parse("s3://bucket/prefix/").unwrap();
        let err = dir
            .write_with(&resolver, b"x".as_slice())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidUri);
        let err = dir.read_with(&resolver).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidUri);
    }
}
