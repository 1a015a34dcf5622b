//! Our JSON against JSON written by Pydantic itself (`tests/data/gen_pydantic_vectors.py`): floats
//! of every magnitude, strings that need escaping, and a whole message built from daf_butler's
//! models, including non-finite floats.

use schema::{PromptProcessingOutputEvent, RecordValue};
use serde::Deserialize;

#[derive(Deserialize)]
struct Vectors {
    generator: String,
    floats: String,
    strings: String,
    message: String,
}

fn vectors() -> Vectors {
    let text = include_str!("data/pydantic_vectors.json");
    serde_json::from_str(text).unwrap_or_else(|e| panic!("pydantic_vectors.json: {e}"))
}

#[test]
fn floats_print_exactly_as_pydantic_prints_them() {
    let v = vectors();
    let floats: Vec<f64> = serde_json::from_str(&v.floats).unwrap_or_else(|e| panic!("{e}"));
    let ours = schema::json::to_string(&floats).unwrap_or_else(|e| panic!("{e}"));
    if ours != v.floats {
        let theirs: Vec<&str> = v.floats.trim_matches(['[', ']']).split(',').collect();
        let mine: Vec<&str> = ours.trim_matches(['[', ']']).split(',').collect();
        let diffs: Vec<_> = theirs
            .iter()
            .zip(&mine)
            .filter(|(a, b)| a != b)
            .take(10)
            .collect();
        panic!(
            "{} floats differ from {}; first: {diffs:?}",
            diffs.len(),
            v.generator
        );
    }
    println!("{} floats identical to {}", floats.len(), v.generator);
}

#[test]
fn strings_escape_exactly_as_pydantic_escapes_them() {
    let v = vectors();
    let strings: Vec<String> = serde_json::from_str(&v.strings).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        schema::json::to_string(&strings).ok().as_deref(),
        Some(v.strings.as_str())
    );
}

#[test]
fn a_message_from_daf_butler_models_round_trips() {
    let v = vectors();
    let event = PromptProcessingOutputEvent::from_json(v.message.as_bytes())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(String::from_utf8_lossy(&event.to_json()), v.message);
}

#[test]
fn non_finite_floats_are_written_as_null() {
    // The generator set sky_angle to NaN and azimuth to +inf; Pydantic wrote both as null.
    let v = vectors();
    let mut event = PromptProcessingOutputEvent::from_json(v.message.as_bytes())
        .unwrap_or_else(|e| panic!("{e}"));
    let record = &mut event.dimension_records[0].record.0;
    record.insert("sky_angle".into(), RecordValue::Float(f64::NAN));
    record.insert("azimuth".into(), RecordValue::Float(f64::INFINITY));
    assert_eq!(String::from_utf8_lossy(&event.to_json()), v.message);
}
