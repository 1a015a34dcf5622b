//! Where the schema tests find their input. The schema crate does no I/O and does not depend on
//! `test-support`, so this is a small copy of its lookup (`test_support::fixtures_dir`).

#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The fixtures `deploy/local/stack up` generates with daf_butler and sphgeom:
/// `$PROMPT_KAFKA_FIXTURES`, or `<workspace>/deploy/local/.state/fixtures`.
///
/// # Panics
/// When it holds no `messages/` directory, saying how to make it.
pub fn fixtures_dir() -> PathBuf {
    let dir = std::env::var_os("PROMPT_KAFKA_FIXTURES")
        .filter(|v| !v.is_empty())
        .map_or_else(
            || Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/local/.state/fixtures"),
            PathBuf::from,
        );
    assert!(
        dir.join("messages").is_dir(),
        "no test fixtures in {}: run deploy/local/stack up (it generates them with daf_butler and \
         sphgeom) and eval \"$(deploy/local/stack env)\", or set PROMPT_KAFKA_FIXTURES to a \
         directory made by deploy/local/make_fixtures.py --output DIR",
        dir.display()
    );
    dir.canonicalize().unwrap_or(dir)
}

/// The team's reference folder, `$PROMPT_KAFKA_REFERENCE` or `../shared/reference` beside the
/// workspace, when it exists: a cross-check of the generated fixtures against files made by the
/// deployed system. A clone has no such folder; the caller says it skipped it.
pub fn reference_dir() -> Result<PathBuf, PathBuf> {
    let dir = std::env::var_os("PROMPT_KAFKA_REFERENCE")
        .filter(|v| !v.is_empty())
        .map_or_else(
            || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/reference"),
            PathBuf::from,
        );
    if dir.is_dir() {
        Ok(dir.canonicalize().unwrap_or(dir))
    } else {
        Err(dir)
    }
}

/// The non-empty lines of a file, without their line ends.
pub fn lines(path: &Path) -> Vec<Vec<u8>> {
    let bytes =
        std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    bytes
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}
