//! The dimension universe, as the repository stores it in `butler_attributes`
//! (`config:dimensions.json`): which elements exist, which have tables, how they depend on each
//! other, which are spatial and at which HTM level their overlaps are kept.
//!
//! Nothing here is hard-coded to a universe version: the writer learns the elements of the
//! repository it serves at start-up. Versions 7 and 8 are the ones we have checked against
//! daf_butler (8 only adds the `ssp_*` dimensions); others are refused, because a universe we have
//! not compared table for table may store records in a way we do not reproduce.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Deserialize;

/// The universe namespace daf_butler itself defines.
pub const SUPPORTED_NAMESPACE: &str = "daf_butler";
/// Universe versions whose storage we have checked against daf_butler.
pub const SUPPORTED_VERSIONS: &[u32] = &[7, 8];

/// A universe that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum UniverseError {
    /// The JSON does not have the shape daf_butler writes.
    #[error("the dimension universe in butler_attributes does not parse: {0}")]
    Json(#[from] serde_json::Error),
    /// Another namespace or version than the ones we support.
    #[error(
        "dimension universe {namespace} version {version} is not supported: this writer supports {SUPPORTED_NAMESPACE} versions {supported}"
    )]
    Unsupported {
        /// The namespace found.
        namespace: String,
        /// The version found.
        version: u32,
        /// The versions supported, for the message.
        supported: String,
    },
    /// An element names another that the universe does not define.
    #[error("dimension universe: element `{element}` refers to unknown element `{missing}`")]
    Dangling {
        /// The referring element.
        element: String,
        /// The missing one.
        missing: String,
    },
    /// The common skypix is not an HTM level (the only pixelization we compute).
    #[error("dimension universe: common skypix `{0}` is not an HTM level (htmN)")]
    CommonSkyPix(String),
}

/// How a field of a record is typed in the universe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    /// A 64-bit integer.
    Int,
    /// A string; `length` is the declared maximum.
    String {
        /// Declared maximum length.
        length: Option<u32>,
    },
    /// A double.
    Float,
    /// A boolean.
    Bool,
    /// Bytes, hex-encoded on the wire.
    Hash {
        /// Declared size.
        nbytes: Option<u32>,
    },
    /// A sphgeom region (hex on the wire, base64 in the registry).
    Region,
    /// A TAI timespan (`[begin, end]` on the wire, `int8range` in the registry).
    Timespan,
}

impl FieldType {
    fn parse(kind: &str, length: Option<u32>, nbytes: Option<u32>) -> Option<Self> {
        Some(match kind {
            "int" => Self::Int,
            "string" => Self::String { length },
            "float" => Self::Float,
            "bool" => Self::Bool,
            "hash" => Self::Hash { nbytes },
            _ => return None,
        })
    }
}

/// What a field is to its element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldRole {
    /// A required dimension (a foreign key, or the element's own primary key).
    Required,
    /// An implied dimension (a foreign key that is not part of the primary key).
    Implied,
    /// An alternate unique key (`obs_id`, a visit's `name`).
    AlternateKey,
    /// Any other column.
    Metadata,
    /// The region of a spatial element.
    Region,
    /// The timespan of a temporal element.
    Timespan,
}

/// One field of an element's records (also a column of its table, by the same name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// Field and column name.
    pub name: String,
    /// Type on the wire.
    pub field_type: FieldType,
    /// Role in the element.
    pub role: FieldRole,
    /// For required and implied fields: the dimension the value identifies.
    pub dimension: Option<String>,
}

impl Field {
    /// Keys (required and implied) may not be null; everything else may, as daf_butler's record
    /// models declare.
    pub fn nullable(&self) -> bool {
        !matches!(self.role, FieldRole::Required | FieldRole::Implied)
    }
}

/// One dimension element: a dimension (with keys) or a combination (a join table such as
/// `visit_detector_region`).
#[derive(Debug, Clone)]
pub struct Element {
    /// Element name, also its table's.
    pub name: String,
    /// True for dimensions with keys; false for combinations.
    pub is_dimension: bool,
    /// A governor (`instrument`, `skymap`): a namespace for other dimensions' values.
    pub governor: bool,
    /// False for elements with no table of their own (`band` is a view of `physical_filter`).
    pub has_table: bool,
    /// Whether records carry a region and get `<element>_skypix_overlap` rows.
    pub spatial: bool,
    /// Whether records carry a timespan.
    pub temporal: bool,
    /// The required dimensions, closure of `requires`, each dimension before those that need it;
    /// for a dimension this ends with itself.
    pub required: Vec<String>,
    /// Implied dimensions, in declaration order.
    pub implied: Vec<String>,
    /// Every field of a record, in daf_butler's order (required, implied, alternate keys,
    /// metadata, region, timespan).
    pub fields: Vec<Field>,
    /// Direct dependencies (required and implied), for ordering inserts.
    pub depends_on: Vec<String>,
    /// The dimension whose records bring this element's along (`visit` for
    /// `visit_detector_region`), as daf_butler's `populated_by`.
    pub populated_by: Option<String>,
}

