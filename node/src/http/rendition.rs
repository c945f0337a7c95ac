//! The response for a file asked with image parameters: a rendition from
//! the image service (`crate::images`), with the same conditional, range
//! and HEAD handling as a static file, or `None` when the file is to be
//! served unchanged (not a raster image, or one our decoders refuse).

use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Response, StatusCode};
use makiatto_events::manifest::FileEntry;

use super::handler::{Body, Ctx, cache_control, empty, full, text};
use super::request::{self, Ranged};
use super::routes::SiteVersion;
use crate::images::params::{Params, SourceKind};
use crate::images::{self, Outcome};

/// Answers `params` on `entry`; `None`: serve the file as it is.
pub async fn respond(
    ctx: &Ctx,
    site: &SiteVersion,
    entry: &FileEntry,
    params: &Params,
    headers: &HeaderMap,
    head: bool,
) -> Option<Response<Body>> {
    let get = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let kind = SourceKind::of_content_type(&entry.content_type)?;
    let service = &ctx.http.images;
    let spec = match params.resolve(kind, get(header::ACCEPT), service.max_output()) {
        Ok(spec) => spec,
        Err(e) => return Some(text(StatusCode::BAD_REQUEST, e.to_string())),
    };
    let vary = params.varies_by_accept();
    let common = |r: &mut Response<Body>, etag: HeaderValue| {
        // Room for every header, so the map never grows.
        *r.headers_mut() = HeaderMap::with_capacity(10);
        let h = r.headers_mut();
        h.insert(header::ETAG, etag);
        h.insert(header::LAST_MODIFIED, site.last_modified.clone());
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static(cache_control(spec.format.content_type(), StatusCode::OK)),
        );
        if vary {
            h.insert(header::VARY, HeaderValue::from_static("accept"));
        }
    };
    // The ETag names the rendition, so a revalidation needs no pixels
    // (and a plain request takes the one made with the rendition).
    let conditional = [header::IF_NONE_MATCH, header::IF_MODIFIED_SINCE]
        .into_iter()
        .any(|h| headers.contains_key(h));
    if conditional {
        let etag = images::etag(&entry.hash, &spec);
        let fresh = match get(header::IF_NONE_MATCH) {
            Some(inm) => request::none_match(inm, &etag),
            None => get(header::IF_MODIFIED_SINCE)
                .is_some_and(|ims| request::not_modified_since(ims, site.published)),
        };
        if fresh {
            let mut r = Response::new(empty());
            *r.status_mut() = StatusCode::NOT_MODIFIED;
            if let Ok(v) = HeaderValue::from_str(&etag) {
                common(&mut r, v);
            }
            return Some(r);
        }
    }
    let blobs = &ctx.http.blobs;
    // Telemetry: timed by outcome; a rendition not from the cache is a span.
    let render = crate::telemetry::images::begin();
    let (outcome, cached) = service
        .get_from(entry.hash, || blobs.path(&entry.hash), spec)
        .await;
    render.end(&ctx.served, &spec, &outcome, cached);
    let rendition = match outcome {
        Outcome::Made(r) => r,
        Outcome::Unchanged => return None,
        Outcome::TooLarge(why) => {
            return Some(text(StatusCode::UNPROCESSABLE_ENTITY, why.to_string()));
        }
        Outcome::Busy => {
            return Some(retry(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many images are being processed on this node; try again shortly",
                1,
            ));
        }
        Outcome::TimedOut => {
            return Some(retry(
                StatusCode::SERVICE_UNAVAILABLE,
                "processing this image took longer than this cluster's limit (images.timeout_ms)",
                5,
            ));
        }
        Outcome::Limited(after) => {
            return Some(retry(
                StatusCode::TOO_MANY_REQUESTS,
                "too many new sizes of this image were asked for this minute (images.renditions_per_minute)",
                after,
            ));
        }
    };
    let Ok(etag) = HeaderValue::from_maybe_shared(rendition.etag.clone()) else {
        return None;
    };
    let mut r = Response::new(empty());
    common(&mut r, etag.clone());
    let etag = etag.to_str().unwrap_or_default();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(rendition.format.content_type()),
    );
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    let len = rendition.bytes.len() as u64;
    let (start, end) = match request::range(
        get(header::RANGE),
        get(header::IF_RANGE),
        etag,
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
            return Some(e);
        }
    };
    if head {
        r.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
        return Some(r);
    }
    *r.body_mut() = full(rendition.bytes.slice(start as usize..end as usize));
    Some(r)
}

fn retry(status: StatusCode, why: &str, after: u64) -> Response<Body> {
    let mut r = text(status, why);
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(after));
    r
}
