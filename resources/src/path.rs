//! [`ResourcePath`]: a local file or directory, or an S3 object or prefix, parsed from the
//! spellings lsst-resources accepts, joined and displayed the way it does.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::error::Error;

/// A location that can be read, written or checked: a local path or an S3 object.
///
/// Parsed from a plain path (relative ones resolved against the current directory),
/// `file:///abs/path` (or `file://localhost/...`, `file:/...`), or
/// `s3://[profile@]bucket[/key]`. A trailing `/` makes it a directory, as in lsst-resources;
/// an S3 bucket root is always one. Whether something is a directory is decided by spelling
/// alone, never by looking at the filesystem or the bucket.
///
/// Two values are equal when they name the same location, whatever the spelling: `/a/b` equals
/// `file:///a/b`. `s3://p@b/k` and `s3://b/k` differ, since the profile picks the service.
/// Neither `Display` nor `Debug` can show a secret: credentials are refused in S3 URIs.
#[derive(Clone)]
pub struct ResourcePath {
    location: Location,
    /// How a local path was spelled, so that `Display` gives it back the same way.
    form: LocalForm,
}

impl PartialEq for ResourcePath {
    fn eq(&self, other: &Self) -> bool {
        self.location == other.location
    }
}

impl Eq for ResourcePath {}

