//! Every message of the generated fixtures (`deploy/local/make_fixtures.py`, daf_butler's own
//! serialization), parsed and serialized again, gives back its exact bytes; so does its
//! worker-side form without the `dataset_types` key; and its regions decode. The same checks run
//! over the team's reference messages (`$PROMPT_KAFKA_REFERENCE`, made by the deployed system)
//! when that folder exists.

mod common;

use std::path::{Path, PathBuf};

use common::lines;
use schema::PromptProcessingOutputEvent;

fn message_files(dir: &Path) -> Vec<PathBuf> {
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "jsonl"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .jsonl files in {}", dir.display());
    files
}

fn round_trip(line: &[u8], context: &str) -> PromptProcessingOutputEvent {
    let event =
        PromptProcessingOutputEvent::from_json(line).unwrap_or_else(|e| panic!("{context}: {e}"));
    let again = event.to_json();
    if again != line {
        let at = again
            .iter()
            .zip(line)
            .position(|(a, b)| a != b)
            .unwrap_or(again.len().min(line.len()));
        let from = at.saturating_sub(60);
        panic!(
            "{context}: bytes differ at {at}\n original: {}\n  ours:     {}",
            String::from_utf8_lossy(&line[from..(at + 60).min(line.len())]),
            String::from_utf8_lossy(&again[from..(at + 60).min(again.len())]),
        );
    }
    event
}

/// Parses and re-serializes every message of `dir`; returns (messages, datasets).
fn check_round_trip(dir: &Path) -> (usize, usize) {
    let mut messages = 0;
    let mut datasets = 0;
    for path in message_files(dir) {
        for (number, line) in lines(&path).iter().enumerate() {
            let context = format!("{}:{}", path.display(), number + 1);
            let event = round_trip(line, &context);
            assert_eq!(
                event.dataset_types.as_deref(),
                Some(&[][..]),
                "{context}: writer-side messages carry []"
            );
            datasets += event.dataset_refs().count();
            messages += 1;
        }
    }
    assert!(messages > 0, "no messages in {}", dir.display());
    (messages, datasets)
}

/// The same messages without `"dataset_types":[]`, as Prompt Processing sends them.
fn check_worker_form(dir: &Path) -> usize {
    let mut messages = 0;
    for path in message_files(dir) {
        for (number, line) in lines(&path).iter().enumerate() {
            let text = String::from_utf8(line.clone()).unwrap_or_else(|e| panic!("{e}"));
            let worker_form = text.replacen(r#""dataset_types":[],"#, "", 1);
            assert_ne!(worker_form, text, "a message without dataset_types");
            let context = format!("{}:{} (worker form)", path.display(), number + 1);
            let event = round_trip(worker_form.as_bytes(), &context);
            assert_eq!(event.dataset_types, None, "{context}");
            messages += 1;
        }
    }
    messages
}

/// Decodes every region and encodes it again, in hex and base64; returns how many.
fn check_regions(dir: &Path) -> usize {
    let mut regions = 0;
    for path in message_files(dir) {
        for (number, line) in lines(&path).iter().enumerate() {
            let event =
                PromptProcessingOutputEvent::from_json(line).unwrap_or_else(|e| panic!("{e}"));
            let decoded = event
                .decode_regions()
                .unwrap_or_else(|e| panic!("{}:{}: {e}", path.display(), number + 1));
            for (index, region) in &decoded {
                // Re-encoding gives the message's hex back, and the registry's base64 form carries
                // the same bytes.
                let hex = event.dimension_records[*index]
                    .record
                    .get_str("region")
                    .unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(region.to_hex(), hex);
                let back = schema::Region::from_base64(&region.to_base64())
                    .unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(back.to_hex(), hex);
            }
            regions += decoded.len();
        }
    }
    assert!(regions > 0, "no regions in {}", dir.display());
    regions
}

fn fixture_messages() -> PathBuf {
    common::fixtures_dir().join("messages")
}

#[test]
fn every_fixture_message_round_trips_byte_for_byte() {
    let (messages, datasets) = check_round_trip(&fixture_messages());
    println!("{messages} fixture messages ({datasets} datasets) round-tripped byte for byte");
}

#[test]
fn worker_form_without_dataset_types_round_trips_to_itself() {
    let messages = check_worker_form(&fixture_messages());
    println!("{messages} worker-form messages round-tripped byte for byte");
}

#[test]
fn regions_of_every_fixture_message_decode() {
    let regions = check_regions(&fixture_messages());
    println!("{regions} regions decoded");
}

/// The cross-check: messages the deployed system serialized, where the team's folder exists.
#[test]
fn the_team_reference_messages_pass_the_same_checks_when_present() {
    let dir = match common::reference_dir() {
        Ok(dir) => dir.join("messages"),
        Err(dir) => {
            println!(
                "skipped: no reference folder at {} (set PROMPT_KAFKA_REFERENCE to cross-check)",
                dir.display()
            );
            return;
        }
    };
    let (messages, datasets) = check_round_trip(&dir);
    let worker_form = check_worker_form(&dir);
    let regions = check_regions(&dir);
    println!(
        "{messages} reference messages ({datasets} datasets) round-tripped byte for byte, \
         {worker_form} in worker form, {regions} regions decoded ({})",
        dir.display()
    );
}
