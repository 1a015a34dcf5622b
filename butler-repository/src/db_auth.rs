//! Database credentials the way daf_butler users provide them: in the URL, in `PGPASSWORD`, or in
//! a `db-auth.yaml` file (`$LSST_DB_AUTH`, default `~/.lsst/db-auth.yaml`) whose entries match
//! URLs by scheme, host (with `*` wildcards), port and database.
//!
//! The resulting connection options hold the password; nothing here ever formats it.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use sqlx::postgres::PgConnectOptions;

/// Why credentials could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum DbAuthError {
    /// The configured URL is not one we can connect with.
    #[error("registry database URL `{url}` is not valid: {why}")]
    Url {
        /// The URL without any password.
        url: String,
        /// What is wrong.
        why: String,
    },
    /// The db-auth file exists but cannot be used.
    #[error("database credentials file {path}: {why}")]
    AuthFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// One entry of a db-auth file.
#[derive(Debug, Deserialize)]
struct AuthEntry {
    url: String,
    username: Option<String>,
    password: String,
}

/// The pieces of a database URL that entries are matched on.
#[derive(Debug, Clone, PartialEq, Eq)]
struct UrlParts {
    scheme: String,
    username: Option<String>,
    password: Option<String>,
    host: String,
    port: Option<u16>,
    database: Option<String>,
    query: String,
}

fn parse_url(url: &str) -> Option<UrlParts> {
    let (scheme, rest) = url.split_once("://")?;
    // daf_butler URLs name a driver (`postgresql+psycopg2`); matching and connecting use the
    // dialect only.
    let scheme = scheme.split('+').next()?.to_owned();
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let (username, password) = match userinfo {
        Some(u) => match u.split_once(':') {
            Some((user, pass)) => (Some(percent_decode(user)), Some(percent_decode(pass))),
            None => (Some(percent_decode(u)), None),
        },
        None => (None, None),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || hostport.starts_with('[') => {
            (h.to_owned(), Some(p.parse().ok()?))
        }
        _ => (hostport.to_owned(), None),
    };
    let database = (!path.is_empty()).then(|| percent_decode(path));
    Some(UrlParts {
        scheme,
        username: username.filter(|u| !u.is_empty()),
        password,
        host,
        port,
        database,
        query: query.to_owned(),
    })
}

/// %-decodes a URL part (invalid UTF-8 is replaced, as in a credential it cannot match anyway).
fn percent_decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

/// `*` matches any run of characters (daf_butler's host patterns, such as `*.slac.stanford.edu`).
fn glob_match(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, tail)) => {
            if !text.starts_with(head) {
                return false;
            }
            let rest = &text[head.len()..];
            (0..=rest.len())
                .filter(|&i| rest.is_char_boundary(i))
                .any(|i| glob_match(tail, &rest[i..]))
        }
    }
}

impl AuthEntry {
    /// daf_butler's rules: same scheme (dialect), host matching the entry's pattern, and the
    /// entry's port, database and username, where the entry gives them, equal to the URL's.
    fn matches(&self, url: &UrlParts) -> Option<bool> {
        let entry = parse_url(&self.url)?;
        let username_ok = match (&entry.username, &url.username) {
            (Some(e), Some(u)) => e == u,
            _ => true,
        };
        Some(
            entry.scheme == url.scheme
                && glob_match(&entry.host, &url.host)
                && entry.port.is_none_or(|p| Some(p) == url.port)
                && entry
                    .database
                    .as_ref()
                    .is_none_or(|d| url.database.as_ref() == Some(d))
                && username_ok,
        )
    }
}

/// Where the db-auth file is: `$LSST_DB_AUTH`, else `~/.lsst/db-auth.yaml`.
pub fn default_auth_file() -> Option<PathBuf> {
    std::env::var_os("LSST_DB_AUTH")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".lsst/db-auth.yaml"))
        })
}

/// The URL with any password removed, safe to log.
pub fn redact(url: &str) -> String {
    match parse_url(url) {
        Some(parts) if parts.password.is_some() => {
            let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
            let at = rest.rfind('@').unwrap_or(0);
            let user = parts.username.unwrap_or_default();
            format!("{scheme}://{user}:***{}", &rest[at..])
        }
        _ => url.to_owned(),
    }
}

