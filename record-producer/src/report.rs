//! The load-test report: a table for people, the same figures as JSON for machines, and a plot of
//! latency and throughput over time.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;
use serde::Serialize;

use crate::tracker::{Arrival, Outcome, Unaccounted};

/// The plot could not be drawn or written.
#[derive(Debug, thiserror::Error)]
#[error("drawing the plot")]
pub struct PlotError(#[from] DrawingAreaErrorKind<std::io::Error>);

/// Latency percentiles, seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Maximum.
    pub max: f64,
}

impl Latency {
    /// Percentiles of latencies in milliseconds (nearest rank); zeros when there are none.
    pub fn of(latencies_ms: &mut [i64]) -> Self {
        if latencies_ms.is_empty() {
            return Self::default();
        }
        latencies_ms.sort_unstable();
        let rank = |q: f64| {
            let index =
                ((q * latencies_ms.len() as f64).ceil() as usize).clamp(1, latencies_ms.len());
            latencies_ms[index - 1] as f64 / 1000.0
        };
        Self {
            p50: rank(0.50),
            p90: rank(0.90),
            p99: rank(0.99),
            max: latencies_ms[latencies_ms.len() - 1] as f64 / 1000.0,
        }
    }
}

/// What the publication consumer recorded, when the run was pointed at one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(default)]
pub struct PublicationCounts {
    /// Datasets it recorded.
    pub datasets: u64,
    /// Of those, still under embargo.
    pub embargoed: u64,
    /// Of those, past their embargo (released).
    pub ready: u64,
    /// Of those, never released by the consumer's release policy.
    pub never_released: u64,
    /// Datasets the registry did not know.
    pub unknown: u64,
    /// Events it processed.
    pub events: u64,
}

/// The writer's application metrics events, counted against the batches announced.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MetricsEvents {
    /// Their topic.
    pub topic: String,
    /// `batch-ingested` events the run read: one `batch` metrics event is expected for each.
    pub batches: u64,
    /// `batch` events on the topic, decoded.
    pub batch_events: u64,
    /// Other events (breaker trips).
    pub other_events: u64,
    /// Values that are not events of a registered schema.
    pub undecodable: u64,
    /// Datasets the `batch` events account for (ingested and already present).
    pub datasets: u64,
    /// Messages the `batch` events account for.
    pub messages: u64,
    /// Why the topic could not be read, if it could not.
    pub error: Option<String>,
}

/// Everything a load test found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `night`, `burst` or `backlog`.
    pub mode: String,
    /// Visits sent.
    pub visits: u32,
    /// Detectors per visit.
    pub detectors: u32,
    /// Time compression of the night (1 = real pace); `null` when sending as fast as possible.
    pub speed: Option<f64>,
    /// Counts.
    pub outcome: Outcome,
    /// Seconds from the first send to the last.
    pub send_seconds: f64,
    /// Seconds from the first send to the last first-announcement.
    pub total_seconds: f64,
    /// Messages handed to the producer per second, over the send window.
    pub messages_per_second_sent: f64,
    /// Datasets sent per second, over the send window.
    pub datasets_per_second_sent: f64,
    /// Datasets announced per second, first send to last announcement.
    pub datasets_per_second_ingested: f64,
    /// Seconds from the last send to the last announcement: how long the pipeline needed to catch
    /// up (the drain time of a backlog).
    pub drain_seconds: f64,
    /// Send-to-announcement latency over every ingested dataset.
    pub latency: Latency,
    /// Every delivered dataset that was never announced: missing, or dead-lettered with the
    /// writer's reason.
    pub unaccounted: Vec<Unaccounted>,
    /// The publication consumer's counts, if it was checked.
    pub publication: Option<PublicationCounts>,
    /// The writer's metrics events, if they were checked.
    pub metrics: Option<MetricsEvents>,
    /// Where the plot was written.
    pub plot: Option<String>,
}

