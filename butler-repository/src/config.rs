//! The repository's `butler.yaml`: where the registry database is, which Postgres schema holds
//! it, and which datastores record files (their names and records tables).
//!
//! daf_butler writes `dataset_location.datastore_name` and the datastore's records table from
//! this configuration, not from the database (`../shared/reference/butler-registry.md` §4,
//! "Datastore rows"), so the writer must read the same file the Python services read.

use std::path::{Path, PathBuf};

use serde_yaml_ng::Value;

/// A `butler.yaml` that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RepositoryError {
    /// The file cannot be read.
    #[error("cannot read the butler configuration {location}: {source}")]
    Read {
        /// Where we looked.
        location: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The file is not YAML.
    #[error("the butler configuration {location} is not valid YAML: {source}")]
    Yaml {
        /// Where it came from.
        location: String,
        /// The parser's complaint.
        #[source]
        source: serde_yaml_ng::Error,
    },
    /// A required setting is missing or has the wrong type.
    #[error("the butler configuration {location} has no usable `{key}`: {why}")]
    Setting {
        /// Where it came from.
        location: String,
        /// The dotted key.
        key: &'static str,
        /// What is wrong.
        why: String,
    },
    /// A datastore we do not know how to record files for.
    #[error(
        "the butler configuration {location} uses datastore class `{class}`, which this writer does not support ({why})"
    )]
    UnsupportedDatastore {
        /// Where it came from.
        location: String,
        /// The datastore class.
        class: String,
        /// Why it is not supported.
        why: String,
    },
}

/// A datastore that receives the writer's file records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatastoreConfig {
    /// `dataset_location.datastore_name`: the configured `name`, or `FileDatastore@<root>` with
    /// the root exactly as written in the configuration (daf_butler does not expand it here).
    pub name: String,
    /// The opaque records table (`file_datastore_records` by default).
    pub records_table: String,
    /// The datastore root as written in the configuration (`<butlerRoot>` stands for the
    /// directory holding `butler.yaml`); [`ButlerConfig::datastore_root`] resolves it.
    pub root: Option<String>,
}

/// What the writer needs from `butler.yaml`.
#[derive(Debug, Clone)]
pub struct ButlerConfig {
    /// Where the configuration came from (for messages).
    pub location: String,
    /// The registry database URL as configured (`postgresql+psycopg2://user@host:port/db`).
    pub registry_db: String,
    /// The Postgres schema holding the registry (`registry.namespace`); `None` means the
    /// connection's default search path, as daf_butler does.
    pub namespace: Option<String>,
    /// The datastores that get a `dataset_location` and a records row for each file.
    pub datastores: Vec<DatastoreConfig>,
}

/// The default opaque table of a FileDatastore's records.
const DEFAULT_RECORDS_TABLE: &str = "file_datastore_records";

impl ButlerConfig {
    /// Reads `butler.yaml` from a repository location as daf_butler users give it
    /// (`BUTLER_REPOSITORY`): a local path or an `s3://[profile@]bucket/prefix` URI, naming the
    /// file or the directory that holds it (a location not ending in `.yaml` is a directory, with
    /// or without its trailing slash, as the deployments spell them).
    pub async fn load(location: &str) -> Result<Self, RepositoryError> {
        let read = |source: std::io::Error| RepositoryError::Read {
            location: location.to_owned(),
            source,
        };
        let path = resources::ResourcePath::parse(location)
            .map_err(|e| read(std::io::Error::other(e.to_string())))?;
        let is_yaml = path.basename().ends_with(".yaml") || path.basename().ends_with(".yml");
        let file = if is_yaml && !path.is_dir() {
            path
        } else {
            path.as_dir()
                .join("butler.yaml")
                .map_err(|e| read(std::io::Error::other(e.to_string())))?
        };
        let shown = file.to_string();
        let bytes = file.read().await.map_err(|e| RepositoryError::Read {
            location: shown.clone(),
            source: if e.is_not_found() {
                std::io::Error::new(std::io::ErrorKind::NotFound, e.to_string())
            } else {
                std::io::Error::other(e.to_string())
            },
        })?;
        let text = String::from_utf8(bytes).map_err(|e| RepositoryError::Read {
            location: shown.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })?;
        Self::from_yaml(&text, shown)
    }