impl std::hash::Hash for ResourcePath {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.location.hash(state);
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
enum Location {
    /// `path` is absolute, `/`-separated, normalized (no `.`, `..` or empty segments) and has no
    /// trailing slash except for the root `/`.
    Local { path: String, dir: bool },
    /// `key` has no leading slash; it is empty for the bucket root and ends with `/` for a
    /// directory (prefix).
    S3 {
        profile: Option<String>,
        bucket: String,
        key: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LocalForm {
    Plain,
    FileUri,
}

impl ResourcePath {
    /// Parses `text`; a relative plain path is resolved against the current directory.
    pub fn parse(text: &str) -> Result<Self, Error> {
        if has_scheme(text) {
            return Self::parse_with_base(text, Path::new("/"));
        }
        let cwd = std::env::current_dir().map_err(|e| {
            Error::invalid(
                text,
                format!("relative path and the current directory is unknown: {e}"),
            )
        })?;
        Self::parse_with_base(text, &cwd)
    }

    /// Parses `text`, resolving a relative plain path against `base` (an absolute directory).
    pub fn parse_relative_to(text: &str, base: &Path) -> Result<Self, Error> {
        Self::parse_with_base(text, base)
    }

    fn parse_with_base(text: &str, base: &Path) -> Result<Self, Error> {
        if text.is_empty() {
            return Err(Error::invalid(text, "empty location"));
        }
        if has_scheme(text) {
            let (scheme, rest) = text.split_at(text.find(':').unwrap_or(0));
            let rest = &rest[1..];
            return match scheme.to_ascii_lowercase().as_str() {
                "s3" => parse_s3(text, rest),
                "file" => parse_file(text, rest),
                other => Err(Error::invalid(
                    text,
                    format!(
                        "unsupported scheme {other:?}: use a local path, file:///path or s3://[profile@]bucket/key"
                    ),
                )),
            };
        }
        let joined = if text.starts_with('/') {
            text.to_owned()
        } else {
            let base = base.to_str().ok_or_else(|| {
                Error::invalid(text, "relative path and the base directory is not UTF-8")
            })?;
            if !base.starts_with('/') {
                return Err(Error::invalid(
                    text,
                    "relative path and the base directory is not absolute",
                ));
            }
            format!("{base}/{text}")
        };
        Ok(Self {
            location: Location::Local {
                dir: names_directory(text),
                path: normalize_local(&joined),
            },
            form: LocalForm::Plain,
        })
    }

    /// Whether this names a directory (a trailing `/`, or an S3 bucket root).
    pub fn is_dir(&self) -> bool {
        match &self.location {
            Location::Local { dir, .. } => *dir,
            Location::S3 { key, .. } => key.is_empty() || key.ends_with('/'),
        }
    }

    /// Whether this is on the local filesystem.
    pub fn is_local(&self) -> bool {
        matches!(self.location, Location::Local { .. })
    }

    /// Whether this is in S3.
    pub fn is_s3(&self) -> bool {
        matches!(self.location, Location::S3 { .. })
    }

    /// The local filesystem path (without a trailing slash), if this is local.
    pub fn local_path(&self) -> Option<PathBuf> {
        match &self.location {
            Location::Local { path, .. } => Some(PathBuf::from(path)),
            Location::S3 { .. } => None,
        }
    }

    /// The S3 profile (`embargo` in `s3://embargo@bucket/`), if this is in S3 and has one.
    pub fn s3_profile(&self) -> Option<&str> {
        match &self.location {
            Location::S3 { profile, .. } => profile.as_deref(),
            Location::Local { .. } => None,
        }
    }

    /// The S3 bucket, if this is in S3.
    pub fn s3_bucket(&self) -> Option<&str> {
        match &self.location {
            Location::S3 { bucket, .. } => Some(bucket),
            Location::Local { .. } => None,
        }
    }

    /// The S3 key (no leading slash; empty for the bucket root), if this is in S3.
    pub fn s3_key(&self) -> Option<&str> {
        match &self.location {
            Location::S3 { key, .. } => Some(key),
            Location::Local { .. } => None,
        }
    }

    /// The last path component of a file; empty for a directory, as `os.path.basename` gives.
    pub fn basename(&self) -> &str {
        if self.is_dir() {
            return "";
        }
        let path = match &self.location {
            Location::Local { path, .. } => path.as_str(),
            Location::S3 { key, .. } => key.as_str(),
        };
        path.rsplit('/').next().unwrap_or(path)
    }

    /// The location as a URI: `file:///...` for a local path however it was spelled, the
    /// `s3://` URI otherwise (what daf_butler stores for a file outside a datastore's root).
    pub fn to_uri(&self) -> String {
        let mut uri = self.clone();
        uri.form = LocalForm::FileUri;
        uri.to_string()
    }

    /// The same location as a directory (`s3://b/prefix` becomes `s3://b/prefix/`), for
    /// configuration values that name a directory but may lack the trailing slash.
    pub fn as_dir(&self) -> Self {
        let mut out = self.clone();
        match &mut out.location {
            Location::Local { dir, .. } => *dir = true,
            Location::S3 { key, .. } => {
                if !key.is_empty() && !key.ends_with('/') {
                    key.push('/');
                }
            }
        }
        out
    }

    /// `name` (a relative, `/`-separated path; a trailing `/` makes a directory) inside this
    /// directory. `.` and `..` segments are resolved; `..` cannot climb out of an S3 bucket.
    /// Joining to a file, or joining an absolute path or a URI, is an error, as in
    /// lsst-resources.
    pub fn join(&self, name: &str) -> Result<Self, Error> {
        let refuse = |reason: &str| Error::invalid(&format!("{self} + {name}"), reason);
        if !self.is_dir() {
            return Err(refuse(
                "cannot join to a file (a directory ends with '/'; as_dir() makes one)",
            ));
        }
        if name.is_empty() {
            return Err(refuse("empty name"));
        }
        if name.starts_with('/') || has_scheme(name) {
            return Err(refuse(
                "join takes a relative path, not an absolute path or a URI",
            ));
        }
        if name.contains(['?', '#']) {
            return Err(refuse("'?' and '#' are not allowed in names"));
        }
        let dir = names_directory(name);
        let location = match &self.location {
            Location::Local { path, .. } => Location::Local {
                path: normalize_local(&format!("{path}/{name}")),
                dir,
            },
            Location::S3 {
                profile,
                bucket,
                key,
            } => {
                let mut segments: Vec<&str> = key.split('/').filter(|s| !s.is_empty()).collect();
                for segment in name.split('/') {
                    match segment {
                        "" | "." => {}
                        ".." => {
                            if segments.pop().is_none() {
                                return Err(refuse("'..' climbs out of the bucket"));
                            }
                        }
                        other => segments.push(other),
                    }
                }
                let mut key = segments.join("/");
                if dir && !key.is_empty() {
                    key.push('/');
                }
                Location::S3 {
                    profile: profile.clone(),
                    bucket: bucket.clone(),
                    key,
                }
            }
        };
        Ok(Self {
            location,
            form: self.form,
        })
    }

    /// The directory this names, if a directory, or the one holding this file
    /// (lsst-resources' `dirname`).
    pub fn dirname(&self) -> Self {
        if self.is_dir() {
            self.clone()
        } else {
            self.parent()
        }
    }

    /// The directory holding this file, or the directory above this directory; the root (or
    /// the bucket root) is its own parent.
    pub fn parent(&self) -> Self {
        let location = match &self.location {
            Location::Local { path, .. } => Location::Local {
                path: match path.rfind('/') {
                    Some(0) | None => "/".to_owned(),
                    Some(i) => path[..i].to_owned(),
                },
                dir: true,
            },
            Location::S3 {
                profile,
                bucket,
                key,
            } => {
                let trimmed = key.strip_suffix('/').unwrap_or(key);
                let key = match trimmed.rfind('/') {
                    Some(i) => trimmed[..=i].to_owned(),
                    None => String::new(),
                };
                Location::S3 {
                    profile: profile.clone(),
                    bucket: bucket.clone(),
                    key,
                }
            }
        };
        Self {
            location,
            form: self.form,
        }
    }

    pub(crate) fn s3_parts(&self) -> Option<(Option<&str>, &str, &str)> {
        match &self.location {
            Location::S3 {
                profile,
                bucket,
                key,
            } => Some((profile.as_deref(), bucket, key)),
            Location::Local { .. } => None,
        }
    }
}

impl FromStr for ResourcePath {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        Self::parse(text)
    }
}

impl TryFrom<&str> for ResourcePath {
    type Error = Error;