impl Report {
    /// Builds a report from the tracker's counts, arrivals and sends.
    pub fn new(
        mode: &str,
        visits: u32,
        detectors: u32,
        speed: Option<f64>,
        outcome: Outcome,
        sends: &[(i64, usize)],
        arrivals: &[Arrival],
    ) -> Self {
        let first_send = sends.iter().map(|s| s.0).min().unwrap_or(0);
        let last_send = sends.iter().map(|s| s.0).max().unwrap_or(0);
        let last_arrival = arrivals
            .iter()
            .map(|a| a.announced_ms)
            .max()
            .unwrap_or(last_send);
        let seconds = |ms: i64| ms.max(0) as f64 / 1000.0;
        let send_seconds = seconds(last_send - first_send);
        let total_seconds = seconds(last_arrival - first_send);
        let datasets_sent: usize = sends.iter().map(|s| s.1).sum();
        let rate = |n: f64, s: f64| if s > 0.0 { n / s } else { 0.0 };
        let mut latencies: Vec<i64> = arrivals
            .iter()
            .map(|a| a.announced_ms - a.sent_ms)
            .collect();
        Self {
            mode: mode.to_owned(),
            visits,
            detectors,
            speed,
            send_seconds,
            total_seconds,
            messages_per_second_sent: rate(sends.len() as f64, send_seconds),
            datasets_per_second_sent: rate(datasets_sent as f64, send_seconds),
            datasets_per_second_ingested: rate(outcome.datasets_ingested as f64, total_seconds),
            drain_seconds: seconds(last_arrival - last_send),
            latency: Latency::of(&mut latencies),
            outcome,
            unaccounted: Vec::new(),
            publication: None,
            metrics: None,
            plot: None,
        }
    }

    /// The report as a table.
    pub fn table(&self) -> String {
        let o = &self.outcome;
        let mut s = String::new();
        let pace = self.speed.map_or_else(
            || "as fast as possible".to_owned(),
            |x| format!("speed {x}x"),
        );
        let _ = writeln!(
            s,
            "record-producer report: {} mode, {} visits x {} detectors, {pace}",
            self.mode, self.visits, self.detectors
        );
        let line = "-".repeat(72);
        let _ = writeln!(s, "{line}");
        let _ = writeln!(
            s,
            "{:<28}{:>12}{:>12}{:>12}{:>8}",
            "messages", "sent", "delivered", "failed", "unacked"
        );
        let _ = writeln!(
            s,
            "{:<28}{:>12}{:>12}{:>12}{:>8}",
            "", o.messages_sent, o.messages_delivered, o.messages_failed, o.messages_unacknowledged
        );
        let _ = writeln!(
            s,
            "{:<28}{:>12}{:>12}{:>12}",
            "  injected", "redelivered", "twin pods", "malformed"
        );
        let _ = writeln!(
            s,
            "{:<28}{:>12}{:>12}{:>12}",
            "", o.redeliveries, o.twins, o.malformed
        );
        let _ = writeln!(
            s,
            "{:<28}{:>12}{:>12}{:>12}{:>8}",
            "datasets", "sent", "ingested", "rejected", "missing"
        );
        let _ = writeln!(
            s,
            "{:<28}{:>12}{:>12}{:>12}{:>8}",
            "",
            o.datasets_sent,
            o.datasets_ingested,
            o.datasets_rejected_expected + o.datasets_rejected_unexpected,
            o.datasets_missing
        );
        let _ = writeln!(
            s,
            "  rejected as expected (twin conflicts) {}, unexpectedly {}; conflicts ingested twice {}",
            o.datasets_rejected_expected,
            o.datasets_rejected_unexpected,
            o.twin_pairs_both_ingested
        );
        let _ = writeln!(
            s,
            "  malformed dead-lettered {}/{}; repeated announcements {}; events {}",
            o.malformed_dead_lettered, o.malformed, o.repeated_announcements, o.events
        );
        if !o.dead_letter_reasons.is_empty() {
            let reasons: Vec<String> = o
                .dead_letter_reasons
                .iter()
                .map(|(r, n)| format!("{r} {n}"))
                .collect();
            let _ = writeln!(s, "  dead letters by reason: {}", reasons.join(", "));
        }
        if o.foreign_datasets + o.foreign_dead_letters + o.undecodable_events > 0 {
            let _ = writeln!(
                s,
                "  not ours: {} datasets announced, {} dead letters; undecodable events {}",
                o.foreign_datasets, o.foreign_dead_letters, o.undecodable_events
            );
        }
        const LISTED: usize = 10;
        for (what, missing) in [("never announced", true), ("dead-lettered", false)] {
            let list: Vec<&Unaccounted> = self
                .unaccounted
                .iter()
                .filter(|u| u.dead_letter_reason.is_none() == missing)
                .collect();
            if list.is_empty() {
                continue;
            }
            let _ = writeln!(
                s,
                "  {what} ({}, the first {LISTED}; all in the JSON):",
                list.len()
            );
            for u in list.iter().take(LISTED) {
                let reason = u
                    .dead_letter_reason
                    .as_deref()
                    .map_or_else(String::new, |r| {
                        format!(", {r}{}", if u.expected { " (expected)" } else { "" })
                    });
                let _ = writeln!(s, "    {} from {}{reason}", u.id, u.message);
            }
        }
        let _ = writeln!(s, "{line}");
        let _ = writeln!(
            s,
            "throughput   sent {:.1} messages/s, {:.1} datasets/s over {:.1} s",
            self.messages_per_second_sent, self.datasets_per_second_sent, self.send_seconds
        );
        let _ = writeln!(
            s,
            "             ingested {:.1} datasets/s over {:.1} s (drained {:.1} s after the last send)",
            self.datasets_per_second_ingested, self.total_seconds, self.drain_seconds
        );
        let l = self.latency;
        let _ = writeln!(
            s,
            "latency      send -> batch-ingested: p50 {:.3} s  p90 {:.3} s  p99 {:.3} s  max {:.3} s",
            l.p50, l.p90, l.p99, l.max
        );
        let _ = writeln!(
            s,
            "             (send: this host's wall clock when a message is handed to the producer, which \
             is ready before the first; batch-ingested: the event's Kafka timestamp, the writer host's wall clock)"
        );
        if let Some(p) = &self.publication {
            let _ = writeln!(
                s,
                "publication  consumer recorded {} datasets ({} embargoed, {} released, {} never released by its policy, {} unknown) from {} events",
                p.datasets, p.embargoed, p.ready, p.never_released, p.unknown, p.events
            );
        }
        if let Some(m) = &self.metrics {
            let verdict = if m.batch_events == m.batches && m.undecodable == 0 {
                "one per batch"
            } else {
                "MISMATCH"
            };
            let _ = writeln!(
                s,
                "metrics      {} batch events for {} batches ({verdict}; {} datasets, {} messages), {} other, {} undecodable on {}{}",
                m.batch_events,
                m.batches,
                m.datasets,
                m.messages,
                m.other_events,
                m.undecodable,
                m.topic,
                m.error
                    .as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            );
        }
        if let Some(plot) = &self.plot {
            let _ = writeln!(s, "plot         {plot}");
        }
        let verdict = if o.is_complete() {
            "PASS: every delivered dataset accounted for"
        } else {
            "FAIL: datasets missing or wrongly handled"
        };
        let _ = writeln!(s, "{line}\n{verdict}");
        s
    }
}

