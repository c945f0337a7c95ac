//! The dashboard's HTTP/1.1 server: a few GET routes, one response per
//! connection, every request checked before it is answered.
//!
//! - Host must name this server as bound (`127.0.0.1:PORT`,
//!   `localhost:PORT`): a page of another site that a DNS rebinding points
//!   here carries its own name, and is refused (421).
//! - A request another site made (an `Origin` other than ours,
//!   `Sec-Fetch-Site` cross-site or same-site) is refused (403).
//! - The token: given once in the URL (`/?token=…`), it becomes an
//!   HttpOnly, SameSite=Strict cookie and the browser is sent on to `/`
//!   (the token leaves the address bar and the history); every request
//!   after carries the cookie. Compared in constant time.
//! - Every response forbids framing, sniffing, referrers and caching, and
//!   sets a Content-Security-Policy that lets the page run its own script
//!   and style only and fetch only from itself.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::state::Shared;

/// The page, its script and its style; the coastlines of the map.
const PAGE: &str = include_str!("page.html");
const SCRIPT: &str = include_str!("app.js");
const STYLE: &str = include_str!("app.css");
const LAND: &str = include_str!("land-110m.path");

/// A request head larger than this is refused.
const MAX_HEAD: usize = 16 << 10;
/// The name of the cookie holding the token.
const COOKIE: &str = "maki_dashboard";

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The secret a browser must show.
pub struct Token(String);

impl Token {
    /// 32 random bytes, as hex.
    pub fn new() -> Token {
        let bytes: [u8; 32] = rand::random();
        Token(hex::encode(bytes))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `given` is the token, compared in constant time.
    fn matches(&self, given: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), given.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
    }
}

/// The server: where it is bound (what Host must say), its token, the
/// state it serves.
pub struct Server {
    hosts: Vec<String>,
    origins: Vec<String>,
    token: Token,
    shared: Arc<Shared>,
    refresh: Duration,
}

/// A request, as far as the dashboard reads one.
#[derive(Debug, PartialEq)]
struct Request {
    method: String,
    path: String,
    query: Option<String>,
    headers: Vec<(String, String)>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A response to send.
struct Response {
    status: &'static str,
    content_type: &'static str,
    extra: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

impl Response {
    fn text(status: &'static str, body: &str) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            extra: Vec::new(),
            body: body.as_bytes().to_vec(),
        }
    }
}

impl Server {
    pub fn new(bound: SocketAddr, token: Token, shared: Arc<Shared>, refresh: Duration) -> Server {
        let port = bound.port();
        let mut hosts = vec![bound.to_string()];
        if bound.ip().is_loopback() {
            hosts.push(format!("localhost:{port}"));
            hosts.push(format!("127.0.0.1:{port}"));
            hosts.push(format!("[::1]:{port}"));
        }
        hosts.dedup();
        let origins = hosts.iter().map(|h| format!("http://{h}")).collect();
        Server {
            hosts,
            origins,
            token,
            shared,
            refresh,
        }
    }

    /// Serves connections until the process ends.
    pub async fn serve(self, listener: TcpListener) -> anyhow::Result<()> {
        let server = Arc::new(self);
        loop {
            let (stream, _) = listener
                .accept()
                .await
                .context("accepting a connection failed")?;
            let server = server.clone();
            tokio::spawn(async move {
                let _ = server.connection(stream).await;
            });
        }
    }

    async fn connection(&self, mut stream: TcpStream) -> std::io::Result<()> {
        let response =
            match tokio::time::timeout(Duration::from_secs(10), read_head(&mut stream)).await {
                Ok(Ok(Some(request))) => self.answer(&request),
                Ok(Ok(None)) => {
                    Response::text("400 Bad Request", "a request this server does not read")
                }
                _ => return Ok(()),
            };
        stream.write_all(&encode(response)).await?;
        stream.shutdown().await
    }

