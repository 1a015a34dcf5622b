//! HTM-7 envelopes of the two polygon sizes the writer meets (one visit, ~190 detectors per visit),
//! and decoding a region's hex from a message.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use schema::htm::HtmPixelization;
use schema::{ConvexPolygon, Region};

/// A detector region (~0.22° square) from `reference/sphgeom/htm7_envelopes.jsonl`, line 1.
const DETECTOR_HEX: &str = "708b4cb75f5178ebbf8243a25fc03acb3fe7777832cededd3f0fc7c2bed968ebbffd9bc75eb843cb3f15fe3a736615de3f9f69eecc0964ebbf0c3cb5e446becb3f2eb6edd0e90ade3f1befe26d8173ebbf93e38fe54eb5cb3f00302b9051d4dd3f";

/// The `visit` record's region (~3.5°) in `reference/messages/batch_a.jsonl`.
const VISIT_HEX: &str = "70910c4d63e212e7bfc576a82e23d9dc3f9d1b1995bed6e0bfed778ff77008e8bfddf164052986d93f9d1b1995bed6e0bf42a1637e64e5e8bf674557f2d170da3f5033c792de4adebf4c50335804e7e7bfc23b84b65be2dd3f5033c792de4adebf";

fn polygon(hex_text: &str) -> ConvexPolygon {
    match Region::from_hex(hex_text) {
        Ok(Region::ConvexPolygon(p)) => p,
        other => panic!("bench polygon does not decode: {other:?}"),
    }
}

fn htm(c: &mut Criterion) {
    let Ok(htm7) = HtmPixelization::new(7) else {
        panic!("level 7 is valid");
    };
    let detector = polygon(DETECTOR_HEX);
    let visit = polygon(VISIT_HEX);
    let mut pixels = Vec::new();

    c.bench_function("htm7_envelope_detector", |b| {
        b.iter(|| {
            htm7.envelope_into(black_box(&detector), &mut pixels);
            pixels.len()
        });
    });
    c.bench_function("htm7_envelope_visit", |b| {
        b.iter(|| {
            htm7.envelope_into(black_box(&visit), &mut pixels);
            pixels.len()
        });
    });
    c.bench_function("region_from_hex_visit", |b| {
        b.iter(|| Region::from_hex(black_box(VISIT_HEX)));
    });
}

criterion_group! {
    name = benches;
    // Short runs: the machine has two cores and the numbers only need to show the order of
    // magnitude (tens of microseconds) against the writer's per-visit budget.
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = htm
}
criterion_main!(benches);
