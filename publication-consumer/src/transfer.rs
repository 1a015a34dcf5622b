//! Moving datasets and dimension records from one Butler repository to another, as the Prompt
//! Publication Service's transfer tasks do with daf_butler (the table below names each call):
//! the registry side is the Butler Writer's engine
//! (`butler_writer::Registry`: rows read with `export_*`, written with `ingest_placed`), the
//! files are copied with `resources`.
//!
//! | [`Mode`] | daf_butler call | files | target datastore rows |
//! |---|---|---|---|
//! | [`Mode::Copy`] | `transfer_from(transfer="copy")` | copied to the same relative path | relative |
//! | [`Mode::Direct`] | `transfer_from(transfer="unsafe_direct")` | left in the source | absolute URIs |
//! | [`Mode::InPlace`] | `transfer_datasets_in_place` | left in the source (same root) | relative |
//!
//! [`publish_datasets`] is the Google publication: an in-place transfer, then the datasets
//! tagged into a TAGGED collection (`registry.associate`).
//!
//! Each is idempotent: datasets already in the target count as transferred and nothing is
//! written twice; a file copy overwrites what an interrupted one left.

use std::collections::HashSet;
use std::sync::Arc;

use butler_repository::{ButlerConfig, ErrorClass, PoolSettings, RepositoryError};
use butler_writer::registry::{AssociateError, ExportError, Placement, RegisterTypeError};
use butler_writer::{Registry, Rejection, StartupError};
use schema::{PromptProcessingOutputEvent, Record, RecordValue};
use tokio::task::JoinSet;
use tracing::warn;
use uuid::Uuid;

/// How many files are copied at once.
const FILE_COPIES_AT_ONCE: usize = 8;

/// One repository the transfers read or write: its registry (through the writer's engine) and
/// where its datastore keeps files.
#[derive(Debug)]
pub struct Repository {
    /// Its label, as PPS names repositories (`embargo`, `prompt_prep`, `repo_main`, `google_int`).
    pub label: &'static str,
    /// The registry.
    pub registry: Registry,
    /// The datastore root, a directory.
    pub root: resources::ResourcePath,
}

/// Why a repository could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// `butler.yaml` cannot be read or has no usable datastore root.
    #[error("the {label} repository: {source}")]
    Config {
        /// Which repository.
        label: &'static str,
        /// Why.
        #[source]
        source: RepositoryError,
    },
    /// The registry cannot be opened or is not one the engine writes.
    #[error("the {label} repository's registry")]
    Registry {
        /// Which repository.
        label: &'static str,
        /// Why.
        #[source]
        source: StartupError,
    },
}

impl OpenError {
    /// Whether waiting may help (a database that is down).
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Config { .. } => ErrorClass::Stop,
            Self::Registry { source, .. } => source.class(),
        }
    }
}

impl Repository {
    /// Opens the repository whose `butler.yaml` (or directory) is at `location`.
    pub async fn open(
        label: &'static str,
        location: &str,
        pool: &PoolSettings,
    ) -> Result<Self, OpenError> {
        let config = ButlerConfig::load(location)
            .await
            .map_err(|source| OpenError::Config { label, source })?;
        let root = config
            .datastore_root()
            .map_err(|source| OpenError::Config { label, source })?;
        let registry = Registry::open(&config, pool)
            .await
            .map_err(|source| OpenError::Registry { label, source })?;
        Ok(Self {
            label,
            registry,
            root,
        })
    }
}

/// How the files of a dataset transfer are handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Copy the files into the target's datastore.
    Copy,
    /// Point the target at the source's files by absolute URI.
    Direct,
    /// Register the files under the same relative paths, the target's datastore sharing the
    /// source's root.
    InPlace,
}

/// What a dataset transfer did, in PPS's terms.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transferred {
    /// Datasets now in the target (including those that were already there).
    pub transferred: Vec<Uuid>,
    /// Datasets the source does not have, or has no file for.
    pub missing: Vec<Uuid>,
}

/// Why a transfer failed. Nothing of a failed chunk is recorded in the state, so the next
/// pass tries it again.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// Reading the source failed.
    #[error("reading the {label} repository")]
    Export {
        /// The source.
        label: &'static str,
        /// Why.
        #[source]
        source: ExportError,
    },
    /// Writing the target's registry failed.
    #[error("writing the {label} repository's registry")]
    Ingest {
        /// The target.
        label: &'static str,
        /// Why.
        #[source]
        source: butler_writer::error::EngineError,
    },
    /// The target turned datasets or records away (a dataset type it does not have, a
    /// conflicting dataset).
    #[error("the {label} repository refused {} of the transfer's files; the first: {}", .rejections.len(), .rejections.first().map_or("", |r| r.error.as_str()))]
    Refused {
        /// The target.
        label: &'static str,
        /// What was refused and why.
        rejections: Vec<Rejection>,
    },
    /// An in-place transfer into a repository whose datastores do not include the source's:
    /// the target's rows would name a datastore that does not hold the files.
    #[error("the {to} repository's datastores ({}) do not include the {from} repository's ({}); an in-place transfer needs the same datastore names", .target_names.join(", "), .source_names.join(", "))]
    Datastores {
        /// The source.
        from: &'static str,
        /// The target.
        to: &'static str,
        /// The source's datastore names.
        source_names: Vec<String>,
        /// The target's datastore names.
        target_names: Vec<String>,
    },
    /// A dataset type the target lacks could not be registered there.
    #[error("registering dataset types in the {label} repository")]
    RegisterTypes {
        /// The target.
        label: &'static str,
        /// Why.
        #[source]
        source: RegisterTypeError,
    },
    /// Tagging the transferred datasets failed.
    #[error("tagging datasets in the {label} repository")]
    Tag {
        /// The target.
        label: &'static str,
        /// Why.
        #[source]
        source: AssociateError,
    },
    /// A file could not be copied.
    #[error("copying {from} to {to}")]
    Copy {
        /// The source file.
        from: String,
        /// The target file.
        to: String,
        /// Why.
        #[source]
        source: resources::Error,
    },
}

