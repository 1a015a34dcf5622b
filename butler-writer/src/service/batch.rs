//! The batch being filled: messages read in one assignment generation, closed when it holds
//! `max_messages` messages or `max_bytes` bytes of values, or `max_wait` after its first message
//! arrived, or, when eager, as soon as no more messages are waiting while the pipeline has a
//! free connection ([`InFlight`]). No Kafka here, so the rules are tested on their own.
//!
//! Eager closing is what keeps latency low at a quiet pace without costing throughput at a
//! backlog: an idle pipeline takes a batch at once instead of waiting `max_wait` for more, and a
//! busy one lets batches fill up, since nothing can start before a batch in flight finishes.
//!
//! The byte cap bounds memory by bytes, not only by count: a topic accepts messages of up to
//! `message.max.bytes` (10 MiB on Prompt Kafka), and 500 of those would be gigabytes.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// One message read from the input topic.
#[derive(Debug, Clone)]
pub struct InputMessage {
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Its key, if any (kept for the dead-letter record).
    pub key: Option<Vec<u8>>,
    /// Its value (empty for a null value).
    pub value: Vec<u8>,
    /// Its Kafka timestamp, milliseconds since the epoch.
    pub timestamp_ms: Option<i64>,
}

/// A closed batch of messages read in one assignment generation.
#[derive(Debug)]
pub struct Batch {
    /// Sequence number, for logs.
    pub number: u64,
    /// The assignment generation its messages were read in.
    pub generation: u64,
    /// The messages, in the order read.
    pub messages: Vec<InputMessage>,
    /// When the batch closed.
    pub closed_at: Instant,
    /// Counts the batch as in flight from its hand-over to the pipeline until it is dropped
    /// (announced, abandoned, or left behind at a stop).
    pub in_flight: Option<InFlightGuard>,
}

/// Batches handed to the pipeline and not yet done with (announced or abandoned).
#[derive(Debug, Clone, Default)]
pub struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    /// How many batches are in flight.
    pub fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }

    /// Counts one more batch until the guard is dropped.
    pub fn enter(&self) -> InFlightGuard {
        self.0.fetch_add(1, Ordering::SeqCst);
        InFlightGuard(Arc::clone(&self.0))
    }
}