    fn try_from(text: &str) -> Result<Self, Error> {
        Self::parse(text)
    }
}

impl fmt::Display for ResourcePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.location {
            Location::Local { path, dir } => {
                let slash = if *dir && path != "/" { "/" } else { "" };
                match self.form {
                    LocalForm::Plain => write!(f, "{path}{slash}"),
                    LocalForm::FileUri => write!(f, "file://{}{slash}", percent_encode_path(path)),
                }
            }
            Location::S3 {
                profile,
                bucket,
                key,
            } => {
                f.write_str("s3://")?;
                if let Some(profile) = profile {
                    write!(f, "{profile}@")?;
                }
                write!(f, "{bucket}/{key}")
            }
        }
    }
}

impl fmt::Debug for ResourcePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ResourcePath")
            .field(&self.to_string())
            .finish()
    }
}

/// `s3://[profile@]bucket[/key]`; `rest` follows `s3:`.
fn parse_s3(text: &str, rest: &str) -> Result<ResourcePath, Error> {
    let Some(rest) = rest.strip_prefix("//") else {
        return Err(Error::invalid(
            text,
            "an S3 URI is s3://[profile@]bucket/key",
        ));
    };
    if rest.contains(['?', '#']) {
        return Err(Error::invalid(
            text,
            "'?' and '#' are not allowed in S3 URIs (queries and fragments are not supported)",
        ));
    }
    if rest.contains(char::is_whitespace) {
        return Err(Error::invalid(text, "whitespace in an S3 URI"));
    }
    let (authority, key) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, ""),
    };
    let (profile, bucket) = match authority.split('@').collect::<Vec<_>>().as_slice() {
        [bucket] => (None, *bucket),
        [profile, bucket] => {
            if profile.contains(':') {
                return Err(Error::invalid(
                    text,
                    "credentials do not belong in an S3 URI: name a profile (s3://profile@bucket/) \
                     and set LSST_RESOURCES_S3_PROFILE_<profile>",
                ));
            }
            if profile.is_empty() {
                return Err(Error::invalid(text, "empty profile before '@'"));
            }
            (Some((*profile).to_owned()), *bucket)
        }
        _ => return Err(Error::invalid(text, "more than one '@' in an S3 URI")),
    };
    if bucket.is_empty() {
        return Err(Error::invalid(text, "no bucket name"));
    }
    if key.split('/').rev().skip(1).any(|s| s.is_empty()) {
        return Err(Error::invalid(text, "empty path segment ('//') in the key"));
    }
    if key.split('/').any(|s| s == "." || s == "..") {
        return Err(Error::invalid(text, "'.' or '..' segment in the key"));
    }
    Ok(ResourcePath {
        location: Location::S3 {
            profile,
            bucket: bucket.to_owned(),
            key: key.to_owned(),
        },
        form: LocalForm::Plain,
    })
}