    /// Reads `butler.yaml` from a path, which may name the file or the repository directory.
    pub fn from_path(path: &Path) -> Result<Self, RepositoryError> {
        let file = resolve_config_path(path);
        let location = file.display().to_string();
        let text = std::fs::read_to_string(&file).map_err(|source| RepositoryError::Read {
            location: location.clone(),
            source,
        })?;
        Self::from_yaml(&text, location)
    }

    /// Parses the text of a `butler.yaml`; `location` is used in messages.
    pub fn from_yaml(text: &str, location: String) -> Result<Self, RepositoryError> {
        let root: Value =
            serde_yaml_ng::from_str(text).map_err(|source| RepositoryError::Yaml {
                location: location.clone(),
                source,
            })?;
        let setting = |key: &'static str, why: &str| RepositoryError::Setting {
            location: location.clone(),
            key,
            why: why.to_owned(),
        };

        let registry = root
            .get("registry")
            .ok_or_else(|| setting("registry", "missing"))?;
        let registry_db = registry
            .get("db")
            .and_then(Value::as_str)
            .ok_or_else(|| setting("registry.db", "missing or not a string"))?
            .to_owned();
        if !(registry_db.starts_with("postgresql") || registry_db.starts_with("postgres:")) {
            return Err(setting(
                "registry.db",
                &format!(
                    "`{registry_db}` is not a PostgreSQL URL; the writer only serves Postgres registries"
                ),
            ));
        }
        let namespace = match registry.get("namespace") {
            None | Some(Value::Null) => None,
            Some(Value::String(ns)) => Some(ns.clone()),
            Some(_) => return Err(setting("registry.namespace", "not a string")),
        };
        let datastore = root
            .get("datastore")
            .ok_or_else(|| setting("datastore", "missing"))?;
        let mut datastores = Vec::new();
        collect_datastores(datastore, &location, &mut datastores)?;
        if datastores.is_empty() {
            return Err(setting("datastore", "no file datastore to record files in"));
        }
        Ok(Self {
            location,
            registry_db,
            namespace,
            datastores,
        })
    }
}

impl ButlerConfig {
    /// Where the first datastore keeps its files, as a directory: its `root` with
    /// `<butlerRoot>` replaced by the directory holding `butler.yaml`, as daf_butler resolves
    /// it. The transfers copy files out of and into it.
    pub fn datastore_root(&self) -> Result<resources::ResourcePath, RepositoryError> {
        let setting = |why: String| RepositoryError::Setting {
            location: self.location.clone(),
            key: "datastore.root",
            why,
        };
        let root = self
            .datastores
            .iter()
            .find_map(|d| d.root.as_deref())
            .ok_or_else(|| setting("missing: the transfers need to know where files are".into()))?;
        let text = match root.strip_prefix("<butlerRoot>") {
            Some(rest) => {
                let config = resources::ResourcePath::parse(&self.location)
                    .map_err(|e| setting(e.to_string()))?;
                format!(
                    "{}{}",
                    config.dirname().as_dir(),
                    rest.trim_start_matches('/')
                )
            }
            None => root.to_owned(),
        };
        resources::ResourcePath::parse(&text)
            .map(|p| p.as_dir())
            .map_err(|e| setting(format!("`{root}`: {e}")))
    }
}

/// A repository is named by its directory or by its `butler.yaml`.
fn resolve_config_path(path: &Path) -> PathBuf {
    let is_yaml = path.extension().is_some_and(|e| e == "yaml" || e == "yml");
    if is_yaml {
        path.to_path_buf()
    } else {
        path.join("butler.yaml")
    }
}

