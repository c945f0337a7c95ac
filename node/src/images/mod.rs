//! Images on the fly: `?w&h&fit&fmt&q&dpr` on any JPEG, PNG, WebP or GIF
//! a site serves, on every node.
//!
//! # Layout
//! - [`params`]: the URL's parameters, parsed, and resolved into a
//!   normalised [`Spec`](params::Spec) (the rendition's name).
//! - [`geometry`]: where the pixels go for each fit.
//! - [`probe`]: what a source is, from its header only.
//! - [`decode`]: bytes to upright pixels, shrunk on load where possible.
//! - [`encode`]: pixels to JPEG, PNG, WebP or AVIF, with no metadata.
//! - [`pipeline`]: the steps in order, the limits, the pipeline version.
//! - [`cache`]: renditions by (source hash, spec), least recently used out.
//!
//! [`Images`] is the service the HTTP edge asks: it answers from the cache,
//! makes one rendition at a time per key however many ask (coalescing),
//! runs the work on the [`WorkPool`] (never on a serving thread), bounds
//! how many new renditions of one source are made per minute, and counts
//! what it does for `makiatto health`.

pub mod cache;
pub mod decode;
pub mod encode;
pub mod geometry;
pub mod params;
pub mod pipeline;
pub mod probe;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use makiatto_events::Blake3Hash;
use makiatto_projections::config::Settings;
use makiatto_protocol::health::ImagesReport;
use tokio::sync::watch;

use crate::work_pool::WorkPool;
use cache::{Entry, Key, Lru, Rendition};
use params::Spec;
use pipeline::{Limits, Refused};

/// What a request for a rendition gets.
#[derive(Debug, Clone)]
pub enum Outcome {
    Made(Arc<Rendition>),
    /// Serve the file as it is (not a still raster image, or one our
    /// decoders refuse).
    Unchanged,
    /// 422: the source is over a limit.
    TooLarge(Arc<str>),
    /// 503: the pool's queue is full.
    Busy,
    /// 503: not made within `images.timeout_ms`.
    TimedOut,
    /// 429: too many new renditions of this source this minute; try
    /// again after this many seconds.
    Limited(u64),
}

/// The settings the service follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    pub limits: Limits,
    pub timeout: Duration,
    pub renditions_per_minute: u32,
    pub cache_bytes: u64,
    pub queue: usize,
}

impl Config {
    pub fn from_settings(s: &Settings) -> Config {
        Config {
            limits: Limits {
                max_pixels: u64::from(s.images_max_megapixels()) * 1_000_000,
                max_output: s.images_max_output(),
                max_decode_bytes: u64::from(s.images_max_decode_mb()) << 20,
            },
            timeout: Duration::from_millis(u64::from(s.images_timeout_ms())),
            renditions_per_minute: s.images_renditions_per_minute(),
            cache_bytes: u64::from(s.images_cache_mb()) << 20,
            queue: s.work_queue() as usize,
        }
    }
}

/// The ETag of a rendition: strong, the same on every node running the
/// same pipeline version, and different for a different one.
pub fn etag(source: &Blake3Hash, spec: &Spec) -> String {
    let name = format!(
        "makiatto image pipeline {}\0{}\0{spec}",
        pipeline::PIPELINE_VERSION,
        source.to_hex()
    );
    let hash = blake3::hash(name.as_bytes());
    format!("\"i{}\"", &hash.to_hex()[..32])
}

#[derive(Default)]
struct Counters {
    made: AtomicU64,
    hits: AtomicU64,
    coalesced: AtomicU64,
    unchanged: AtomicU64,
    too_large: AtomicU64,
    busy: AtomicU64,
    timed_out: AtomicU64,
    limited: AtomicU64,
}

/// The image service of one node.
pub struct Images {
    pool: Arc<WorkPool>,
    config: ArcSwap<Config>,
    cache: Mutex<Lru>,
    /// Renditions being made: each request for one of these waits on it.
    inflight: Mutex<HashMap<Key, watch::Receiver<Option<Outcome>>>>,
    rate: Mutex<RateLimit>,
    counters: Counters,
}

impl Images {
    pub fn new(pool: Arc<WorkPool>, config: Config) -> Images {
        pool.set_limit(config.queue);
        Images {
            pool,
            cache: Mutex::new(Lru::new(config.cache_bytes)),
            config: ArcSwap::from_pointee(config),
            inflight: Mutex::new(HashMap::new()),
            rate: Mutex::new(RateLimit::default()),
            counters: Counters::default(),
        }
    }

