//! The bounded export queue between the paths that record (serving
//! threads, DNS threads, the log layer) and the exporter task.
//!
//! Pushing never waits and never grows the queue past its bound: when the
//! collector is down, slow or unreachable, what does not fit is dropped
//! and counted (`makiatto.telemetry.dropped`, `maki health`), so serving
//! goes on at the same speed and the memory held stays bounded.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Notify;

pub struct Bounded<T> {
    items: Mutex<VecDeque<T>>,
    capacity: usize,
    /// Items per export call: [`Bounded::full_batch`] wakes when this
    /// many wait.
    batch: usize,
    batch_waiting: Notify,
    pushed: AtomicU64,
    dropped: AtomicU64,
}

impl<T> Bounded<T> {
    /// A queue of at most `capacity` items, exported `batch` at a time.
    pub const fn new(capacity: usize, batch: usize) -> Bounded<T> {
        Bounded {
            items: Mutex::new(VecDeque::new()),
            capacity,
            batch,
            batch_waiting: Notify::const_new(),
            pushed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    /// Queues `item`, or drops and counts it when the queue is full.
    pub fn push(&self, item: T) {
        match self.items.lock() {
            Ok(mut q) if q.len() < self.capacity => {
                q.push_back(item);
                self.pushed.fetch_add(1, Ordering::Relaxed);
                // Once per batch, not per item: the exporter takes them
                // all when it wakes.
                if q.len() == self.batch {
                    drop(q);
                    self.batch_waiting.notify_one();
                }
            }
            _ => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Resolves once a whole batch waits (at once if one waited since
    /// the last call).
    pub async fn full_batch(&self) {
        self.batch_waiting.notified().await;
    }

    /// Items per export call.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Takes up to `max` items, oldest first.
    pub fn take(&self, max: usize) -> Vec<T> {
        match self.items.lock() {
            Ok(mut q) => {
                let n = q.len().min(max);
                q.drain(..n).collect()
            }
            Err(_) => Vec::new(),
        }
    }

    /// Counts items the exporter gave up on (a batch the collector did
    /// not take) as dropped.
    pub fn lost(&self, n: usize) {
        self.dropped.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn len(&self) -> usize {
        self.items.lock().map_or(0, |q| q.len())
    }

    /// Items dropped since the start: the queue was full, or the
    /// collector refused or never answered.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    #[cfg(test)]
    pub fn pushed(&self) -> u64 {
        self.pushed.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_growing() {
        let q = Bounded::new(3, 2);
        for i in 0..5 {
            q.push(i);
        }
        assert_eq!(q.len(), 3);
        assert_eq!(q.dropped(), 2);
        assert_eq!(q.take(2), [0, 1]);
        q.push(9);
        assert_eq!(q.take(10), [2, 9]);
        q.lost(4);
        assert_eq!(q.dropped(), 6);
        assert_eq!(q.pushed(), 4);
    }

    #[tokio::test]
    async fn a_whole_batch_wakes_the_exporter() {
        let q = Bounded::new(10, 3);
        q.push(1);
        q.push(2);
        let early = tokio::time::timeout(std::time::Duration::from_millis(50), q.full_batch());
        assert!(early.await.is_err(), "woken before a batch waited");
        q.push(3);
        // The wake is kept for the next wait, so none is missed while the
        // exporter is busy sending.
        q.full_batch().await;
        assert_eq!(q.take(q.batch()), [1, 2, 3]);
    }
}
