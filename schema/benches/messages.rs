//! Parse and re-serialize `bench_1000_0.jsonl` of the fixtures (`deploy/local/stack up` makes
//! them): 334 pp-output messages holding 1000 datasets, the size of a large writer batch.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use schema::PromptProcessingOutputEvent;

#[path = "../tests/common/mod.rs"]
mod common;

fn batch_lines() -> Vec<Vec<u8>> {
    common::lines(&common::fixtures_dir().join("messages/bench_1000_0.jsonl"))
}

fn messages(c: &mut Criterion) {
    let lines = batch_lines();
    let total_bytes: usize = lines.iter().map(Vec::len).sum();
    let events: Vec<PromptProcessingOutputEvent> = lines
        .iter()
        .map(|l| PromptProcessingOutputEvent::from_json(l).unwrap_or_else(|e| panic!("{e}")))
        .collect();

    let mut group = c.benchmark_group("bench_1000_0 (334 messages, 1000 datasets)");
    group.measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Bytes(total_bytes as u64));
    group.bench_function("parse", |b| {
        b.iter(|| {
            for line in &lines {
                black_box(PromptProcessingOutputEvent::from_json(black_box(line)).ok());
            }
        });
    });
    group.bench_function("serialize", |b| {
        b.iter(|| {
            for event in &events {
                black_box(event.to_json());
            }
        });
    });
    group.bench_function("parse + decode regions", |b| {
        b.iter(|| {
            for line in &lines {
                if let Ok(event) = PromptProcessingOutputEvent::from_json(black_box(line)) {
                    black_box(event.decode_regions().ok());
                }
            }
        });
    });
    group.finish();
}

criterion_group!(benches, messages);
criterion_main!(benches);