    /// Follows a change of the cluster's settings.
    pub fn configure(&self, config: Config) {
        if **self.config.load() == config {
            return;
        }
        self.pool.set_limit(config.queue);
        if let Ok(mut c) = self.cache.lock() {
            c.set_capacity(config.cache_bytes);
        }
        self.config.store(Arc::new(config));
    }

    /// Largest width or height asked for (`images.max_output`).
    pub fn max_output(&self) -> u32 {
        self.config.load().limits.max_output
    }

    /// The rendition `spec` of the blob `source` (stored at `path()`,
    /// asked only on a miss): from the cache, from a request already
    /// making it, or made now on the pool. (The edge calls
    /// [`Images::get_from`], which also says whether it came from the
    /// cache.)
    #[cfg(test)]
    pub async fn get(
        self: &Arc<Self>,
        source: Blake3Hash,
        path: impl FnOnce() -> PathBuf,
        spec: Spec,
    ) -> Outcome {
        self.get_from(source, path, spec).await.0
    }

    /// As [`Images::get`], and whether the answer came from the cache
    /// (telemetry's `cdn.cache.hit`).
    pub async fn get_from(
        self: &Arc<Self>,
        source: Blake3Hash,
        path: impl FnOnce() -> PathBuf,
        spec: Spec,
    ) -> (Outcome, bool) {
        let key = (source, spec);
        let cached = self.cache.lock().ok().and_then(|mut c| c.get(&key));
        match cached {
            Some(Entry::Made(r)) => {
                self.counters.hits.fetch_add(1, Ordering::Relaxed);
                return (Outcome::Made(r), true);
            }
            Some(Entry::Unchanged) => return (Outcome::Unchanged, true),
            None => {}
        }
        (self.make(key, path).await, false)
    }

    /// A rendition not in the cache: waited for, or made now.
    async fn make(self: &Arc<Self>, key: Key, path: impl FnOnce() -> PathBuf) -> Outcome {
        let source = key.0;
        let config = **self.config.load();
        let mut waiting = {
            let Ok(mut inflight) = self.inflight.lock() else {
                return Outcome::Busy;
            };
            if let Some(rx) = inflight.get(&key) {
                self.counters.coalesced.fetch_add(1, Ordering::Relaxed);
                rx.clone()
            } else {
                let allowed = self.rate.lock().map_or(Ok(()), |mut r| {
                    r.take(source, config.renditions_per_minute, Instant::now())
                });
                if let Err(after) = allowed {
                    self.counters.limited.fetch_add(1, Ordering::Relaxed);
                    return Outcome::Limited(after);
                }
                let (tx, rx) = watch::channel(None);
                if let Err(busy) = self.start(key, path(), config, tx) {
                    self.counters.busy.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(error = %busy, "image request refused");
                    return Outcome::Busy;
                }
                inflight.insert(key, rx.clone());
                rx
            }
        };
        let done = tokio::time::timeout(config.timeout, waiting.wait_for(Option::is_some)).await;
        let outcome = match done {
            Ok(Ok(outcome)) => outcome.clone().unwrap_or(Outcome::Busy),
            // The job was lost (its thread panicked): serve the file.
            Ok(Err(_)) => Outcome::Unchanged,
            Err(_) => Outcome::TimedOut,
        };
        // Counted per request answered so (the job that passed its
        // deadline may end after its waiters gave up, or before).
        if matches!(outcome, Outcome::TimedOut) {
            self.counters.timed_out.fetch_add(1, Ordering::Relaxed);
        }
        outcome
    }

    /// Queues the making of `key`; its outcome is cached and sent to the
    /// requests waiting on `tx`, even if the first of them has gone.
    fn start(
        self: &Arc<Self>,
        key: Key,
        path: PathBuf,
        config: Config,
        tx: watch::Sender<Option<Outcome>>,
    ) -> Result<(), crate::work_pool::Busy> {
        // The queue's wait counts against the deadline.
        let deadline = Instant::now() + config.timeout;
        let spec = key.1;
        let made = self.pool.submit(move || {
            let bytes = std::fs::read(&path)
                .map_err(|e| Refused::Failed(format!("cannot read {}: {e}", path.display())))?;
            pipeline::render(&bytes, &spec, &config.limits, deadline)
        })?;
        let this = self.clone();
        tokio::spawn(async move {
            let outcome = match made.await {
                Ok(result) => this.settle(key, result),
                Err(_) => {
                    tracing::error!(source = %key.0, spec = %key.1, "an image job was lost (a panic in a decoder?); the file is served unchanged");
                    Outcome::Unchanged
                }
            };
            if let Ok(mut inflight) = this.inflight.lock() {
                inflight.remove(&key);
            }
            let _ = tx.send(Some(outcome));
        });
        Ok(())
    }

