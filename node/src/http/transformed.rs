//! A static file run through its domain's transforms (`crate::wasm`): the
//! transforms whose `files` glob matches, in configuration order, each
//! given the previous one's output. The result is a representation of its
//! own, cached by (input blob, chain, node) — the node context is an
//! input, and transforms are treated as pure functions of (input, node
//! context) — with its own ETag, and served like any (304, Range, HEAD,
//! compressed by Accept-Encoding and cached per coding). Precompressed
//! variants of the untransformed file are never served for it. A chain
//! that fails serves the untransformed file, says so in
//! `x-transform-error` (a request id) and logs it: never a 5xx for a
//! static page.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Response, StatusCode};
use makiatto_events::Blake3Hash;
use makiatto_events::manifest::FileEntry;

use super::handler::{Body, Ctx, empty, full, text};
use super::request::{self, Coding, Ranged};
use super::routes::SiteVersion;
use crate::wasm::DomainWasm;
use crate::wasm::bindings::transform::FileInfo;

/// Files larger than this are served untransformed (a transform holds the
/// whole file in memory, twice).
const MAX_INPUT: u64 = 32 << 20;
/// Memory for transformed representations (emptied when full).
const CACHE_BYTES: usize = 64 << 20;

/// One transformed file, or the note that the chain passed it through.
struct Representation {
    /// None: every transform passed the file through (serve it as is).
    made: Option<Made>,
}

struct Made {
    body: Bytes,
    content_type: HeaderValue,
    headers: Vec<(HeaderName, HeaderValue)>,
    etag: String,
    /// Compressed forms, made on first request for each.
    coded: Mutex<HashMap<Coding, Bytes>>,
}

/// Transformed files by (input, chain, node).
#[derive(Default)]
pub struct Cache {
    map: Mutex<(HashMap<Blake3Hash, Arc<Representation>>, usize)>,
}

impl Cache {
    fn get(&self, key: &Blake3Hash) -> Option<Arc<Representation>> {
        self.map.lock().ok()?.0.get(key).cloned()
    }

    fn put(&self, key: Blake3Hash, r: Arc<Representation>) {
        let size = r.made.as_ref().map_or(64, |m| m.body.len());
        if let Ok(mut m) = self.map.lock() {
            if m.1 + size > CACHE_BYTES {
                *m = Default::default();
            }
            m.1 += size;
            m.0.insert(key, r);
        }
    }
}

/// The response for `entry` (at manifest path `path`) if a transform
/// applies to it; `None` to serve the file as it is.
pub async fn respond(
    ctx: &Ctx,
    site: &SiteVersion,
    wasm: &DomainWasm,
    path: &str,
    entry: &FileEntry,
    headers: &HeaderMap,
    head: bool,
) -> Option<Response<Body>> {
    let chain = wasm.chain(path);
    if chain.is_empty() || entry.size > MAX_INPUT {
        return None;
    }
    let node = ctx.http.wasm.node_name();
    let mut key = blake3::Hasher::new();
    key.update(entry.hash.as_bytes());
    key.update(node.as_bytes());
    for t in &chain {
        let component = site.manifest.components.get(&t.path)?;
        key.update(component.hash.as_bytes());
        key.update(t.fingerprint().as_bytes());
    }
    let key = Blake3Hash::from(*key.finalize().as_bytes());
    let representation = match ctx.http.transformed.get(&key) {
        Some(r) => {
            ctx.served.served_from_memory();
            r
        }
        None => {
            ctx.served.served_from_disk();
            let input = tokio::fs::read(ctx.http.blobs.path(&entry.hash))
                .await
                .ok()?;
            let info = FileInfo {
                path: path.to_owned(),
                mime_type: entry.content_type.clone(),
                size: input.len() as u64,
            };
            let out = ctx
                .http
                .wasm
                .transform(site.deployed(), &chain, info, input, &ctx.served)
                .await;
            let made = match out {
                Ok(made) => made,
                Err(e) => {
                    let id = format!("{:016x}", rand::random::<u64>());
                    tracing::warn!(request_id = %id, domain = %site.domain, %path, error = %e, "a transform failed; the file is served untransformed");
                    return Some(untransformed(ctx, site, entry, headers, head, &id).await);
                }
            };
            let r = Arc::new(Representation {
                made: made.map(|t| Made {
                    content_type: HeaderValue::from_str(&t.mime_type)
                        .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream")),
                    headers: t
                        .headers
                        .into_iter()
                        .filter_map(|(n, v)| {
                            Some((
                                HeaderName::from_bytes(n.as_bytes()).ok()?,
                                HeaderValue::from_str(&v).ok()?,
                            ))
                        })
                        .filter(|(n, _)| allowed(n))
                        .collect(),
                    etag: format!("\"t{}\"", &key.to_hex()[..32]),
                    body: Bytes::from(t.content),
                    coded: Mutex::new(HashMap::new()),
                }),
            });
            ctx.http.transformed.put(key, r.clone());
            r
        }
    };
    let made = representation.made.as_ref()?;
    Some(serve(site, made, headers, head))
}

