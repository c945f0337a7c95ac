//! The one bounded pool for CPU-heavy work (image decoding, resizing and
//! encoding today; WebAssembly later).
//!
//! Why a pool of its own: each HTTP serving thread is a single-threaded
//! runtime, so one 200 ms resize run there would stall every connection on
//! that thread, and tokio's blocking pool grows without bound (512 threads),
//! so a flood of resize requests would take every core from static files,
//! DNS and replication. Here:
//!
//! - one thread per CPU (`makiatto-work-N`), each at a lower priority
//!   (nice 10), so the serving threads, DNS and replication are scheduled
//!   first when the machine is busy;
//! - a queue with a limit (`work.queue`, a cluster setting): a job
//!   submitted while that many wait is refused at once with [`Busy`], which
//!   the HTTP edge answers with `503` and `Retry-After`. A refused job
//!   costs nothing: no memory is taken for it and nothing was read;
//! - a job is a closure that returns its result through a oneshot; the
//!   submitter awaits it without blocking its runtime. A submitter that
//!   goes away (a closed connection) does not cancel a job that has begun,
//!   so another request coalesced onto it still gets the result.
//!
//! The pool knows nothing of images: it runs closures, counts them and
//! refuses when full.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use tokio::sync::oneshot;

/// How much more politely the pool's threads run than the rest of the
/// daemon (a nice value; the serving threads keep 0).
const NICE: libc::c_int = 10;

type Job = Box<dyn FnOnce() + Send + 'static>;

/// The pool was full: the job was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the CPU pool's queue is full ({waiting} jobs waiting); try again shortly")]
pub struct Busy {
    pub waiting: usize,
}

/// The pool's threads and queue.
pub struct WorkPool {
    shared: Arc<Shared>,
    threads: usize,
}

struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
    /// Jobs allowed to wait (the running ones not counted).
    limit: AtomicUsize,
    running: AtomicUsize,
    done: AtomicU64,
    refused: AtomicU64,
}

/// The jobs waiting, and the threads waiting for one.
#[derive(Default)]
struct Queue {
    jobs: std::collections::VecDeque<Job>,
    /// Threads asleep on `ready`: a job submitted while none is wakes
    /// nobody (a condition variable's notify is a system call even with
    /// no waiter, and under load every thread is busy).
    idle: usize,
}

/// What the pool is doing, for `makiatto health`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolCounts {
    pub threads: usize,
    pub queue_limit: usize,
    pub waiting: usize,
    pub running: usize,
    pub done: u64,
    pub refused: u64,
}

impl WorkPool {
    /// Starts one thread per CPU (at least one), with room for `limit`
    /// waiting jobs.
    pub fn start(limit: usize) -> std::io::Result<WorkPool> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        WorkPool::with_threads(threads, limit)
    }

    /// Starts `threads` threads (at least one).
    pub fn with_threads(threads: usize, limit: usize) -> std::io::Result<WorkPool> {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            queue: Mutex::new(Default::default()),
            ready: Condvar::new(),
            limit: AtomicUsize::new(limit),
            running: AtomicUsize::new(0),
            done: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        });
        for i in 0..threads {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("makiatto-work-{i}"))
                .spawn(move || {
                    lower_priority();
                    shared.work();
                })?;
        }
        Ok(WorkPool { shared, threads })
    }

    /// Changes the queue limit (`work.queue`); jobs already queued stay.
    pub fn set_limit(&self, limit: usize) {
        self.shared.limit.store(limit, Ordering::Relaxed);
    }

    /// Queues `job`, or refuses it when the queue is full. The result
    /// comes through the receiver; it is dropped unsent only if the job
    /// panicked.
    pub fn submit<T, F>(&self, job: F) -> Result<oneshot::Receiver<T>, Busy>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        self.submit_then_drop(move || (job(), ()))
    }

    /// Like [`WorkPool::submit`], for a job that leaves something costly
    /// to drop (a WebAssembly store, whose memory is reset as it goes):
    /// the result is sent first, then the rest is dropped on the pool's
    /// thread, after the waiter has its answer.
    pub fn submit_then_drop<T, L, F>(&self, job: F) -> Result<oneshot::Receiver<T>, Busy>
    where
        T: Send + 'static,
        F: FnOnce() -> (T, L) + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let Ok(mut queue) = self.shared.queue.lock() else {
            return Err(Busy { waiting: 0 });
        };
        if queue.jobs.len() >= self.shared.limit.load(Ordering::Relaxed) {
            self.shared.refused.fetch_add(1, Ordering::Relaxed);
            return Err(Busy {
                waiting: queue.jobs.len(),
            });
        }
        // Counted before the result is sent: a caller that has the result
        // sees the job among the done.
        let shared = self.shared.clone();
        queue.jobs.push_back(Box::new(move || {
            let (out, rest) = job();
            shared.finished();
            let _ = tx.send(out);
            drop(rest);
        }));
        let wake = queue.idle > 0;
        drop(queue);
        if wake {
            self.shared.ready.notify_one();
        }
        Ok(rx)
    }

    pub fn counts(&self) -> PoolCounts {
        let waiting = self.shared.queue.lock().map_or(0, |q| q.jobs.len());
        PoolCounts {
            threads: self.threads,
            queue_limit: self.shared.limit.load(Ordering::Relaxed),
            waiting,
            running: self.shared.running.load(Ordering::Relaxed),
            done: self.shared.done.load(Ordering::Relaxed),
            refused: self.shared.refused.load(Ordering::Relaxed),
        }
    }
}

