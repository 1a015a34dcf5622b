//! Tagging datasets into a TAGGED collection, as daf_butler's `registry.associate` leaves the
//! registry: per tags table, a tags row for each dataset in the collection (its RUN row's data
//! ID), and the collection's summaries (its dataset types and governor values). The Prompt
//! Publication Service tags what it publishes to the public repository this way, into
//! `Prompt/Available/Outputs`.

use butler_repository::{DatabaseError, Doing, ErrorClass};
use sqlx::{AssertSqlSafe, Row};
use uuid::Uuid;

use super::Registry;
use super::model::ident;

/// daf_butler's collection type codes (`CollectionType`).
const TAGGED: i16 = 2;

/// Why datasets could not be tagged.
#[derive(Debug, thiserror::Error)]
pub enum AssociateError {
    /// The database failed or refused (a different dataset with the same type and data ID is
    /// already in the collection: its unique constraint).
    #[error(transparent)]
    Database(#[from] DatabaseError),
    /// No collection has this name.
    #[error("there is no collection {0:?} to tag datasets into")]
    NoCollection(String),
    /// The collection is a RUN, CHAINED or CALIBRATION one.
    #[error(
        "collection {name:?} is not TAGGED (its type code is {code}); datasets are tagged only into a TAGGED collection"
    )]
    NotTagged {
        /// The collection.
        name: String,
        /// Its `collection.type`.
        code: i16,
    },
}

impl AssociateError {
    /// Whether trying again may help: a conflict or a wrong collection needs an operator.
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Database(error) => match error.class() {
                ErrorClass::Reject => ErrorClass::Stop,
                class => class,
            },
            Self::NoCollection(_) | Self::NotTagged { .. } => ErrorClass::Stop,
        }
    }
}

impl Registry {
    /// Tags the datasets `ids` into the TAGGED collection `collection`, in one transaction:
    /// each gets a tags row in the collection with its RUN row's data ID, and the collection's
    /// summaries gain the datasets' types and governor values. A dataset already tagged there is
    /// left as it is; ids the registry does not have are passed over. Returns how many of `ids`
    /// the registry has (each now in the collection).
    pub async fn associate(&self, collection: &str, ids: &[Uuid]) -> Result<u64, AssociateError> {
        let doing = "tagging datasets into a TAGGED collection";
        let ns = &self.namespace_sql;
        let mut tx = self.pool.begin().await.doing(doing)?;
        let found = sqlx::query(AssertSqlSafe(format!(
            "SELECT collection_id, type FROM {ns}.collection WHERE name = $1"
        )))
        .bind(collection)
        .fetch_optional(&mut *tx)
        .await
        .doing(doing)?;
        let Some(found) = found else {
            return Err(AssociateError::NoCollection(collection.to_owned()));
        };
        let collection_id: i64 = found.try_get("collection_id").doing(doing)?;
        let code: i16 = found.try_get("type").doing(doing)?;
        if code != TAGGED {
            return Err(AssociateError::NotTagged {
                name: collection.to_owned(),
                code,
            });
        }
        // The datasets' types, and through the catalog (read again for a type not cached)
        // their tags tables and those tables' data ID columns.
        let names: Vec<String> = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT DISTINCT t.name FROM {ns}.dataset d
             JOIN {ns}.dataset_type t ON t.id = d.dataset_type_id
             WHERE d.id = ANY($1) ORDER BY 1"
        )))
        .bind(ids)
        .fetch_all(&mut *tx)
        .await
        .doing(doing)?;
        let uncached: Vec<String> = {
            let layout = self.catalog.read();
            names
                .iter()
                .filter(|n| !layout.dataset_types.contains_key(*n))
                .cloned()
                .collect()
        };
        if !uncached.is_empty() {
            self.catalog.refresh(&mut tx, Some(&uncached)).await?;
        }
        let tables: std::collections::BTreeMap<String, Vec<String>> = {
            let layout = self.catalog.read();
            names
                .iter()
                .filter_map(|n| layout.dataset_types.get(n))
                .map(|t| (t.tags_table.clone(), t.dimensions.clone()))
                .collect()
        };
        let mut tagged = 0_u64;
        for (table, data_id) in tables {
            let data_id: Vec<&str> = data_id.iter().map(String::as_str).collect();
            let sql = self.associate_sql(&table, &data_id);
            let count: i64 = sqlx::query_scalar(AssertSqlSafe(sql))
                .bind(ids)
                .bind(collection_id)
                .fetch_one(&mut *tx)
                .await
                .doing(format!(
                    "tagging datasets into {collection:?} (a different dataset with the same type and data ID may be there already)"
                ))?;
            tagged += u64::try_from(count).unwrap_or(0);
        }
        tx.commit().await.doing(doing)?;
        Ok(tagged)
    }

    /// One statement for one tags table: the datasets' RUN rows (`$1` the ids), the
    /// collection's (`$2`) summaries, then its tags rows. Foreign keys are checked at the end of
    /// the statement, so the tags rows find the summaries written beside them.
    fn associate_sql(&self, table: &str, data_id: &[&str]) -> String {
        let ns = &self.namespace_sql;
        let tags = ident(table);
        let columns: String = data_id.iter().map(|c| format!(", {}", ident(c))).collect();
        let mut ctes = vec![
            format!(
                "source AS MATERIALIZED (
                     SELECT t.* FROM {ns}.{tags} t
                     JOIN {ns}.dataset d ON d.id = t.dataset_id AND d.run_id = t.collection_id
                     WHERE t.dataset_id = ANY($1))"
            ),
            format!(
                "types AS (INSERT INTO {ns}.collection_summary_dataset_type (collection_id, dataset_type_id)
                     SELECT DISTINCT $2::int8, dataset_type_id FROM source ON CONFLICT DO NOTHING)"
            ),
        ];
        for governor in self.universe.governors().filter(|g| data_id.contains(g)) {
            ctes.push(format!(
                "summary_{governor} AS (INSERT INTO {ns}.{summary} (collection_id, {column})
                     SELECT DISTINCT $2::int8, {column} FROM source ON CONFLICT DO NOTHING)",
                summary = ident(&format!("collection_summary_{governor}")),
                column = ident(governor),
            ));
        }
        ctes.push(format!(
            "tagged AS (INSERT INTO {ns}.{tags} (dataset_type_id, dataset_id, collection_id{columns})
                 SELECT dataset_type_id, dataset_id, $2::int8{columns} FROM source
                 ON CONFLICT (dataset_id, collection_id) DO NOTHING)"
        ));
        format!("WITH {} SELECT count(*) FROM source", ctes.join(",\n"))
    }
}
