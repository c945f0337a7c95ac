//! One HTTP request against the routes snapshot: host routing, the path to
//! a manifest entry, conditional and range requests, the encoding, and the
//! body from the blob store (small files from memory, large ones streamed).

use std::borrow::Cow;
use std::collections::HashMap;
use std::io;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Either, Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use makiatto_events::Blake3Hash;
use makiatto_events::manifest::FileEntry;
use nix::errno::Errno;

use super::request::{self, BadPath, Coding, Ranged, Target};
use super::routes::{Route, Routes, SiteVersion};
use crate::images::params::Params;

/// The body of every response: bytes in memory (most answers, without a
/// box of their own), or a stream read from a large file.
pub type Body = Either<Full<Bytes>, BoxBody<Bytes, io::Error>>;

pub(super) fn full(bytes: impl Into<Bytes>) -> Body {
    Either::Left(Full::new(bytes.into()))
}

/// Files up to this size are kept in memory once read.
const CACHED_MAX: u64 = 256 << 10;
/// The most memory the small-file cache takes.
const CACHE_BYTES: u64 = 64 << 20;
/// Read size when streaming large files.
const CHUNK: usize = 256 << 10;

/// Small representations by (source hash, coding), filled until full and
/// emptied when the routes change.
#[derive(Default)]
pub struct SmallCache {
    /// The representations and their total size.
    map: RwLock<(foldhash::HashMap<CacheKey, Bytes>, u64)>,
}

/// A representation: source blob and coding.
type CacheKey = (Blake3Hash, Option<Coding>);

impl SmallCache {
    fn get(&self, key: &CacheKey) -> Option<Bytes> {
        self.map.read().ok()?.0.get(key).cloned()
    }