    /// The answer to one request: the guards, then the route.
    fn answer(&self, r: &Request) -> Response {
        if !r
            .header("host")
            .is_some_and(|h| self.hosts.iter().any(|ours| ours.eq_ignore_ascii_case(h)))
        {
            return Response::text(
                "421 Misdirected Request",
                "this server answers only to the address it listens on",
            );
        }
        if r.header("origin")
            .is_some_and(|o| !self.origins.iter().any(|ours| ours == o))
            || r.header("sec-fetch-site")
                .is_some_and(|s| s == "cross-site" || s == "same-site")
        {
            return Response::text("403 Forbidden", "requests from other sites are refused");
        }
        if r.method != "GET" && r.method != "HEAD" {
            let mut resp = Response::text("405 Method Not Allowed", "the dashboard is read-only");
            resp.extra.push(("Allow", "GET, HEAD".into()));
            return resp;
        }
        // The token, once, in the URL: kept in a cookie, the URL cleaned.
        if let Some(given) = r
            .query
            .as_deref()
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token=")))
        {
            if !self.token.matches(given) {
                return Response::text(
                    "403 Forbidden",
                    "wrong token: use the URL `maki dashboard` printed",
                );
            }
            let mut resp = Response::text("303 See Other", "");
            resp.extra.push(("Location", r.path.clone()));
            resp.extra.push((
                "Set-Cookie",
                format!(
                    "{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/",
                    self.token.as_str()
                ),
            ));
            return resp;
        }
        let authorized = r.header("cookie").is_some_and(|c| {
            c.split(';')
                .filter_map(|kv| kv.trim().split_once('='))
                .any(|(k, v)| k == COOKIE && self.token.matches(v))
        });
        if !authorized {
            return Response::text(
                "401 Unauthorized",
                "open the URL with the token that `maki dashboard` printed",
            );
        }
        match r.path.as_str() {
            "/" => Response {
                status: "200 OK",
                content_type: "text/html; charset=utf-8",
                extra: Vec::new(),
                body: PAGE
                    .replace("{{LAND}}", LAND)
                    .replace("{{REFRESH}}", &self.refresh.as_secs().to_string())
                    .into_bytes(),
            },
            "/app.js" => Response {
                status: "200 OK",
                content_type: "text/javascript; charset=utf-8",
                extra: Vec::new(),
                body: SCRIPT.as_bytes().to_vec(),
            },
            "/app.css" => Response {
                status: "200 OK",
                content_type: "text/css; charset=utf-8",
                extra: Vec::new(),
                body: STYLE.as_bytes().to_vec(),
            },
            "/api/state" => match self.shared.latest() {
                Some(json) => Response {
                    status: "200 OK",
                    content_type: "application/json",
                    extra: Vec::new(),
                    body: json.as_bytes().to_vec(),
                },
                None => Response::text(
                    "503 Service Unavailable",
                    "reading the cluster; ask again in a moment",
                ),
            },
            _ => Response::text("404 Not Found", "no such page"),
        }
    }
}

/// Reads a request head (up to the blank line); none when it is not one.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<Request>> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 2048];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > MAX_HEAD {
            return Ok(None);
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(parse(&head))
}

/// A request head, parsed.
fn parse(head: &[u8]) -> Option<Request> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_owned();
    let target = first.next()?;
    if !first.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
        None => (target.to_owned(), None),
    };
    let headers = lines
        .take_while(|l| !l.is_empty())
        .filter_map(|l| {
            let (n, v) = l.split_once(':')?;
            Some((n.trim().to_owned(), v.trim().to_owned()))
        })
        .collect();
    Some(Request {
        method,
        path,
        query,
        headers,
    })
}

