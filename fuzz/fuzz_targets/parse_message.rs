//! Any bytes given to the message parsers: decoding must return a value or an error, never panic;
//! what decodes must serialize, and serialize to something that decodes to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use schema::{BatchIngestedEvent, DatasetBatch, PromptProcessingOutputEvent};

fuzz_target!(|data: &[u8]| {
    if let Ok(event) = PromptProcessingOutputEvent::from_json(data) {
        let _ = event.decode_regions();
        let json = event.to_json();
        match PromptProcessingOutputEvent::from_json(&json) {
            // Floats are the one thing that may change form (NaN cannot be parsed, only written
            // as null), so compare the re-serialized bytes, which are stable after one round.
            Ok(again) => assert_eq!(again.to_json(), json, "serialization is not stable"),
            Err(e) => panic!("our own output does not parse: {e}"),
        }
    }
    if let Ok(event) = BatchIngestedEvent::from_json(data) {
        assert_eq!(BatchIngestedEvent::from_json(&event.to_json()).ok(), Some(event));
    }
    if let Ok(batch) = DatasetBatch::from_json(data) {
        assert_eq!(DatasetBatch::from_json(&batch.to_json()).ok(), Some(batch));
    }
});
