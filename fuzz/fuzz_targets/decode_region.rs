//! Any bytes as a sphgeom region, in its binary, hex and base64 forms: decoding returns a region or
//! an error, never panics; a decoded polygon re-encodes to the same bytes and has an HTM envelope.
#![no_main]

use libfuzzer_sys::fuzz_target;
use schema::Region;
use schema::htm::HtmPixelization;

fuzz_target!(|data: &[u8]| {
    if let Ok(region) = Region::decode(data) {
        assert_eq!(region.encode(), data, "re-encoding changed the bytes");
        if let Some(polygon) = region.as_convex_polygon() {
            if let Ok(htm) = HtmPixelization::new(7) {
                let _ = htm.envelope(polygon);
            }
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Region::from_hex(text);
        let _ = Region::from_base64(text);
    }
});
