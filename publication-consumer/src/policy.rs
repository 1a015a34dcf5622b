//! The release policy: per (origin, dataset type), how long a dataset stays under embargo, whether
//! it may go to the public repository, how long it is kept. The deployed Prompt Publication
//! Service's table is the default (`policy/deployed.yaml`, built in); an operator may replace it
//! with a file of the same form, which is checked whole at start-up.
//!
//! When a dataset is released follows the deployed service: the embargo runs from the end of the
//! dataset's **visit**; a type with no embargo is released at once; a type the table does not
//! list is never released, and neither is a dataset with an embargo whose visit has no end.
//! Datasets with an exposure but no visit (`isr_statistics`, ...) are never released by the
//! deployed service either; [`Policy::release_exposure_only`] releases them from the end of
//! their exposure instead, a deliberate difference that is off unless asked for.

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

/// The deployed table, built in: the default policy.
pub const DEPLOYED_POLICY: &str = include_str!("../policy/deployed.yaml");

/// The longest embargo a policy may give, in hours: a year. Anything longer is a typo.
pub const MAX_EMBARGO_HOURS: u32 = 366 * 24;

/// Where datasets come from, as events name them; the codes are the state database's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// Prompt Processing's worker pods, through the Butler Writer.
    PromptProcessing,
    /// Daytime catch-up processing of alert production.
    DaytimeApCatchup,
}

impl Origin {
    /// Every origin.
    pub const ALL: [Self; 2] = [Self::PromptProcessing, Self::DaytimeApCatchup];

    /// The name events and policy files use.
    pub fn name(self) -> &'static str {
        match self {
            Self::PromptProcessing => "prompt_processing",
            Self::DaytimeApCatchup => "daytime_ap_catchup",
        }
    }

    /// The number the Prompt Publication Service's state database stores.
    pub fn code(self) -> i16 {
        match self {
            Self::PromptProcessing => 1,
            Self::DaytimeApCatchup => 2,
        }
    }

    /// The origin an event's `origin` names, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.name() == name)
    }

    /// The origin of a state database code, if any.
    pub fn from_code(code: i16) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.code() == code)
    }
}

/// What the policy says about one (origin, dataset type).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Rule {
    /// Hours under embargo after the visit ended; 0 releases at once.
    pub embargo_hours: u32,
    /// Whether the type may be published to the public repository; false means internal only.
    pub publish_to_public: bool,
    /// Days the type is kept; `None` for ever.
    pub retention_days: Option<u32>,
}

impl Rule {
    /// Whether the type stays at the USDF (never published to the public repository).
    pub fn internal_only(&self) -> bool {
        !self.publish_to_public
    }

    fn embargo(&self) -> TimeDelta {
        TimeDelta::hours(i64::from(self.embargo_hours))
    }
}

/// How a dataset's release time was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseBasis {
    /// The end of its visit plus the embargo.
    VisitEnd,
    /// The end of its exposure plus the embargo (only with `release_exposure_only`).
    ExposureEnd,
    /// No embargo: released when it was written (its ingest date).
    AtOnce,
    /// Its (origin, dataset type) is not in the policy: never released.
    NotListed,
    /// An embargo, but no visit (or exposure, where allowed) with an end to count it from:
    /// never released.
    NoEnd,
}

impl ReleaseBasis {
    /// The name stored and served.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::VisitEnd => "visit_end",
            Self::ExposureEnd => "exposure_end",
            Self::AtOnce => "at_once",
            Self::NotListed => "not_listed",
            Self::NoEnd => "no_end",
        }
    }
}

/// The times a dataset's release may be counted from, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReleaseClocks {
    /// The end of the dataset's visit, when its data ID has a visit with a bounded timespan.
    pub visit_end: Option<DateTime<Utc>>,
    /// The end of the dataset's exposure, when its data ID has an exposure but no visit.
    pub exposure_end: Option<DateTime<Utc>>,
    /// When the dataset was written to the embargo repository.
    pub ingest_date: DateTime<Utc>,
}

/// When a dataset is released and under which rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Release {
    /// The rule of its (origin, dataset type), if listed.
    pub rule: Option<Rule>,
    /// When its embargo ends; `None`: never.
    pub at: Option<DateTime<Utc>>,
    /// How `at` was decided.
    pub basis: ReleaseBasis,
}

/// The release policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    rules: BTreeMap<(Origin, String), Rule>,
    /// Release datasets that have an exposure but no visit from the end of their exposure (the
    /// deployed service never releases them).
    pub release_exposure_only: bool,
}

/// A policy file that cannot be used, with what to change.
#[derive(Debug, thiserror::Error)]
#[error("release policy {source_name}: {message}")]
pub struct PolicyError {
    source_name: String,
    message: String,
}