    fn put(&self, key: CacheKey, bytes: Bytes) {
        if let Ok(mut m) = self.map.write()
            && m.1 + bytes.len() as u64 <= CACHE_BYTES
        {
            m.1 += bytes.len() as u64;
            m.0.insert(key, bytes);
            crate::telemetry::metrics::SMALL_CACHE_BYTES
                .store(m.1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    pub fn clear(&self) {
        if let Ok(mut m) = self.map.write() {
            *m = Default::default();
            crate::telemetry::metrics::SMALL_CACHE_BYTES
                .store(0, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// What a request is served from.
pub struct Ctx {
    /// The node's HTTP service: blob store, variants, cache, certificates.
    pub http: Arc<super::Http>,
    /// The routes as this request found them (one snapshot throughout).
    pub routes: Arc<Routes>,
    /// Over TLS, with the SNI name the client sent.
    pub tls: Option<Option<Arc<str>>>,
    /// Open ACME HTTP-01 challenges: token → key authorization.
    pub challenges: Arc<HashMap<String, String>>,
    /// Telemetry: whether the representation came from memory
    /// (`cdn.cache.hit`).
    pub served: crate::telemetry::http::Served,
}

/// Where the CA looks for HTTP-01 key authorizations.
const ACME_PREFIX: &str = "/.well-known/acme-challenge/";

pub(super) fn text(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    let body = message.into() + "\n";
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

pub(super) fn empty() -> Body {
    full(Bytes::new())
}

/// The request's host: the URI authority (HTTP/2, absolute form) or the
/// Host header, lowercased, without port or final dot.
pub(super) fn host_of<B>(req: &Request<B>) -> Option<Cow<'_, str>> {
    let raw = match req.uri().authority() {
        Some(a) => a.host(),
        None => header_host(req.headers().get(header::HOST)?.to_str().ok()?)?,
    };
    let host = raw.trim_end_matches('.');
    if host.is_empty() {
        None
    } else if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Some(Cow::Owned(host.to_ascii_lowercase()))
    } else {
        Some(Cow::Borrowed(host))
    }
}

/// The host of a `Host` header, `uri-host [ ":" port ]` (RFC 9110 §7.2):
/// a bracketed IPv6 address or a name of the characters RFC 3986 allows in
/// one; `None` for anything else (userinfo, a bad port, spaces).
fn header_host(h: &str) -> Option<&str> {
    let (host, rest) = if h.starts_with('[') {
        let end = h.find(']')? + 1;
        h[1..end - 1].parse::<std::net::Ipv6Addr>().ok()?;
        h.split_at(end)
    } else {
        let (host, rest) = h.split_at(h.find(':').unwrap_or(h.len()));
        let allowed = |b: u8| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%".contains(&b);
        if !host.bytes().all(allowed) {
            return None;
        }
        (host, rest)
    };
    match rest.strip_prefix(':') {
        _ if rest.is_empty() => Some(host),
        Some(port) if port.bytes().all(|b| b.is_ascii_digit()) => Some(host),
        _ => None,
    }
}

/// Answers one request.
pub async fn handle<B>(req: Request<B>, ctx: &Ctx) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let head = req.method() == Method::HEAD;
    let static_method = req.method() == Method::GET || head;
    // ACME HTTP-01, for any name the cluster orders (nameserver names too),
    // over plain HTTP only, before any redirect.
    if ctx.tls.is_none()
        && static_method
        && let Some(token) = req.uri().path().strip_prefix(ACME_PREFIX)
    {
        return match ctx.challenges.get(token) {
            Some(value) => {
                let mut r = text(StatusCode::OK, value.clone());
                *r.body_mut() = full(value.clone());
                r
            }
            None => text(StatusCode::NOT_FOUND, "no such ACME challenge is open"),
        };
    }
    let Some(host) = host_of(&req) else {
        return text(StatusCode::BAD_REQUEST, "the request names no valid host");
    };
    if ctx.tls.is_none() && ctx.http.certs.has_issued(&host) && ctx.routes.get(&host).is_some() {
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let location = format!("https://{host}{path}");
        let mut r = text(StatusCode::PERMANENT_REDIRECT, format!("see {location}"));
        if let Ok(v) = HeaderValue::from_str(&location) {
            r.headers_mut().insert(header::LOCATION, v);
        }
        return r;
    }
    if let Some(Some(sni)) = &ctx.tls
        && **sni != *host
        && !ctx.http.certs.covers(sni, &host)
    {
        // A connection made for one name is not reused for another, unless
        // the certificate it presented covers both.
        return text(
            StatusCode::MISDIRECTED_REQUEST,
            format!("this connection was opened for {sni}, not {host}"),
        );
    }
    let site = match ctx.routes.get(&host) {
        Some(Route::Site(site)) => site.clone(),
        Some(Route::Pending(domain)) => {
            let mut r = text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{domain} has no version deployed on this node yet"),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            return r;
        }
        None => {
            let status = if ctx.tls.is_some() {
                StatusCode::MISDIRECTED_REQUEST
            } else {
                StatusCode::NOT_FOUND
            };
            return text(status, format!("no site named {host} is served here"));
        }
    };
    // A function's route: before the method check (a handler takes any
    // method of the WIT enum it allows) and before static files.
    if let Some(wasm) = ctx.http.wasm.domain_of(&site.domain)
        && let Some(f) = wasm.function(req.uri().path())
    {
        return match request::target(req.uri().path()) {
            Err(BadPath::TooLong) => text(StatusCode::URI_TOO_LONG, "the path is too long"),
            Err(BadPath::Malformed) => text(StatusCode::BAD_REQUEST, "malformed path"),
            Ok(_) => super::function::respond(ctx, &site, f, req).await,
        };
    }
    if !static_method {
        let mut r = if req.method() == Method::OPTIONS {
            let mut r = Response::new(empty());
            *r.status_mut() = StatusCode::NO_CONTENT;
            r
        } else {
            text(
                StatusCode::METHOD_NOT_ALLOWED,
                "only GET and HEAD are served here",
            )
        };
        r.headers_mut().insert(
            header::ALLOW,
            HeaderValue::from_static("GET, HEAD, OPTIONS"),
        );
        return r;
    }
    // Image parameters: a bad value is 400 whatever the file; none of
    // ours (no query, `?v=3`) is a plain static request.
    let params = match req.uri().query() {
        None => None,
        Some(q) => match Params::parse(q, ctx.http.images.max_output()) {
            Ok(p) => p,
            Err(e) => return text(StatusCode::BAD_REQUEST, e.to_string()),
        },
    };
    let path = req.uri().path();
    let key = match request::target(path) {
        Ok(Target::File { key, dir }) => {
            let index = || -> Cow<'_, str> {
                if key.is_empty() {
                    Cow::Borrowed("index.html")
                } else {
                    Cow::Owned(format!("{key}/index.html"))
                }
            };
            if dir {
                Some(index())
            } else if site.manifest.files.contains_key(key.as_ref()) {
                Some(key)
            } else if site.manifest.files.contains_key(index().as_ref()) {
                // A directory named without its slash: send the visitor to
                // the canonical URL, so relative links resolve.
                let mut location = format!("{path}/");
                if let Some(q) = req.uri().query() {
                    location = format!("{location}?{q}");
                }
                let mut r = text(StatusCode::MOVED_PERMANENTLY, format!("see {location}"));
                if let Ok(v) = HeaderValue::from_str(&location) {
                    r.headers_mut().insert(header::LOCATION, v);
                }
                r.headers_mut().insert(
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("public, max-age=3600"),
                );
                return r;
            } else {
                None
            }
        }
        Err(BadPath::TooLong) => return text(StatusCode::URI_TOO_LONG, "the path is too long"),
        Err(BadPath::Malformed) => return text(StatusCode::BAD_REQUEST, "malformed path"),
    };
    match key.and_then(|k| site.manifest.files.get_key_value(k.as_ref())) {
        Some((path, entry)) => {
            // Boxed, as the rendition below: its state stays out of the
            // static path's future, which every request moves and polls.
            if let Some(wasm) = ctx.http.wasm.domain_of(&site.domain)
                && let Some(r) = Box::pin(super::transformed::respond(
                    ctx,
                    &site,
                    &wasm,
                    path,
                    entry,
                    req.headers(),
                    head,
                ))
                .await
            {
                return r;
            }
            // Boxed: its state stays out of the static path's future,
            // which every request moves and polls.
            if let Some(p) = &params
                && let Some(r) = Box::pin(super::rendition::respond(
                    ctx,
                    &site,
                    entry,
                    p,
                    req.headers(),
                    head,
                ))
                .await
            {
                return r;
            }
            serve(ctx, &site, entry, StatusCode::OK, req.headers(), head).await
        }
        None => match site.manifest.files.get("404.html").filter(|_| site.has_404) {
            Some(entry) => {
                serve(
                    ctx,
                    &site,
                    entry,
                    StatusCode::NOT_FOUND,
                    req.headers(),
                    head,
                )
                .await
            }
            None => text(StatusCode::NOT_FOUND, "not found"),
        },
    }
}

pub(super) fn cache_control(content_type: &str, status: StatusCode) -> &'static str {
    if status != StatusCode::OK {
        "public, max-age=60"
    } else if content_type.starts_with("text/html") {
        // Pages change with every publish: revalidate (a cheap 304).
        "public, max-age=0, must-revalidate"
    } else {
        "public, max-age=3600"
    }
}

/// A file of the version as it is (its precompressed variants included).
pub(super) async fn serve_file(
    ctx: &Ctx,
    site: &SiteVersion,
    entry: &FileEntry,
    status: StatusCode,
    headers: &HeaderMap,
    head: bool,
) -> Response<Body> {
    serve(ctx, site, entry, status, headers, head).await
}

async fn serve(
    ctx: &Ctx,
    site: &SiteVersion,
    entry: &FileEntry,
    status: StatusCode,
    headers: &HeaderMap,
    head: bool,
) -> Response<Body> {
    let get = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let prepared = site.variants.get(&entry.hash).map_or(&[][..], |p| &p[..]);
    // The codings prepared, without allocating (at most one of each).
    let mut available = [Coding::Br; Coding::ALL.len()];
    for (slot, (c, _)) in available.iter_mut().zip(prepared) {
        *slot = *c;
    }
    let available = &available[..prepared.len().min(Coding::ALL.len())];
    let coding = request::choose_coding(get(header::ACCEPT_ENCODING), available);
    let len = match coding {
        Some(c) => prepared
            .iter()
            .find(|(vc, _)| *vc == c)
            .map_or(entry.size, |(_, n)| *n),
        None => entry.size,
    };
    let etag = Etag::new(&entry.hash, coding);
    let etag = etag.as_str();
    let last_modified = site.published;

    let mut r = Response::new(empty());
    // Room for every header below, so the map never grows.
    *r.headers_mut() = HeaderMap::with_capacity(10);
    let h = r.headers_mut();
    let put = |h: &mut HeaderMap, name, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            h.insert(name, v);
        }
    };
    put(h, header::ETAG, etag);
    h.insert(header::LAST_MODIFIED, site.last_modified.clone());
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(cache_control(&entry.content_type, status)),
    );
    if !available.is_empty() {
        h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );

    if status == StatusCode::OK {
        let fresh = match get(header::IF_NONE_MATCH) {
            Some(inm) => request::none_match(inm, etag),
            None => get(header::IF_MODIFIED_SINCE)
                .is_some_and(|ims| request::not_modified_since(ims, last_modified)),
        };
        if fresh {
            *r.status_mut() = StatusCode::NOT_MODIFIED;
            return r;
        }
    }
    // Every valid content type of the version is there (made once).
    if let Some(v) = site.content_types.get(&entry.content_type) {
        r.headers_mut().insert(header::CONTENT_TYPE, v.clone());
    }
    if let Some(c) = coding {
        put(r.headers_mut(), header::CONTENT_ENCODING, c.token());
    }
    let (start, end) = if status == StatusCode::OK {
        r.headers_mut()
            .insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        match request::range(
            get(header::RANGE),
            get(header::IF_RANGE),
            etag,
            last_modified,
            len,
        ) {
            Ranged::Full => (0, len),
            Ranged::Part(a, b) => {
                *r.status_mut() = StatusCode::PARTIAL_CONTENT;
                put(
                    r.headers_mut(),
                    header::CONTENT_RANGE,
                    &format!("bytes {a}-{b}/{len}"),
                );
                (a, b + 1)
            }
            Ranged::Unsatisfiable => {
                let mut e = text(StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable");
                put(
                    e.headers_mut(),
                    header::CONTENT_RANGE,
                    &format!("bytes */{len}"),
                );
                return e;
            }
        }
    } else {
        *r.status_mut() = status;
        (0, len)
    };
    if head {
        r.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
        return r;
    }
    // Only a file that is read needs its path (hex and allocations).
    let path = || match coding {
        Some(c) => ctx.http.variants.path(&entry.hash, c),
        None => ctx.http.blobs.path(&entry.hash),
    };
    let body = if len <= CACHED_MAX {
        let key = (entry.hash, coding);
        let bytes = match ctx.http.cache.get(&key) {
            Some(b) => {
                ctx.served.served_from_memory();
                b
            }
            None => {
                ctx.served.served_from_disk();
                let path = path();
                // Boxed, as the open below: a request's task (hyper spawns
                // one per HTTP/2 stream) then holds a pointer, not the
                // disk's future, which kept the task above the size glibc
                // serves from its per-thread cache (`malloc_consolidate`).
                match Box::pin(tokio::fs::read(&path)).await {
                    Ok(b) if b.len() as u64 == len => {
                        let b = Bytes::from(b);
                        ctx.http.cache.put(key, b.clone());
                        b
                    }
                    _ => return unavailable(&path),
                }
            }
        };
        full(bytes.slice(start as usize..end as usize))
    } else {
        let path = path();
        let opened = Box::pin(tokio::task::spawn_blocking({
            let path = path.clone();
            move || std::fs::File::open(path)
        }))
        .await;
        let Ok(Ok(file)) = opened else {
            return unavailable(&path);
        };
        ctx.served.served_from_disk();
        r.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
        Either::Right(BodyExt::boxed(StreamBody::new(
            chunks(file, start, end - start).map(|chunk| chunk.map(Frame::data)),
        )))
    };
    // An in-memory body's length is exact: hyper writes Content-Length
    // from it.
    *r.body_mut() = body;
    r
}

/// The ETag of a representation: the first 128 bits of the blob's blake3
/// in hex, plus the coding of a variant; strong, the same on every node.
/// Made on the stack: it is compared, then copied once into its header.
struct Etag {
    bytes: [u8; Etag::MAX],
    len: usize,
}

impl Etag {
    /// `"` + 32 hex digits + `-` + the longest coding token + `"`.
    const MAX: usize = 1 + 32 + 1 + 4 + 1;