/// Walks a datastore configuration: a FileDatastore records files itself; a ChainedDatastore
/// passes each file to every child whose constraints accept it. Constraints are not evaluated
/// here, so a chain with constraints is refused rather than recorded wrongly.
fn collect_datastores(
    config: &Value,
    location: &str,
    out: &mut Vec<DatastoreConfig>,
) -> Result<(), RepositoryError> {
    let class = config
        .get("cls")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let short = class.rsplit('.').next().unwrap_or_default();
    let unsupported = |why: &str| RepositoryError::UnsupportedDatastore {
        location: location.to_owned(),
        class: class.to_owned(),
        why: why.to_owned(),
    };
    if config.get("constraints").is_some_and(|c| !c.is_null()) {
        return Err(unsupported(
            "datastore constraints are not evaluated by this writer",
        ));
    }
    match short {
        "FileDatastore" => {
            let name = match config.get("name").and_then(Value::as_str) {
                Some(name) => name.to_owned(),
                None => {
                    let root = config
                        .get("root")
                        .and_then(Value::as_str)
                        .ok_or_else(|| unsupported("it has no `root`"))?;
                    format!("FileDatastore@{root}")
                }
            };
            let records_table = config
                .get("records")
                .and_then(|r| r.get("table"))
                .and_then(Value::as_str)
                .unwrap_or(DEFAULT_RECORDS_TABLE)
                .to_owned();
            out.push(DatastoreConfig {
                name,
                records_table,
                root: config
                    .get("root")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
            });
            Ok(())
        }
        "ChainedDatastore" => {
            let children = config
                .get("datastores")
                .and_then(Value::as_sequence)
                .ok_or_else(|| unsupported("a chained datastore needs a `datastores` list"))?;
            for child in children {
                // Each entry is `{datastore: {...}}` in daf_butler's configuration files.
                let child = child.get("datastore").unwrap_or(child);
                collect_datastores(child, location, out)?;
            }
            Ok(())
        }
        _ => Err(unsupported(
            "only FileDatastore and ChainedDatastore of FileDatastores are supported",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: &str = "datastore:
  cls: lsst.daf.butler.datastores.fileDatastore.FileDatastore
  records:
    table: file_datastore_records
  root: <butlerRoot>
registry:
  db: postgresql+psycopg2://postgres@127.0.0.1:45633/embargo
  namespace: embargo
";

    #[test]
    fn a_butler_create_config_is_read() {
        let config = ButlerConfig::from_yaml(LOCAL, "test".into()).unwrap();
        assert_eq!(
            config.registry_db,
            "postgresql+psycopg2://postgres@127.0.0.1:45633/embargo"
        );
        assert_eq!(config.namespace.as_deref(), Some("embargo"));
        assert_eq!(
            config.datastores,
            [DatastoreConfig {
                name: "FileDatastore@<butlerRoot>".into(),
                records_table: "file_datastore_records".into(),
                root: Some("<butlerRoot>".into()),
            }]
        );
    }

    #[test]
    fn the_datastore_root_resolves_butler_root() {
        let config = ButlerConfig::from_yaml(LOCAL, "/repo/embargo/butler.yaml".into()).unwrap();
        assert_eq!(
            config.datastore_root().unwrap().to_string(),
            "/repo/embargo/"
        );
        let s3 = LOCAL.replace("<butlerRoot>", "s3://embargo@bucket/prefix");
        let config = ButlerConfig::from_yaml(&s3, "/etc/butler.yaml".into()).unwrap();
        assert_eq!(
            config.datastore_root().unwrap().to_string(),
            "s3://embargo@bucket/prefix/"
        );
    }

    #[test]
    fn chained_datastores_record_in_every_child() {
        let text = "registry: {db: 'postgresql://h/db'}
datastore:
  cls: lsst.daf.butler.datastores.chainedDatastore.ChainedDatastore
  datastores:
    - datastore:
        cls: lsst.daf.butler.datastores.fileDatastore.FileDatastore
        root: s3://embargo@rubin-summit-users/
        name: FileDatastore@s3://embargo@rubin-summit-users/
    - datastore:
        cls: lsst.daf.butler.datastores.fileDatastore.FileDatastore
        root: <butlerRoot>/other
        records: {table: other_records}
";
        let config = ButlerConfig::from_yaml(text, "t".into()).unwrap();
        assert_eq!(config.namespace, None);
        let names: Vec<_> = config
            .datastores
            .iter()
            .map(|d| (d.name.as_str(), d.records_table.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                (
                    "FileDatastore@s3://embargo@rubin-summit-users/",
                    "file_datastore_records"
                ),
                ("FileDatastore@<butlerRoot>/other", "other_records")
            ]
        );
    }

    #[test]
    fn unusable_configs_say_why() {
        let sqlite = LOCAL.replace(
            "postgresql+psycopg2://postgres@127.0.0.1:45633/embargo",
            "sqlite:///x.db",
        );
        assert!(
            ButlerConfig::from_yaml(&sqlite, "t".into())
                .unwrap_err()
                .to_string()
                .contains("only serves Postgres")
        );
        let memory = LOCAL.replace(
            "fileDatastore.FileDatastore",
            "inMemoryDatastore.InMemoryDatastore",
        );
        assert!(
            ButlerConfig::from_yaml(&memory, "t".into())
                .unwrap_err()
                .to_string()
                .contains("InMemoryDatastore")
        );
        assert!(ButlerConfig::from_yaml("registry: [", "t".into()).is_err());
    }
}