/// `file:///abs`, `file://localhost/abs` or `file:/abs`; `rest` follows `file:`.
fn parse_file(text: &str, rest: &str) -> Result<ResourcePath, Error> {
    let path = if let Some(after) = rest.strip_prefix("//") {
        let host_end = after.find('/').unwrap_or(after.len());
        let host = &after[..host_end];
        if !host.is_empty() && !host.eq_ignore_ascii_case("localhost") {
            return Err(Error::invalid(
                text,
                format!("file URIs on another host ({host:?}) are not supported"),
            ));
        }
        match &after[host_end..] {
            "" => "/",
            path => path,
        }
    } else if rest.starts_with('/') {
        rest
    } else {
        return Err(Error::invalid(
            text,
            "a file URI must be absolute (file:///path)",
        ));
    };
    if path.contains(['?', '#']) {
        return Err(Error::invalid(
            text,
            "'?' and '#' are not allowed in file URIs (percent-encode them)",
        ));
    }
    let decoded = crate::percent_decode(path)
        .ok_or_else(|| Error::invalid(text, "bad percent-encoding (or not UTF-8)"))?;
    Ok(ResourcePath {
        location: Location::Local {
            dir: names_directory(&decoded),
            path: normalize_local(&decoded),
        },
        form: LocalForm::FileUri,
    })
}

/// Whether `text` starts with a URI scheme (two or more characters, so that nothing that looks
/// like a drive letter counts).
fn has_scheme(text: &str) -> bool {
    let Some(colon) = text.find(':') else {
        return false;
    };
    let scheme = &text[..colon];
    scheme.len() >= 2
        && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// Whether a spelled path names a directory: a trailing `/`, or a last segment `.` or `..`.
fn names_directory(text: &str) -> bool {
    text.ends_with('/')
        || matches!(text.rsplit('/').next(), Some("." | ".."))
        || text == "."
        || text == ".."
}

/// `path` (absolute) without `.`, `..` and empty segments; `..` stops at the root, as
/// `os.path.normpath` does.
fn normalize_local(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            other => segments.push(other),
        }
    }
    format!("/{}", segments.join("/"))
}

