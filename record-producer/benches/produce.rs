//! How fast one producer process sends whole visits with every delivery report checked.
//!
//! `cargo bench -p record-producer --bench produce` (needs a broker: `KAFKA_BOOTSTRAP_SERVERS`, as
//! `eval "$(deploy/local/stack env)"` exports). For each of `BENCH_VISITS` visits (default 30) it
//! builds the 189 messages of the visit (regions, records, UUIDv7 ids, JSON), hands them to an
//! idempotent producer (`acks=all`) and waits for all 189 delivery reports; it prints the time per
//! visit (target: under 100 ms), the build time per message and the sustained messages/s.

#![allow(clippy::print_stdout, clippy::expect_used, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use record_producer::focal_plane::{DETECTORS, visit_regions};
use record_producer::messages::{DatasetTypeSpec, WorkerOutput, default_run};
use record_producer::schedule::{NightPlan, night};

fn percentile(sorted: &[f64], q: f64) -> f64 {
    let index = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[index - 1]
}

#[tokio::main]
async fn main() {
    let Ok(bootstrap) = std::env::var("KAFKA_BOOTSTRAP_SERVERS") else {
        eprintln!(
            "produce bench: set KAFKA_BOOTSTRAP_SERVERS (eval \"$(deploy/local/stack env)\")"
        );
        std::process::exit(2);
    };
    let visits_n: u32 = std::env::var("BENCH_VISITS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let topic = format!(
        "bench_produce_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .expect("admin client");
    admin
        .create_topics(
            &[NewTopic::new(&topic, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .expect("create topic");
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .create()
        .expect("producer");

    let visits = night(&NightPlan::new(20260501, visits_n + 1));
    let types = DatasetTypeSpec::defaults();
    let mut per_visit_ms = Vec::new();
    let mut build = Duration::ZERO;
    let mut bytes = 0usize;
    let total = Instant::now();
    // Visit 0 warms the connection up and is not counted.
    for (index, visit) in visits.iter().enumerate() {
        let started = Instant::now();
        let regions = visit_regions(visit.pointing);
        let run = default_run(visit);
        let output = WorkerOutput {
            visit,
            regions: &regions,
            run: &run,
            dataset_types: &types,
        };
        let payloads: Vec<Vec<u8>> = (0..DETECTORS)
            .map(|d| output.message(d).to_json())
            .collect();
        let built = started.elapsed();
        let deliveries: Vec<_> = payloads
            .iter()
            .map(|p| {
                producer
                    .send_result(FutureRecord::<(), [u8]>::to(&topic).payload(p))
                    .expect("queue has room")
            })
            .collect();
        for delivery in deliveries {
            delivery.await.expect("report").expect("delivered");
        }
        if index > 0 {
            build += built;
            bytes += payloads.iter().map(Vec::len).sum::<usize>();
            per_visit_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        }
    }
    let elapsed = total.elapsed().as_secs_f64();
    per_visit_ms.sort_by(f64::total_cmp);
    let messages = per_visit_ms.len() as f64 * f64::from(DETECTORS);
    println!(
        "produce: {} visits x {DETECTORS} messages ({:.1} KB each), idempotent producer, acks=all, every delivery report awaited",
        per_visit_ms.len(),
        bytes as f64 / messages / 1000.0
    );
    println!(
        "  time per visit (build + send + 189 reports): p50 {:.1} ms  p90 {:.1} ms  max {:.1} ms  (target < 100 ms)",
        percentile(&per_visit_ms, 0.5),
        percentile(&per_visit_ms, 0.9),
        per_visit_ms.last().copied().unwrap_or(0.0)
    );
    println!(
        "  building a message: {:.1} us; sustained {:.0} messages/s ({:.0} datasets/s) over {:.2} s",
        build.as_secs_f64() * 1e6 / messages,
        messages / per_visit_ms.iter().sum::<f64>() * 1000.0,
        3.0 * messages / per_visit_ms.iter().sum::<f64>() * 1000.0,
        elapsed
    );
    let _ = admin.delete_topics(&[&topic], &AdminOptions::new()).await;
}
