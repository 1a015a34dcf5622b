//! JSON written the way Pydantic's `model_dump_json()` writes it.
//!
//! The Python side compares nothing byte for byte, but operators do (dead-letter replays, diffs of
//! batch files), and the reference messages were captured from the Python producers; keeping the
//! bytes identical makes every such comparison trivial. Pydantic (pydantic-core) writes compact JSON
//! with serde_json's string escaping, so the only difference from `serde_json::to_vec` is how
//! floats are printed: the shortest round-trip digits, fixed notation for decimal exponents -5 to
//! 15 (`30.0`, `0.00001`, `1000000000000000.0`), scientific otherwise with an explicit exponent
//! sign (`1e+16`, `1.5e-7`). Non-finite floats are `null` (Pydantic's default `ser_json_inf_nan`).
//! `tests/pydantic_compat.rs` checks all of this against vectors produced by Pydantic itself.

use std::io;

use serde::Serialize;
use serde_json::ser::{CompactFormatter, Formatter};

/// A serde_json formatter that prints floats as pydantic-core does; everything else is compact.
#[derive(Debug, Clone, Copy, Default)]
pub struct PydanticFormatter;

impl PydanticFormatter {
    fn write_float<W: ?Sized + io::Write>(writer: &mut W, text: &str) -> io::Result<()> {
        // ryu already chooses the digits and the notation Pydantic uses; Pydantic only adds a
        // `+` to positive exponents.
        match text.find('e') {
            Some(at) if !text[at + 1..].starts_with('-') => {
                writer.write_all(&text.as_bytes()[..=at])?;
                writer.write_all(b"+")?;
                writer.write_all(&text.as_bytes()[at + 1..])
            }
            _ => writer.write_all(text.as_bytes()),
        }
    }
}

impl Formatter for PydanticFormatter {
    fn write_f64<W: ?Sized + io::Write>(&mut self, writer: &mut W, value: f64) -> io::Result<()> {
        // serde_json routes non-finite values to `write_null` before calling this; the check is
        // for direct callers.
        if !value.is_finite() {
            return CompactFormatter.write_null(writer);
        }
        let mut buffer = ryu::Buffer::new();
        Self::write_float(writer, buffer.format_finite(value))
    }

    fn write_f32<W: ?Sized + io::Write>(&mut self, writer: &mut W, value: f32) -> io::Result<()> {
        // Python has only doubles: a Rust f32 is printed as the double it widens to.
        self.write_f64(writer, f64::from(value))
    }
}

/// Serializes `value` as compact Pydantic-style JSON into `writer`.
pub fn to_writer<W: io::Write, T: ?Sized + Serialize>(
    writer: W,
    value: &T,
) -> serde_json::Result<()> {
    let mut serializer = serde_json::Serializer::with_formatter(writer, PydanticFormatter);
    value.serialize(&mut serializer)
}

/// Serializes `value` as compact Pydantic-style JSON bytes.
pub fn to_vec<T: ?Sized + Serialize>(value: &T) -> serde_json::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(256);
    to_writer(&mut out, value)?;
    Ok(out)
}

/// Serializes `value` as a compact Pydantic-style JSON string.
pub fn to_string<T: ?Sized + Serialize>(value: &T) -> serde_json::Result<String> {
    let bytes = to_vec(value)?;
    // serde_json only ever writes UTF-8.
    String::from_utf8(bytes).map_err(|e| serde::ser::Error::custom(e.utf8_error()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(v: f64) -> String {
        to_string(&v).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn floats_print_as_pydantic_prints_them() {
        assert_eq!(text(30.0), "30.0");
        assert_eq!(text(-0.0), "-0.0");
        assert_eq!(text(1e15), "1000000000000000.0");
        assert_eq!(text(1e16), "1e+16");
        assert_eq!(text(1.5e300), "1.5e+300");
        assert_eq!(text(1e-5), "0.00001");
        assert_eq!(text(1e-6), "1e-6");
        assert_eq!(text(5e-324), "5e-324");
        assert_eq!(text(f64::NAN), "null");
        assert_eq!(text(f64::INFINITY), "null");
        assert_eq!(text(f64::NEG_INFINITY), "null");
    }
}
