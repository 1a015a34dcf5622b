#![doc = include_str!("../README.md")]
//!
//! # Layout
//! - [`path`]: [`ResourcePath`], parsing, joining, display.
//! - [`config`]: the S3 settings resolution ([`S3Settings`]), from an environment map.
//! - [`s3`]: the [`Resolver`] and its client per (profile, bucket); S3 reads, writes, checks
//!   and the classification of their failures.
//! - `local`: the filesystem, with atomic writes.
//! - [`error`]: [`Error`] and [`ErrorKind`].

pub mod config;
pub mod error;
mod local;
pub mod path;
pub mod s3;

pub use config::{ConfigError, CredentialSource, S3Credentials, S3Settings, profile_variable};
pub use error::{Error, ErrorKind, Operation};
pub use path::ResourcePath;
pub use s3::Resolver;

impl ResourcePath {
    /// The whole content of this file. S3 locations resolve through [`Resolver::global`].
    pub async fn read(&self) -> Result<Vec<u8>, Error> {
        self.read_with(Resolver::global()).await
    }

    /// [`read`](Self::read), resolving S3 locations through `resolver`.
    pub async fn read_with(&self, resolver: &Resolver) -> Result<Vec<u8>, Error> {
        if self.is_s3() {
            s3::read(resolver, self).await
        } else {
            local::read(self).await
        }
    }

    /// Replaces this file's content with `data`, whole or not at all: locally through a
    /// temporary file, fsync and rename (creating missing directories); in S3 with one PUT.
    /// S3 locations resolve through [`Resolver::global`].
    pub async fn write(&self, data: impl Into<Vec<u8>>) -> Result<(), Error> {
        self.write_with(Resolver::global(), data).await
    }

    /// [`write`](Self::write), resolving S3 locations through `resolver`.
    pub async fn write_with(
        &self,
        resolver: &Resolver,
        data: impl Into<Vec<u8>>,
    ) -> Result<(), Error> {
        let data = data.into();
        if self.is_s3() {
            s3::write(resolver, self, data).await
        } else {
            local::write(self, data).await
        }
    }

    /// Whether this exists: a file (or, locally, anything) at a file location; a directory at
    /// a directory location; in S3, an object under a prefix, or the bucket for its root. S3
    /// locations resolve through [`Resolver::global`].
    pub async fn exists(&self) -> Result<bool, Error> {
        self.exists_with(Resolver::global()).await
    }

    /// [`exists`](Self::exists), resolving S3 locations through `resolver`.
    pub async fn exists_with(&self, resolver: &Resolver) -> Result<bool, Error> {
        if self.is_s3() {
            s3::exists(resolver, self).await
        } else {
            local::exists(self).await
        }
    }
}

/// %-decodes a URL part (credentials, a file:// path); `None` if a `%` is not followed by two hex
/// digits (which `percent_encoding` would pass through as is) or if the result is not UTF-8.
pub(crate) fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let well_formed = bytes.iter().enumerate().all(|(i, &b)| {
        b != b'%'
            || bytes
                .get(i + 1..i + 3)
                .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
    });
    if !well_formed {
        return None;
    }
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .ok()
        .map(std::borrow::Cow::into_owned)
}
