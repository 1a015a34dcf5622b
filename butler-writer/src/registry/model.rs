//! The registry as the database describes it: the manager versions in `butler_attributes`, the
//! tables of the namespace with their columns and primary keys, and the dataset types with their
//! tags tables. Read at start-up; the dataset types again when a name is not known.

use std::collections::HashMap;

use sqlx::{AssertSqlSafe, PgConnection, Row};

/// Quotes an SQL identifier (table, column, schema): `group` is a reserved word, and names come
/// from the database, never from messages.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The managers whose schemas this writer reproduces, by class name, with the schema versions
/// (major.minor) whose tables it has been checked against (`../shared/reference/butler-registry.md`
/// §1). A patch release does not change tables; anything else is refused at start-up.
pub const SUPPORTED_MANAGERS: &[(&str, &str, &str)] = &[
    ("attributes", "DefaultButlerAttributeManager", "1.0"),
    ("dimensions", "StaticDimensionRecordStorageManager", "6.0"),
    ("collections", "SynthIntKeyCollectionManager", "2.0"),
    (
        "datasets",
        "ByDimensionsDatasetRecordStorageManagerUUID",
        "2.0",
    ),
    ("opaque", "ByNameOpaqueTableStorageManager", "0.2"),
    (
        "datastores",
        "MonolithicDatastoreRegistryBridgeManager",
        "0.2",
    ),
];

/// A registry whose managers this writer does not reproduce.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManagerError {
    /// A manager kind the writer does not know (it would have to write its tables too).
    #[error(
        "registry manager `{kind}` ({class}) is not supported by this writer (it would have to write its tables too); supported: {}",
        supported_text()
    )]
    UnknownKind {
        /// The kind (`obscore`).
        kind: String,
        /// Its class.
        class: String,
    },
    /// Another class than the one the writer reproduces.
    #[error(
        "registry manager {kind}={class} is not supported; supported: {}",
        supported_text()
    )]
    OtherClass {
        /// The kind.
        kind: String,
        /// The class found.
        class: String,
    },
    /// A schema version the writer has not been checked against.
    #[error(
        "registry manager {kind}={class} has schema version {version}; this writer supports {expected}.x (supported: {})",
        supported_text()
    )]
    Version {
        /// The kind.
        kind: String,
        /// The class, short name.
        class: String,
        /// The version found (`none` when missing).
        version: String,
        /// The major.minor supported.
        expected: &'static str,
    },
    /// A manager kind the registry does not name at all.
    #[error(
        "butler_attributes names no `{kind}` manager (expected {class}): is this a daf_butler registry?"
    )]
    Missing {
        /// The kind.
        kind: &'static str,
        /// The class expected.
        class: &'static str,
    },
}

