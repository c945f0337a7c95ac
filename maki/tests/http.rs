//! The HTTP edge on real test hosts, asked with `curl`, `nghttp` and
//! `openssl` from inside the test network: every node serves the synced
//! site by host (domain and alias) over HTTP/1.1 and, by SNI, HTTPS with
//! HTTP/2; statuses 200/206/301/304/400/404/405/414/416/421/431;
//! precompressed variants chosen by Accept-Encoding with Vary; the custom
//! 404 page; a large file streamed and ranged; hostile paths refused; a
//! slow client cut off. Needs root.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failure is a panic

use std::time::{Duration, Instant};

use makiatto_harness::{Cluster, copy_examples, require_root, wait_until};

/// Status, response head and body of one `curl` run from the test host
/// `vector` with `args` (the head goes to stderr with `-D`).
fn curl_from_vector(c: &Cluster, args: &[&str]) -> (u16, String, Vec<u8>) {
    let mut cmd = c.command(&[
        "local",
        "exec",
        "vector",
        "--",
        "curl",
        "-s",
        "--max-time",
        "20",
        "-D",
        "/dev/stderr",
    ]);
    cmd.args(args);
    let out = cmd.output().unwrap();
    let head = String::from_utf8_lossy(&out.stderr).into_owned();
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head, out.stdout)
}

/// Status, then the response head, then body, of one request.
fn get(
    c: &Cluster,
    server: &str,
    host: &str,
    path: &str,
    extra: &[&str],
) -> (u16, String, Vec<u8>) {
    let url = format!("http://{server}{path}");
    let host_header = format!("Host: {host}");
    let mut args = vec!["--path-as-is", "-H", host_header.as_str(), url.as_str()];
    args.extend(extra);
    curl_from_vector(c, &args)
}

/// Status and body of one HTTPS request over HTTP/2 for `example.test`.
fn get_h2(c: &Cluster, server: &str, path: &str, extra: &[&str]) -> (u16, String, Vec<u8>) {
    let resolve = format!("example.test:443:{server}");
    let url = format!("https://example.test{path}");
    let mut args = vec!["-k", "--http2", "--resolve", resolve.as_str()];
    args.extend(extra);
    args.push(url.as_str());
    let (status, head, body) = curl_from_vector(c, &args);
    assert!(head.starts_with("HTTP/2 "), "{head}");
    (status, head, body)
}