/// Headers a transform may add (not the representation's own).
fn allowed(name: &HeaderName) -> bool {
    !matches!(
        name.as_str(),
        "content-length"
            | "content-encoding"
            | "content-range"
            | "etag"
            | "last-modified"
            | "transfer-encoding"
            | "connection"
            | "vary"
            | "accept-ranges"
    )
}

/// The untransformed file (no precompressed variant: the chain did not
/// run, so this says so), with the failure's request id.
async fn untransformed(
    ctx: &Ctx,
    site: &SiteVersion,
    entry: &FileEntry,
    headers: &HeaderMap,
    head: bool,
    id: &str,
) -> Response<Body> {
    let mut r = super::handler::serve_file(ctx, site, entry, StatusCode::OK, headers, head).await;
    if let Ok(v) = HeaderValue::from_str(id) {
        r.headers_mut().insert("x-transform-error", v);
    }
    r
}

fn serve(site: &SiteVersion, made: &Made, headers: &HeaderMap, head: bool) -> Response<Body> {
    let get = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let content_type = made.content_type.to_str().unwrap_or("");
    let compressible = super::variants::compressible(content_type) && made.body.len() >= 256;
    let coding = compressible
        .then(|| request::choose_coding(get(header::ACCEPT_ENCODING), &Coding::ALL))
        .flatten();
    let body = match coding {
        None => made.body.clone(),
        Some(c) => {
            let cached = made.coded.lock().ok().and_then(|m| m.get(&c).cloned());
            match cached {
                Some(b) => b,
                None => match super::variants::compress_dynamic(c, &made.body) {
                    Ok(b) => {
                        let b = Bytes::from(b);
                        if let Ok(mut m) = made.coded.lock() {
                            m.insert(c, b.clone());
                        }
                        b
                    }
                    Err(_) => made.body.clone(),
                },
            }
        }
    };
    let coding = coding.filter(|_| body.len() != made.body.len() || body != made.body);
    let etag = match coding {
        Some(c) => format!("{}-{}\"", made.etag.trim_end_matches('"'), c.token()),
        None => made.etag.clone(),
    };
    let mut r = Response::new(empty());
    let h = r.headers_mut();
    for (n, v) in &made.headers {
        h.append(n.clone(), v.clone());
    }
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::LAST_MODIFIED, site.last_modified.clone());
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(super::handler::cache_control(content_type, StatusCode::OK)),
    );
    if compressible {
        h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    let fresh = match get(header::IF_NONE_MATCH) {
        Some(inm) => request::none_match(inm, &etag),
        None => get(header::IF_MODIFIED_SINCE)
            .is_some_and(|ims| request::not_modified_since(ims, site.published)),
    };
    if fresh {
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        return r;
    }
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, made.content_type.clone());
    if let Some(c) = coding
        && let Ok(v) = HeaderValue::from_str(c.token())
    {
        h.insert(header::CONTENT_ENCODING, v);
    }
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    let len = body.len() as u64;
    let (start, end) = match request::range(
        get(header::RANGE),
        get(header::IF_RANGE),
        &etag,
        site.published,
        len,
    ) {
        Ranged::Full => (0, len),
        Ranged::Part(a, b) => {
            *r.status_mut() = StatusCode::PARTIAL_CONTENT;
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {a}-{b}/{len}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            (a, b + 1)
        }
        Ranged::Unsatisfiable => {
            let mut e = text(StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable");
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                e.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return e;
        }
    };
    if head {
        r.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
        return r;
    }
    *r.body_mut() = full(body.slice(start as usize..end as usize));
    r
}