fn supported_text() -> String {
    SUPPORTED_MANAGERS
        .iter()
        .map(|(kind, class, version)| format!("{kind}={class} {version}.x"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks the managers recorded in `butler_attributes` (`config:registry.managers.<kind>` names
/// the class, `version:<class>` its schema version) against [`SUPPORTED_MANAGERS`].
pub fn check_managers(attributes: &HashMap<String, String>) -> Result<(), ManagerError> {
    for (key, class) in attributes
        .iter()
        .filter(|(k, _)| k.starts_with("config:registry.managers."))
    {
        let kind = &key["config:registry.managers.".len()..];
        let short = class.rsplit('.').next().unwrap_or(class);
        let Some((_, expected_class, expected_version)) =
            SUPPORTED_MANAGERS.iter().find(|(k, _, _)| *k == kind)
        else {
            return Err(ManagerError::UnknownKind {
                kind: kind.to_owned(),
                class: class.clone(),
            });
        };
        if short != *expected_class {
            return Err(ManagerError::OtherClass {
                kind: kind.to_owned(),
                class: class.clone(),
            });
        }
        let version = attributes
            .get(&format!("version:{class}"))
            .map_or("none", String::as_str);
        let major_minor: String = version.split('.').take(2).collect::<Vec<_>>().join(".");
        if major_minor != *expected_version {
            return Err(ManagerError::Version {
                kind: kind.to_owned(),
                class: short.to_owned(),
                version: version.to_owned(),
                expected: expected_version,
            });
        }
    }
    for (kind, class, _) in SUPPORTED_MANAGERS {
        if !attributes.contains_key(&format!("config:registry.managers.{kind}")) {
            return Err(ManagerError::Missing { kind, class });
        }
    }
    Ok(())
}

/// A column of a registry table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Column name.
    pub name: String,
    /// `information_schema.columns.data_type` (`bigint`, `text`, `character varying`...).
    pub data_type: String,
    /// Whether NULL is allowed.
    pub nullable: bool,
    /// Declared maximum length of a `character varying` column.
    pub max_length: Option<i32>,
}

impl Column {
    /// The type to declare for this column in `jsonb_to_recordset(...) AS x(col type, ...)`.
    pub fn record_type(&self) -> &'static str {
        match self.data_type.as_str() {
            "bigint" => "int8",
            "integer" => "int4",
            "smallint" => "int2",
            "boolean" => "bool",
            "double precision" => "float8",
            "real" => "float4",
            "uuid" => "uuid",
            "bytea" => "bytea",
            "int8range" => "int8range",
            _ => "text",
        }
    }

    /// True for integer columns (data ID values must then be integers).
    pub fn is_integer(&self) -> bool {
        matches!(self.data_type.as_str(), "bigint" | "integer" | "smallint")
    }
}

/// A table of the registry namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// Table name.
    pub name: String,
    /// Columns in table order.
    pub columns: Vec<Column>,
    /// Primary key columns.
    pub primary_key: Vec<String>,
}

impl Table {
    /// A column by name.
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// Every table of the namespace, by name.
#[derive(Debug, Clone, Default)]
pub struct Tables(HashMap<String, Table>);

impl Tables {
    /// Reads the tables of `namespace` from the catalog.
    pub async fn load(conn: &mut PgConnection, namespace: &str) -> Result<Self, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT c.relname AS table_name, a.attname AS column_name,
                    CASE WHEN t.typname = 'varchar' THEN 'character varying'
                         ELSE format_type(a.atttypid, NULL) END AS data_type,
                    NOT a.attnotnull AS nullable,
                    CASE WHEN t.typname = 'varchar' AND a.atttypmod > 4 THEN a.atttypmod - 4 END AS max_length
             FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
             JOIN pg_type t ON t.oid = a.atttypid
             WHERE n.nspname = $1 AND c.relkind IN ('r', 'p')
             ORDER BY c.relname, a.attnum",
        )
        .bind(namespace)
        .fetch_all(&mut *conn)
        .await?;
        let mut tables: HashMap<String, Table> = HashMap::new();
        for row in rows {
            let table: String = row.try_get("table_name")?;
            let column = Column {
                name: row.try_get("column_name")?,
                data_type: row.try_get("data_type")?,
                nullable: row.try_get("nullable")?,
                max_length: row.try_get("max_length")?,
            };
            tables
                .entry(table.clone())
                .or_insert_with(|| Table {
                    name: table,
                    columns: Vec::new(),
                    primary_key: Vec::new(),
                })
                .columns
                .push(column);
        }
        // Primary key columns in index order (the order `ON CONFLICT (...)` names them in does not
        // matter to Postgres, but a stable order keeps the SQL readable).
        let pk_order = sqlx::query(
            "SELECT c.relname AS table_name, a.attname AS column_name, k.ord AS ord
             FROM pg_index i
             JOIN pg_class c ON c.oid = i.indrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
             CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
             WHERE n.nspname = $1 AND i.indisprimary
             ORDER BY c.relname, k.ord",
        )
        .bind(namespace)
        .fetch_all(&mut *conn)
        .await?;
        for row in pk_order {
            let table: String = row.try_get("table_name")?;
            let column: String = row.try_get("column_name")?;
            if let Some(t) = tables.get_mut(&table) {
                t.primary_key.push(column);
            }
        }
        Ok(Self(tables))
    }

    /// A table by name.
    pub fn get(&self, name: &str) -> Option<&Table> {
        self.0.get(name)
    }
}

/// A registered dataset type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetType {
    /// `dataset_type.id`.
    pub id: i64,
    /// Its name.
    pub name: String,
    /// Its storage class (written to the datastore records).
    pub storage_class: String,
    /// The tags table its datasets go to (`dataset_tags_%08d`).
    pub tags_table: String,
    /// The required dimensions of the type, as the tags table's columns, in table order.
    pub dimensions: Vec<String>,
}

/// A row of `dataset_type`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetTypeRow {
    /// `id`.
    pub id: i64,
    /// `name`.
    pub name: String,
    /// `storage_class`.
    pub storage_class: String,
    /// `tag_association_table`: none for calibration-only types.
    pub tags_table: Option<String>,
    /// `dimensions_key`: its dimension group.
    pub dimensions_key: i64,
}