    /// Records a job's result: cached when it will not change on its own.
    fn settle(&self, key: Key, result: Result<Vec<u8>, Refused>) -> Outcome {
        let c = &self.counters;
        let (outcome, keep) = match result {
            Ok(bytes) => {
                c.made.fetch_add(1, Ordering::Relaxed);
                let r = Arc::new(Rendition {
                    bytes: Bytes::from(bytes),
                    format: key.1.format,
                    etag: Bytes::from(etag(&key.0, &key.1)),
                });
                (Outcome::Made(r.clone()), Some(Entry::Made(r)))
            }
            Err(Refused::NotRaster(why)) => {
                c.unchanged.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(source = %key.0, why, "served unchanged");
                (Outcome::Unchanged, Some(Entry::Unchanged))
            }
            Err(Refused::Failed(why)) => {
                c.unchanged.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(source = %key.0, spec = %key.1, why, "an image could not be processed; served unchanged");
                (Outcome::Unchanged, None)
            }
            // Limits are settings, which may change: not remembered.
            Err(Refused::TooLarge(why)) => {
                c.too_large.fetch_add(1, Ordering::Relaxed);
                (Outcome::TooLarge(why.into()), None)
            }
            // Counted by the requests it answers (`get`).
            Err(Refused::TimedOut) => (Outcome::TimedOut, None),
        };
        if let Some(entry) = keep
            && let Ok(mut cache) = self.cache.lock()
        {
            cache.put(key, entry);
        }
        outcome
    }

    /// For `makiatto health`.
    pub fn report(&self) -> ImagesReport {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let c = &self.counters;
        let (cache_bytes, cache_limit, entries, evictions) =
            self.cache.lock().map_or((0, 0, 0, 0), |c| {
                (c.bytes(), c.capacity(), c.len(), c.evictions)
            });
        let pool = self.pool.counts();
        ImagesReport {
            made: n(&c.made),
            cache_hits: n(&c.hits),
            coalesced: n(&c.coalesced),
            unchanged: n(&c.unchanged),
            too_large: n(&c.too_large),
            busy: n(&c.busy),
            timed_out: n(&c.timed_out),
            rate_limited: n(&c.limited),
            cache_bytes,
            cache_limit,
            cache_entries: entries as u64,
            evictions,
            pool_threads: pool.threads as u64,
            pool_waiting: pool.waiting as u64,
            pool_queue_limit: pool.queue_limit as u64,
        }
    }
}