impl Shared {
    /// A worker's loop: take the oldest job, run it, forever (the pool
    /// lives as long as the daemon).
    fn work(&self) {
        loop {
            let job = {
                let Ok(mut queue) = self.queue.lock() else {
                    return;
                };
                loop {
                    if let Some(job) = queue.jobs.pop_front() {
                        break job;
                    }
                    // Counted under the lock a submitter takes, so it
                    // sees this thread asleep before it decides whether
                    // to wake one (no job is left unnoticed).
                    queue.idle += 1;
                    queue = match self.ready.wait(queue) {
                        Ok(mut q) => {
                            q.idle -= 1;
                            q
                        }
                        Err(_) => return,
                    };
                }
            };
            self.running.fetch_add(1, Ordering::Relaxed);
            // A panicking job (a decoder bug on a hostile file) loses its
            // result, not the thread: its sender is dropped, so the waiter
            // learns of it.
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
                self.finished();
            }
        }
    }

    /// A job ended (it returned, or it panicked).
    fn finished(&self) {
        self.running.fetch_sub(1, Ordering::Relaxed);
        self.done.fetch_add(1, Ordering::Relaxed);
    }
}

/// Lowers the calling thread's priority (Linux keeps nice per thread).
/// Failing to is no error: the work is only less polite.
fn lower_priority() {
    // SAFETY: gettid and setpriority have no memory preconditions.
    let failed = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, NICE) != 0
    };
    if failed {
        tracing::debug!(error = %std::io::Error::last_os_error(), "cannot lower the work pool's priority");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[tokio::test]
    async fn a_job_runs_off_the_caller_and_returns_its_result() {
        let pool = WorkPool::with_threads(2, 4).unwrap();
        let caller = std::thread::current().id();
        let rx = pool
            .submit(move || (std::thread::current().id() != caller, 6 * 7))
            .unwrap();
        assert_eq!(rx.await.unwrap(), (true, 42));
        assert_eq!(pool.counts().done, 1);
    }

    #[tokio::test]
    async fn a_full_queue_refuses_at_once_and_takes_jobs_again_when_drained() {
        let pool = WorkPool::with_threads(1, 2).unwrap();
        // Hold the only thread until told.
        let (release, held) = mpsc::channel::<()>();
        let (started_tx, started) = mpsc::channel::<()>();
        let first = pool
            .submit(move || {
                started_tx.send(()).unwrap();
                held.recv().unwrap();
            })
            .unwrap();
        started.recv().unwrap();
        let queued: Vec<_> = (0..2).map(|i| pool.submit(move || i).unwrap()).collect();
        let refused = pool.submit(|| 9).unwrap_err();
        assert_eq!(refused, Busy { waiting: 2 });
        let counts = pool.counts();
        assert_eq!((counts.waiting, counts.running, counts.refused), (2, 1, 1));
        release.send(()).unwrap();
        first.await.unwrap();
        for (i, rx) in queued.into_iter().enumerate() {
            assert_eq!(rx.await.unwrap(), i);
        }
        assert_eq!(pool.submit(|| 3).unwrap().await.unwrap(), 3);
    }

    #[tokio::test]
    async fn a_panicking_job_drops_its_result_and_the_thread_goes_on() {
        let pool = WorkPool::with_threads(1, 4).unwrap();
        let rx = pool.submit(|| -> u32 { panic!("a hostile file") }).unwrap();
        assert!(rx.await.is_err());
        assert_eq!(pool.submit(|| 5).unwrap().await.unwrap(), 5);
    }
}