/// Percent-encodes what is not unreserved (RFC 3986) or `/`, as Python's `urllib.parse.quote`
/// does for file URIs.
fn percent_encode_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for byte in path.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    fn parse(text: &str) -> ResourcePath {
        match ResourcePath::parse_relative_to(text, Path::new("/work/dir")) {
            Ok(path) => path,
            Err(e) => panic!("{text}: {e}"),
        }
    }

    fn refused(text: &str) -> String {
        match ResourcePath::parse_relative_to(text, Path::new("/work/dir")) {
            Ok(path) => panic!("{text} parsed as {path:?}"),
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::InvalidUri, "{e}");
                e.to_string()
            }
        }
    }

    #[test]
    fn s3_with_profile() {
        let p = parse("s3://embargo@rubin-summit-users/publication/prompt_processing/");
        assert_eq!(p.s3_profile(), Some("embargo"));
        assert_eq!(p.s3_bucket(), Some("rubin-summit-users"));
        assert_eq!(p.s3_key(), Some("publication/prompt_processing/"));
        assert!(p.is_dir() && p.is_s3() && !p.is_local());
        assert_eq!(
            p.to_string(),
            "s3://embargo@rubin-summit-users/publication/prompt_processing/"
        );
    }

    #[test]
    fn s3_without_profile_and_roots() {
        let p = parse("s3://rubin-pp-dev-users/central_repo_2/butler.yaml");
        assert_eq!(p.s3_profile(), None);
        assert_eq!(p.s3_key(), Some("central_repo_2/butler.yaml"));
        assert!(!p.is_dir());
        assert_eq!(p.basename(), "butler.yaml");
        assert_eq!(
            p.to_string(),
            "s3://rubin-pp-dev-users/central_repo_2/butler.yaml"
        );

        let root = parse("s3://embargo@rubin-summit-users/");
        assert!(root.is_dir());
        assert_eq!(root.s3_key(), Some(""));
        // A bucket without a slash is its root all the same.
        assert_eq!(parse("s3://embargo@rubin-summit-users"), root);
        assert_eq!(root.to_string(), "s3://embargo@rubin-summit-users/");
        // Ceph multi-tenant buckets spell the tenant with a colon.
        assert_eq!(
            parse("s3://tenant:bucket/k").s3_bucket(),
            Some("tenant:bucket")
        );
    }

    #[test]
    fn s3_refusals() {
        assert!(refused("s3://AKIAXXX:s3cr3t@bucket/key").contains("credentials do not belong"));
        assert!(!refused("s3://AKIAXXX:s3cr3t@bucket/key").contains("s3cr3t"));
        refused("s3://a@b@c/k");
        refused("s3://@bucket/k");
        refused("s3:///key");
        refused("s3:bucket/key");
        refused("s3://bucket/a//b");
        refused("s3://bucket/a/../b");
        refused("s3://bucket/k?versionId=1");
        refused("s3://bucket/a b");
    }

    #[test]
    fn other_schemes_are_refused() {
        assert!(refused("https://example.org/x").contains("unsupported scheme \"https\""));
        refused("gs://bucket/x");
        refused("");
    }

    #[test]
    fn plain_paths() {
        let p = parse("/data/repo/butler.yaml");
        assert_eq!(
            p.local_path(),
            Some(PathBuf::from("/data/repo/butler.yaml"))
        );
        assert_eq!(p.to_string(), "/data/repo/butler.yaml");
        assert!(!p.is_dir());

        let rel = parse("batches/");
        assert_eq!(rel.to_string(), "/work/dir/batches/");
        assert!(rel.is_dir());
        assert_eq!(parse("./a/../b/./c").to_string(), "/work/dir/b/c");
        assert_eq!(parse(".").to_string(), "/work/dir/");
        assert_eq!(parse("/").to_string(), "/");
        assert!(parse("/").is_dir());
        assert_eq!(parse("/../../x").to_string(), "/x");
        // A one-letter "scheme" is a relative path, not a scheme.
        assert_eq!(parse("c:x").to_string(), "/work/dir/c:x");
    }

    #[test]
    fn file_uris() {
        let p = parse("file:///data/repo/");
        assert!(p.is_dir() && p.is_local());
        assert_eq!(p.local_path(), Some(PathBuf::from("/data/repo")));
        assert_eq!(p.to_string(), "file:///data/repo/");
        assert_eq!(parse("file://localhost/data/repo/"), p);
        assert_eq!(parse("file:/data/repo/"), p);
        // Same place, any spelling.
        assert_eq!(parse("/data/repo/"), p);

        let spaced = parse("file:///tmp/a%20b.json");
        assert_eq!(spaced.local_path(), Some(PathBuf::from("/tmp/a b.json")));
        assert_eq!(spaced.to_string(), "file:///tmp/a%20b.json");

        refused("file://otherhost/x");
        refused("file:relative/x");
        refused("file:///bad%zz");
    }

    #[test]
    fn join_files_and_directories() {
        let dir = parse("s3://embargo@rubin-summit-users/publication/prompt_processing/");
        let file = dir.join("5f0c1d7e.json").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            file.to_string(),
            "s3://embargo@rubin-summit-users/publication/prompt_processing/5f0c1d7e.json"
        );
        assert!(!file.is_dir());
        let sub = dir.join("a/b/").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(sub.s3_key(), Some("publication/prompt_processing/a/b/"));
        assert!(sub.is_dir());
        let up = dir.join("../x.json").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(up.s3_key(), Some("publication/x.json"));

        let root = parse("s3://b");
        assert_eq!(
            root.join("k.json").map(|p| p.to_string()).ok(),
            Some("s3://b/k.json".to_owned())
        );
        assert!(root.join("../k").is_err());

        let local = parse("file:///tmp/out/");
        assert_eq!(
            local.join("b c.json").map(|p| p.to_string()).ok(),
            Some("file:///tmp/out/b%20c.json".to_owned())
        );
        let plain = parse("/tmp/out/");
        assert_eq!(
            plain.join("x/y.json").map(|p| p.to_string()).ok(),
            Some("/tmp/out/x/y.json".to_owned())
        );

        for bad in ["", "/abs", "s3://other/x", "a?b", "x#frag"] {
            assert_eq!(
                dir.join(bad).map_err(|e| e.kind()).err(),
                Some(ErrorKind::InvalidUri),
                "{bad}"
            );
        }
        // Joining to a file is refused; as_dir() is the explicit way.
        assert!(file.join("x").is_err());
        let no_slash = parse("s3://rubin-pp-dev-users/central_repo_2");
        assert!(no_slash.join("butler.yaml").is_err());
        assert_eq!(
            no_slash
                .as_dir()
                .join("butler.yaml")
                .map(|p| p.to_string())
                .ok(),
            Some("s3://rubin-pp-dev-users/central_repo_2/butler.yaml".to_owned())
        );
    }

    #[test]
    fn parent_and_dirname() {
        let file = parse("s3://p@b/a/b/c.json");
        assert_eq!(file.dirname().to_string(), "s3://p@b/a/b/");
        assert_eq!(file.parent().to_string(), "s3://p@b/a/b/");
        let dir = parse("s3://p@b/a/b/");
        assert_eq!(dir.dirname(), dir);
        assert_eq!(dir.parent().to_string(), "s3://p@b/a/");
        assert_eq!(parse("s3://p@b/a/").parent().to_string(), "s3://p@b/");
        assert_eq!(parse("s3://p@b/").parent().to_string(), "s3://p@b/");

        let local = parse("/x/y/z.json");
        assert_eq!(local.parent().to_string(), "/x/y/");
        assert_eq!(parse("/x/y/").parent().to_string(), "/x/");
        assert_eq!(parse("/x").parent().to_string(), "/");
        assert_eq!(parse("/").parent().to_string(), "/");
        assert_eq!(
            parse("file:///x/y.json").dirname().to_string(),
            "file:///x/"
        );
    }

    #[test]
    fn equality_and_debug() {
        assert_ne!(parse("s3://p@b/k"), parse("s3://b/k"));
        assert_ne!(parse("s3://b/k"), parse("s3://b/k/"));
        assert_eq!(
            format!("{:?}", parse("s3://p@b/k")),
            "ResourcePath(\"s3://p@b/k\")"
        );
        let parsed: ResourcePath = "s3://b/k".parse().unwrap_or_else(|e: Error| panic!("{e}"));
        assert_eq!(parsed, parse("s3://b/k"));
    }
}
