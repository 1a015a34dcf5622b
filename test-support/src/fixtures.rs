//! The files tests read: `pp-output` message files and HTM envelope vectors, made with
//! daf_butler's and sphgeom's own code by `deploy/local/make_fixtures.py`, which
//! `deploy/local/stack up` runs into its state directory (`$STATE/fixtures`). A clone of the
//! repository is enough: nothing is read from outside it.
//!
//! Layout: `messages/{batch_a,batch_a_conflict,batch_c,dupinbatch,newrun_sql,bench_100_0,
//! bench_1000_0}.jsonl` (one message per line) and `sphgeom/htm7_envelopes.jsonl`; see the
//! generator's description for what each file holds.

use std::path::PathBuf;

use crate::workspace_root;

/// The environment variable naming the fixtures directory (`stack env` exports it).
pub const FIXTURES_ENV: &str = "PROMPT_KAFKA_FIXTURES";

/// The fixtures directory: `$PROMPT_KAFKA_FIXTURES`, or the local stack's
/// `deploy/local/.state/fixtures`.
///
/// # Panics
/// When it holds no `messages/` directory, with a message saying how to make it: a test that
/// reads fixtures cannot run without them.
pub fn fixtures_dir() -> PathBuf {
    let dir = std::env::var_os(FIXTURES_ENV)
        .filter(|v| !v.is_empty())
        .map_or_else(
            || workspace_root().join("deploy/local/.state/fixtures"),
            PathBuf::from,
        );
    if !dir.join("messages").is_dir() {
        panic!(
            "no test fixtures in {}: run deploy/local/stack up (it generates them with daf_butler \
             and sphgeom, about 3 s) and eval \"$(deploy/local/stack env)\", or set {FIXTURES_ENV} \
             to a directory made by deploy/local/make_fixtures.py --output DIR",
            dir.display()
        );
    }
    dir
}

/// The non-empty lines of a fixture file, `file` relative to [`fixtures_dir`] (for example
/// `messages/batch_a.jsonl`), without their line ends: message values as a producer sends them.
///
/// # Panics
/// When the file cannot be read.
pub fn fixture_lines(file: &str) -> Vec<Vec<u8>> {
    let path = fixtures_dir().join(file);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read fixture {}: {e} (deploy/local/stack up makes the fixtures again)",
            path.display()
        )
    });
    bytes
        .split(|b| *b == b'\n')
        .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
        .map(<[u8]>::to_vec)
        .collect()
}
