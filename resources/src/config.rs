//! How an S3 location's endpoint, credentials and region are found: what lsst-resources does
//! (its `s3utils` module builds a boto3 client per profile) and what boto3 then does, read from
//! an environment given as a map so that tests never touch the process environment.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;

use secrecy::SecretString;

/// A snapshot of environment variables. Empty values count as unset, as lsst-resources treats
/// an empty `S3_ENDPOINT_URL`. `Debug` shows names only: values hold secrets.
#[derive(Clone, Default)]
pub(crate) struct Env(HashMap<String, String>);

impl Env {
    pub(crate) fn from_process() -> Self {
        Self(
            std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .collect(),
        )
    }

    pub(crate) fn from_vars<I, K, V>(vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Self(
            vars.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}

impl fmt::Debug for Env {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&String> = self.0.keys().collect();
        names.sort();
        f.debug_struct("Env").field("names", &names).finish()
    }
}

/// Where an S3 profile's service is and how to sign for it: the outcome of the resolution
/// described in the crate documentation.
#[derive(Debug, Clone)]
pub struct S3Settings {
    /// The endpoint URL without credentials and without a trailing slash (`None`: AWS itself).
    /// Requests use path-style addressing (`endpoint/bucket/key`), which Ceph RGW needs.
    pub endpoint: Option<String>,
    /// The variable the endpoint came from (`LSST_RESOURCES_S3_PROFILE_<profile>` or
    /// `S3_ENDPOINT_URL`).
    pub endpoint_variable: Option<String>,
    /// Plain `http` is allowed, which it is only for a loopback endpoint.
    pub allow_http: bool,
    /// The signing region (`AWS_DEFAULT_REGION`, `AWS_REGION`, else `us-east-1`).
    pub region: String,
    /// How requests are signed.
    pub credentials: S3Credentials,
}

/// An access key and its secret. `Debug` shows the key id and where it came from, never the
/// secret or the session token.
#[derive(Clone)]
pub struct S3Credentials {
    /// The access key id.
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: SecretString,
    /// A session token, with temporary credentials.
    pub session_token: Option<SecretString>,
    /// Where these were found.
    pub source: CredentialSource,
}

impl fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"[redacted]")
            .field("has_session_token", &self.session_token.is_some())
            .field("source", &self.source)
            .finish()
    }
}

/// Where credentials were found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialSource {
    /// The `access:secret@` part of the endpoint URL in this variable.
    EndpointUrl {
        /// The variable.
        variable: String,
    },
    /// `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`.
    Environment,
    /// A section of the shared credentials file.
    SharedCredentialsFile {
        /// The file.
        path: PathBuf,
        /// The section (profile name).
        profile: String,
    },
}

impl fmt::Display for CredentialSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EndpointUrl { variable } => write!(f, "the endpoint URL in {variable}"),
            Self::Environment => f.write_str("AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"),
            Self::SharedCredentialsFile { path, profile } => {
                write!(f, "profile [{profile}] of {}", path.display())
            }
        }
    }
}

/// Why no usable S3 settings could be resolved: which variable or file to fix. Never holds a
/// secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