/// Per-second buckets from the first send: datasets sent and announced, latency percentiles of
/// the datasets announced in each.
#[derive(Debug, Clone, PartialEq)]
pub struct Timeline {
    /// Seconds since the first send, one per bucket.
    pub seconds: Vec<f64>,
    /// Datasets sent in the bucket.
    pub sent: Vec<u64>,
    /// Datasets announced in the bucket.
    pub ingested: Vec<u64>,
    /// Latency of the bucket's announcements (p50, p99, max), seconds; `None` without any.
    pub latency: Vec<Option<Latency>>,
}

impl Timeline {
    /// Buckets sends and arrivals by second.
    pub fn new(sends: &[(i64, usize)], arrivals: &[Arrival]) -> Self {
        let start = sends.iter().map(|s| s.0).min().unwrap_or(0);
        let end = sends
            .iter()
            .map(|s| s.0)
            .chain(arrivals.iter().map(|a| a.announced_ms))
            .max()
            .unwrap_or(start);
        let buckets = ((end - start) / 1000 + 1).max(1) as usize;
        let bucket = |t: i64| (((t - start).max(0) / 1000) as usize).min(buckets - 1);
        let mut sent = vec![0; buckets];
        let mut ingested = vec![0; buckets];
        let mut latencies: Vec<Vec<i64>> = vec![Vec::new(); buckets];
        for &(t, n) in sends {
            sent[bucket(t)] += n as u64;
        }
        for a in arrivals {
            let b = bucket(a.announced_ms);
            ingested[b] += 1;
            latencies[b].push(a.announced_ms - a.sent_ms);
        }
        Self {
            seconds: (0..buckets).map(|b| b as f64).collect(),
            sent,
            ingested,
            latency: latencies
                .iter_mut()
                .map(|l| (!l.is_empty()).then(|| Latency::of(l)))
                .collect(),
        }
    }

