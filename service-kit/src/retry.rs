//! Capped exponential backoff with jitter, for every retry loop of every service.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How a retry loop waits.
#[derive(Debug, Clone, Copy)]
pub struct RetrySettings {
    /// The first wait.
    pub initial: Duration,
    /// The longest wait.
    pub max: Duration,
}

impl Default for RetrySettings {
    /// 200 ms doubling to 30 s: quick enough to notice a restarted database within a second,
    /// slow enough not to hammer one that is down for minutes.
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(30),
        }
    }
}

impl RetrySettings {
    /// Whether the settings make sense (`0 < initial <= max`).
    pub fn is_valid(&self) -> bool {
        !self.initial.is_zero() && self.initial <= self.max
    }
}

/// Capped exponential backoff with jitter: each wait is between half and all of the current
/// step, and the step doubles up to the cap. The jitter keeps several pods that lost the same
/// database from coming back in step.
#[derive(Debug)]
pub struct Backoff {
    step: Duration,
    settings: RetrySettings,
}

impl Backoff {
    /// Starts at `settings.initial`.
    pub fn new(settings: RetrySettings) -> Self {
        Self {
            step: settings.initial,
            settings,
        }
    }

    /// The next wait.
    pub fn next_wait(&mut self) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(self.settings.max);
        let half = step / 2;
        half + half.mul_f64(fastrand::f64())
    }

    /// Waits the next wait, or less when `cancel` fires; `false` if it was cancelled.
    pub async fn wait(&mut self, cancel: &CancellationToken) -> bool {
        sleep_unless_cancelled(self.next_wait(), cancel).await
    }
}

/// Sleeps for `duration`, or less when `cancel` fires; `false` if it was cancelled.
pub async fn sleep_unless_cancelled(duration: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(duration) => true,
        () = cancel.cancelled() => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let mut backoff = Backoff::new(RetrySettings {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(800),
        });
        let waits: Vec<Duration> = (0..6).map(|_| backoff.next_wait()).collect();
        for (wait, step) in waits.iter().zip([100, 200, 400, 800, 800, 800]) {
            let step = Duration::from_millis(step);
            assert!(
                *wait >= step / 2 && *wait <= step,
                "{wait:?} for a step of {step:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_cancelled_wait_ends_at_once() {
        let cancel = CancellationToken::new();
        cancel.cancel();
        let started = std::time::Instant::now();
        assert!(!sleep_unless_cancelled(Duration::from_secs(60), &cancel).await);
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