impl ConfigError {
    fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// The environment variable that describes profile `profile` (case-sensitive, as in
/// lsst-resources).
pub fn profile_variable(profile: &str) -> String {
    format!("LSST_RESOURCES_S3_PROFILE_{profile}")
}

pub(crate) fn resolve(env: &Env, profile: Option<&str>) -> Result<S3Settings, ConfigError> {
    // The endpoint: the profile's variable, else S3_ENDPOINT_URL (lsst-resources'
    // `_get_s3_connection_parameters`), else AWS.
    let profile_var = profile.map(profile_variable);
    let chosen = profile_var
        .as_deref()
        .and_then(|var| env.get(var).map(|value| (var.to_owned(), value)))
        .or_else(|| {
            env.get("S3_ENDPOINT_URL")
                .map(|value| ("S3_ENDPOINT_URL".to_owned(), value))
        });
    let endpoint = chosen
        .as_ref()
        .map(|(var, value)| parse_endpoint(var, value))
        .transpose()?;

    let region = env
        .get("AWS_DEFAULT_REGION")
        .or_else(|| env.get("AWS_REGION"))
        .unwrap_or("us-east-1")
        .to_owned();

    let credentials = match endpoint.as_ref().and_then(|e| e.credentials.clone()) {
        // Credentials in the endpoint URL win, and the profile is then not looked up in the
        // credentials file at all (lsst-resources drops it before calling boto3).
        Some(credentials) => credentials,
        None => credentials_from_aws_chain(env, profile)?,
    };

    Ok(S3Settings {
        allow_http: endpoint.as_ref().is_some_and(|e| e.allow_http),
        endpoint: endpoint.as_ref().map(|e| e.url.clone()),
        endpoint_variable: chosen.map(|(var, _)| var),
        region,
        credentials,
    })
}

struct Endpoint {
    url: String,
    allow_http: bool,
    credentials: Option<S3Credentials>,
}

fn parse_endpoint(variable: &str, value: &str) -> Result<Endpoint, ConfigError> {
    let shown = crate::error::redact_userinfo(value);
    let mut url = url::Url::parse(value)
        .map_err(|e| ConfigError::new(format!("{variable}={shown} is not a URL: {e}")))?;
    let Some(host) = url.host() else {
        return Err(ConfigError::new(format!("{variable}={shown} has no host")));
    };
    let loopback = match host {
        url::Host::Domain(name) => name.eq_ignore_ascii_case("localhost"),
        url::Host::Ipv4(ip) => ip.is_loopback(),
        url::Host::Ipv6(ip) => ip.is_loopback(),
    };
    let allow_http = match url.scheme() {
        "https" => false,
        "http" if loopback => true,
        "http" => {
            return Err(ConfigError::new(format!(
                "{variable}={shown}: plain http is allowed only for a loopback endpoint \
                 (127.0.0.0/8, ::1, localhost); use https"
            )));
        }
        other => {
            return Err(ConfigError::new(format!(
                "{variable}={shown}: scheme {other:?} is not http or https"
            )));
        }
    };
    let credentials = if url.username().is_empty() && url.password().is_none() {
        None
    } else {
        // `access:secret@`, percent-encoded ('/' as %2F), as lsst-resources documents.
        let bad = || {
            ConfigError::new(format!(
                "the credentials in {variable} must be <access key id>:<secret key>@ \
                 (percent-encode '/' as %2F)"
            ))
        };
        let key_id = crate::percent_decode(url.username()).ok_or_else(bad)?;
        let secret = url
            .password()
            .and_then(crate::percent_decode)
            .ok_or_else(bad)?;
        if key_id.is_empty() || secret.is_empty() || secret.contains(':') {
            return Err(bad());
        }
        Some(S3Credentials {
            access_key_id: key_id,
            secret_access_key: SecretString::from(secret),
            session_token: None,
            source: CredentialSource::EndpointUrl {
                variable: variable.to_owned(),
            },
        })
    };
    // Infallible for http(s) URLs with a host; ignoring the results keeps them credential-free
    // either way, as the check below asserts.
    let _ = url.set_username("");
    let _ = url.set_password(None);
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ConfigError::new(format!(
            "{variable}: cannot separate the credentials from the endpoint URL"
        )));
    }
    Ok(Endpoint {
        url: url.as_str().trim_end_matches('/').to_owned(),
        allow_http,
        credentials,
    })
}