/// `makiatto image FILE QUERY`: one rendition of a file, made on this
/// thread with the default limits, written to standard output; or, with
/// `repeat`, made that many times and the time per image printed (CPU
/// time of this thread and wall time, in milliseconds).
pub fn render_file(
    file: &std::path::Path,
    query: &str,
    accept: Option<&str>,
    repeat: Option<u32>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let limits = Limits::default();
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let kind = probe::probe(&bytes)
        .map_err(|e| anyhow::anyhow!("{} is not processed: {e}", file.display()))?
        .kind;
    let spec = params::Params::parse(query, limits.max_output)?
        .context("the query has none of w, h, fit, fmt, q, dpr")?
        .resolve(kind, accept, limits.max_output)?;
    let make = || -> anyhow::Result<Vec<u8>> {
        let deadline = Instant::now() + Duration::from_secs(600);
        Ok(pipeline::render(&bytes, &spec, &limits, deadline)?)
    };
    let Some(n) = repeat else {
        use std::io::Write;
        std::io::stdout().write_all(&make()?)?;
        return Ok(());
    };
    let n = n.max(1);
    let (cpu0, wall0) = (thread_cpu(), Instant::now());
    let mut len = 0;
    for _ in 0..n {
        len = make()?.len();
    }
    let cpu = (thread_cpu() - cpu0).as_secs_f64() * 1000.0 / f64::from(n);
    let wall = wall0.elapsed().as_secs_f64() * 1000.0 / f64::from(n);
    println!(
        "{{\"spec\":\"{spec}\",\"images\":{n},\"bytes\":{len},\"cpu_ms\":{cpu:.3},\"wall_ms\":{wall:.3}}}"
    );
    Ok(())
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// New renditions per source per minute, as a token bucket: a burst of a
/// minute's worth, refilled evenly. Cache hits and coalesced requests take
/// nothing, so only a flood of distinct renditions of one image is slowed.
#[derive(Default)]
struct RateLimit {
    buckets: HashMap<Blake3Hash, (f64, Instant)>,
}

/// Buckets kept before full ones are forgotten.
const MAX_BUCKETS: usize = 10_000;

impl RateLimit {
    /// Takes a token for `source`, or says in how many seconds one comes.
    fn take(&mut self, source: Blake3Hash, per_minute: u32, now: Instant) -> Result<(), u64> {
        let capacity = f64::from(per_minute.max(1));
        let per_second = capacity / 60.0;
        if self.buckets.len() >= MAX_BUCKETS {
            self.buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * per_second < capacity
            });
        }
        let (tokens, at) = self.buckets.entry(source).or_insert((capacity, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * per_second).min(capacity);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / per_second).ceil().max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(w: u32) -> Spec {
        Spec {
            width: Some(w),
            height: None,
            fit: params::Fit::Max,
            format: params::Format::Webp,
            quality: 80,
        }
    }

    #[test]
    fn an_etag_names_the_source_the_spec_and_the_pipeline() {
        let a = Blake3Hash::of(b"a");
        let b = Blake3Hash::of(b"b");
        assert_eq!(etag(&a, &spec(1)), etag(&a, &spec(1)));
        assert_ne!(etag(&a, &spec(1)), etag(&a, &spec(2)));
        assert_ne!(etag(&a, &spec(1)), etag(&b, &spec(1)));
        let e = etag(&a, &spec(1));
        assert!(
            e.starts_with("\"i") && e.ends_with('"') && e.len() == 35,
            "{e}"
        );
    }

    #[test]
    fn a_flood_of_renditions_of_one_source_is_slowed_and_others_are_not() {
        let mut r = RateLimit::default();
        let (a, b) = (Blake3Hash::of(b"a"), Blake3Hash::of(b"b"));
        let t = Instant::now();
        for _ in 0..60 {
            r.take(a, 60, t).unwrap();
        }
        assert_eq!(r.take(a, 60, t), Err(1));
        assert!(r.take(b, 60, t).is_ok());
        assert!(r.take(a, 60, t + Duration::from_secs(1)).is_ok());
        assert_eq!(r.take(a, 6, t + Duration::from_secs(1)), Err(10));
    }

    #[tokio::test]
    async fn concurrent_requests_for_one_rendition_make_it_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("src.png");
        let img = image::RgbImage::from_fn(640, 480, |x, y| image::Rgb([x as u8, y as u8, 7]));
        img.save(&path).unwrap();
        let pool = Arc::new(WorkPool::with_threads(2, 16).unwrap());
        let config = Config::from_settings(&Settings::default());
        let images = Arc::new(Images::new(pool, config));
        let source = Blake3Hash::of(b"src");
        let asks: Vec<_> = (0..8)
            .map(|_| {
                let (images, path) = (images.clone(), path.clone());
                tokio::spawn(async move { images.get(source, || path, spec(100)).await })
            })
            .collect();
        for ask in asks {
            let outcome = ask.await.unwrap();
            assert!(matches!(outcome, Outcome::Made(_)), "{outcome:?}");
        }
        let report = images.report();
        assert_eq!(report.made, 1);
        assert_eq!(report.coalesced, 7);
        assert!(matches!(
            images.get(source, || path.clone(), spec(100)).await,
            Outcome::Made(_)
        ));
        assert_eq!(images.report().cache_hits, 1);
        // Not an image: unchanged, and remembered as such.
        let html = dir.path().join("page.png");
        std::fs::write(&html, "<!doctype html>").unwrap();
        let other = Blake3Hash::of(b"html");
        assert!(matches!(
            images.get(other, || html.clone(), spec(100)).await,
            Outcome::Unchanged
        ));
        std::fs::remove_file(&html).unwrap();
        assert!(matches!(
            images.get(other, || html, spec(100)).await,
            Outcome::Unchanged
        ));
    }
}