impl Element {
    /// The field holding this dimension's own value (`id`, `name`); `None` for combinations.
    pub fn primary_key_field(&self) -> Option<&Field> {
        if !self.is_dimension {
            return None;
        }
        self.fields
            .iter()
            .find(|f| f.role == FieldRole::Required && f.dimension.as_deref() == Some(&self.name))
    }

    /// The field of a record that holds the value of required dimension `dimension`.
    pub fn field_for_dimension(&self, dimension: &str) -> Option<&Field> {
        self.fields
            .iter()
            .find(|f| f.dimension.as_deref() == Some(dimension))
    }
}

/// The repository's dimension universe.
#[derive(Debug, Clone)]
pub struct Universe {
    /// `daf_butler`.
    pub namespace: String,
    /// The universe version.
    pub version: u32,
    /// HTM level of the common skypix (`htm7` → 7), at which overlaps are stored.
    pub common_htm_level: u32,
    elements: Vec<Element>,
    index: HashMap<String, usize>,
}

#[derive(Deserialize)]
struct RawUniverse {
    version: u32,
    namespace: String,
    skypix: RawSkyPix,
    elements: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    topology: RawTopology,
}

#[derive(Deserialize)]
struct RawSkyPix {
    common: String,
}

#[derive(Deserialize, Default)]
struct RawTopology {
    #[serde(default)]
    spatial: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    temporal: BTreeMap<String, Vec<String>>,
}

#[derive(Deserialize)]
struct RawElement {
    #[serde(default)]
    keys: Vec<RawField>,
    #[serde(default)]
    requires: Vec<String>,
    #[serde(default)]
    implies: Vec<String>,
    #[serde(default)]
    metadata: Vec<RawField>,
    #[serde(default)]
    governor: bool,
    #[serde(default)]
    storage: Option<RawStorage>,
    #[serde(default)]
    populated_by: Option<String>,
}

#[derive(Deserialize)]
struct RawField {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    length: Option<u32>,
    #[serde(default)]
    nbytes: Option<u32>,
}

#[derive(Deserialize)]
struct RawStorage {
    #[serde(default)]
    view_of: Option<String>,
    #[serde(default)]
    nested: Option<Box<RawStorage>>,
}

impl RawStorage {
    /// Storage that only reads another element's table (`band`, a view of `physical_filter`).
    fn is_view(&self) -> bool {
        self.view_of.is_some() || self.nested.as_ref().is_some_and(|n| n.is_view())
    }
}

