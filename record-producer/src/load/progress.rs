//! The progress bar while a load test runs (or, off a terminal, a log line every ten seconds).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use tracing::info;

use super::lock;
use crate::tracker::Tracker;

/// The progress bar (or, off a terminal, a log line every ten seconds).
#[derive(Debug)]
pub(super) struct Progress {
    bar: ProgressBar,
    task: tokio::task::JoinHandle<()>,
}

impl Progress {
    pub(super) fn start(enabled: bool, expected: u64, tracker: Arc<Mutex<Tracker>>) -> Self {
        let bar = if enabled {
            ProgressBar::new(expected)
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template(
                "{elapsed_precise} [{wide_bar}] {pos}/{len} datasets ingested  {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let task = tokio::spawn({
            let bar = bar.clone();
            async move {
                let mut last_log = Instant::now();
                loop {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let o = lock(&tracker).outcome();
                    bar.set_position(o.datasets_ingested);
                    bar.set_message(format!(
                        "{} messages sent, {} delivered, {} dead letters",
                        o.messages_sent,
                        o.messages_delivered,
                        o.dead_letter_reasons.values().sum::<u64>()
                    ));
                    if bar.is_hidden() && last_log.elapsed() >= Duration::from_secs(10) {
                        last_log = Instant::now();
                        info!(
                            sent = o.messages_sent,
                            delivered = o.messages_delivered,
                            ingested = o.datasets_ingested,
                            expected,
                            "progress"
                        );
                    }
                }
            }
        });
        Self { bar, task }
    }

    pub(super) fn finish(self) {
        self.task.abort();
        self.bar.finish_and_clear();
    }
}
