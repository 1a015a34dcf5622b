//! The one error type of this crate, classified by what the caller must do about it.

use std::fmt;

/// Any error from below this crate (object_store, the filesystem), kept as the cause.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What was being done when an error happened; part of every message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// [`ResourcePath::read`](crate::ResourcePath::read).
    Read,
    /// [`ResourcePath::write`](crate::ResourcePath::write).
    Write,
    /// [`ResourcePath::exists`](crate::ResourcePath::exists).
    Exists,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Read => "reading",
            Self::Write => "writing",
            Self::Exists => "checking for",
        })
    }
}

/// What the caller must do about an [`Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The text is not a location this crate understands, or the operation makes no sense for
    /// it (writing to a directory): fix the input.
    InvalidUri,
    /// The resource (or its S3 bucket) does not exist.
    NotFound,
    /// Network failure, timeout, 5xx, throttling, a full disk: the same call may succeed later.
    Transient,
    /// Authentication or authorization refused: stop, fix the credentials or the grants.
    PermissionDenied,
    /// The environment does not describe a usable S3 service (no credentials, a bad endpoint,
    /// a missing bucket): stop, fix the deployment.
    Configuration,
    /// Anything else that retrying will not fix: stop.
    Fatal,
}

/// A failed resource operation. Messages name the resource and the reason, never a secret: S3
/// URIs cannot carry credentials, endpoint URLs are shown without them, and credentials are
/// never formatted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// See [`ErrorKind::InvalidUri`].
    #[error("invalid resource {uri:?}: {reason}")]
    InvalidUri {
        /// The text given, with any `user:password@` part redacted.
        uri: String,
        /// Why it was refused.
        reason: String,
    },
    /// See [`ErrorKind::NotFound`].
    #[error("{op} {resource}: not found")]
    NotFound {
        /// What was being done.
        op: Operation,
        /// The resource, as [`ResourcePath`](crate::ResourcePath) displays it.
        resource: String,
        /// The underlying error, if any.
        #[source]
        source: Option<BoxError>,
    },
    /// See [`ErrorKind::Transient`].
    #[error("{op} {resource}: {reason} (transient: retry)")]
    Transient {
        /// What was being done.
        op: Operation,
        /// The resource.
        resource: String,
        /// Why, in a few words.
        reason: String,
        /// The underlying error.
        #[source]
        source: Option<BoxError>,
    },
    /// See [`ErrorKind::PermissionDenied`].
    #[error("{op} {resource}: permission denied: {reason}")]
    PermissionDenied {
        /// What was being done.
        op: Operation,
        /// The resource.
        resource: String,
        /// Why, in a few words.
        reason: String,
        /// The underlying error.
        #[source]
        source: Option<BoxError>,
    },
    /// See [`ErrorKind::Configuration`].
    #[error("{op} {resource}: bad configuration: {reason}")]
    Configuration {
        /// What was being done.
        op: Operation,
        /// The resource.
        resource: String,
        /// What is wrong and which variable or file to fix.
        reason: String,
        /// The underlying error, if any.
        #[source]
        source: Option<BoxError>,
    },
    /// See [`ErrorKind::Fatal`].
    #[error("{op} {resource}: {reason}")]
    Fatal {
        /// What was being done.
        op: Operation,
        /// The resource.
        resource: String,
        /// Why, in a few words.
        reason: String,
        /// The underlying error.
        #[source]
        source: Option<BoxError>,
    },
}

impl Error {
    /// What the caller must do.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::InvalidUri { .. } => ErrorKind::InvalidUri,
            Self::NotFound { .. } => ErrorKind::NotFound,
            Self::Transient { .. } => ErrorKind::Transient,
            Self::PermissionDenied { .. } => ErrorKind::PermissionDenied,
            Self::Configuration { .. } => ErrorKind::Configuration,
            Self::Fatal { .. } => ErrorKind::Fatal,
        }
    }

    /// Whether the same call may succeed later (network, 5xx, throttling, a full disk).
    pub fn is_transient(&self) -> bool {
        self.kind() == ErrorKind::Transient
    }

    /// Whether the resource does not exist.
    pub fn is_not_found(&self) -> bool {
        self.kind() == ErrorKind::NotFound
    }

    pub(crate) fn invalid(uri: &str, reason: impl Into<String>) -> Self {
        Self::InvalidUri {
            uri: redact_userinfo(uri),
            reason: reason.into(),
        }
    }

    /// An error of `kind` (other than [`ErrorKind::InvalidUri`]) on `resource`.
    pub(crate) fn new(
        kind: ErrorKind,
        op: Operation,
        resource: impl fmt::Display,
        reason: impl Into<String>,
        source: Option<BoxError>,
    ) -> Self {
        let resource = resource.to_string();
        let reason = reason.into();
        match kind {
            ErrorKind::InvalidUri => Self::InvalidUri {
                uri: resource,
                reason,
            },
            ErrorKind::NotFound => Self::NotFound {
                op,
                resource,
                source,
            },
            ErrorKind::Transient => Self::Transient {
                op,
                resource,
                reason,
                source,
            },
            ErrorKind::PermissionDenied => Self::PermissionDenied {
                op,
                resource,
                reason,
                source,
            },
            ErrorKind::Configuration => Self::Configuration {
                op,
                resource,
                reason,
                source,
            },
            ErrorKind::Fatal => Self::Fatal {
                op,
                resource,
                reason,
                source,
            },
        }
    }
}

/// `scheme://user:password@host...` with the password replaced by `***`, so that a mistyped
/// credential-bearing URI can be echoed in an error.
pub(crate) fn redact_userinfo(text: &str) -> String {
    let Some(scheme_end) = text.find("://") else {
        return text.to_owned();
    };
    let authority_start = scheme_end + 3;
    let rest = &text[authority_start..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match authority.rfind('@') {
        Some(at) if authority[..at].contains(':') => {
            let user = &authority[..authority[..at].find(':').unwrap_or(at)];
            format!(
                "{}{user}:***{}",
                &text[..authority_start],
                &text[authority_start + at..]
            )
        }
        _ => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(
            redact_userinfo("s3://AKIA:s3cr3t@bucket/key"),
            "s3://AKIA:***@bucket/key"
        );
        assert_eq!(
            redact_userinfo("https://a:b:c@host/x@y"),
            "https://a:***@host/x@y"
        );
        assert_eq!(
            redact_userinfo("s3://embargo@bucket/k"),
            "s3://embargo@bucket/k"
        );
        assert_eq!(redact_userinfo("/plain/p:a@th"), "/plain/p:a@th");
    }

    #[test]
    fn invalid_uri_messages_hide_passwords() {
        let err = Error::invalid("s3://key:secret@bucket/x", "no");
        assert!(!err.to_string().contains("secret"));
        assert!(!format!("{err:?}").contains("secret"));
    }
}