/// A header's value (names compared without case).
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[test]
fn every_node_serves_the_site_by_host_with_http_semantics() {
    require_root();
    let c = Cluster::new("ht");
    // The example project plus a large file (streamed, not cached).
    let project = c.dir.path().join("project");
    let file = copy_examples(&project);
    let mut big = vec![0u8; 1_500_000];
    blake3::Hasher::new().finalize_xof().fill(&mut big);
    std::fs::write(project.join("site/big.bin"), &big).unwrap();
    let up = c.up(2, &["--no-ca", "--sync", file.to_str().unwrap()]);
    let first = up.hosts[0].node.clone();
    let hosts: Vec<String> = up.hosts.into_iter().map(|h| h.ipv4).collect();
    let index = std::fs::read(project.join("site/index.html")).unwrap();
    for server in &hosts {
        wait_until(Duration::from_secs(30), "the site is served", || {
            get(&c, server, "example.test", "/", &[]).2 == index
        });
    }
    let s = &hosts[0];

    // The page, by domain and alias, over HTTP/1.1.
    let (status, head, body) = get(&c, s, "WWW.Example.Test", "/", &[]);
    assert_eq!((status, body.as_slice()), (200, index.as_slice()), "{head}");
    assert_eq!(
        header(&head, "content-type"),
        Some("text/html; charset=utf-8")
    );
    let etag = header(&head, "etag").unwrap().to_owned();
    assert!(
        etag.starts_with('"') && etag.len() == 34,
        "strong ETag: {etag}"
    );
    assert!(header(&head, "last-modified").is_some());
    assert_eq!(header(&head, "accept-ranges"), Some("bytes"));
    assert!(
        header(&head, "cache-control")
            .unwrap()
            .contains("must-revalidate")
    );

    // Conditional requests.
    let inm = format!("If-None-Match: {etag}");
    assert_eq!(get(&c, s, "example.test", "/", &["-H", &inm]).0, 304);
    let lm = format!(
        "If-Modified-Since: {}",
        header(&head, "last-modified").unwrap()
    );
    assert_eq!(get(&c, s, "example.test", "/", &["-H", &lm]).0, 304);
    let old = "If-Modified-Since: Mon, 01 Jan 2001 00:00:00 GMT";
    assert_eq!(get(&c, s, "example.test", "/", &["-H", old]).0, 200);

    // Precompressed variants (of files over 256 bytes), chosen by
    // Accept-Encoding, with Vary.
    wait_until(Duration::from_secs(30), "variants prepared", || {
        let (_, head, _) = get(
            &c,
            s,
            "example.test",
            "/",
            &["-H", "Accept-Encoding: br, gzip"],
        );
        header(&head, "content-encoding") == Some("br")
    });
    for (accept, coding) in [
        ("gzip", "gzip"),
        ("zstd;q=1, gzip;q=0.5", "zstd"),
        ("identity", ""),
    ] {
        let (status, head, body) = get(
            &c,
            s,
            "example.test",
            "/",
            &["-H", &format!("Accept-Encoding: {accept}"), "--compressed"],
        );
        assert_eq!(status, 200);
        assert_eq!(
            header(&head, "content-encoding").unwrap_or(""),
            coding,
            "{accept}"
        );
        assert_eq!(header(&head, "vary"), Some("accept-encoding"));
        assert_eq!(body, index, "{accept}: curl decodes to the source");
    }

    // Ranges, on a cached small file and on a streamed large one.
    let (status, head, body) = get(&c, s, "example.test", "/", &["-H", "Range: bytes=0-9"]);
    assert_eq!((status, body.as_slice()), (206, &index[..10]));
    assert_eq!(header(&head, "content-length"), Some("10"));
    assert_eq!(
        header(&head, "content-range"),
        Some(format!("bytes 0-9/{}", index.len()).as_str())
    );
    let (status, _, body) = get(
        &c,
        s,
        "example.test",
        "/big.bin",
        &["-H", "Range: bytes=1000000-"],
    );
    assert_eq!((status, body.as_slice()), (206, &big[1_000_000..]));
    let (status, _, body) = get(&c, s, "example.test", "/big.bin", &[]);
    assert_eq!((status, body.len()), (200, big.len()));
    assert!(body == big);
    let (status, head, _) = get(&c, s, "example.test", "/", &["-H", "Range: bytes=99999-"]);
    assert_eq!(status, 416);
    assert_eq!(
        header(&head, "content-range"),
        Some(format!("bytes */{}", index.len()).as_str())
    );
    let stale = "If-Range: \"0000\"";
    assert_eq!(
        get(
            &c,
            s,
            "example.test",
            "/",
            &["-H", "Range: bytes=0-9", "-H", stale]
        )
        .0,
        200
    );

    // Directories, redirects, the custom 404, HEAD, methods.
    let (status, head, _) = get(&c, s, "example.test", "/about?x=1", &[]);
    assert_eq!(
        (status, header(&head, "location")),
        (301, Some("/about/?x=1"))
    );
    let about = std::fs::read(project.join("site/about/index.html")).unwrap();
    assert_eq!(get(&c, s, "example.test", "/about/", &[]).2, about);
    let page404 = std::fs::read(project.join("site/404.html")).unwrap();
    let (status, _, body) = get(&c, s, "example.test", "/no/such/page", &[]);
    assert_eq!((status, body), (404, page404));
    // HEAD: the headers of GET (curl reads no body after them).
    let (status, head, _) = get(&c, s, "example.test", "/", &["-I", "-o", "/dev/null"]);
    assert_eq!(status, 200);
    assert_eq!(
        header(&head, "content-length"),
        Some(index.len().to_string().as_str())
    );
    let (status, head, _) = get(&c, s, "example.test", "/", &[]);
    assert_eq!(
        (status, header(&head, "content-length")),
        (200, Some(index.len().to_string().as_str()))
    );
    assert_eq!(get(&c, s, "example.test", "/", &["-X", "POST"]).0, 405);
    // Configuration files are not content.
    assert_eq!(get(&c, s, "example.test", "/makiatto.toml", &[]).0, 404);

    // Unknown hosts never get another domain's content.
    let (status, _, body) = get(&c, s, "other.test", "/", &[]);
    assert_eq!(status, 404);
    assert!(
        !body.starts_with(b"<!doctype"),
        "no site content for an unknown host"
    );

    // Hostile paths: refused before any lookup, never a file outside the site.
    for path in [
        "/../../etc/passwd",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/css/..%2f..%2fetc%2fpasswd",
        "/%2e%2e%5c%2e%2e%5cetc%5cpasswd",
        "/index.html%00.css",
        "/./index.html",
    ] {
        let (status, _, body) = get(&c, s, "example.test", path, &[]);
        assert_eq!(status, 400, "{path}");
        assert!(!String::from_utf8_lossy(&body).contains("root:"), "{path}");
    }
    let long = format!("/{}", "a".repeat(5000));
    assert_eq!(get(&c, s, "example.test", &long, &[]).0, 414);
    let huge = format!("X-Big: {}", "b".repeat(70_000));
    assert_eq!(get(&c, s, "example.test", "/", &["-H", &huge]).0, 431);
    // hyper answered that one, no handler did: counted where an operator
    // looks all the same.
    let ended = &c.health(&first)["http"]["ended"];
    assert!(ended["head_too_large"].as_u64() >= Some(1), "{ended}");

    // HTTPS by SNI, HTTP/2 by ALPN, on every node; a connection for one
    // name is not reused for another (421).
    for server in &hosts {
        for name in ["example.test", "www.example.test"] {
            let resolve = format!("{name}:443:{server}");
            let url = format!("https://{name}/");
            let out = c.curl_writes(
                "klukai",
                "%{http_code} %{http_version}",
                &["-k", "--resolve", &resolve, &url],
            );
            assert_eq!(out, "200 2", "{name} at {server}");
            let cert = c.exec(
                "klukai",
                &[
                    "sh",
                    "-c",
                    &format!(
                        "openssl s_client -connect {server}:443 -servername {name} </dev/null 2>/dev/null | openssl x509 -noout -ext subjectAltName"
                    ),
                ],
            );
            assert!(cert.contains(&format!("DNS:{name}")), "{name}: {cert}");
        }
    }
    // The server chooses AES-128-GCM, unless the client lists ChaCha20
    // first (a client without AES instructions).
    for (offered, chosen) in [
        (
            "TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256",
            "TLS_AES_128_GCM_SHA256",
        ),
        (
            "TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256",
            "TLS_CHACHA20_POLY1305_SHA256",
        ),
    ] {
        let out = c.exec(
            "klukai",
            &[
                "sh",
                "-c",
                &format!(
                    "openssl s_client -connect {s}:443 -servername example.test -ciphersuites {offered} </dev/null 2>/dev/null"
                ),
            ],
        );
        assert!(
            out.contains(&format!("Cipher is {chosen}")),
            "{offered}: {out}"
        );
    }
    let resolve = format!("example.test:443:{s}");
    let out = c.curl_writes(
        "klukai",
        "%{http_code}",
        &[
            "-k",
            "--resolve",
            &resolve,
            "-H",
            "Host: www.example.test",
            "https://example.test/",
        ],
    );
    assert_eq!(out, "421");
    // HTTP/2 advertises its stream limit and serves many streams at once.
    let nghttp = c.exec(
        "klukai",
        &[
            "nghttp",
            "-nv",
            &format!("https://{s}/"),
            "-H",
            ":authority: example.test",
        ],
    );
    assert!(
        nghttp.contains("SETTINGS_MAX_CONCURRENT_STREAMS(0x03):128"),
        "{nghttp}"
    );
    let load = c.exec(
        "klukai",
        &[
            "h2load",
            "-n",
            "400",
            "-c",
            "2",
            "-m",
            "200",
            "--connect-to",
            &format!("{s}:443"),
            "https://example.test/css/style.css",
        ],
    );
    assert!(load.contains("400 succeeded"), "{load}");
    // A large file, whole and ranged, over HTTP/2: its frames pass the
    // connection's gathered writes intact.
    let (status, head, body) = get_h2(&c, s, "/big.bin", &[]);
    assert_eq!((status, body.len()), (200, big.len()));
    assert!(body == big);
    assert_eq!(
        header(&head, "content-length"),
        Some(big.len().to_string().as_str())
    );
    let (status, head, body) = get_h2(&c, s, "/big.bin", &["-r", "999-1000999"]);
    assert_eq!((status, body.as_slice()), (206, &big[999..=1_000_999]));
    assert_eq!(header(&head, "content-length"), Some("1000001"));
    // A small file from memory: its length comes from the body.
    let (status, head, body) = get_h2(&c, s, "/", &[]);
    assert_eq!((status, &body), (200, &index));
    assert_eq!(
        header(&head, "content-length"),
        Some(index.len().to_string().as_str())
    );

    // A client that never finishes its request head is cut off.
    let started = Instant::now();
    c.exec(
        "klukai",
        &[
            "timeout",
            "30",
            "bash",
            "-c",
            &format!(
                "exec 3<>/dev/tcp/{s}/80; printf 'GET / HTTP/1.1\\r\\nHost: example.test\\r\\n' >&3; cat <&3 >/dev/null; true"
            ),
        ],
    );
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(25),
        "the slow client was not cut off: {took:?}"
    );
}
