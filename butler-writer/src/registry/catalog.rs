//! What the engine knows of the registry's layout and reads again when it changes: the tables of
//! the namespace (columns, primary keys) and the registered dataset types with their tags tables.
//! Dataset types are read at start-up and again when a batch names one not seen before (a type
//! registered after the writer started).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use butler_repository::{DatabaseError, Doing};
use schema::PromptProcessingOutputEvent;
use sqlx::PgConnection;
use tracing::{debug, warn};

use super::model::{self, DatasetType, DatasetTypeRow, Tables};

/// The cached layout.
#[derive(Debug, Default)]
pub struct Layout {
    /// Every table of the namespace.
    pub tables: Arc<Tables>,
    /// Registered dataset types that have a tags table, by name.
    pub dataset_types: HashMap<String, DatasetType>,
}

/// The layout cache, shared by the batches in the database at once.
#[derive(Debug)]
pub struct Catalog {
    namespace: String,
    layout: RwLock<Layout>,
}

impl Catalog {
    /// A catalog of `namespace` starting from `tables`, with no dataset types yet.
    pub fn new(namespace: &str, tables: Tables) -> Self {
        Self {
            namespace: namespace.to_owned(),
            layout: RwLock::new(Layout {
                tables: Arc::new(tables),
                dataset_types: HashMap::new(),
            }),
        }
    }

    /// The cached layout, to read.
    pub fn read(&self) -> RwLockReadGuard<'_, Layout> {
        // A panic while holding the lock cannot leave the layout half-written (every write
        // replaces whole values), so a poisoned lock is still safe to read.
        self.layout
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Layout> {
        self.layout
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The tables, to hold across queries.
    pub fn tables(&self) -> Arc<Tables> {
        Arc::clone(&self.read().tables)
    }

    /// Reads the dataset types the batch names that are not cached yet (one query).
    pub async fn resolve(
        &self,
        conn: &mut PgConnection,
        events: &[(usize, PromptProcessingOutputEvent)],
    ) -> Result<(), DatabaseError> {
        let names: BTreeSet<&str> = events
            .iter()
            .flat_map(|(_, e)| {
                e.dataset_refs()
                    .map(|(_, r, _)| r.dataset_type_name.as_str())
            })
            .collect();
        let missing: Vec<String> = {
            let layout = self.read();
            names
                .into_iter()
                .filter(|n| !layout.dataset_types.contains_key(*n))
                .map(str::to_owned)
                .collect()
        };
        if missing.is_empty() {
            return Ok(());
        }
        debug!(?missing, "dataset types not in the cache; reading them");
        self.refresh(conn, Some(&missing)).await
    }

    /// Reads dataset types (all, or the named ones) into the cache; reads the tables again when
    /// a type uses a tags table not seen before.
    pub async fn refresh(
        &self,
        conn: &mut PgConnection,
        names: Option<&[String]>,
    ) -> Result<(), DatabaseError> {
        let rows = model::load_dataset_types(conn, &self.namespace, names)
            .await
            .doing("reading dataset types")?;
        if rows.is_empty() {
            return Ok(());
        }
        let groups = model::load_dimension_groups(conn, &self.namespace)
            .await
            .doing("reading dimension groups")?;
        let need_tables = {
            let layout = self.read();
            rows.iter().any(|row| {
                row.tags_table
                    .as_ref()
                    .is_some_and(|t| layout.tables.get(t).is_none())
            })
        };
        if need_tables {
            let tables = Tables::load(conn, &self.namespace)
                .await
                .doing("reading the registry's tables")?;
            self.write().tables = Arc::new(tables);
        }
        let mut layout = self.write();
        for row in rows {
            if let Some(dataset_type) = dataset_type(row, &layout.tables, &groups) {
                layout
                    .dataset_types
                    .insert(dataset_type.name.clone(), dataset_type);
            }
        }
        Ok(())
    }
}

/// A dataset type as the engine uses it: its tags table's dimension columns, in table order, are
/// its required dimensions (`dimension_graph_definition` names the same set). `None` for
/// calibration-only or incomplete types, which have no tags table for RUN datasets.
fn dataset_type(
    row: DatasetTypeRow,
    tables: &Tables,
    groups: &HashMap<i64, Vec<String>>,
) -> Option<DatasetType> {
    let tags_table = row.tags_table?;
    let table = tables.get(&tags_table)?;
    let declared: HashSet<&str> = groups
        .get(&row.dimensions_key)
        .map(|g| g.iter().map(String::as_str).collect())
        .unwrap_or_default();
    let dimensions: Vec<String> = table
        .columns
        .iter()
        .map(|c| c.name.clone())
        .filter(|c| {
            !matches!(
                c.as_str(),
                "dataset_type_id" | "dataset_id" | "collection_id"
            )
        })
        .collect();
    if !declared.is_empty() && dimensions.iter().any(|d| !declared.contains(d.as_str())) {
        warn!(dataset_type = %row.name, tags_table = %tags_table, "tags table columns differ from dimension_graph_definition");
    }
    Some(DatasetType {
        id: row.id,
        name: row.name,
        storage_class: row.storage_class,
        tags_table,
        dimensions,
    })
}