/// A policy file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    profiles: Vec<Profile>,
}

/// One rule and the dataset types it covers.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Profile {
    name: String,
    origin: String,
    embargo_hours: u32,
    publish_to_public: bool,
    retention_days: Option<u32>,
    #[serde(default)]
    dataset_types: Vec<String>,
    /// Each label L stands for the provenance types L_config, L_log and L_metadata.
    #[serde(default)]
    task_labels: Vec<String>,
}

/// The provenance dataset types a pipeline task label has.
const PROVENANCE_SUFFIXES: [&str; 3] = ["_config", "_log", "_metadata"];

impl Policy {
    /// The deployed table.
    #[expect(
        clippy::expect_used,
        reason = "a constant built into the binary; the deployed-table unit test parses it"
    )]
    pub fn deployed() -> Self {
        Self::from_yaml(DEPLOYED_POLICY, "(built in)").expect("the built-in policy is valid")
    }

    /// Reads and checks a policy file.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| PolicyError {
            source_name: name.clone(),
            message: format!("cannot be read: {e}"),
        })?;
        Self::from_yaml(&text, &name)
    }

    /// Parses and checks a policy; `source_name` names it in errors.
    pub fn from_yaml(text: &str, source_name: &str) -> Result<Self, PolicyError> {
        let error = |message: String| PolicyError {
            source_name: source_name.to_owned(),
            message,
        };
        let file: PolicyFile = serde_yaml_ng::from_str(text).map_err(|e| error(e.to_string()))?;
        let mut rules = BTreeMap::new();
        let mut profile_of: BTreeMap<(Origin, String), String> = BTreeMap::new();
        for profile in &file.profiles {
            let name = &profile.name;
            let origin = Origin::from_name(&profile.origin).ok_or_else(|| {
                error(format!(
                    "profile {name:?}: unknown origin {:?} (known: {})",
                    profile.origin,
                    Origin::ALL.map(Origin::name).join(", ")
                ))
            })?;
            if profile.embargo_hours > MAX_EMBARGO_HOURS {
                return Err(error(format!(
                    "profile {name:?}: embargo_hours {} is more than a year ({MAX_EMBARGO_HOURS})",
                    profile.embargo_hours
                )));
            }
            if profile.retention_days == Some(0) {
                return Err(error(format!(
                    "profile {name:?}: retention_days 0 would keep nothing; use null for ever"
                )));
            }
            if profile.dataset_types.is_empty() && profile.task_labels.is_empty() {
                return Err(error(format!(
                    "profile {name:?} lists no dataset_types or task_labels"
                )));
            }
            let rule = Rule {
                embargo_hours: profile.embargo_hours,
                publish_to_public: profile.publish_to_public,
                retention_days: profile.retention_days,
            };
            let expanded = profile.task_labels.iter().flat_map(|label| {
                PROVENANCE_SUFFIXES
                    .iter()
                    .map(move |suffix| format!("{label}{suffix}"))
            });
            for dataset_type in profile.dataset_types.iter().cloned().chain(expanded) {
                if !is_dataset_type_name(&dataset_type) {
                    return Err(error(format!(
                        "profile {name:?}: {dataset_type:?} is not a dataset type name"
                    )));
                }
                let key = (origin, dataset_type);
                if let Some(first) = profile_of.insert(key.clone(), name.clone()) {
                    return Err(error(format!(
                        "{} of origin {} is in two profiles, {first:?} and {name:?}",
                        key.1,
                        origin.name()
                    )));
                }
                rules.insert(key, rule);
            }
        }
        if rules.is_empty() {
            return Err(error(
                "lists no dataset types: nothing would ever be released".to_owned(),
            ));
        }
        Ok(Self {
            rules,
            release_exposure_only: false,
        })
    }

    /// The rule of `(origin, dataset_type)`, if listed.
    pub fn rule(&self, origin: Origin, dataset_type: &str) -> Option<Rule> {
        self.rules.get(&(origin, dataset_type.to_owned())).copied()
    }

    /// The number of (origin, dataset type) entries of `origin`.
    pub fn len(&self, origin: Origin) -> usize {
        self.rules.keys().filter(|(o, _)| *o == origin).count()
    }

    /// Every entry, by origin then dataset type.
    pub fn entries(&self) -> impl Iterator<Item = (Origin, &str, Rule)> {
        self.rules.iter().map(|((o, t), r)| (*o, t.as_str(), *r))
    }

    /// When a dataset of `(origin, dataset_type)` with these clocks is released.
    pub fn release(&self, origin: Origin, dataset_type: &str, clocks: ReleaseClocks) -> Release {
        let Some(rule) = self.rule(origin, dataset_type) else {
            return Release {
                rule: None,
                at: None,
                basis: ReleaseBasis::NotListed,
            };
        };
        let (at, basis) = if rule.embargo_hours == 0 {
            (Some(clocks.ingest_date), ReleaseBasis::AtOnce)
        } else if let Some(end) = clocks.visit_end {
            (Some(end + rule.embargo()), ReleaseBasis::VisitEnd)
        } else if let (true, Some(end)) = (self.release_exposure_only, clocks.exposure_end) {
            (Some(end + rule.embargo()), ReleaseBasis::ExposureEnd)
        } else {
            (None, ReleaseBasis::NoEnd)
        };
        Release {
            rule: Some(rule),
            at,
            basis,
        }
    }
}