/// boto3's chain, as far as it applies here. A profile named in the URI is passed to boto3 as
/// `profile_name`, and an explicit profile makes botocore skip the environment variables:
/// only the shared credentials file can then supply them.
fn credentials_from_aws_chain(
    env: &Env,
    uri_profile: Option<&str>,
) -> Result<S3Credentials, ConfigError> {
    if uri_profile.is_none() {
        match (
            env.get("AWS_ACCESS_KEY_ID"),
            env.get("AWS_SECRET_ACCESS_KEY"),
        ) {
            (Some(key_id), Some(secret)) => {
                let token = env
                    .get("AWS_SESSION_TOKEN")
                    .or_else(|| env.get("AWS_SECURITY_TOKEN"));
                return Ok(S3Credentials {
                    access_key_id: key_id.to_owned(),
                    secret_access_key: SecretString::from(secret.to_owned()),
                    session_token: token.map(|t| SecretString::from(t.to_owned())),
                    source: CredentialSource::Environment,
                });
            }
            (None, None) => {}
            _ => {
                return Err(ConfigError::new(
                    "only one of AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY is set: set both or neither",
                ));
            }
        }
    }

    let (section, explicit) = match uri_profile {
        Some(profile) => (profile.to_owned(), true),
        None => match env
            .get("AWS_DEFAULT_PROFILE")
            .or_else(|| env.get("AWS_PROFILE"))
        {
            Some(profile) => (profile.to_owned(), true),
            None => ("default".to_owned(), false),
        },
    };
    let file = match env.get("AWS_SHARED_CREDENTIALS_FILE") {
        Some(path) => Some((expand_home(env, path), true)),
        None => env
            .get("HOME")
            .map(|home| (PathBuf::from(home).join(".aws/credentials"), false)),
    };
    let none_found = |why: String| {
        let profile_hint = match uri_profile {
            Some(p) => format!(
                "set {} to https://<key>:<secret>@<host>, or add a [{p}] section to the shared credentials file",
                profile_variable(p)
            ),
            None => format!(
                "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or add a [{section}] section to the shared credentials file"
            ),
        };
        ConfigError::new(format!("no S3 credentials: {why}; {profile_hint}"))
    };
    let Some((path, file_explicit)) = file else {
        return Err(none_found(
            "no AWS_SHARED_CREDENTIALS_FILE and no HOME for ~/.aws/credentials".to_owned(),
        ));
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let which = if file_explicit {
                "AWS_SHARED_CREDENTIALS_FILE names"
            } else {
                "there is no"
            };
            return Err(none_found(format!(
                "{which} {}, which does not exist",
                path.display()
            )));
        }
        Err(e) => {
            return Err(ConfigError::new(format!(
                "cannot read the shared credentials file {}: {e}",
                path.display()
            )));
        }
    };
    let sections = parse_ini(&text);
    let Some(values) = sections.get(&section) else {
        if explicit {
            return Err(ConfigError::new(format!(
                "profile [{section}] is not in the shared credentials file {}",
                path.display()
            )));
        }
        return Err(none_found(format!(
            "{} has no [default] section",
            path.display()
        )));
    };
    let get = |key: &str| {
        values
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    };
    let (Some(key_id), Some(secret)) = (get("aws_access_key_id"), get("aws_secret_access_key"))
    else {
        return Err(ConfigError::new(format!(
            "profile [{section}] of {} lacks aws_access_key_id or aws_secret_access_key",
            path.display()
        )));
    };
    let token = get("aws_session_token").or_else(|| get("aws_security_token"));
    Ok(S3Credentials {
        access_key_id: key_id.to_owned(),
        secret_access_key: SecretString::from(secret.to_owned()),
        session_token: token.map(|t| SecretString::from(t.to_owned())),
        source: CredentialSource::SharedCredentialsFile {
            path,
            profile: section,
        },
    })
}

