//! Registering dataset types one registry has in another, as daf_butler's `transfer_from(...,
//! register_dataset_types=True)` does before it imports datasets: a `dataset_type` row numbered
//! by the registry's sequence, in the tags table of its dimension group. A type already there
//! must have the same definition. The writer never registers types (an unknown type is a
//! rejected message); the publication consumer's transfers do.
//!
//! Only types whose dimension group the target already has (with its tags table) are
//! registered: creating a tags table is daf_butler's DDL, which this engine does not reproduce.
//! Any other type is refused with what to do.

use std::collections::{BTreeSet, HashMap};

use butler_repository::{DatabaseError, Doing, ErrorClass};
use sqlx::{AssertSqlSafe, PgConnection, Row};

use super::Registry;
use super::model::ident;

/// A dataset type as a registry defines it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetTypeDefinition {
    /// Its name.
    pub name: String,
    /// Its storage class.
    pub storage_class: String,
    /// Its dimension group, as `dimension_graph_definition` lists it (the required dimensions).
    pub dimensions: BTreeSet<String>,
    /// Whether it is a calibration type (it has a calibration association table).
    pub calibration: bool,
}

/// Why a dataset type could not be registered.
#[derive(Debug, thiserror::Error)]
pub enum RegisterTypeError {
    /// The database failed or refused.
    #[error(transparent)]
    Database(#[from] DatabaseError),
    /// The target has the type with another definition.
    #[error("dataset type {name} is {theirs} in the target and {ours} in the source")]
    Conflict {
        /// The type.
        name: String,
        /// Its definition in the target.
        theirs: String,
        /// Its definition in the source.
        ours: String,
    },
    /// The target has no tags table for the type's dimensions, or the type is a calibration.
    #[error(
        "dataset type {name} ({dimensions}) cannot be registered by this service: {why}; register it in the target with daf_butler (`butler register-dataset-type`)"
    )]
    Unsupported {
        /// The type.
        name: String,
        /// Its dimensions.
        dimensions: String,
        /// Why.
        why: &'static str,
    },
}

impl RegisterTypeError {
    /// Whether trying again may help: a conflict or an unsupported type needs an operator.
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Database(error) => match error.class() {
                ErrorClass::Reject => ErrorClass::Stop,
                class => class,
            },
            Self::Conflict { .. } | Self::Unsupported { .. } => ErrorClass::Stop,
        }
    }
}

impl DatasetTypeDefinition {
    fn describe(&self) -> String {
        format!(
            "{} with dimensions {{{}}}",
            self.storage_class,
            self.dimensions
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

impl Registry {
    /// The definitions of the dataset types `names` this registry has, in the order of `names`.
    pub async fn dataset_type_definitions(
        &self,
        names: &[&str],
    ) -> Result<Vec<DatasetTypeDefinition>, DatabaseError> {
        let mut conn = self.pool.acquire().await.doing("reading dataset types")?;
        let mut found = self.definitions(&mut conn, names).await?;
        Ok(names.iter().filter_map(|n| found.remove(*n)).collect())
    }

    /// The definitions of those of `names` this registry has, by name, in one query.
    async fn definitions(
        &self,
        conn: &mut PgConnection,
        names: &[&str],
    ) -> Result<HashMap<String, DatasetTypeDefinition>, DatabaseError> {
        let doing = "reading dataset types";
        let ns = &self.namespace_sql;
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT t.name, t.storage_class, t.calibration_association_table IS NOT NULL AS calibration,
                    coalesce(array_agg(g.dimension_name::text) FILTER (WHERE g.dimension_name IS NOT NULL), '{{}}') AS dimensions
             FROM {ns}.dataset_type t
             LEFT JOIN {ns}.dimension_graph_definition g ON g.dimension_graph_id = t.dimensions_key
             WHERE t.name = ANY($1)
             GROUP BY t.name, t.storage_class, t.calibration_association_table"
        )))
        .bind(names)
        .fetch_all(&mut *conn)
        .await
        .doing(doing)?;
        let mut found = HashMap::with_capacity(rows.len());
        for row in rows {
            let name: String = row.try_get("name").doing(doing)?;
            let dimensions: Vec<String> = row.try_get("dimensions").doing(doing)?;
            found.insert(
                name.clone(),
                DatasetTypeDefinition {
                    name,
                    storage_class: row.try_get("storage_class").doing(doing)?,
                    dimensions: dimensions.into_iter().collect(),
                    calibration: row.try_get("calibration").doing(doing)?,
                },
            );
        }
        Ok(found)
    }