impl TransferError {
    /// Whether trying again soon may help. A refusal or an unsupported source needs an
    /// operator (the chunk is still tried again on later passes, never dropped).
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Export { source, .. } => source.class(),
            Self::Ingest { source, .. } => source.class(),
            Self::Refused { .. } | Self::Datastores { .. } => ErrorClass::Stop,
            Self::Tag { source, .. } => source.class(),
            Self::RegisterTypes { source, .. } => source.class(),
            Self::Copy { source, .. } => {
                if source.is_not_found() {
                    ErrorClass::Stop
                } else {
                    ErrorClass::Retry
                }
            }
        }
    }
}

/// Transfers the datasets `ids` from `source` to `target`: their registry rows (RUNs, datasets,
/// tags, summaries, datastore records) and, in [`Mode::Copy`], their files; dataset types the
/// target lacks are registered first. The target must hold the dimension records they need
/// ([`copy_dimension_records`]).
pub async fn transfer_datasets(
    source: &Repository,
    target: &Repository,
    ids: &[Uuid],
    mode: Mode,
) -> Result<Transferred, TransferError> {
    let exported =
        source
            .registry
            .export_datasets(ids)
            .await
            .map_err(|e| TransferError::Export {
                label: source.label,
                source: e,
            })?;
    let mut missing = exported.not_in_registry.clone();
    missing.extend(&exported.not_in_datastore);
    if !missing.is_empty() {
        warn!(
            source = source.label,
            target = target.label,
            missing = missing.len(),
            "datasets missing from the source registry or its datastore"
        );
    }
    if exported.events.is_empty() {
        return Ok(Transferred {
            transferred: Vec::new(),
            missing,
        });
    }
    register_dataset_types(source, target, &exported.events).await?;
    let placement =
        match mode {
            Mode::Copy => {
                // Files of datasets the target already has were copied before (a repeated or
                // resumed transfer): daf_butler does not copy them again either.
                let ids: Vec<Uuid> = exported.ids().collect();
                let stored = target.registry.stored_datasets(&ids).await.map_err(|e| {
                    TransferError::Export {
                        label: target.label,
                        source: e.into(),
                    }
                })?;
                copy_files(source, target, &exported.paths_except(&stored)).await?;
                Placement::InDatastore
            }
            Mode::Direct => Placement::Direct {
                root: source.root.to_uri(),
            },
            Mode::InPlace => {
                check_same_datastores(source, target)?;
                Placement::InDatastore
            }
        };
    let outcome = write(target, &exported.events, &placement).await?;
    let landed: HashSet<Uuid> = outcome
        .ingested
        .iter()
        .chain(&outcome.already_present)
        .copied()
        .collect();
    Ok(Transferred {
        transferred: exported.ids().filter(|id| landed.contains(id)).collect(),
        missing,
    })
}

/// Registers in `target` the dataset types of `events` it does not have, defined as in `source`
/// (daf_butler's `register_dataset_types=True`); a type both have must be defined the same way.
async fn register_dataset_types(
    source: &Repository,
    target: &Repository,
    events: &[PromptProcessingOutputEvent],
) -> Result<(), TransferError> {
    let mut names: Vec<&str> = Vec::new();
    for (_, dataset, _) in events.iter().flat_map(|e| e.dataset_refs()) {
        let name = dataset.dataset_type_name.as_str();
        if !names.contains(&name) {
            names.push(name);
        }
    }
    let definitions = source
        .registry
        .dataset_type_definitions(&names)
        .await
        .map_err(|e| TransferError::Export {
            label: source.label,
            source: e.into(),
        })?;
    let registered = target
        .registry
        .register_dataset_types(&definitions)
        .await
        .map_err(|e| TransferError::RegisterTypes {
            label: target.label,
            source: e,
        })?;
    if !registered.is_empty() {
        tracing::info!(
            target = target.label,
            ?registered,
            "dataset types registered"
        );
    }
    Ok(())
}