fn encode(r: Response) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\
         Content-Security-Policy: {CSP}\r\nX-Content-Type-Options: nosniff\r\n\
         X-Frame-Options: DENY\r\nReferrer-Policy: no-referrer\r\nCache-Control: no-store\r\n\
         Cross-Origin-Opener-Policy: same-origin\r\nCross-Origin-Resource-Policy: same-origin\r\n",
        r.status,
        r.content_type,
        r.body.len()
    );
    for (name, value) in &r.extra {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&r.body);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> Server {
        let shared = Arc::new(Shared::default());
        Server::new(
            "127.0.0.1:7878".parse().unwrap(),
            Token("ab".repeat(32)),
            shared,
            Duration::from_secs(5),
        )
    }

    fn request(path: &str, headers: &[(&str, &str)]) -> Request {
        let (path, query) = match path.split_once('?') {
            Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
            None => (path.to_owned(), None),
        };
        Request {
            method: "GET".into(),
            path,
            query,
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    fn cookie() -> String {
        format!("{COOKIE}={}", "ab".repeat(32))
    }

    #[test]
    fn a_rebound_name_or_another_site_is_refused() {
        let s = server();
        let c = cookie();
        let r = s.answer(&request("/", &[("Host", "evil.test:7878"), ("Cookie", &c)]));
        assert_eq!(r.status, "421 Misdirected Request");
        let r = s.answer(&request(
            "/api/state",
            &[
                ("Host", "127.0.0.1:7878"),
                ("Cookie", &c),
                ("Origin", "http://evil.test"),
            ],
        ));
        assert_eq!(r.status, "403 Forbidden");
        let r = s.answer(&request(
            "/api/state",
            &[
                ("Host", "localhost:7878"),
                ("Cookie", &c),
                ("Sec-Fetch-Site", "cross-site"),
            ],
        ));
        assert_eq!(r.status, "403 Forbidden");
        let r = s.answer(&request("/", &[("Host", "127.0.0.1:7878")]));
        assert_eq!(r.status, "401 Unauthorized", "no token, no page");
        let r = s.answer(&request(
            "/",
            &[("Host", "127.0.0.1:7878"), ("Cookie", "maki_dashboard=00")],
        ));
        assert_eq!(r.status, "401 Unauthorized");
    }

    #[test]
    fn the_token_in_the_url_becomes_a_strict_cookie_and_leaves_the_url() {
        let s = server();
        let url = format!("/?token={}", "ab".repeat(32));
        let r = s.answer(&request(&url, &[("Host", "127.0.0.1:7878")]));
        assert_eq!(r.status, "303 See Other");
        let set = &r.extra.iter().find(|(n, _)| *n == "Set-Cookie").unwrap().1;
        assert!(
            set.contains("HttpOnly") && set.contains("SameSite=Strict"),
            "{set}"
        );
        let r = s.answer(&request("/?token=00", &[("Host", "127.0.0.1:7878")]));
        assert_eq!(r.status, "403 Forbidden");
        let c = cookie();
        let r = s.answer(&request("/", &[("Host", "127.0.0.1:7878"), ("Cookie", &c)]));
        assert_eq!(r.status, "200 OK");
        let page = String::from_utf8(r.body).unwrap();
        assert!(page.contains("<svg") && !page.contains("{{LAND}}"));
        assert!(!page.contains("<script>"), "no inline script");
        let bytes = encode(Response::text("200 OK", ""));
        let head = String::from_utf8(bytes).unwrap();
        assert!(head.contains("Content-Security-Policy: default-src 'none'; script-src 'self'"));
    }

    #[test]
    fn only_get_is_answered() {
        let s = server();
        let c = cookie();
        let mut r = request("/", &[("Host", "127.0.0.1:7878"), ("Cookie", &c)]);
        r.method = "POST".into();
        assert_eq!(s.answer(&r).status, "405 Method Not Allowed");
    }

    #[test]
    fn request_heads_are_parsed_or_refused() {
        let r =
            parse(b"GET /api/state?x=1 HTTP/1.1\r\nHost: 127.0.0.1:7878\r\nCookie: a=b\r\n\r\n")
                .unwrap();
        assert_eq!(r.path, "/api/state");
        assert_eq!(r.query.as_deref(), Some("x=1"));
        assert_eq!(r.header("host"), Some("127.0.0.1:7878"));
        assert!(parse(b"GET / SPDY/3\r\n\r\n").is_none());
        assert!(parse(b"\xff\xfe\r\n\r\n").is_none());
    }
}