impl Universe {
    /// Reads the universe from the JSON in `butler_attributes`, refusing unsupported versions.
    pub fn from_json(text: &str) -> Result<Self, UniverseError> {
        let raw: RawUniverse = serde_json::from_str(text)?;
        if raw.namespace != SUPPORTED_NAMESPACE || !SUPPORTED_VERSIONS.contains(&raw.version) {
            return Err(UniverseError::Unsupported {
                namespace: raw.namespace,
                version: raw.version,
                supported: SUPPORTED_VERSIONS
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        let common_htm_level = raw
            .skypix
            .common
            .strip_prefix("htm")
            .and_then(|level| level.parse().ok())
            .ok_or_else(|| UniverseError::CommonSkyPix(raw.skypix.common.clone()))?;
        let definitions = Definitions::parse(&raw)?;
        let mut required_of = HashMap::new();
        let elements: Vec<Element> = definitions
            .elements
            .iter()
            .map(|(name, element)| definitions.element(name, element, &mut required_of))
            .collect();
        let index = elements
            .iter()
            .enumerate()
            .map(|(i, e)| (e.name.clone(), i))
            .collect();
        Ok(Self {
            namespace: raw.namespace,
            version: raw.version,
            common_htm_level,
            elements,
            index,
        })
    }

    /// An element by name.
    pub fn element(&self, name: &str) -> Option<&Element> {
        self.index.get(name).map(|&i| &self.elements[i])
    }

    /// Every element, in the universe's declaration order.
    pub fn elements(&self) -> &[Element] {
        &self.elements
    }

    /// Names of the governor dimensions.
    pub fn governors(&self) -> impl Iterator<Item = &str> {
        self.elements
            .iter()
            .filter(|e| e.governor)
            .map(|e| e.name.as_str())
    }

    /// `names` ordered so that every element comes after the elements it depends on (the order
    /// daf_butler inserts in, which foreign keys require); ties keep declaration order.
    pub fn dependency_order<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
        let wanted: HashSet<&str> = names.into_iter().collect();
        let mut done: HashSet<String> = HashSet::new();
        let mut order = Vec::with_capacity(wanted.len());
        fn visit(
            universe: &Universe,
            name: &str,
            wanted: &HashSet<&str>,
            done: &mut HashSet<String>,
            order: &mut Vec<String>,
            depth: usize,
        ) {
            if done.contains(name) || depth > 64 {
                return;
            }
            done.insert(name.to_owned());
            if let Some(element) = universe.element(name) {
                for dep in &element.depends_on {
                    visit(universe, dep, wanted, done, order, depth + 1);
                }
            }
            if wanted.contains(name) {
                order.push(name.to_owned());
            }
        }
        for element in &self.elements {
            if wanted.contains(element.name.as_str()) {
                visit(self, &element.name, &wanted, &mut done, &mut order, 0);
            }
        }
        order
    }
}

/// The elements of a universe as its JSON declares them, with what the JSON says of them
/// elsewhere (its spatial and temporal families), from which each [`Element`] is built.
struct Definitions<'a> {
    elements: Vec<(String, RawElement)>,
    position: HashMap<String, usize>,
    spatial: HashSet<&'a str>,
    temporal: HashSet<&'a str>,
}

impl<'a> Definitions<'a> {
    /// The elements of `raw`, each referring only to elements it defines.
    fn parse(raw: &'a RawUniverse) -> Result<Self, UniverseError> {
        let family_members = |families: &'a BTreeMap<String, Vec<String>>| -> HashSet<&'a str> {
            families.values().flatten().map(String::as_str).collect()
        };
        let mut elements: Vec<(String, RawElement)> = Vec::with_capacity(raw.elements.len());
        for (name, value) in &raw.elements {
            elements.push((name.clone(), RawElement::deserialize(value)?));
        }
        let position: HashMap<String, usize> = elements
            .iter()
            .enumerate()
            .map(|(i, (n, _))| (n.clone(), i))
            .collect();
        for (name, element) in &elements {
            for dep in element.requires.iter().chain(&element.implies) {
                if !position.contains_key(dep) {
                    return Err(UniverseError::Dangling {
                        element: name.clone(),
                        missing: dep.clone(),
                    });
                }
            }
        }
        Ok(Self {
            elements,
            position,
            spatial: family_members(&raw.topology.spatial),
            temporal: family_members(&raw.topology.temporal),
        })
    }

    fn raw(&self, name: &str) -> Option<&RawElement> {
        self.position.get(name).map(|&i| &self.elements[i].1)
    }

    /// The required dimensions of `name`: the required dimensions of each direct requirement,
    /// then the requirement itself; then the element itself if it is a dimension. `memo` keeps
    /// what was computed; a depth bound keeps a broken (cyclic) universe from recursing forever.
    fn required(
        &self,
        name: &str,
        memo: &mut HashMap<String, Vec<String>>,
        depth: usize,
    ) -> Vec<String> {
        if let Some(done) = memo.get(name) {
            return done.clone();
        }
        let Some(element) = self.raw(name) else {
            return Vec::new();
        };
        let mut out: Vec<String> = Vec::new();
        if depth < 64 {
            for dep in &element.requires {
                for d in self.required(dep, memo, depth + 1) {
                    if !out.contains(&d) {
                        out.push(d);
                    }
                }
            }
        }
        if !element.keys.is_empty() && !out.iter().any(|d| d == name) {
            out.push(name.to_owned());
        }
        memo.insert(name.to_owned(), out.clone());
        out
    }

    /// The element `name` as the engine uses it.
    fn element(
        &self,
        name: &str,
        raw: &RawElement,
        memo: &mut HashMap<String, Vec<String>>,
    ) -> Element {
        let required = self.required(name, memo, 0);
        let spatial = self.spatial.contains(name);
        let temporal = self.temporal.contains(name);
        let fields = self.fields(name, raw, &required, spatial, temporal);
        let mut depends_on: Vec<String> = raw.requires.clone();
        depends_on.extend(raw.implies.iter().cloned());
        Element {
            name: name.to_owned(),
            is_dimension: !raw.keys.is_empty(),
            governor: raw.governor,
            has_table: !raw.storage.as_ref().is_some_and(RawStorage::is_view),
            spatial,
            temporal,
            required,
            implied: raw.implies.clone(),
            fields,
            depends_on,
            populated_by: raw.populated_by.clone(),
        }
    }