fn expand_home(env: &Env, path: &str) -> PathBuf {
    match (path.strip_prefix("~/"), env.get("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(path),
    }
}

/// The sections of an INI file as botocore reads the shared credentials file (Python's
/// `configparser`): `[section]` headers, `key = value` or `key: value` with keys lowercased and
/// both sides trimmed, `#` and `;` comment lines; indented continuation lines (botocore's
/// nested settings) are skipped. A repeated key or section takes the later value.
pub(crate) fn parse_ini(text: &str) -> HashMap<String, HashMap<String, String>> {
    let mut sections: HashMap<String, HashMap<String, String>> = HashMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if line.starts_with([' ', '\t']) {
            continue;
        }
        let line = line.trim();
        if line.is_empty() || line.starts_with(['#', ';']) {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.trim().to_owned();
            sections.entry(name.clone()).or_default();
            current = Some(name);
            continue;
        }
        let Some(section) = &current else { continue };
        let Some(split) = line.find(['=', ':']) else {
            continue;
        };
        let key = line[..split].trim().to_ascii_lowercase();
        let value = line[split + 1..].trim().to_owned();
        sections
            .entry(section.clone())
            .or_default()
            .insert(key, value);
    }
    sections
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use secrecy::ExposeSecret;

    use super::*;

    fn env(vars: &[(&str, &str)]) -> Env {
        Env::from_vars(vars.iter().copied())
    }

    fn credentials_file(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        file
    }

    fn path_str(file: &tempfile::NamedTempFile) -> &str {
        file.path().to_str().unwrap()
    }

    #[test]
    fn profile_variable_gives_endpoint_and_credentials() {
        let env = env(&[
            (
                "LSST_RESOURCES_S3_PROFILE_embargo",
                "https://AKIAEMB:se%2Fcret@sdfembs3.sdf.slac.stanford.edu",
            ),
            ("S3_ENDPOINT_URL", "https://s3dfrgw.slac.stanford.edu"),
            ("AWS_ACCESS_KEY_ID", "from-env"),
            ("AWS_SECRET_ACCESS_KEY", "from-env"),
        ]);
        let s = resolve(&env, Some("embargo")).unwrap();
        assert_eq!(
            s.endpoint.as_deref(),
            Some("https://sdfembs3.sdf.slac.stanford.edu")
        );
        assert_eq!(
            s.endpoint_variable.as_deref(),
            Some("LSST_RESOURCES_S3_PROFILE_embargo")
        );
        assert!(!s.allow_http);
        assert_eq!(s.region, "us-east-1");
        assert_eq!(s.credentials.access_key_id, "AKIAEMB");
        assert_eq!(s.credentials.secret_access_key.expose_secret(), "se/cret");
        assert_eq!(
            s.credentials.source,
            CredentialSource::EndpointUrl {
                variable: "LSST_RESOURCES_S3_PROFILE_embargo".to_owned()
            }
        );
        let debug = format!("{s:?}");
        assert!(
            !debug.contains("se/cret") && !debug.contains("se%2Fcret"),
            "{debug}"
        );
    }

    #[test]
    fn profile_variable_without_credentials_uses_the_profile_section() {
        let file = credentials_file(
            "[default]\naws_access_key_id = D\naws_secret_access_key = DS\n\n\
             [embargo]\naws_access_key_id=E\naws_secret_access_key=ES\n",
        );
        let env = env(&[
            (
                "LSST_RESOURCES_S3_PROFILE_embargo",
                "https://embargo.example:8443/",
            ),
            ("AWS_SHARED_CREDENTIALS_FILE", path_str(&file)),
            // An explicit profile makes botocore ignore these.
            ("AWS_ACCESS_KEY_ID", "from-env"),
            ("AWS_SECRET_ACCESS_KEY", "from-env"),
        ]);
        let s = resolve(&env, Some("embargo")).unwrap();
        assert_eq!(s.endpoint.as_deref(), Some("https://embargo.example:8443"));
        assert_eq!(s.credentials.access_key_id, "E");
        assert_eq!(s.credentials.secret_access_key.expose_secret(), "ES");
        assert_eq!(
            s.credentials.source,
            CredentialSource::SharedCredentialsFile {
                path: file.path().to_owned(),
                profile: "embargo".to_owned()
            }
        );
    }

    #[test]
    fn profile_without_its_variable_falls_back_to_s3_endpoint_url() {
        // Production: s3://embargo@rubin-summit-users/ with S3_ENDPOINT_URL, the credentials
        // file at /app/s3/credentials and AWS_PROFILE from the Helm chart.
        let file =
            credentials_file("[embargo]\naws_access_key_id = E\naws_secret_access_key = ES\n");
        let env = env(&[
            ("S3_ENDPOINT_URL", "https://sdfembs3.sdf.slac.stanford.edu"),
            ("AWS_SHARED_CREDENTIALS_FILE", path_str(&file)),
            ("AWS_PROFILE", "other"),
            ("AWS_REQUEST_CHECKSUM_CALCULATION", "WHEN_REQUIRED"),
            ("LSST_RESOURCES_S3_PROFILE_embargo", ""),
        ]);
        let s = resolve(&env, Some("embargo")).unwrap();
        assert_eq!(s.endpoint_variable.as_deref(), Some("S3_ENDPOINT_URL"));
        assert_eq!(s.credentials.access_key_id, "E");
    }

    #[test]
    fn a_profile_missing_from_the_file_is_a_configuration_error() {
        let file =
            credentials_file("[default]\naws_access_key_id = D\naws_secret_access_key = DS\n");
        let env = env(&[
            ("S3_ENDPOINT_URL", "https://s3.example"),
            ("AWS_SHARED_CREDENTIALS_FILE", path_str(&file)),
        ]);
        let err = resolve(&env, Some("embargo")).unwrap_err();
        assert!(
            err.to_string().contains("profile [embargo] is not in"),
            "{err}"
        );
    }

    #[test]
    fn without_profile_environment_then_file() {
        let file = credentials_file(
            "# comment\n[default]\naws_access_key_id = D\naws_secret_access_key = DS\n\
             [dev]\nAWS_ACCESS_KEY_ID : V\naws_secret_access_key: VS\naws_session_token = T\n\
             s3 =\n    addressing_style = path\n",
        );
        let with_env = env(&[
            ("AWS_ACCESS_KEY_ID", "K"),
            ("AWS_SECRET_ACCESS_KEY", "S"),
            ("AWS_SESSION_TOKEN", "TOK"),
            ("AWS_SHARED_CREDENTIALS_FILE", path_str(&file)),
        ]);
        let s = resolve(&with_env, None).unwrap();
        assert_eq!(s.endpoint, None);
        assert_eq!(s.credentials.source, CredentialSource::Environment);
        assert_eq!(s.credentials.access_key_id, "K");
        assert_eq!(
            s.credentials
                .session_token
                .as_ref()
                .map(|t| t.expose_secret()),
            Some("TOK")
        );

        let default = env(&[("AWS_SHARED_CREDENTIALS_FILE", path_str(&file))]);
        assert_eq!(
            resolve(&default, None).unwrap().credentials.access_key_id,
            "D"
        );

        let dev = env(&[
            ("AWS_SHARED_CREDENTIALS_FILE", path_str(&file)),
            ("AWS_PROFILE", "dev"),
        ]);
        let s = resolve(&dev, None).unwrap();
        assert_eq!(s.credentials.access_key_id, "V");
        assert_eq!(
            s.credentials
                .session_token
                .as_ref()
                .map(|t| t.expose_secret()),
            Some("T")
        );
        // botocore reads AWS_DEFAULT_PROFILE before AWS_PROFILE.
        let both = env(&[
            ("AWS_SHARED_CREDENTIALS_FILE", path_str(&file)),
            ("AWS_PROFILE", "dev"),
            ("AWS_DEFAULT_PROFILE", "default"),
        ]);
        assert_eq!(resolve(&both, None).unwrap().credentials.access_key_id, "D");
    }

    #[test]
    fn home_credentials_file() {
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir(home.path().join(".aws")).unwrap();
        std::fs::write(
            home.path().join(".aws/credentials"),
            "[default]\naws_access_key_id=H\naws_secret_access_key=HS\n",
        )
        .unwrap();
        let env = env(&[("HOME", home.path().to_str().unwrap())]);
        assert_eq!(resolve(&env, None).unwrap().credentials.access_key_id, "H");

        let tilde = Env::from_vars([
            ("HOME", home.path().to_str().unwrap()),
            ("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials"),
        ]);
        assert_eq!(
            resolve(&tilde, None).unwrap().credentials.access_key_id,
            "H"
        );
    }

    #[test]
    fn no_credentials_anywhere() {
        let err = resolve(&env(&[("HOME", "/nonexistent-home")]), None).unwrap_err();
        assert!(err.to_string().starts_with("no S3 credentials"), "{err}");
        let err = resolve(&env(&[]), Some("embargo")).unwrap_err();
        assert!(
            err.to_string()
                .contains("LSST_RESOURCES_S3_PROFILE_embargo"),
            "{err}"
        );
        let half = env(&[("AWS_ACCESS_KEY_ID", "K")]);
        assert!(
            resolve(&half, None)
                .unwrap_err()
                .to_string()
                .contains("only one of")
        );
        let missing = env(&[("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")]);
        assert!(
            resolve(&missing, None)
                .unwrap_err()
                .to_string()
                .contains("AWS_SHARED_CREDENTIALS_FILE names /nonexistent/credentials")
        );
    }

    #[test]
    fn region() {
        let base = [("AWS_ACCESS_KEY_ID", "K"), ("AWS_SECRET_ACCESS_KEY", "S")];
        let region = |extra: &[(&str, &str)]| {
            let vars: Vec<(&str, &str)> = base.iter().chain(extra).copied().collect();
            resolve(&env(&vars), None).unwrap().region
        };
        assert_eq!(region(&[]), "us-east-1");
        assert_eq!(region(&[("AWS_REGION", "eu-west-1")]), "eu-west-1");
        assert_eq!(
            region(&[
                ("AWS_REGION", "eu-west-1"),
                ("AWS_DEFAULT_REGION", "us-west-2")
            ]),
            "us-west-2"
        );
    }

    #[test]
    fn endpoints() {
        let creds = [("AWS_ACCESS_KEY_ID", "K"), ("AWS_SECRET_ACCESS_KEY", "S")];
        let with = |url: &str| {
            let mut vars: Vec<(&str, &str)> = creds.to_vec();
            vars.push(("S3_ENDPOINT_URL", url));
            resolve(&env(&vars), None)
        };
        let local = with("http://127.0.0.1:9000/").unwrap();
        assert!(local.allow_http);
        assert_eq!(local.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert!(with("http://localhost:9000").unwrap().allow_http);
        assert!(with("http://[::1]:9000").unwrap().allow_http);
        assert!(with("http://127.3.4.5").unwrap().allow_http);

        let remote = with("http://s3dfrgw.slac.stanford.edu").unwrap_err();
        assert!(
            remote.to_string().contains("plain http is allowed only"),
            "{remote}"
        );
        assert!(with("ftp://x").is_err());
        assert!(with("not a url").is_err());

        // Credentials in S3_ENDPOINT_URL are honoured too (lsst-resources parses either).
        let embedded = with("https://A:B@s3.example").unwrap();
        assert_eq!(embedded.credentials.access_key_id, "A");
        assert_eq!(embedded.endpoint.as_deref(), Some("https://s3.example"));
        // A malformed userinfo is refused without echoing the secret.
        let err = with("https://onlykey@s3.example").unwrap_err();
        assert!(
            err.to_string()
                .contains("must be <access key id>:<secret key>")
        );
        let err = with("ftp://A:topsecret@s3.example").unwrap_err();
        assert!(!err.to_string().contains("topsecret"), "{err}");
    }

    #[test]
    fn ini_parsing() {
        let sections =
            parse_ini("[a]\nk = v = w\n; c\n[ b ]\nK2: x\n  nested = y\n[a]\nk2 = later\n");
        assert_eq!(sections["a"]["k"], "v = w");
        assert_eq!(sections["a"]["k2"], "later");
        assert_eq!(sections["b"]["k2"], "x");
        assert!(!sections["b"].contains_key("nested"));
    }

    #[test]
    fn env_debug_shows_names_only() {
        let env = env(&[("AWS_SECRET_ACCESS_KEY", "hunter2")]);
        let debug = format!("{env:?}");
        assert!(debug.contains("AWS_SECRET_ACCESS_KEY") && !debug.contains("hunter2"));
    }
}
