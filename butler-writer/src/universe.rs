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

        let spatial: HashSet<&str> = raw
            .topology
            .spatial
            .values()
            .flatten()
            .map(String::as_str)
            .collect();
        let temporal: HashSet<&str> = raw
            .topology
            .temporal
            .values()
            .flatten()
            .map(String::as_str)
            .collect();

        let mut parsed: Vec<(String, RawElement)> = Vec::with_capacity(raw.elements.len());
        for (name, value) in &raw.elements {
            parsed.push((name.clone(), RawElement::deserialize(value)?));
        }
        let position: HashMap<&str, usize> = parsed
            .iter()
            .enumerate()
            .map(|(i, (n, _))| (n.as_str(), i))
            .collect();
        for (name, element) in &parsed {
            for dep in element.requires.iter().chain(&element.implies) {
                if !position.contains_key(dep.as_str()) {
                    return Err(UniverseError::Dangling {
                        element: name.clone(),
                        missing: dep.clone(),
                    });
                }
            }
        }

        // Required closure: the required dimensions of each direct requirement, then the
        // requirement itself; then the element itself if it is a dimension.
        let mut required_of: HashMap<String, Vec<String>> = HashMap::new();
        fn closure(
            name: &str,
            parsed: &[(String, RawElement)],
            position: &HashMap<&str, usize>,
            memo: &mut HashMap<String, Vec<String>>,
            depth: usize,
        ) -> Vec<String> {
            if let Some(done) = memo.get(name) {
                return done.clone();
            }
            let Some(&at) = position.get(name) else {
                return Vec::new();
            };
            let (_, element) = &parsed[at];
            let mut out: Vec<String> = Vec::new();
            // A cycle would be a broken universe; the depth bound keeps it from recursing forever.
            if depth < 64 {
                for dep in &element.requires {
                    for d in closure(dep, parsed, position, memo, depth + 1) {
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

        let mut elements = Vec::with_capacity(parsed.len());
        for (name, raw_element) in &parsed {
            let required = closure(name, &parsed, &position, &mut required_of, 0);
            let is_dimension = !raw_element.keys.is_empty();
            let mut fields = Vec::new();
            for dim in &required {
                let key_type = dimension_key_type(dim, &parsed, &position);
                let field_name = if dim == name {
                    raw_element
                        .keys
                        .first()
                        .map_or_else(|| dim.clone(), |k| k.name.clone())
                } else {
                    dim.clone()
                };
                fields.push(Field {
                    name: field_name,
                    field_type: key_type,
                    role: FieldRole::Required,
                    dimension: Some(dim.clone()),
                });
            }
            for dim in &raw_element.implies {
                fields.push(Field {
                    name: dim.clone(),
                    field_type: dimension_key_type(dim, &parsed, &position),
                    role: FieldRole::Implied,
                    dimension: Some(dim.clone()),
                });
            }
            for key in raw_element.keys.iter().skip(1) {
                fields.push(Field {
                    name: key.name.clone(),
                    field_type: FieldType::parse(&key.kind, key.length, key.nbytes)
                        .unwrap_or(FieldType::String { length: key.length }),
                    role: FieldRole::AlternateKey,
                    dimension: None,
                });
            }
            for meta in &raw_element.metadata {
                fields.push(Field {
                    name: meta.name.clone(),
                    field_type: FieldType::parse(&meta.kind, meta.length, meta.nbytes).unwrap_or(
                        FieldType::String {
                            length: meta.length,
                        },
                    ),
                    role: FieldRole::Metadata,
                    dimension: None,
                });
            }
            let is_spatial = spatial.contains(name.as_str());
            let is_temporal = temporal.contains(name.as_str());
            if is_spatial {
                fields.push(Field {
                    name: "region".into(),
                    field_type: FieldType::Region,
                    role: FieldRole::Region,
                    dimension: None,
                });
            }
            if is_temporal {
                fields.push(Field {
                    name: "timespan".into(),
                    field_type: FieldType::Timespan,
                    role: FieldRole::Timespan,
                    dimension: None,
                });
            }
            let mut depends_on: Vec<String> = raw_element.requires.clone();
            depends_on.extend(raw_element.implies.iter().cloned());
            elements.push(Element {
                name: name.clone(),
                is_dimension,
                governor: raw_element.governor,
                has_table: !raw_element
                    .storage
                    .as_ref()
                    .is_some_and(RawStorage::is_view),
                spatial: is_spatial,
                temporal: is_temporal,
                required,
                implied: raw_element.implies.clone(),
                fields,
                depends_on,
            });
        }
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

/// The type of a dimension's values: its first key's.
fn dimension_key_type(
    dimension: &str,
    parsed: &[(String, RawElement)],
    position: &HashMap<&str, usize>,
) -> FieldType {
    position
        .get(dimension)
        .and_then(|&i| parsed[i].1.keys.first())
        .and_then(|k| FieldType::parse(&k.kind, k.length, k.nbytes))
        .unwrap_or(FieldType::String { length: None })
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