    fn new(hash: &Blake3Hash, coding: Option<Coding>) -> Etag {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut tag = Etag {
            bytes: [0; Etag::MAX],
            len: 0,
        };
        let mut push = |b: u8| {
            tag.bytes[tag.len] = b;
            tag.len += 1;
        };
        push(b'"');
        for b in &hash.as_bytes()[..16] {
            push(HEX[usize::from(b >> 4)]);
            push(HEX[usize::from(b & 15)]);
        }
        if let Some(c) = coding {
            push(b'-');
            c.token().bytes().for_each(&mut push);
        }
        push(b'"');
        tag
    }

    fn as_str(&self) -> &str {
        // Only ASCII was written.
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or_default()
    }
}

/// The `len` bytes of `file` from `offset`, in pieces of at most `CHUNK`,
/// each read straight into the buffer it is sent from.
///
/// A piece whose pages are in the page cache (the usual case for a file a
/// CDN serves often) is read on the serving thread itself: a copy from the
/// cache, never a wait for the disk. Only what is not cached goes through
/// the blocking pool: a hop per piece there cost about 9% of the 10 MiB
/// benchmark's samples, and its context switches more. See [`Cached`].
fn chunks(
    file: std::fs::File,
    offset: u64,
    len: u64,
) -> impl futures_util::Stream<Item = io::Result<Bytes>> + Send {
    let file = Arc::new(file);
    let probe = Cached::Nowait;
    futures_util::stream::try_unfold(
        (file, probe, offset, len),
        |(file, mut probe, at, left)| async move {
            if left == 0 {
                return Ok(None);
            }
            let want = left.min(CHUNK as u64) as usize;
            let mut buf = ChunkPool::take();
            probe.read(&file, at, want, &mut buf);
            if buf.len() < want {
                let blocking = Arc::clone(&file);
                buf = tokio::task::spawn_blocking(move || {
                    read_into(&blocking, at, want, &mut buf, 0)?;
                    if buf.len() < want {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                    Ok::<_, io::Error>(buf)
                })
                .await
                .map_err(io::Error::other)??;
            }
            Ok(Some((
                Bytes::from_owner(Pooled(buf)),
                (file, probe, at + want as u64, left - want as u64),
            )))
        },
    )
}

/// How a stream reads what the page cache holds without blocking.
///
/// `preadv2(RWF_NOWAIT)` copies from the cache or says `EAGAIN`. Some file
/// systems refuse the flag (`EOPNOTSUPP`: overlayfs, which container
/// runtimes and our test hosts put under `/var`); for those the file is
/// mapped once, never touched through the mapping, and `mincore` says
/// whether a piece's pages are cached before a plain `pread` copies them.
enum Cached {
    Nowait,
    Resident(memmap2::Mmap),
    /// Neither works: every piece goes to the blocking pool.
    Pool,
}

impl Cached {
    /// Appends to `buf` what can be read of `want` bytes at `at` without
    /// waiting for the disk; less than `want` (maybe nothing) when some of
    /// it is not cached, or on an error (which the blocking read reports).
    fn read(&mut self, file: &std::fs::File, at: u64, want: usize, buf: &mut Vec<u8>) {
        if let Cached::Nowait = self {
            match read_into(file, at, want, buf, libc::RWF_NOWAIT) {
                Err(Errno::EOPNOTSUPP) if buf.is_empty() => {
                    // SAFETY: the mapping is never read or written through,
                    // only passed to `mincore`, so a file changed or cut
                    // short underneath cannot fault or race with us.
                    *self = match unsafe { memmap2::Mmap::map(file) } {
                        Ok(map) => Cached::Resident(map),
                        Err(_) => Cached::Pool,
                    };
                }
                _ => return,
            }
        }
        if let Cached::Resident(map) = self
            && resident(map, at, want)
        {
            let _ = read_into(file, at, want, buf, 0);
        }
    }
}

/// Are the pages of `want` bytes at `at` of the mapped file all in the
/// page cache?
fn resident(map: &memmap2::Mmap, at: u64, want: usize) -> bool {
    let page = page_size();
    let Ok(at) = usize::try_from(at) else {
        return false;
    };
    let Some(end) = at.checked_add(want).filter(|&e| e <= map.len()) else {
        return false;
    };
    let first = at / page * page;
    let pages = (end - first).div_ceil(page);
    if pages == 0 {
        return true;
    }
    let mut vec = vec![0u8; pages];
    // SAFETY: `first` is page-aligned inside the mapping (its base is
    // page-aligned and `first < end <= len`), the range ends within the
    // mapping's last page, and `vec` has one byte per page of it.
    let rc = unsafe {
        libc::mincore(
            map.as_ptr().add(first).cast_mut().cast(),
            end - first,
            vec.as_mut_ptr(),
        )
    };
    rc == 0 && vec.iter().all(|v| v & 1 == 1)
}

fn page_size() -> usize {
    static PAGE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    // SAFETY: sysconf has no preconditions.
    *PAGE.get_or_init(|| {
        usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096)
    })
}

/// Read buffers of large files, reused once the bytes were sent: a fresh
/// `CHUNK` for every piece costs the allocator and the kernel (page faults
/// on memory just handed back) more than the copy out of the page cache.
struct ChunkPool;

/// At most this many idle buffers are kept (16 MiB).
const POOL_MAX: usize = 64;
static POOL: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());

