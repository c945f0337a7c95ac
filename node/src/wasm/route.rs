//! Which function answers a path (pure). A component's route is its path
//! without `.wasm`: `api/hello.wasm` answers `/api/hello`, `/api/hello/`
//! and every path below `/api/hello/` (a segment boundary: not
//! `/api/helloworld`); `api/index.wasm` answers `/api/` and below. The
//! longest route wins. Routes take precedence over static files.

use hyper::Method;

/// A method a handler may be called with (the WIT enum's cases).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum HandlerMethod {
    Get,
    Post,
    Put,
    Delete,
    Patch,
    Head,
    Options,
}

impl HandlerMethod {
    pub const ALL: [HandlerMethod; 7] = [
        HandlerMethod::Get,
        HandlerMethod::Post,
        HandlerMethod::Put,
        HandlerMethod::Delete,
        HandlerMethod::Patch,
        HandlerMethod::Head,
        HandlerMethod::Options,
    ];

    /// The method of a request; none for one outside the WIT enum (TRACE,
    /// CONNECT, extensions), which gets 405.
    pub fn of(m: &Method) -> Option<HandlerMethod> {
        Some(match *m {
            Method::GET => HandlerMethod::Get,
            Method::POST => HandlerMethod::Post,
            Method::PUT => HandlerMethod::Put,
            Method::DELETE => HandlerMethod::Delete,
            Method::PATCH => HandlerMethod::Patch,
            Method::HEAD => HandlerMethod::Head,
            Method::OPTIONS => HandlerMethod::Options,
            _ => return None,
        })
    }

    /// A configured name (`GET`, `post`…).
    pub fn parse(name: &str) -> Option<HandlerMethod> {
        HandlerMethod::ALL
            .into_iter()
            .find(|m| m.as_str().eq_ignore_ascii_case(name))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            HandlerMethod::Get => "GET",
            HandlerMethod::Post => "POST",
            HandlerMethod::Put => "PUT",
            HandlerMethod::Delete => "DELETE",
            HandlerMethod::Patch => "PATCH",
            HandlerMethod::Head => "HEAD",
            HandlerMethod::Options => "OPTIONS",
        }
    }
}

/// The route of a component path: `/api/hello` for `api/hello.wasm`,
/// `/api` for `api/index.wasm`, `` (the root) for `index.wasm`.
pub fn route_of(component: &str) -> String {
    let stem = component.strip_suffix(".wasm").unwrap_or(component);
    let stem = match stem.rsplit_once('/') {
        Some((dir, "index")) => dir,
        None if stem == "index" => "",
        _ => stem,
    };
    if stem.is_empty() {
        String::new()
    } else {
        format!("/{stem}")
    }
}

/// Whether `path` (as the visitor sent it, before any decoding) is
/// `route`, `route/` or below it.
pub fn matches(route: &str, path: &str) -> bool {
    match path.strip_prefix(route) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// The value of `Allow` for these methods (every WIT method when the
/// configuration names none).
pub fn allow(methods: &[HandlerMethod]) -> String {
    let all = HandlerMethod::ALL;
    let list = if methods.is_empty() {
        &all[..]
    } else {
        methods
    };
    list.iter()
        .map(|m| m.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_is_the_component_path_without_wasm_on_segment_boundaries() {
        assert_eq!(route_of("api/hello.wasm"), "/api/hello");
        assert_eq!(route_of("api/index.wasm"), "/api");
        assert_eq!(route_of("index.wasm"), "");
        let r = route_of("api/hello.wasm");
        for p in ["/api/hello", "/api/hello/", "/api/hello/x/y"] {
            assert!(matches(&r, p), "{p}");
        }
        for p in ["/api/helloworld", "/api/hell", "/api", "/"] {
            assert!(!matches(&r, p), "{p}");
        }
        let index = route_of("api/index.wasm");
        assert!(matches(&index, "/api/") && matches(&index, "/api/x"));
        assert!(!matches(&index, "/apix"));
        assert!(matches(&route_of("index.wasm"), "/anything"));
    }

    #[test]
    fn methods_outside_the_wit_enum_are_not_handler_methods() {
        assert_eq!(HandlerMethod::of(&Method::TRACE), None);
        assert_eq!(HandlerMethod::of(&Method::CONNECT), None);
        assert_eq!(HandlerMethod::parse("post"), Some(HandlerMethod::Post));
        assert_eq!(HandlerMethod::parse("TRACE"), None);
        assert_eq!(
            allow(&[HandlerMethod::Get, HandlerMethod::Post]),
            "GET, POST"
        );
        assert!(allow(&[]).starts_with("GET, POST, PUT"));
    }
}