    /// Draws latency (top) and throughput (bottom) against time into an SVG file.
    pub fn plot_svg(&self, path: &Path, title: &str) -> Result<(), PlotError> {
        let root = SVGBackend::new(path, (1100, 760)).into_drawing_area();
        root.fill(&WHITE)?;
        let root = root.titled(title, ("sans-serif", 22))?;
        let (top, bottom) = root.split_vertically(360);
        let x_max = self.seconds.last().copied().unwrap_or(0.0) + 1.0;

        let points = |f: &dyn Fn(&Latency) -> f64| -> Vec<(f64, f64)> {
            self.seconds
                .iter()
                .zip(&self.latency)
                .filter_map(|(&x, l)| l.as_ref().map(|l| (x, f(l))))
                .collect()
        };
        let p50 = points(&|l| l.p50);
        let p99 = points(&|l| l.p99);
        let max = points(&|l| l.max);
        let y_max = max.iter().map(|p| p.1).fold(0.1_f64, f64::max) * 1.1;
        let mut chart = ChartBuilder::on(&top)
            .margin(12)
            .caption(
                "send -> batch-ingested latency, per second",
                ("sans-serif", 16),
            )
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
        chart
            .configure_mesh()
            .x_desc("seconds since the first send")
            .y_desc("latency (s)")
            .draw()?;
        for (series, color, name) in [
            (&p50, BLUE.to_rgba(), "p50"),
            (&p99, RED.to_rgba(), "p99"),
            (&max, BLACK.mix(0.4), "max"),
        ] {
            chart
                .draw_series(LineSeries::new(series.iter().copied(), color))?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;

        let rate_max = self
            .sent
            .iter()
            .chain(&self.ingested)
            .copied()
            .max()
            .unwrap_or(1)
            .max(1) as f64
            * 1.1;
        let mut chart = ChartBuilder::on(&bottom)
            .margin(12)
            .caption("throughput", ("sans-serif", 16))
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..x_max, 0.0..rate_max)?;
        chart
            .configure_mesh()
            .x_desc("seconds since the first send")
            .y_desc("datasets / s")
            .draw()?;
        let sent: Vec<(f64, f64)> = self
            .seconds
            .iter()
            .zip(&self.sent)
            .map(|(&x, &n)| (x, n as f64))
            .collect();
        let ingested: Vec<(f64, f64)> = self
            .seconds
            .iter()
            .zip(&self.ingested)
            .map(|(&x, &n)| (x, n as f64))
            .collect();
        for (series, color, name) in [(sent, GREEN, "sent"), (ingested, BLUE, "ingested")] {
            chart
                .draw_series(LineSeries::new(series, color))?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let mut ms: Vec<i64> = (1..=100).collect();
        let l = Latency::of(&mut ms);
        assert_eq!((l.p50, l.p90, l.p99, l.max), (0.05, 0.09, 0.099, 0.1));
        assert_eq!(Latency::of(&mut []), Latency::default());
    }

    #[test]
    fn report_rates_and_table() {
        let sends = vec![(0, 3), (1000, 3), (2000, 3)];
        let arrivals = vec![
            Arrival {
                sent_ms: 0,
                announced_ms: 400,
            },
            Arrival {
                sent_ms: 1000,
                announced_ms: 1500,
            },
            Arrival {
                sent_ms: 2000,
                announced_ms: 3000,
            },
        ];
        let outcome = Outcome {
            messages_sent: 3,
            messages_delivered: 3,
            datasets_sent: 9,
            datasets_delivered: 9,
            datasets_ingested: 9,
            ..Outcome::default()
        };
        let report = Report::new("night", 1, 3, Some(10.0), outcome, &sends, &arrivals);
        assert_eq!(report.send_seconds, 2.0);
        assert_eq!(report.total_seconds, 3.0);
        assert_eq!(report.datasets_per_second_ingested, 3.0);
        assert_eq!(report.drain_seconds, 1.0);
        assert_eq!(report.latency.max, 1.0);
        let table = report.table();
        assert!(table.contains("PASS"), "{table}");
        let json = serde_json::to_value(&report).expect("json");
        assert_eq!(json["outcome"]["datasets_missing"], 0);
    }

    #[test]
    fn timeline_buckets_and_plots() {
        let sends = vec![(10_000, 3), (10_500, 3), (12_100, 3)];
        let arrivals = vec![
            Arrival {
                sent_ms: 10_000,
                announced_ms: 10_900,
            },
            Arrival {
                sent_ms: 12_100,
                announced_ms: 13_000,
            },
        ];
        let timeline = Timeline::new(&sends, &arrivals);
        assert_eq!(timeline.sent, vec![6, 0, 3, 0]);
        assert_eq!(timeline.ingested, vec![1, 0, 0, 1]);
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("plot.svg");
        timeline.plot_svg(&path, "test").expect("plot");
        let svg = std::fs::read_to_string(&path).expect("svg");
        assert!(svg.starts_with("<svg") && svg.contains("throughput"));
    }
}