/// The Google publication of the datasets `ids`: an in-place transfer from `source` (the target's
/// datastore shares the source's root and names), then each dataset found tagged into the TAGGED
/// collection `tagged` of the target. As PPS counts it, every dataset found in the source is
/// transferred, including those the target had already; a repeated publication changes nothing.
pub async fn publish_datasets(
    source: &Repository,
    target: &Repository,
    ids: &[Uuid],
    tagged: &str,
) -> Result<Transferred, TransferError> {
    let outcome = transfer_datasets(source, target, ids, Mode::InPlace).await?;
    target
        .registry
        .associate(tagged, &outcome.transferred)
        .await
        .map_err(|e| TransferError::Tag {
            label: target.label,
            source: e,
        })?;
    Ok(outcome)
}

/// An in-place transfer writes the target's rows for its own datastores: they must be the
/// source's, as daf_butler's `transfer_datasets_in_place` requires.
fn check_same_datastores(source: &Repository, target: &Repository) -> Result<(), TransferError> {
    let source_names = source.registry.datastore_names();
    let target_names = target.registry.datastore_names();
    if target_names.is_superset(&source_names) {
        return Ok(());
    }
    let owned = |names: std::collections::BTreeSet<&str>| {
        names.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    Err(TransferError::Datastores {
        from: source.label,
        to: target.label,
        source_names: owned(source_names),
        target_names: owned(target_names),
    })
}

/// Copies files, by path relative to each datastore root, a few at a time.
async fn copy_files(
    source: &Repository,
    target: &Repository,
    paths: &[&str],
) -> Result<(), TransferError> {
    let mut pending = paths.iter().map(|p| (*p).to_owned());
    let mut running: JoinSet<Result<(), TransferError>> = JoinSet::new();
    let from_root = Arc::new(source.root.clone());
    let to_root = Arc::new(target.root.clone());
    loop {
        while running.len() < FILE_COPIES_AT_ONCE {
            let Some(path) = pending.next() else { break };
            let (from_root, to_root) = (Arc::clone(&from_root), Arc::clone(&to_root));
            running.spawn(async move { copy_file(&from_root, &to_root, &path).await });
        }
        match running.join_next().await {
            None => return Ok(()),
            Some(Ok(Ok(()))) => {}
            Some(Ok(Err(error))) => return Err(error),
            Some(Err(join)) => std::panic::resume_unwind(join.into_panic()),
        }
    }
}

async fn copy_file(
    from_root: &resources::ResourcePath,
    to_root: &resources::ResourcePath,
    path: &str,
) -> Result<(), TransferError> {
    let fail = |source: resources::Error| TransferError::Copy {
        from: format!("{from_root}{path}"),
        to: format!("{to_root}{path}"),
        source,
    };
    let from = from_root.join(path).map_err(fail)?;
    let to = to_root.join(path).map_err(fail)?;
    let data = from.read().await.map_err(fail)?;
    to.write(data).await.map_err(fail)
}

/// Copies the records of `element` (`visit`, `exposure` or `group`) with the given ids of
/// `instrument`, and the records they bring along (a visit's definitions, detector regions,
/// exposures, groups, days), from `source` to `target`, as daf_butler's
/// `transfer_dimension_records_from` does. Records already in the target are left as they are.
/// Returns how many records the source gave.
pub async fn copy_dimension_records(
    source: &Repository,
    target: &Repository,
    element: &str,
    instrument: &str,
    ids: &[RecordValue],
) -> Result<usize, TransferError> {
    let key_field = source
        .registry
        .universe()
        .element(element)
        .and_then(|e| e.primary_key_field())
        .map_or_else(|| "id".to_owned(), |f| f.name.clone());
    let keys: Vec<Record> = ids
        .iter()
        .map(|id| {
            Record::from_iter([
                (
                    "instrument".to_owned(),
                    RecordValue::String(instrument.to_owned()),
                ),
                (key_field.clone(), id.clone()),
            ])
        })
        .collect();
    let records = source
        .registry
        .export_dimension_records(element, &keys)
        .await
        .map_err(|e| TransferError::Export {
            label: source.label,
            source: e,
        })?;
    if records.is_empty() {
        return Ok(0);
    }
    let count = records.len();
    let event = PromptProcessingOutputEvent {
        dimension_records: records,
        dataset_types: None,
        datasets: Vec::new(),
    };
    write(target, &[event], &Placement::InDatastore).await?;
    Ok(count)
}

/// Writes what was read from a source into `target` with the engine; anything the target turns
/// away fails the whole transfer, so that it is tried again rather than half-recorded.
async fn write(
    target: &Repository,
    events: &[PromptProcessingOutputEvent],
    placement: &Placement,
) -> Result<butler_writer::BatchOutcome, TransferError> {
    let outcome = target
        .registry
        .ingest_placed(events, placement)
        .await
        .map_err(|e| TransferError::Ingest {
            label: target.label,
            source: e,
        })?;
    if outcome.rejected.is_empty() {
        Ok(outcome)
    } else {
        Err(TransferError::Refused {
            label: target.label,
            rejections: outcome.rejected,
        })
    }
}
