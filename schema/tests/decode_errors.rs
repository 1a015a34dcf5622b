//! Bad input gives an error that says what is wrong and where; nothing panics.

use schema::{DecodeError, PromptProcessingOutputEvent};

const GOOD: &str = r#"{"type":"pp-output","dimension_records":[{"definition":"visit_detector_region","record":{"instrument":"LSSTCam","detector":10,"visit":1,"region":"70000000000000f03f000000000000000000000000000000000000000000000000000000000000f03f000000000000000000000000000000000000000000000000000000000000f03f"}}],"datasets":[{"refs":{"0d3921af-c0a0-49cf-bbf9-6200009b9c03":{"dataset_type_name":"preliminary_visit_image","run":"r","data_id":{"instrument":"LSSTCam","detector":10,"visit":1}}},"path":"a.fits","formatter":"f"}]}"#;

fn decode(text: &str) -> Result<PromptProcessingOutputEvent, DecodeError> {
    PromptProcessingOutputEvent::from_json(text.as_bytes())
}

fn error(text: &str) -> DecodeError {
    match decode(text) {
        Ok(_) => panic!("should not decode: {text}"),
        Err(e) => e,
    }
}

#[test]
fn the_good_message_decodes() {
    let event = decode(GOOD).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(event.decode_regions().map(|r| r.len()).ok(), Some(1));
}

#[test]
fn malformed_json_gives_line_and_column() {
    let err = error("{\"type\":\"pp-output\",\n \"dimension_records\": [,]}");
    assert!(
        matches!(err, DecodeError::Syntax { line: 2, .. }),
        "{err:?}"
    );
    let err = error(&GOOD[..GOOD.len() - 5]);
    assert!(
        matches!(err, DecodeError::Syntax { .. }),
        "truncated: {err:?}"
    );
    let err = error(&format!("{GOOD} trailing"));
    assert!(
        matches!(err, DecodeError::Syntax { .. }),
        "trailing data: {err:?}"
    );
    assert!(matches!(error(""), DecodeError::Syntax { .. }));
    assert!(matches!(error("\u{feff}{}"), DecodeError::Syntax { .. }));
}

#[test]
fn another_message_type_is_not_a_generic_failure() {
    let err = error(&GOOD.replace("pp-output", "day-end"));
    assert!(err.is_other_message_type(), "{err:?}");
    let err = error(
        r#"{"type":"day-end","instrument":"LSSTCam","day_obs":20240923,"surveys":["SURVEY"]}"#,
    );
    assert!(err.is_other_message_type(), "{err:?}");
    assert_eq!(err.to_string(), "message type `day-end` is not `pp-output`");
    // A pp-output message that is broken is not "another type".
    let err = error(r#"{"type":"pp-output","datasets":[]}"#);
    assert!(!err.is_other_message_type(), "{err:?}");
}

fn invalid_at(text: &str) -> (String, String) {
    match error(text) {
        DecodeError::Invalid { path, message, .. } => (path, message),
        other => panic!("expected an Invalid error for {text}, got {other:?}"),
    }
}

#[test]
fn missing_and_mistyped_fields_name_their_path() {
    let (path, message) = invalid_at(r#"{"type":"pp-output","datasets":[]}"#);
    assert_eq!(path, ".");
    assert!(
        message.contains("missing field `dimension_records`"),
        "{message}"
    );

    let (path, message) = invalid_at(&GOOD.replace(r#""run":"r""#, r#""run":5"#));
    assert_eq!(
        path,
        "datasets[0].refs.0d3921af-c0a0-49cf-bbf9-6200009b9c03.run"
    );
    assert!(message.contains("invalid type: integer `5`"), "{message}");

    let (path, _) = invalid_at(&GOOD.replace(r#""path":"a.fits""#, r#""path":null"#));
    assert_eq!(path, "datasets[0].path");

    let (path, _) = invalid_at(&GOOD.replace(
        r#""detector":10,"visit":1}}}"#,
        r#""detector":10.5,"visit":1}}}"#,
    ));
    assert_eq!(
        path,
        "datasets[0].refs.0d3921af-c0a0-49cf-bbf9-6200009b9c03.data_id.detector"
    );

    let (path, _) = invalid_at(&GOOD.replace(r#""type":"pp-output""#, r#""type":7"#));
    assert_eq!(path, "type");

    let (path, _) = invalid_at(&GOOD.replace(r#""record":{"#, r#""record":{"bad":[1,2,3],"#));
    assert_eq!(path, "dimension_records[0].record.bad");
}

#[test]
fn bad_uuid_names_its_path() {
    let (path, message) = invalid_at(&GOOD.replace(
        "0d3921af-c0a0-49cf-bbf9-6200009b9c03",
        "0d3921af-c0a0-49cf-bbf9-6200009b9cXX",
    ));
    assert_eq!(
        path,
        "datasets[0].refs.0d3921af-c0a0-49cf-bbf9-6200009b9cXX"
    );
    assert!(
        message.contains("UUID") || message.contains("uuid"),
        "{message}"
    );
}

#[test]
fn any_uuid_version_parses_and_prints_lowercase() {
    for id in [
        "0d3921af-c0a0-49cf-bbf9-6200009b9c03", // v4
        "26c6235f-2ea3-5a15-8009-a3056e49c379", // v5
        "01a22259-11a3-7e4a-8d96-2996bc567cf6", // v7
        "11111111-2ea3-5a15-8009-a3056e49c379",
    ] {
        let upper = GOOD.replace("0d3921af-c0a0-49cf-bbf9-6200009b9c03", &id.to_uppercase());
        let event = decode(&upper).unwrap_or_else(|e| panic!("{id}: {e}"));
        let text = String::from_utf8_lossy(&event.to_json()).into_owned();
        assert!(text.contains(id), "{id} should print lowercase: {text}");
    }
}

#[test]
fn a_region_that_does_not_decode_names_its_record() {
    let bad = GOOD.replace(r#""region":"70000000"#, r#""region":"70zz0000"#);
    let event = decode(&bad).unwrap_or_else(|e| panic!("{e}"));
    let err = event.decode_regions().err();
    match err {
        Some(DecodeError::Field { path, .. }) => {
            assert_eq!(
                path,
                "dimension_records[0](visit_detector_region).record.region"
            );
        }
        other => panic!("expected a Field error, got {other:?}"),
    }
    let circle = GOOD.replace(r#""region":"70"#, r#""region":"63"#);
    let event = decode(&circle).unwrap_or_else(|e| panic!("{e}"));
    let text = event
        .decode_regions()
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(text.contains("region"), "{text}");
}

#[test]
fn arbitrary_bytes_never_panic() {
    // A cheap, deterministic stand-in for the fuzzer in CI: every prefix and many single-byte
    // corruptions of a good message.
    let good = GOOD.as_bytes();
    for end in 0..good.len() {
        let _ = PromptProcessingOutputEvent::from_json(&good[..end]);
    }
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    for _ in 0..20_000 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let mut bytes = good.to_vec();
        let at = usize::try_from(state % good.len() as u64).unwrap_or(0);
        bytes[at] = (state >> 56) as u8;
        if let Ok(event) = PromptProcessingOutputEvent::from_json(&bytes) {
            let _ = event.decode_regions();
            let _ = event.to_json();
        }
    }
}