/// Connection options for `url`, with the password from the URL, else from a matching db-auth
/// entry, else from `PGPASSWORD` (which the Postgres driver reads by itself). The server shows
/// the connections as `application_name` (`pg_stat_activity`), so an operator can tell the
/// services apart.
pub fn connect_options(
    url: &str,
    auth_file: Option<&Path>,
    application_name: &str,
) -> Result<PgConnectOptions, DbAuthError> {
    let bad = |why: &str| DbAuthError::Url {
        url: redact(url),
        why: why.to_owned(),
    };
    let parts = parse_url(url)
        .ok_or_else(|| bad("expected postgresql://[user[:password]@]host[:port]/database"))?;
    if parts.scheme != "postgresql" && parts.scheme != "postgres" {
        return Err(bad("not a PostgreSQL URL"));
    }
    let mut username = parts.username.clone();
    let mut password = parts.password.clone();
    if password.is_none()
        && let Some(file) = auth_file.filter(|f| f.exists())
        && let Some(entry) = find_entry(file, &parts)?
    {
        username = username.or(entry.username);
        password = Some(entry.password);
    }
    // Rebuild a plain postgres:// URL for the driver: the query (sslmode, host=/socket...) is
    // kept, the driver suffix dropped.
    let mut options: PgConnectOptions = {
        let host = if parts.host.is_empty() {
            "localhost"
        } else {
            parts.host.as_str()
        };
        let port = parts.port.map(|p| format!(":{p}")).unwrap_or_default();
        let database = parts.database.as_deref().unwrap_or_default();
        let query = if parts.query.is_empty() {
            String::new()
        } else {
            format!("?{}", parts.query)
        };
        format!("postgres://{host}{port}/{database}{query}")
            .parse()
            .map_err(|e: sqlx::Error| bad(&e.to_string()))?
    };
    if let Some(user) = username {
        options = options.username(&user);
    }
    if let Some(password) = password {
        options = options.password(&password);
    }
    Ok(options.application_name(application_name))
}

fn find_entry(file: &Path, url: &UrlParts) -> Result<Option<AuthEntry>, DbAuthError> {
    let fail = |why: String| DbAuthError::AuthFile {
        path: file.to_path_buf(),
        why,
    };
    check_permissions(file)?;
    let text = std::fs::read_to_string(file).map_err(|e| fail(e.to_string()))?;
    let entries: Vec<AuthEntry> = serde_yaml_ng::from_str(&text)
        .map_err(|e| fail(format!("not a list of {{url, username, password}}: {e}")))?;
    for entry in entries {
        match entry.matches(url) {
            Some(true) => return Ok(Some(entry)),
            Some(false) => {}
            None => {
                return Err(fail(format!(
                    "entry url `{}` is not a URL",
                    redact(&entry.url)
                )));
            }
        }
    }
    Ok(None)
}

/// daf_butler refuses a credentials file that others can read; so do we.
#[cfg(unix)]
fn check_permissions(file: &Path) -> Result<(), DbAuthError> {
    use std::os::unix::fs::PermissionsExt;
    let fail = |why: String| DbAuthError::AuthFile {
        path: file.to_path_buf(),
        why,
    };
    let mode = std::fs::metadata(file)
        .map_err(|e| fail(e.to_string()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(fail(format!(
            "permissions {:o} let others read it; chmod 600 it",
            mode & 0o777
        )));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_permissions(_file: &Path) -> Result<(), DbAuthError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_their_parts() {
        let p = parse_url(
            "postgresql+psycopg2://butler:s%40cret@db.example.org:5432/embargo?sslmode=require",
        )
        .unwrap();
        assert_eq!(p.scheme, "postgresql");
        assert_eq!(p.username.as_deref(), Some("butler"));
        assert_eq!(p.password.as_deref(), Some("s@cret"));
        assert_eq!((p.host.as_str(), p.port), ("db.example.org", Some(5432)));
        assert_eq!(p.database.as_deref(), Some("embargo"));
        assert_eq!(p.query, "sslmode=require");
        let p = parse_url("postgresql://host/db").unwrap();
        assert_eq!((p.username, p.port), (None, None));
    }

    #[test]
    fn passwords_never_survive_redaction() {
        assert_eq!(
            redact("postgresql://u:secret@h:5/db"),
            "postgresql://u:***@h:5/db"
        );
        assert_eq!(redact("postgresql://u@h/db"), "postgresql://u@h/db");
    }

    #[test]
    fn auth_entries_match_as_daf_butler_matches_them() {
        let url = parse_url("postgresql+psycopg2://rubin@usdf-db.slac.stanford.edu:5432/embargo")
            .unwrap();
        let entry = |u: &str| AuthEntry {
            url: u.into(),
            username: None,
            password: "p".into(),
        };
        assert_eq!(
            entry("postgresql://*.slac.stanford.edu").matches(&url),
            Some(true)
        );
        assert_eq!(
            entry("postgresql://usdf-db.slac.stanford.edu:5432/embargo").matches(&url),
            Some(true)
        );
        assert_eq!(
            entry("postgresql://usdf-db.slac.stanford.edu:5433/embargo").matches(&url),
            Some(false)
        );
        assert_eq!(
            entry("postgresql://usdf-db.slac.stanford.edu/other").matches(&url),
            Some(false)
        );
        assert_eq!(
            entry("postgresql://other@usdf-db.slac.stanford.edu/embargo").matches(&url),
            Some(false)
        );
        assert_eq!(
            entry("mysql://*.slac.stanford.edu").matches(&url),
            Some(false)
        );
    }

    #[test]
    fn a_world_readable_auth_file_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("db-auth.yaml");
        std::fs::write(
            &file,
            "- url: postgresql://h/db\n  username: u\n  password: pw\n",
        )
        .unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = connect_options("postgresql://h/db", Some(&file), "test")
            .unwrap_err()
            .to_string();
        assert!(err.contains("chmod 600") && !err.contains("pw"), "{err}");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let options = connect_options("postgresql://h/db", Some(&file), "test").unwrap();
        assert_eq!(options.get_username(), "u");
    }
}