/// Reads dataset types by name (all of them when `names` is `None`).
pub async fn load_dataset_types(
    conn: &mut PgConnection,
    namespace: &str,
    names: Option<&[String]>,
) -> Result<Vec<DatasetTypeRow>, sqlx::Error> {
    let ns = ident(namespace);
    let base = format!(
        "SELECT id, name, storage_class, tag_association_table, dimensions_key FROM {ns}.dataset_type"
    );
    let rows = match names {
        None => {
            sqlx::query(AssertSqlSafe(base))
                .fetch_all(&mut *conn)
                .await?
        }
        Some(names) => {
            sqlx::query(AssertSqlSafe(format!("{base} WHERE name = ANY($1)")))
                .bind(names)
                .fetch_all(&mut *conn)
                .await?
        }
    };
    rows.into_iter()
        .map(|row| {
            Ok(DatasetTypeRow {
                id: row.try_get("id")?,
                name: row.try_get("name")?,
                storage_class: row.try_get("storage_class")?,
                tags_table: row.try_get("tag_association_table")?,
                dimensions_key: row.try_get("dimensions_key")?,
            })
        })
        .collect()
}

/// The required dimensions of each dimension group (`dimension_graph_definition`).
pub async fn load_dimension_groups(
    conn: &mut PgConnection,
    namespace: &str,
) -> Result<HashMap<i64, Vec<String>>, sqlx::Error> {
    let sql = format!(
        "SELECT dimension_graph_id, dimension_name FROM {}.dimension_graph_definition",
        ident(namespace)
    );
    let rows = sqlx::query(AssertSqlSafe(sql))
        .fetch_all(&mut *conn)
        .await?;
    let mut groups: HashMap<i64, Vec<String>> = HashMap::new();
    for row in rows {
        groups
            .entry(row.try_get("dimension_graph_id")?)
            .or_default()
            .push(row.try_get("dimension_name")?);
    }
    Ok(groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attributes(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn reference() -> HashMap<String, String> {
        let mut a = attributes(&[
            (
                "config:registry.managers.attributes",
                "lsst.daf.butler.registry.attributes.DefaultButlerAttributeManager",
            ),
            (
                "config:registry.managers.collections",
                "lsst.daf.butler.registry.collections.synthIntKey.SynthIntKeyCollectionManager",
            ),
            (
                "config:registry.managers.datasets",
                "lsst.daf.butler.registry.datasets.byDimensions._manager.ByDimensionsDatasetRecordStorageManagerUUID",
            ),
            (
                "config:registry.managers.datastores",
                "lsst.daf.butler.registry.bridge.monolithic.MonolithicDatastoreRegistryBridgeManager",
            ),
            (
                "config:registry.managers.dimensions",
                "lsst.daf.butler.registry.dimensions.static.StaticDimensionRecordStorageManager",
            ),
            (
                "config:registry.managers.opaque",
                "lsst.daf.butler.registry.opaque.ByNameOpaqueTableStorageManager",
            ),
        ]);
        let versions = [
            (
                "lsst.daf.butler.registry.attributes.DefaultButlerAttributeManager",
                "1.0.1",
            ),
            (
                "lsst.daf.butler.registry.bridge.monolithic.MonolithicDatastoreRegistryBridgeManager",
                "0.2.1",
            ),
            (
                "lsst.daf.butler.registry.collections.synthIntKey.SynthIntKeyCollectionManager",
                "2.0.0",
            ),
            (
                "lsst.daf.butler.registry.datasets.byDimensions._manager.ByDimensionsDatasetRecordStorageManagerUUID",
                "2.0.0",
            ),
            (
                "lsst.daf.butler.registry.dimensions.static.StaticDimensionRecordStorageManager",
                "6.0.2",
            ),
            (
                "lsst.daf.butler.registry.opaque.ByNameOpaqueTableStorageManager",
                "0.2.0",
            ),
        ];
        for (class, version) in versions {
            a.insert(format!("version:{class}"), version.to_owned());
        }
        a
    }

    #[test]
    fn the_reference_managers_are_supported() {
        assert_eq!(check_managers(&reference()), Ok(()));
    }

    #[test]
    fn other_versions_and_managers_are_refused_by_name() {
        let mut a = reference();
        a.insert("version:lsst.daf.butler.registry.datasets.byDimensions._manager.ByDimensionsDatasetRecordStorageManagerUUID".into(), "1.0.0".into());
        let err = check_managers(&a).unwrap_err().to_string();
        assert!(
            err.contains("schema version 1.0.0") && err.contains("supports 2.0.x"),
            "{err}"
        );

        let mut a = reference();
        a.insert(
            "config:registry.managers.obscore".into(),
            "lsst.daf.butler.registry.obscore.ObsCoreLiveTableManager".into(),
        );
        assert!(
            check_managers(&a)
                .unwrap_err()
                .to_string()
                .contains("obscore")
        );

        let mut a = reference();
        a.remove("config:registry.managers.opaque");
        assert!(
            check_managers(&a)
                .unwrap_err()
                .to_string()
                .contains("no `opaque` manager")
        );
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(ident("group"), "\"group\"");
        assert_eq!(ident("we\"ird"), "\"we\"\"ird\"");
    }
}
