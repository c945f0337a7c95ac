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

pub struct Bounded<T> {
    items: Mutex<VecDeque<T>>,
    capacity: usize,
    pushed: AtomicU64,
    dropped: AtomicU64,
}

impl<T> Bounded<T> {
    pub const fn new(capacity: usize) -> Bounded<T> {
        Bounded {
            items: Mutex::new(VecDeque::new()),
            capacity,
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
            }
            _ => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
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
        let q = Bounded::new(3);
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
}