/// One batch counted in [`InFlight`].
#[derive(Debug)]
pub struct InFlightGuard(Arc<AtomicUsize>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Fills batches: [`push`](Self::push) messages, [`take`](Self::take) the batch once it
/// [`is_full`](Self::is_full) or [`is_due`](Self::is_due).
#[derive(Debug)]
pub struct BatchBuilder {
    max_messages: usize,
    max_bytes: usize,
    max_wait: Duration,
    open: Option<Open>,
    /// Batches closed so far.
    numbered: u64,
}

#[derive(Debug)]
struct Open {
    generation: u64,
    opened_at: Instant,
    messages: Vec<InputMessage>,
    /// Bytes of the messages' values and keys.
    bytes: usize,
}

impl BatchBuilder {
    /// Batches of at most `max_messages` messages (at least 1) and about `max_bytes` bytes (a
    /// message larger than that makes a batch of its own), closed `max_wait` after their first
    /// message.
    pub fn new(max_messages: usize, max_bytes: usize, max_wait: Duration) -> Self {
        Self {
            max_messages: max_messages.max(1),
            max_bytes: max_bytes.max(1),
            max_wait,
            open: None,
            numbered: 0,
        }
    }

    /// Adds a message read in assignment `generation`. A batch of an older generation is
    /// dropped first: its partitions were revoked, so its messages come again to their next
    /// owner.
    pub fn push(&mut self, generation: u64, message: InputMessage, now: Instant) {
        self.discard_stale(generation);
        let open = self.open.get_or_insert_with(|| Open {
            generation,
            opened_at: now,
            messages: Vec::with_capacity(self.max_messages.min(1024)),
            bytes: 0,
        });
        open.bytes += message.value.len() + message.key.as_ref().map_or(0, Vec::len);
        open.messages.push(message);
    }

    /// Drops the open batch if it was read before assignment `generation`.
    pub fn discard_stale(&mut self, generation: u64) {
        if self
            .open
            .as_ref()
            .is_some_and(|b| b.generation != generation)
        {
            self.open = None;
        }
    }

    /// Whether the open batch holds `max_messages` messages or `max_bytes` bytes.
    pub fn is_full(&self) -> bool {
        self.open
            .as_ref()
            .is_some_and(|b| b.messages.len() >= self.max_messages || b.bytes >= self.max_bytes)
    }

    /// Whether the open batch is full or has waited `max_wait` since its first message.
    pub fn is_due(&self, now: Instant) -> bool {
        self.is_full()
            || self
                .open
                .as_ref()
                .is_some_and(|b| now.saturating_duration_since(b.opened_at) >= self.max_wait)
    }

    /// Whether a batch is open.
    pub fn is_empty(&self) -> bool {
        self.open.is_none()
    }

    /// How long a poll may wait before the open batch is due: at most `ceiling`.
    pub fn time_left(&self, now: Instant, ceiling: Duration) -> Duration {
        match &self.open {
            Some(open) => self
                .max_wait
                .saturating_sub(now.saturating_duration_since(open.opened_at))
                .min(ceiling),
            None => ceiling,
        }
    }

    /// Closes the open batch and returns it, numbered; `None` when none is open.
    pub fn take(&mut self, now: Instant) -> Option<Batch> {
        let open = self.open.take()?;
        self.numbered += 1;
        Some(Batch {
            number: self.numbered,
            generation: open.generation,
            messages: open.messages,
            closed_at: now,
            in_flight: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(offset: i64) -> InputMessage {
        InputMessage {
            partition: 0,
            offset,
            key: None,
            value: b"{}".to_vec(),
            timestamp_ms: None,
        }
    }

    #[test]
    fn a_batch_counts_as_in_flight_until_it_is_dropped() {
        let in_flight = InFlight::default();
        let mut builder = BatchBuilder::new(10, 1 << 20, Duration::from_secs(1));
        builder.push(0, message(1), Instant::now());
        let mut batch = builder.take(Instant::now()).expect("a batch");
        assert_eq!(in_flight.count(), 0);
        batch.in_flight = Some(in_flight.enter());
        let other = in_flight.enter();
        assert_eq!(in_flight.count(), 2);
        drop(batch);
        assert_eq!(in_flight.count(), 1);
        drop(other);
        assert_eq!(in_flight.count(), 0);
    }

    #[test]
    fn a_batch_closes_when_full() {
        let start = Instant::now();
        let mut builder = BatchBuilder::new(3, usize::MAX, Duration::from_secs(60));
        assert!(builder.take(start).is_none());
        for offset in 0..3 {
            assert!(!builder.is_full());
            builder.push(0, message(offset), start);
        }
        assert!(builder.is_full() && builder.is_due(start));
        let batch = builder.take(start).unwrap();
        assert_eq!((batch.number, batch.messages.len()), (1, 3));
        assert!(builder.is_empty() && !builder.is_due(start));
        builder.push(0, message(3), start);
        assert_eq!(builder.take(start).unwrap().number, 2);
    }

    #[test]
    fn a_batch_is_due_max_wait_after_its_first_message() {
        let start = Instant::now();
        let wait = Duration::from_millis(200);
        let mut builder = BatchBuilder::new(500, usize::MAX, wait);
        assert_eq!(
            builder.time_left(start, Duration::from_millis(100)),
            Duration::from_millis(100)
        );
        builder.push(0, message(0), start);
        let later = start + Duration::from_millis(150);
        builder.push(0, message(1), later);
        assert!(!builder.is_due(later));
        assert_eq!(
            builder.time_left(later, Duration::from_secs(1)),
            Duration::from_millis(50)
        );
        assert!(builder.is_due(start + wait));
        assert_eq!(
            builder.time_left(start + wait, Duration::from_secs(1)),
            Duration::ZERO
        );
    }

    #[test]
    fn a_batch_closes_at_its_byte_cap_and_a_large_message_goes_alone() {
        let start = Instant::now();
        let mut builder = BatchBuilder::new(500, 10, Duration::from_secs(60));
        let sized = |offset, bytes| InputMessage {
            value: vec![b' '; bytes],
            ..message(offset)
        };
        builder.push(0, sized(0, 4), start);
        builder.push(0, sized(1, 4), start);
        assert!(!builder.is_full());
        builder.push(0, sized(2, 4), start);
        assert!(builder.is_full());
        assert_eq!(builder.take(start).unwrap().messages.len(), 3);
        builder.push(0, sized(3, 1000), start);
        assert!(builder.is_full() && builder.is_due(start));
        assert_eq!(builder.take(start).unwrap().messages.len(), 1);
    }

    #[test]
    fn a_new_generation_drops_the_open_batch() {
        let start = Instant::now();
        let mut builder = BatchBuilder::new(10, usize::MAX, Duration::from_secs(1));
        builder.push(0, message(0), start);
        builder.push(0, message(1), start);
        builder.push(1, message(7), start);
        let batch = builder.take(start).unwrap();
        assert_eq!(batch.generation, 1);
        assert_eq!(
            batch.messages.iter().map(|m| m.offset).collect::<Vec<_>>(),
            [7]
        );
        builder.push(1, message(8), start);
        builder.discard_stale(2);
        assert!(builder.is_empty());
    }
}