/// Whether `name` is a daf_butler dataset type name: a Python identifier, optionally followed by
/// `.component` parts.
fn is_dataset_type_name(name: &str) -> bool {
    let identifier = |part: &str| {
        let mut chars = part.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    name.split('.').all(identifier)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(hours: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_777_680_000, 0).expect("time") + TimeDelta::hours(hours)
    }

    const CLOCKS: ReleaseClocks = ReleaseClocks {
        visit_end: None,
        exposure_end: None,
        ingest_date: DateTime::from_timestamp_nanos(0),
    };

    #[test]
    fn the_deployed_table_has_98_prompt_processing_and_2_catch_up_entries() {
        let policy = Policy::deployed();
        assert_eq!(policy.len(Origin::PromptProcessing), 98);
        assert_eq!(policy.len(Origin::DaytimeApCatchup), 2);
        let pvi = policy
            .rule(Origin::PromptProcessing, "preliminary_visit_image")
            .expect("listed");
        assert_eq!(
            (pvi.embargo_hours, pvi.publish_to_public, pvi.retention_days),
            (80, true, None)
        );
        let template = policy
            .rule(Origin::PromptProcessing, "template_detector")
            .expect("listed");
        assert!(template.internal_only());
        assert_eq!(
            (template.embargo_hours, template.retention_days),
            (80, Some(30))
        );
        let log = policy
            .rule(Origin::PromptProcessing, "subtractImages_log")
            .expect("provenance of a task label");
        assert_eq!((log.embargo_hours, log.publish_to_public), (0, true));
        assert!(
            policy
                .rule(Origin::PromptProcessing, "prompt_provenance")
                .is_some_and(|r| r.internal_only())
        );
        assert!(
            policy
                .rule(Origin::DaytimeApCatchup, "preliminary_visit_image")
                .is_none()
        );
        assert!(
            policy
                .rule(Origin::DaytimeApCatchup, "prompt_source")
                .is_some()
        );
        // Every embargo is 0 or 80 hours, as RFC-1134 has it.
        assert!(
            policy
                .entries()
                .all(|(_, _, r)| [0, 80].contains(&r.embargo_hours))
        );
    }

    #[test]
    fn the_embargo_runs_from_the_end_of_the_visit() {
        let policy = Policy::deployed();
        let clocks = ReleaseClocks {
            visit_end: Some(at(0)),
            exposure_end: None,
            ingest_date: at(1),
        };
        let release = policy.release(Origin::PromptProcessing, "difference_image", clocks);
        assert_eq!(release.at, Some(at(80)));
        assert_eq!(release.basis, ReleaseBasis::VisitEnd);
        assert_eq!(release.rule.and_then(|r| r.retention_days), Some(30));
        // No embargo: released when written, visit or not.
        let release = policy.release(Origin::PromptProcessing, "difference_kernel", clocks);
        assert_eq!(
            (release.at, release.basis),
            (Some(at(1)), ReleaseBasis::AtOnce)
        );
        let release = policy.release(Origin::PromptProcessing, "isr_log", CLOCKS);
        assert_eq!(release.basis, ReleaseBasis::AtOnce);
    }

    #[test]
    fn unlisted_types_and_embargoed_ones_without_a_visit_end_are_never_released() {
        let mut policy = Policy::deployed();
        let clocks = ReleaseClocks {
            visit_end: Some(at(0)),
            ..CLOCKS
        };
        let unlisted = policy.release(Origin::PromptProcessing, "isr_statistics", clocks);
        assert_eq!(
            (unlisted.rule, unlisted.at, unlisted.basis),
            (None, None, ReleaseBasis::NotListed)
        );
        // Another origin's table does not apply.
        let other = policy.release(Origin::DaytimeApCatchup, "preliminary_visit_image", clocks);
        assert_eq!(other.basis, ReleaseBasis::NotListed);
        // An exposure but no visit: never, unless the option says otherwise.
        let exposure_only = ReleaseClocks {
            exposure_end: Some(at(2)),
            ..CLOCKS
        };
        let never = policy.release(
            Origin::PromptProcessing,
            "preliminary_visit_image",
            exposure_only,
        );
        assert_eq!((never.at, never.basis), (None, ReleaseBasis::NoEnd));
        policy.release_exposure_only = true;
        let released = policy.release(
            Origin::PromptProcessing,
            "preliminary_visit_image",
            exposure_only,
        );
        assert_eq!(
            (released.at, released.basis),
            (Some(at(82)), ReleaseBasis::ExposureEnd)
        );
        // No visit and no exposure: never.
        let nothing = policy.release(Origin::PromptProcessing, "preliminary_visit_image", CLOCKS);
        assert_eq!(nothing.basis, ReleaseBasis::NoEnd);
    }

    fn refused(yaml: &str) -> String {
        Policy::from_yaml(yaml, "test.yaml")
            .expect_err("refused")
            .to_string()
    }

    const GOOD: &str = "profiles:
  - name: p
    origin: prompt_processing
    embargo_hours: 80
    publish_to_public: true
    retention_days: null
    dataset_types: [a]
";

    #[test]
    fn a_policy_file_replaces_the_table_and_bad_ones_are_refused_with_the_reason() {
        let policy = Policy::from_yaml(GOOD, "test.yaml").expect("valid");
        assert_eq!(policy.len(Origin::PromptProcessing), 1);
        assert!(
            policy
                .rule(Origin::PromptProcessing, "preliminary_visit_image")
                .is_none()
        );

        let e = refused(&GOOD.replace("prompt_processing", "somewhere"));
        assert!(
            e.contains("test.yaml") && e.contains("unknown origin \"somewhere\""),
            "{e}"
        );
        let e = refused(&GOOD.replace("embargo_hours: 80", "embargo_hours: 9000"));
        assert!(e.contains("more than a year"), "{e}");
        let e = refused(&GOOD.replace("embargo_hours: 80", "embargo_hours: -1"));
        assert!(e.contains("embargo_hours"), "{e}");
        let e = refused(&GOOD.replace("retention_days: null", "retention_days: 0"));
        assert!(e.contains("retention_days 0"), "{e}");
        let e = refused(&GOOD.replace("dataset_types: [a]", "dataset_types: []"));
        assert!(e.contains("lists no dataset_types"), "{e}");
        let e = refused(&GOOD.replace("[a]", "[\"not a name\"]"));
        assert!(e.contains("is not a dataset type name"), "{e}");
        let e = refused(&GOOD.replace("name: p", "name: p\n    embargo: 3"));
        assert!(e.contains("unknown field `embargo`"), "{e}");
        let e = refused(&GOOD.replace("    publish_to_public: true\n", ""));
        assert!(e.contains("publish_to_public"), "{e}");
        let twice = format!(
            "{GOOD}{}",
            &GOOD["profiles:\n".len()..].replace("name: p", "name: q")
        );
        let e = refused(&twice);
        assert!(
            e.contains("a of origin prompt_processing is in two profiles, \"p\" and \"q\""),
            "{e}"
        );
        let e = refused("profiles: []");
        assert!(e.contains("nothing would ever be released"), "{e}");
        // The same type under two origins is two entries.
        let both = format!(
            "{GOOD}{}",
            &GOOD["profiles:\n".len()..].replace("prompt_processing", "daytime_ap_catchup")
        );
        assert!(Policy::from_yaml(&both, "t").is_ok());
    }

    #[test]
    fn a_missing_file_says_which() {
        let e = Policy::load(Path::new("/nonexistent/policy.yaml"))
            .expect_err("missing")
            .to_string();
        assert!(
            e.contains("/nonexistent/policy.yaml") && e.contains("cannot be read"),
            "{e}"
        );
    }

    #[test]
    fn dataset_type_names_are_identifiers_with_components() {
        for good in ["a", "_x1", "calexp.wcs", "regionTimeInfo"] {
            assert!(is_dataset_type_name(good), "{good}");
        }
        for bad in ["", "1a", "a b", "a.", ".a", "a-b"] {
            assert!(!is_dataset_type_name(bad), "{bad}");
        }
    }

    #[test]
    fn origins_have_the_state_database_codes() {
        assert_eq!(Origin::PromptProcessing.code(), 1);
        assert_eq!(Origin::DaytimeApCatchup.code(), 2);
        for o in Origin::ALL {
            assert_eq!(Origin::from_name(o.name()), Some(o));
            assert_eq!(Origin::from_code(o.code()), Some(o));
        }
    }
}