impl ChunkPool {
    /// An empty buffer with room for `CHUNK` bytes.
    fn take() -> Vec<u8> {
        POOL.lock()
            .ok()
            .and_then(|mut p| p.pop())
            .unwrap_or_else(|| Vec::with_capacity(CHUNK))
    }

    fn give(mut buf: Vec<u8>) {
        if buf.capacity() != CHUNK {
            return;
        }
        buf.clear();
        if let Ok(mut p) = POOL.lock()
            && p.len() < POOL_MAX
        {
            p.push(buf);
        }
    }
}

/// A chunk on its way out; its buffer goes back to the pool when the bytes
/// are dropped (written to the connection, or the connection gone).
struct Pooled(Vec<u8>);

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        ChunkPool::give(std::mem::take(&mut self.0));
    }
}

/// Appends to `buf` (into its spare capacity, nothing zeroed first) what
/// `preadv2` with `flags` reads of `want` bytes at `at`; stops at end of
/// file (`Ok`), or an error: with `RWF_NOWAIT`, `EAGAIN` (pages not cached)
/// or `EOPNOTSUPP` (the file system refuses the flag); or any other.
/// An interrupted read is retried.
fn read_into(
    file: &std::fs::File,
    at: u64,
    want: usize,
    buf: &mut Vec<u8>,
    flags: libc::c_int,
) -> Result<(), Errno> {
    use std::os::fd::AsRawFd;
    while buf.len() < want {
        let done = buf.len();
        let spare = &mut buf.spare_capacity_mut()[..want - done];
        let iov = libc::iovec {
            iov_base: spare.as_mut_ptr().cast(),
            iov_len: spare.len(),
        };
        let offset = libc::off_t::try_from(at + done as u64).map_err(|_| Errno::EOVERFLOW)?;
        // SAFETY: `iov` points into `buf`'s spare capacity, which is valid
        // for writes of `iov_len` bytes and is not otherwise borrowed; the
        // file descriptor is open for as long as `file` is borrowed.
        let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, offset, flags) };
        let Ok(n) = usize::try_from(n) else {
            match Errno::last() {
                Errno::EINTR => continue,
                e => return Err(e),
            }
        };
        if n == 0 {
            return Ok(());
        }
        // SAFETY: the kernel initialised the first `n` bytes past `done`,
        // and `n` is at most `want - done`, within the capacity.
        unsafe { buf.set_len(done + n) };
    }
    Ok(())
}

