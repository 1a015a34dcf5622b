//! The HTM envelope against `lsst.sphgeom`: every vector must match pixel for pixel.
//!
//! Each vector is a JSON line `{"kind": ..., "level": L, "region": hex, "envelope": [pixels]}`
//! where `envelope` is `lsst.sphgeom.HtmPixelization(L).envelope(region)` expanded to sorted
//! pixel indices. The sets:
//! - the 3000 level-7 sky vectors of the fixtures, `sphgeom/htm7_envelopes.jsonl` of
//!   `$PROMPT_KAFKA_FIXTURES` (made at `deploy/local/stack up` by `tests/data/gen_htm_vectors.py
//!   --sky`), and the file `$SPHGEOM_VECTORS` names, when set, as well (a fresh draw for a soak
//!   test);
//! - `tests/data/htm_extra_vectors.jsonl`, made by `tests/data/gen_htm_vectors.py`: poles, RA = 0,
//!   tiny to 10° polygons, vertices on trixel edges and vertices, and other levels;
//! - the team's reference vectors, `sphgeom/htm7_envelopes.jsonl` of `$PROMPT_KAFKA_REFERENCE`
//!   (default `../shared/reference`), where that folder exists.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use schema::Region;
use schema::htm::HtmPixelization;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct Vector {
    kind: String,
    level: u32,
    region: String,
    envelope: Vec<u64>,
}

/// How a vector failed.
enum Outcome {
    Match,
    Mismatch { missing: Vec<u64>, extra: Vec<u64> },
    Error(String),
}

fn check(vector: &Vector) -> Outcome {
    let htm = match HtmPixelization::new(vector.level) {
        Ok(htm) => htm,
        Err(e) => return Outcome::Error(e.to_string()),
    };
    let polygon = match Region::from_hex(&vector.region) {
        Ok(region) => match region.as_convex_polygon() {
            Some(polygon) => polygon.clone(),
            None => return Outcome::Error("not a convex polygon".to_owned()),
        },
        Err(e) => return Outcome::Error(e.to_string()),
    };
    let ours = htm.envelope(&polygon);
    if ours == vector.envelope {
        return Outcome::Match;
    }
    let ours: BTreeSet<u64> = ours.into_iter().collect();
    let theirs: BTreeSet<u64> = vector.envelope.iter().copied().collect();
    Outcome::Mismatch {
        missing: theirs.difference(&ours).copied().collect(),
        extra: ours.difference(&theirs).copied().collect(),
    }
}

/// Runs every vector of `path`; fails listing the first few mismatches unless all match.
fn run(path: &Path) {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => panic!("cannot read HTM vectors {}: {e}", path.display()),
    };
    let mut total = 0;
    let mut matched = 0;
    let mut failures = Vec::new();
    for (number, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        total += 1;
        let vector: Vector = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) => panic!("{}:{}: not a vector: {e}", path.display(), number + 1),
        };
        match check(&vector) {
            Outcome::Match => matched += 1,
            Outcome::Mismatch { missing, extra } => failures.push(format!(
                "line {} ({}, level {}): missing {missing:?}, extra {extra:?}; region {}",
                number + 1,
                vector.kind,
                vector.level,
                vector.region
            )),
            Outcome::Error(e) => failures.push(format!(
                "line {} ({}, level {}): {e}",
                number + 1,
                vector.kind,
                vector.level
            )),
        }
    }
    eprintln!(
        "{}: {matched} of {total} HTM envelopes match lsst.sphgeom",
        path.display()
    );
    assert!(total > 0, "{} holds no vectors", path.display());
    assert!(
        failures.is_empty(),
        "{} of {total} HTM envelopes differ from lsst.sphgeom; first ones:\n{}",
        failures.len(),
        failures
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn generated_htm7_envelopes() {
    run(&common::fixtures_dir().join("sphgeom/htm7_envelopes.jsonl"));
    if let Some(path) = std::env::var_os("SPHGEOM_VECTORS").filter(|p| !p.is_empty()) {
        run(&PathBuf::from(path));
    }
}

/// The cross-check: vectors computed on the deployed system's side, where the team's folder
/// exists.
#[test]
fn team_reference_htm7_envelopes_when_present() {
    match common::reference_dir() {
        Ok(dir) => run(&dir.join("sphgeom/htm7_envelopes.jsonl")),
        Err(dir) => eprintln!(
            "skipped: no reference folder at {} (set PROMPT_KAFKA_REFERENCE to cross-check)",
            dir.display()
        ),
    }
}

#[test]
fn extra_envelopes() {
    run(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/htm_extra_vectors.jsonl"));
}