    /// Registers each of `definitions` this registry does not have, in order, each numbered by
    /// the `dataset_type` sequence as daf_butler numbers it; one it has must be defined the same
    /// way. Returns the names registered.
    pub async fn register_dataset_types(
        &self,
        definitions: &[DatasetTypeDefinition],
    ) -> Result<Vec<String>, RegisterTypeError> {
        let doing = "registering a dataset type";
        let ns = &self.namespace_sql;
        let mut conn = self.pool.acquire().await.doing(doing)?;
        let names: Vec<&str> = definitions.iter().map(|d| d.name.as_str()).collect();
        let present = self.definitions(&mut conn, &names).await?;
        let mut registered = Vec::new();
        for wanted in definitions {
            if let Some(present) = present.get(&wanted.name) {
                if present.storage_class != wanted.storage_class
                    || present.dimensions != wanted.dimensions
                    || present.calibration != wanted.calibration
                {
                    return Err(RegisterTypeError::Conflict {
                        name: wanted.name.clone(),
                        theirs: present.describe(),
                        ours: wanted.describe(),
                    });
                }
                continue;
            }
            let unsupported = |why| RegisterTypeError::Unsupported {
                name: wanted.name.clone(),
                dimensions: wanted.describe(),
                why,
            };
            if wanted.calibration {
                return Err(unsupported("it is a calibration type"));
            }
            let dimensions: Vec<&str> = wanted.dimensions.iter().map(String::as_str).collect();
            // The dimension group with exactly these dimensions, and the tags table of its
            // types (daf_butler names it after the group's key).
            let group = sqlx::query(AssertSqlSafe(format!(
                "SELECT g.dimension_graph_id AS key,
                        (SELECT t.tag_association_table FROM {ns}.dataset_type t
                          WHERE t.dimensions_key = g.dimension_graph_id LIMIT 1) AS tags
                 FROM {ns}.dimension_graph_definition g
                 GROUP BY g.dimension_graph_id
                 HAVING array_agg(g.dimension_name::text ORDER BY g.dimension_name) = $1::text[]
                 ORDER BY 1 LIMIT 1"
            )))
            .bind(&dimensions)
            .fetch_optional(&mut *conn)
            .await
            .doing(doing)?;
            let Some(group) = group else {
                return Err(unsupported(
                    "the target has no dimension group with these dimensions",
                ));
            };
            let key: i64 = group.try_get("key").doing(doing)?;
            let tags: Option<String> = group.try_get("tags").doing(doing)?;
            let Some(tags) = tags else {
                return Err(unsupported(
                    "the target has no tags table for these dimensions",
                ));
            };
            let sequence = format!("{ns}.{}", ident("dataset_type_seq_id"));
            sqlx::query(AssertSqlSafe(format!(
                "INSERT INTO {ns}.dataset_type (id, name, storage_class, dimensions_key, tag_association_table, calibration_association_table)
                 SELECT nextval('{}'), $1, $2, $3, $4, NULL
                 WHERE NOT EXISTS (SELECT 1 FROM {ns}.dataset_type WHERE name = $1)
                 ON CONFLICT (name) DO NOTHING",
                sequence.replace('\'', "''")
            )))
            .bind(&wanted.name)
            .bind(&wanted.storage_class)
            .bind(key)
            .bind(&tags)
            .execute(&mut *conn)
            .await
            .doing(doing)?;
            registered.push(wanted.name.clone());
        }
        Ok(registered)
    }
}