fn unavailable(path: &std::path::Path) -> Response<Body> {
    tracing::error!(path = %path.display(), "a file of the deployed version cannot be read");
    text(
        StatusCode::SERVICE_UNAVAILABLE,
        "this file cannot be read on this node right now",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_etag_is_the_first_128_bits_of_the_hash_with_the_coding() {
        let hash = Blake3Hash::of(b"index");
        let hex = hash.to_hex();
        assert_eq!(
            Etag::new(&hash, None).as_str(),
            format!("\"{}\"", &hex[..32])
        );
        for c in Coding::ALL {
            assert_eq!(
                Etag::new(&hash, Some(c)).as_str(),
                format!("\"{}-{}\"", &hex[..32], c.token())
            );
        }
    }

    #[test]
    fn a_host_header_gives_its_host_or_nothing() {
        for (header, host) in [
            ("example.test", Some("example.test")),
            ("example.test:8443", Some("example.test")),
            ("example.test:", Some("example.test")),
            ("[2001:db8::1]:443", Some("[2001:db8::1]")),
            ("[2001:db8::1]", Some("[2001:db8::1]")),
            ("203.0.113.1:80", Some("203.0.113.1")),
            ("user@example.test", None),
            ("example.test:80x", None),
            ("example.test:80:80", None),
            ("exa mple.test", None),
            ("[not-v6]:80", None),
            ("[2001:db8::1", None),
            ("[]", None),
            ("a/b", None),
        ] {
            assert_eq!(header_host(header), host, "{header}");
        }
        let req = |h: &str| Request::get("/").header(header::HOST, h).body(()).unwrap();
        assert_eq!(
            host_of(&req("Example.TEST.:80")).as_deref(),
            Some("example.test")
        );
        assert!(matches!(
            host_of(&req("example.test")),
            Some(Cow::Borrowed(_))
        ));
        assert_eq!(host_of(&req(".")), None);
        assert_eq!(host_of(&req(":80")), None);
        let absolute = Request::get("https://Example.test./x").body(()).unwrap();
        assert_eq!(host_of(&absolute).as_deref(), Some("example.test"));
    }

    #[tokio::test]
    async fn a_large_file_streams_whole_in_chunks_from_an_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        let bytes: Vec<u8> = (0..2 * CHUNK + 5).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let got: Vec<Bytes> = chunks(file, 3, bytes.len() as u64 - 3)
            .map(|c| c.unwrap())
            .collect()
            .await;
        assert_eq!(got.len(), 3);
        assert_eq!(got.concat(), bytes[3..]);
        // A file shorter than promised is an error, not a short body.
        let short = std::fs::File::open(&path).unwrap();
        let last = chunks(short, 0, bytes.len() as u64 + 1)
            .collect::<Vec<_>>()
            .await
            .pop()
            .unwrap();
        assert!(last.is_err());
    }

    #[test]
    fn a_cached_piece_is_read_by_either_probe_and_an_uncached_one_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        let bytes: Vec<u8> = (0..3 * CHUNK).map(|i| (i % 253) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        // Just written: in the page cache.
        // SAFETY: only handed to mincore.
        let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
        assert!(resident(&map, 7, CHUNK));
        assert!(
            !resident(&map, 7, 3 * CHUNK),
            "past the end is not resident"
        );
        for mut probe in [Cached::Nowait, Cached::Resident(map)] {
            let mut buf = Vec::with_capacity(CHUNK);
            probe.read(&file, 7, CHUNK, &mut buf);
            assert_eq!(buf, bytes[7..7 + CHUNK]);
        }
        // Dropped from the cache: the resident probe reads nothing, so the
        // blocking pool gets the piece.
        // SAFETY: plain syscall on an open descriptor.
        let dropped = unsafe {
            use std::os::fd::AsRawFd;
            libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED)
        };
        let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
        if dropped == 0 && !resident(&map, 0, CHUNK) {
            let mut probe = Cached::Resident(map);
            let mut buf = Vec::with_capacity(CHUNK);
            probe.read(&file, 0, CHUNK, &mut buf);
            assert!(buf.is_empty());
        }
    }
}