    /// Every field of a record, in daf_butler's order: required, implied, alternate keys,
    /// metadata, region, timespan.
    fn fields(
        &self,
        name: &str,
        raw: &RawElement,
        required: &[String],
        spatial: bool,
        temporal: bool,
    ) -> Vec<Field> {
        let mut fields = Vec::new();
        for dim in required {
            // The element's own key is named by its first key (`id`, `name`).
            let field_name = if dim == name {
                raw.keys
                    .first()
                    .map_or_else(|| dim.clone(), |k| k.name.clone())
            } else {
                dim.clone()
            };
            fields.push(Field {
                name: field_name,
                field_type: self.key_type(dim),
                role: FieldRole::Required,
                dimension: Some(dim.clone()),
            });
        }
        for dim in &raw.implies {
            fields.push(Field {
                name: dim.clone(),
                field_type: self.key_type(dim),
                role: FieldRole::Implied,
                dimension: Some(dim.clone()),
            });
        }
        let declared = |field: &RawField, role| Field {
            name: field.name.clone(),
            field_type: FieldType::parse(&field.kind, field.length, field.nbytes).unwrap_or(
                FieldType::String {
                    length: field.length,
                },
            ),
            role,
            dimension: None,
        };
        fields.extend(
            raw.keys
                .iter()
                .skip(1)
                .map(|k| declared(k, FieldRole::AlternateKey)),
        );
        fields.extend(
            raw.metadata
                .iter()
                .map(|m| declared(m, FieldRole::Metadata)),
        );
        if spatial {
            fields.push(Field {
                name: "region".into(),
                field_type: FieldType::Region,
                role: FieldRole::Region,
                dimension: None,
            });
        }
        if temporal {
            fields.push(Field {
                name: "timespan".into(),
                field_type: FieldType::Timespan,
                role: FieldRole::Timespan,
                dimension: None,
            });
        }
        fields
    }

    /// The type of a dimension's values: its first key's.
    fn key_type(&self, dimension: &str) -> FieldType {
        self.raw(dimension)
            .and_then(|e| e.keys.first())
            .and_then(|k| FieldType::parse(&k.kind, k.length, k.nbytes))
            .unwrap_or(FieldType::String { length: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V8: &str = include_str!("../tests/data/universe_v8.json");

    fn universe() -> Universe {
        Universe::from_json(V8).unwrap()
    }

    fn field_names(u: &Universe, element: &str) -> Vec<String> {
        u.element(element)
            .unwrap()
            .fields
            .iter()
            .map(|f| f.name.clone())
            .collect()
    }

    #[test]
    fn fields_are_those_daf_butler_records_carry() {
        let u = universe();
        assert_eq!(u.common_htm_level, 7);
        assert_eq!(field_names(&u, "day_obs"), ["instrument", "id", "timespan"]);
        assert_eq!(field_names(&u, "group"), ["instrument", "name"]);
        assert_eq!(
            field_names(&u, "exposure"),
            [
                "instrument",
                "id",
                "physical_filter",
                "group",
                "day_obs",
                "obs_id",
                "exposure_time",
                "dark_time",
                "observation_type",
                "observation_reason",
                "seq_num",
                "seq_start",
                "seq_end",
                "target_name",
                "science_program",
                "tracking_ra",
                "tracking_dec",
                "sky_angle",
                "azimuth",
                "zenith_angle",
                "has_simulated",
                "can_see_sky",
                "timespan"
            ]
        );
        let vdr = u.element("visit_detector_region").unwrap();
        assert!(vdr.spatial && !vdr.is_dimension);
        let mut required = vdr.required.clone();
        required.sort();
        assert_eq!(required, ["detector", "instrument", "visit"]);
        assert!(u.element("visit").unwrap().spatial);
        assert!(
            !u.element("band").unwrap().has_table,
            "band is a view of physical_filter"
        );
        assert_eq!(u.governors().collect::<Vec<_>>(), ["instrument", "skymap"]);
    }

    #[test]
    fn insert_order_puts_dependencies_first() {
        let u = universe();
        let order = u.dependency_order([
            "visit_system_membership",
            "visit_detector_region",
            "visit_definition",
            "visit",
            "exposure",
            "group",
            "day_obs",
            "visit_system",
        ]);
        let at = |n: &str| order.iter().position(|x| x == n).unwrap();
        assert!(at("day_obs") < at("exposure") && at("group") < at("exposure"));
        assert!(at("exposure") < at("visit_definition") && at("visit") < at("visit_definition"));
        assert!(
            at("visit") < at("visit_detector_region")
                && at("visit_system") < at("visit_system_membership")
        );
        assert_eq!(order.len(), 8);
    }

    #[test]
    fn unknown_versions_are_refused_with_what_was_found() {
        let v99 = V8.replacen("\"version\": 8", "\"version\": 99", 1);
        let err = Universe::from_json(&v99).unwrap_err().to_string();
        assert!(err.contains("version 99") && err.contains("7, 8"), "{err}");
        let other = V8.replacen(
            "\"namespace\": \"daf_butler\"",
            "\"namespace\": \"mine\"",
            1,
        );
        assert!(
            Universe::from_json(&other)
                .unwrap_err()
                .to_string()
                .contains("mine")
        );
    }
}
