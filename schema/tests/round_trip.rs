//! Every reference message, parsed and serialized again, gives back its exact bytes; so does its
//! worker-side form without the `dataset_types` key.

use std::path::PathBuf;

use schema::PromptProcessingOutputEvent;

/// The team's reference folder: `$PROMPT_KAFKA_REFERENCE`, or `../shared/reference` beside the
/// workspace.
fn reference_dir() -> PathBuf {
    match std::env::var_os("PROMPT_KAFKA_REFERENCE") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/reference"),
    }
}

fn message_files() -> Vec<PathBuf> {
    let dir = reference_dir().join("messages");
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e}; set PROMPT_KAFKA_REFERENCE to the reference folder",
            dir.display()
        )
    });
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "jsonl"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .jsonl files in {}", dir.display());
    files
}

fn lines(path: &PathBuf) -> Vec<Vec<u8>> {
    let bytes =
        std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    bytes
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
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

#[test]
fn every_reference_message_round_trips_byte_for_byte() {
    let mut messages = 0;
    let mut datasets = 0;
    for path in message_files() {
        for (number, line) in lines(&path).iter().enumerate() {
            let context = format!("{}:{}", path.display(), number + 1);
            let event = round_trip(line, &context);
            assert_eq!(
                event.dataset_types.as_deref(),
                Some(&[][..]),
                "{context}: reference messages carry []"
            );
            datasets += event.dataset_refs().count();
            messages += 1;
        }
    }
    println!("{messages} reference messages ({datasets} datasets) round-tripped byte for byte");
    assert!(messages > 0, "no reference messages");
}

#[test]
fn worker_form_without_dataset_types_round_trips_to_itself() {
    let mut messages = 0;
    for path in message_files() {
        for (number, line) in lines(&path).iter().enumerate() {
            let text = String::from_utf8(line.clone()).unwrap_or_else(|e| panic!("{e}"));
            let worker_form = text.replacen(r#""dataset_types":[],"#, "", 1);
            assert_ne!(worker_form, text, "reference message without dataset_types");
            let context = format!("{}:{} (worker form)", path.display(), number + 1);
            let event = round_trip(worker_form.as_bytes(), &context);
            assert_eq!(event.dataset_types, None, "{context}");
            messages += 1;
        }
    }
    println!("{messages} worker-form messages round-tripped byte for byte");
}

#[test]
fn regions_of_every_reference_message_decode() {
    let mut regions = 0;
    for path in message_files() {
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
    println!("{regions} regions decoded");
    assert!(regions > 0);
}
