//! `wasm`: WebAssembly functions and transforms on a node against the same
//! bytes served as static files (issue 21), in one run.
//!
//! 1. One node (`maki local up --nodes 1 --no-ca --sync`, the release
//!    daemon beside this binary) serving the example project with its
//!    components (`scripts/build-components.sh`): the guide's hello handler
//!    (`api/hello.wasm`, Python through componentize-py) and the comment
//!    transform (`transforms/comment.wasm`, Python); beside them the
//!    smallest handler there is (`api/echo.wasm`, hand-written WAT: answers
//!    200 with the request's empty body), and a 2-stage chain on
//!    `bench/*.html` (10 KiB pages): the comment transform, then a
//!    hand-written pass-through (`passthrough.wat`). Where the
//!    wasm32-wasip2 target is installed, also the hello compiled from
//!    Rust (`examples/components/hello-rs`, built here) at
//!    `api/hello-rs.wasm`, with its twin `hello-rs.txt`.
//! 2. Static twins: `hello.txt` holds exactly the hello handler's answer
//!    on this node, `empty.txt` the echo's, `plain/page.html` the page
//!    untransformed.
//! 3. Rate, h2load over HTTPS/1.1 keep-alive (16 connections, 10 s),
//!    rounds alternating handler and twin, best of three: hello against
//!    `hello.txt`, echo against `empty.txt`, the transformed page (from
//!    the transform cache) against its untransformed twin.
//! 4. Time per call, one connection, 2,000 requests in a row (h2load
//!    `--log-file`, each request's time): the p50 of a handler minus the
//!    p50 of its twin is the time a call adds.
//! 5. The chain uncached: 200 distinct pages each asked once (their
//!    results are not in the cache yet), against 200 distinct
//!    untransformed pages asked once; p50 of each.
//! 6. The first request to a newly synced component: `hello.wasm` with a
//!    custom section appended (a new hash, the same code) synced as
//!    `api/fresh.wasm`: the `maki sync` (which waits for the node to
//!    compile it before switching) against a sync of a one-file change,
//!    the time until the new route answers, and the next two requests.
//!
//! 7. The anchor, for scale, where `wasmtime` 48 is built
//!    (`scripts/build-wasmtime-anchor.sh`, or `MAKIATTO_BENCH_WASMTIME`)
//!    and the Rust hello is: `wasmtime serve` in the node's namespace
//!    (port 8080) with its own hello world
//!    (`benches/components/hello-wasi-http`, the `wasi:http/proxy` world,
//!    answering the same bytes), against the node's Rust hello, both over
//!    plain HTTP/1.1 (wasmtime serves no TLS; the node, with no
//!    certificate issued, serves port 80 without a redirect): rates as in
//!    3, then 2,000 requests in a row as in 4.
//!
//! Goals (issue 21): the hello handler ≥ 0.5 × the static file's rate,
//! and under 50 µs added per call (p50); the chain cached and uncached,
//! and the first compile, reported.
//!
//! `MAKIATTO_BENCH_PERF=FILE`: instead of the rounds, the echo's rate
//! (or `MAKIATTO_BENCH_PERF_PATH`'s) once with the daemon under
//! `perf record` (call graphs from DWARF), written to FILE for
//! `perf report`; then the bench stops.
//!
//! Needs root, h2load, curl and the component toolchain
//! (`scripts/install-deps.sh`). Build first:
//! `cargo build --release -p makiatto -p makiatto-cli -p makiatto-benches --bins`
//! then `target/release/wasm`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // benchmark support: a failure is a panic that fails the run

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use makiatto_benches::measure::{print_json, print_table};
use makiatto_benches::reports;
use makiatto_harness::cpu::proc_kib;
use makiatto_harness::netns::{daemon_pid, in_namespace};
use makiatto_harness::{Lab, copy_examples_with_wasm, have, stdout, test_component, wait_until};
use serde_json::json;

const DOMAIN: &str = "example.test";
const SECONDS: u32 = 10;
const ROUNDS: usize = 3;
/// Requests in a row for the time per call.
const IN_A_ROW: u32 = 2_000;
/// Distinct pages for the uncached chain.
const PAGES: usize = 200;

struct Bench {
    lab: Lab,
    file: PathBuf,
    addr: String,
    client_ns: String,
}

impl Bench {
    fn client(&self, argv: &[&str]) -> Command {
        in_namespace(&self.client_ns, &[], argv)
    }

    /// The body of `path` over HTTPS.
    fn get(&self, path: &str) -> Vec<u8> {
        self.get_of(
            &format!("{}:443", self.addr),
            &format!("https://{DOMAIN}{path}"),
        )
    }

    /// The body of `url` (its host [`DOMAIN`]), connecting to `to`
    /// (address:port).
    fn get_of(&self, to: &str, url: &str) -> Vec<u8> {
        let (addr, port) = to.rsplit_once(':').expect("address:port");
        let out = self
            .client(&["curl", "-sk", "--max-time", "60", "--connect-to"])
            .arg(format!("{DOMAIN}:{port}:{addr}:{port}"))
            .arg(url)
            .output()
            .expect("curl runs");
        out.stdout
    }

    /// Seconds curl took for `path`.
    fn time(&self, path: &str) -> f64 {
        let out = self
            .client(&["curl", "-sk", "-o", "/dev/null", "-w", "%{time_total}"])
            .args(["--max-time", "120", "--resolve"])
            .arg(format!("{DOMAIN}:443:{}", self.addr))
            .arg(format!("https://{DOMAIN}{path}"))
            .output()
            .expect("curl runs");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("curl's time")
    }

    fn sync(&self) -> Duration {
        let start = Instant::now();
        self.lab
            .cluster
            .ok(&["sync", "--file", self.file.to_str().unwrap()]);
        start.elapsed()
    }

    /// Requests per second for `path`: 16 connections, [`SECONDS`].
    fn rate(&self, path: &str) -> f64 {
        self.rate_of(
            &format!("{}:443", self.addr),
            &format!("https://{DOMAIN}{path}"),
        )
    }

    /// Requests per second for `url`, connecting to `to` (address:port).
    fn rate_of(&self, to: &str, url: &str) -> f64 {
        let mut cmd = self.client(&["timeout", "120", "h2load", "--h1"]);
        cmd.arg(format!("--connect-to={to}"))
            .args(["-t", "2", "-c", "16", "-D", &SECONDS.to_string()])
            .arg(url);
        let out = stdout(&mut cmd);
        let r = reports::H2load::parse(&out);
        assert!(r.all_ok(), "{url}: requests failed:\n{out}");
        eprintln!("{url:<40} {:>8.0} req/s", r.rate());
        r.rate()
    }

    /// Each request's time (µs), one connection: `paths` once each, or
    /// the one path [`IN_A_ROW`] times; sorted.
    fn times(&self, name: &str, paths: &[String]) -> Vec<f64> {
        let urls: Vec<String> = paths
            .iter()
            .map(|p| format!("https://{DOMAIN}{p}"))
            .collect();
        self.times_of(name, &format!("{}:443", self.addr), &urls)
    }

    /// As [`Bench::times`], for whole URLs, connecting to `to`.
    fn times_of(&self, name: &str, to: &str, urls: &[String]) -> Vec<f64> {
        let dir = self.lab.cluster.dir.path();
        let log = dir.join(format!("h2load-{name}.log"));
        let mut cmd = self.client(&["timeout", "600", "h2load", "--h1", "-c", "1", "-t", "1"]);
        cmd.arg(format!("--connect-to={to}"))
            .arg(format!("--log-file={}", log.display()));
        if urls.len() == 1 {
            cmd.args(["-n", &IN_A_ROW.to_string()]).arg(&urls[0]);
        } else {
            let list = dir.join(format!("uris-{name}.txt"));
            let uris: String = urls.iter().map(|u| format!("{u}\n")).collect();
            std::fs::write(&list, uris).unwrap();
            cmd.args(["-n", &urls.len().to_string(), "-i"]).arg(&list);
        }
        let out = stdout(&mut cmd);
        assert!(reports::H2load::parse(&out).all_ok(), "{name}:\n{out}");
        // start (µs since the epoch) TAB status TAB duration (µs)
        let mut t: Vec<f64> = std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .filter_map(|l| l.split('\t').nth(2)?.trim().parse().ok())
            .collect();
        t.sort_by(f64::total_cmp);
        t
    }
}

fn p50(sorted: &[f64]) -> f64 {
    sorted[sorted.len() / 2]
}

fn p99(sorted: &[f64]) -> f64 {
    sorted[(sorted.len() * 99 / 100).min(sorted.len() - 1)]
}

/// A 10 KiB HTML page, distinct by `n`.
fn page(n: usize) -> String {
    let mut s = format!("<!doctype html>\n<html><head><title>page {n}</title></head><body>\n");
    let line =
        format!("<p>Paragraph of page {n}: the quick brown fox jumps over the lazy dog.</p>\n");
    while s.len() + line.len() + 15 < 10 * 1024 {
        s.push_str(&line);
    }
    s.push_str("</body></html>\n");
    s
}

/// `wasm` with a custom section appended: another hash, the same code.
fn with_custom_section(wasm: &[u8], marker: &str) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let b = (n & 0x7f) as u8;
            n >>= 7;
            out.push(if n == 0 { b } else { b | 0x80 });
            if n == 0 {
                break;
            }
        }
    }
    let name = b"makiatto-bench";
    let mut payload = Vec::new();
    leb(name.len(), &mut payload);
    payload.extend_from_slice(name);
    payload.extend_from_slice(marker.as_bytes());
    let mut out = wasm.to_vec();
    out.push(0);
    leb(payload.len(), &mut out);
    out.extend(payload);
    out
}

/// The example hello compiled from Rust (`examples/components/hello-rs`),
/// built for wasm32-wasip2; none, with the reason, where that target is
/// not installed or the build fails.
fn rust_hello() -> Result<PathBuf, String> {
    let sysroot = stdout(Command::new("rustc").args(["--print", "sysroot"]));
    if !Path::new(sysroot.trim())
        .join("lib/rustlib/wasm32-wasip2")
        .exists()
    {
        return Err(
            "the wasm32-wasip2 target is not installed (rustup target add wasm32-wasip2)".into(),
        );
    }
    wasip2_component("examples/components/hello-rs", "makiatto_example_hello")
}

/// Builds the crate at `dir` (from the workspace's root, with its own
/// Cargo.lock) for wasm32-wasip2 into `target/components/`; the path of
/// its `name.wasm`.
fn wasip2_component(dir: &str, name: &str) -> Result<PathBuf, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let crate_dir = Path::new(dir);
    let target_dir = root
        .join("target/components")
        .join(crate_dir.file_name().unwrap());
    let status = Command::new("cargo")
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            "wasm32-wasip2",
            "--manifest-path",
        ])
        .arg(root.join(crate_dir).join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .status()
        .map_err(|e| format!("cargo: {e}"))?;
    if !status.success() {
        return Err(format!("the build of {dir} failed ({status})"));
    }
    Ok(target_dir.join(format!("wasm32-wasip2/release/{name}.wasm")))
}

/// The Rust hello against `wasmtime serve`'s: rates (ours, theirs) and
/// each request's time in a row (ours, theirs).
struct Anchored {
    rates: (f64, f64),
    times: (Vec<f64>, Vec<f64>),
}

/// Runs `wasmtime serve` with its hello in the node's namespace (port
/// 8080), answering `answer`, and measures it beside the node's Rust hello
/// over plain HTTP, rounds alternating, best of [`ROUNDS`].
fn run_anchor(
    b: &Bench,
    netns: &str,
    wasmtime: &Path,
    component: &Path,
    answer: &[u8],
) -> Anchored {
    let listen = format!("{}:8080", b.addr);
    let body = format!("HELLO_BODY={}", String::from_utf8_lossy(answer));
    let log = b.lab.cluster.dir.path().join("wasmtime-serve.log");
    let mut serve = in_namespace(
        netns,
        &[],
        &[
            wasmtime.to_str().unwrap(),
            "serve",
            "-Scli",
            "--addr",
            &listen,
            "--env",
            &body,
            component.to_str().unwrap(),
        ],
    )
    .stdout(std::fs::File::create(&log).unwrap())
    .stderr(std::fs::File::create(log.with_extension("err")).unwrap())
    .spawn()
    .expect("wasmtime serve runs");
    let theirs_url = format!("http://{DOMAIN}:8080/");
    let ours_url = format!("http://{DOMAIN}/api/hello-rs");
    let ours_to = format!("{}:80", b.addr);
    wait_until(
        Duration::from_secs(120),
        "wasmtime serve answers with the hello",
        || b.get_of(&listen, &theirs_url) == answer,
    );
    assert_eq!(
        b.get_of(&ours_to, &ours_url),
        answer,
        "the node answers the Rust hello over plain HTTP (no certificate issued: no redirect)"
    );
    let mut rates = (0f64, 0f64);
    for round in 0..ROUNDS {
        let (x, y) = if round % 2 == 0 {
            let x = b.rate_of(&ours_to, &ours_url);
            (x, b.rate_of(&listen, &theirs_url))
        } else {
            let y = b.rate_of(&listen, &theirs_url);
            (b.rate_of(&ours_to, &ours_url), y)
        };
        rates.0 = rates.0.max(x);
        rates.1 = rates.1.max(y);
    }
    let times = (
        b.times_of("anchor-ours", &ours_to, &[ours_url]),
        b.times_of("anchor-wasmtime", &listen, &[theirs_url]),
    );
    let _ = serve.kill();
    let _ = serve.wait();
    eprintln!(
        "anchor: ours {:.0} req/s, wasmtime serve {:.0} req/s; p50 {:.0} against {:.0} µs",
        rates.0,
        rates.1,
        p50(&times.0),
        p50(&times.1)
    );
    Anchored { rates, times }
}

/// The anchor: a `wasmtime` 48 CLI (`scripts/build-wasmtime-anchor.sh`)
/// and its hello world (`benches/components/hello-wasi-http`, built here
/// for wasm32-wasip2); none, with the reason, where either is missing.
fn wasmtime_anchor() -> Result<(PathBuf, PathBuf), String> {
    let wasmtime = std::env::var_os("MAKIATTO_BENCH_WASMTIME").map_or_else(
        || PathBuf::from("/opt/makiatto-bench/wasmtime/bin/wasmtime"),
        PathBuf::from,
    );
    let version = Command::new(&wasmtime)
        .arg("--version")
        .output()
        .map_err(|e| {
            format!(
                "no wasmtime at {} ({e}; scripts/build-wasmtime-anchor.sh builds it)",
                wasmtime.display()
            )
        })?;
    let version = String::from_utf8_lossy(&version.stdout);
    if !version.starts_with("wasmtime 48.") {
        return Err(format!(
            "{} is not wasmtime 48: {version}",
            wasmtime.display()
        ));
    }
    let component = wasip2_component(
        "benches/components/hello-wasi-http",
        "makiatto_bench_hello_wasi_http",
    )?;
    Ok((wasmtime, component))
}

fn make_project(dir: &Path, rust_hello: Option<&Path>) -> PathBuf {
    let file = copy_examples_with_wasm(dir);
    let site = dir.join("site");
    std::fs::create_dir_all(site.join("bench")).unwrap();
    std::fs::create_dir_all(site.join("plain")).unwrap();
    std::fs::copy(test_component("echo"), site.join("api/echo.wasm")).unwrap();
    std::fs::copy(
        test_component("passthrough"),
        site.join("transforms/pass.wasm"),
    )
    .unwrap();
    std::fs::write(site.join("bench/page.html"), page(0)).unwrap();
    std::fs::write(site.join("plain/page.html"), page(0)).unwrap();
    for n in 1..=PAGES {
        std::fs::write(site.join(format!("bench/p{n}.html")), page(n)).unwrap();
        std::fs::write(site.join(format!("plain/p{n}.html")), page(n)).unwrap();
    }
    std::fs::write(site.join("empty.txt"), "").unwrap();
    // Until the node's answer is known.
    std::fs::write(site.join("hello.txt"), "").unwrap();
    let mut functions = "\n[[domain.functions]]\npath = \"api/echo.wasm\"\n".to_owned();
    if let Some(wasm) = rust_hello {
        std::fs::copy(wasm, site.join("api/hello-rs.wasm")).unwrap();
        functions += "\n[[domain.functions]]\npath = \"api/hello-rs.wasm\"\n";
    }
    let toml = std::fs::read_to_string(&file).unwrap();
    let toml = toml.replace(r#"files = "**/*.html""#, r#"files = "bench/*.html""#)
        + &functions
        + "\n[[domain.transforms]]\npath = \"transforms/pass.wasm\"\nfiles = \"bench/*.html\"\n";
    std::fs::write(&file, toml).unwrap();
    file
}

fn main() {
    for tool in ["h2load", "curl"] {
        assert!(
            have(tool),
            "{tool} is not installed: scripts/install-deps.sh"
        );
    }
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut lab = Lab::new("w");
    let project = lab.cluster.dir.path().join("project");
    let rust = rust_hello();
    if let Err(why) = &rust {
        eprintln!("the Rust hello is left out: {why}");
    }
    let rust = rust.ok();
    let anchor = match (&rust, wasmtime_anchor()) {
        (Some(_), Ok(anchor)) => Some(anchor),
        (None, _) => {
            eprintln!(
                "the wasmtime serve anchor is left out: it is measured beside the Rust hello"
            );
            None
        }
        (_, Err(why)) => {
            eprintln!("the wasmtime serve anchor is left out: {why}");
            None
        }
    };
    let file = make_project(&project, rust.as_deref());
    eprintln!("bringing up one node ({})", lab.cluster.name);
    let host = lab.up(1, &file, &["--no-ca"]).remove(0);
    let client_ns = format!("mkwasm-{}-client", lab.cluster.name);
    lab.client_namespace(&client_ns, "xc");
    let b = Bench {
        lab,
        file,
        addr: host.ipv4.clone(),
        client_ns,
    };
    let perf = std::env::var_os("MAKIATTO_BENCH_PERF");
    wait_until(
        Duration::from_secs(120),
        "the node answers /api/hello",
        || b.get("/api/hello").starts_with(b"hello from node"),
    );
    let hello = b.get("/api/hello");
    std::fs::write(project.join("site/hello.txt"), &hello).unwrap();
    let hello_rs = rust.as_ref().map(|_| {
        let answer = b.get("/api/hello-rs");
        assert_eq!(answer, hello, "the Rust hello answers as the Python one");
        std::fs::write(project.join("site/hello-rs.txt"), &answer).unwrap();
        answer
    });
    b.sync();
    wait_until(
        Duration::from_secs(60),
        "hello.txt is the handler's answer",
        || {
            b.get("/hello.txt") == hello
                && hello_rs
                    .as_ref()
                    .is_none_or(|h| b.get("/hello-rs.txt") == *h)
        },
    );
    let transformed = b.get("/bench/page.html");
    assert!(
        transformed.len() > page(0).len() && b.get("/plain/page.html") == page(0).as_bytes(),
        "the chain changes the page, its twin is served as it is"
    );

    if let Some(out) = perf {
        let pid = daemon_pid(&host.netns).expect("the node's `makiatto run` process");
        let path = std::env::var("MAKIATTO_BENCH_PERF_PATH").unwrap_or_else(|_| "/api/echo".into());
        b.rate(&path);
        let mut perf = Command::new("perf")
            .args(["record", "-F", "1999", "--call-graph", "dwarf,32768", "-p"])
            .arg(pid.to_string())
            .arg("-o")
            .arg(&out)
            .spawn()
            .expect("perf runs");
        b.rate(&path);
        // SAFETY: a signal to a child of this process.
        unsafe { libc::kill(perf.id() as i32, libc::SIGINT) };
        perf.wait().unwrap();
        eprintln!("profile in {}", Path::new(&out).display());
        return;
    }

    // Rates, alternating.
    let mut pairs = vec![
        ("hello", "/api/hello", "/hello.txt"),
        ("echo", "/api/echo", "/empty.txt"),
        ("chain, cached", "/bench/page.html", "/plain/page.html"),
    ];
    if hello_rs.is_some() {
        pairs.push(("hello (Rust)", "/api/hello-rs", "/hello-rs.txt"));
    }
    let mut rates = vec![(0f64, 0f64); pairs.len()];
    for round in 0..ROUNDS {
        for (i, (_, ours, twin)) in pairs.iter().enumerate() {
            let (x, y) = if round % 2 == 0 {
                let x = b.rate(ours);
                (x, b.rate(twin))
            } else {
                let y = b.rate(twin);
                (b.rate(ours), y)
            };
            rates[i].0 = rates[i].0.max(x);
            rates[i].1 = rates[i].1.max(y);
        }
    }

    // The daemon's memory after the rounds (what the instance pool keeps
    // between calls is part of it).
    let pid = daemon_pid(&host.netns).expect("the node's `makiatto run` process");
    let rss_mib = proc_kib(pid, "status", "VmRSS") as f64 / 1024.0;
    let hwm_mib = proc_kib(pid, "status", "VmHWM") as f64 / 1024.0;
    eprintln!("daemon RSS after the rounds: {rss_mib:.1} MiB (peak {hwm_mib:.1} MiB)");

    // Time per call.
    let one = |p: &str| vec![p.to_owned()];
    let t_hello = b.times("hello", &one("/api/hello"));
    let t_hello_twin = b.times("hello-twin", &one("/hello.txt"));
    let t_echo = b.times("echo", &one("/api/echo"));
    let t_echo_twin = b.times("echo-twin", &one("/empty.txt"));
    let t_rust = hello_rs.as_ref().map(|_| {
        (
            b.times("hello-rs", &one("/api/hello-rs")),
            b.times("hello-rs-twin", &one("/hello-rs.txt")),
        )
    });

    // The anchor, for scale: `wasmtime serve`'s hello world beside the
    // Rust hello, both over plain HTTP/1.1 (wasmtime serves no TLS), the
    // same bytes.
    let anchored = match (&anchor, &hello_rs) {
        (Some((wasmtime, component)), Some(answer)) => {
            Some(run_anchor(&b, &host.netns, wasmtime, component, answer))
        }
        _ => None,
    };

    // The chain, uncached: every page once.
    let pages: Vec<String> = (1..=PAGES).map(|n| format!("/bench/p{n}.html")).collect();
    let plain: Vec<String> = (1..=PAGES).map(|n| format!("/plain/p{n}.html")).collect();
    let t_chain = b.times("chain-uncached", &pages);
    let t_plain = b.times("plain-first", &plain);
    eprintln!(
        "p50 µs: hello {:.0} / hello.txt {:.0}; echo {:.0} / empty.txt {:.0}; chain uncached {:.0} / untransformed {:.0}",
        p50(&t_hello),
        p50(&t_hello_twin),
        p50(&t_echo),
        p50(&t_echo_twin),
        p50(&t_chain),
        p50(&t_plain)
    );

    // The first request to a newly synced component.
    let site = project.join("site");
    std::fs::write(site.join("one.txt"), "one change\n").unwrap();
    let plain_sync = b.sync();
    let wasm = std::fs::read(site.join("api/hello.wasm")).unwrap();
    std::fs::write(
        site.join("api/fresh.wasm"),
        with_custom_section(&wasm, &format!("{:?}", Instant::now())),
    )
    .unwrap();
    let toml = std::fs::read_to_string(&b.file).unwrap();
    std::fs::write(
        &b.file,
        toml + "\n[[domain.functions]]\npath = \"api/fresh.wasm\"\n",
    )
    .unwrap();
    let fresh_sync = b.sync();
    // Until the new route answers (the sync may return before the node
    // has compiled the component and switched).
    let synced = Instant::now();
    wait_until(
        Duration::from_secs(300),
        "the new component answers",
        || b.get("/api/fresh").starts_with(b"hello from node"),
    );
    let answering = synced.elapsed();
    let first = b.time("/api/fresh");
    let second = b.time("/api/fresh");
    eprintln!(
        "a new component: sync {:.1} s (one file {:.1} s), answering {:.1} s after, then {:.1} / {:.1} ms",
        fresh_sync.as_secs_f64(),
        plain_sync.as_secs_f64(),
        answering.as_secs_f64(),
        first * 1e3,
        second * 1e3
    );

    let mut rows: Vec<(String, String)> = vec![
        ("load average at start".into(), loadavg.trim().to_owned()),
        (
            "hello (Python) / hello.txt, rate (goal ≥ 0.5)".into(),
            format!(
                "{:.3} ({:.0} against {:.0} req/s)",
                rates[0].0 / rates[0].1,
                rates[0].0,
                rates[0].1
            ),
        ),
        (
            "echo (WAT) / empty.txt, rate".into(),
            format!(
                "{:.3} ({:.0} against {:.0} req/s)",
                rates[1].0 / rates[1].1,
                rates[1].0,
                rates[1].1
            ),
        ),
        (
            "hello: time added per call, p50 (goal < 50 µs)".into(),
            format!(
                "{:.0} µs (p50 {:.0} against {:.0} µs; p99 {:.0} against {:.0})",
                p50(&t_hello) - p50(&t_hello_twin),
                p50(&t_hello),
                p50(&t_hello_twin),
                p99(&t_hello),
                p99(&t_hello_twin)
            ),
        ),
        (
            "daemon RSS after the rate rounds (peak)".into(),
            format!("{rss_mib:.1} MiB ({hwm_mib:.1} MiB)"),
        ),
        (
            "echo: time added per call, p50".into(),
            format!(
                "{:.0} µs (p50 {:.0} against {:.0} µs)",
                p50(&t_echo) - p50(&t_echo_twin),
                p50(&t_echo),
                p50(&t_echo_twin)
            ),
        ),
        (
            "2-stage chain on a 10 KiB page, cached / untransformed, rate".into(),
            format!(
                "{:.3} ({:.0} against {:.0} req/s)",
                rates[2].0 / rates[2].1,
                rates[2].0,
                rates[2].1
            ),
        ),
        (
            format!("2-stage chain, uncached ({PAGES} pages once), p50 / p99"),
            format!(
                "{:.0} / {:.0} µs (untransformed pages once: {:.0} / {:.0} µs)",
                p50(&t_chain),
                p99(&t_chain),
                p50(&t_plain),
                p99(&t_plain)
            ),
        ),
        (
            "a new component: maki sync (returns before the node compiles)".into(),
            format!(
                "{:.1} s (a one-file sync: {:.1} s)",
                fresh_sync.as_secs_f64(),
                plain_sync.as_secs_f64()
            ),
        ),
        (
            "a new component: answering after the sync, then two requests".into(),
            format!(
                "{:.1} s, then {:.1} ms, {:.1} ms",
                answering.as_secs_f64(),
                first * 1e3,
                second * 1e3
            ),
        ),
    ];
    if let Some((t, twin)) = &t_rust {
        let (x, y) = rates[3];
        rows.insert(
            1,
            (
                "hello (Rust) / hello-rs.txt, rate (goal ≥ 0.5)".into(),
                format!("{:.3} ({x:.0} against {y:.0} req/s)", x / y),
            ),
        );
        rows.insert(
            2,
            (
                "hello (Rust): time added per call, p50 (goal < 50 µs)".into(),
                format!(
                    "{:.0} µs (p50 {:.0} against {:.0} µs; p99 {:.0} against {:.0})",
                    p50(t) - p50(twin),
                    p50(t),
                    p50(twin),
                    p99(t),
                    p99(twin)
                ),
            ),
        );
    }
    if let Some(a) = &anchored {
        rows.push((
            "hello (Rust) over HTTP/1.1: ours / `wasmtime serve`, rate (anchor)".into(),
            format!(
                "{:.3} ({:.0} against {:.0} req/s)",
                a.rates.0 / a.rates.1,
                a.rates.0,
                a.rates.1
            ),
        ));
        rows.push((
            "hello (Rust) over HTTP/1.1: ours / `wasmtime serve`, p50".into(),
            format!(
                "{:.0} against {:.0} µs (p99 {:.0} against {:.0})",
                p50(&a.times.0),
                p50(&a.times.1),
                p99(&a.times.0),
                p99(&a.times.1)
            ),
        ));
    }
    let table: Vec<(&str, String)> = rows.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    print_table(
        "wasm: functions and transforms against static files",
        &table,
    );
    print_json(
        "wasm",
        json!({
            "rates": pairs.iter().zip(&rates).map(|((name, _, _), (x, y))| json!({"case": name, "ours": x, "static": y})).collect::<Vec<_>>(),
            "p50_us": {"hello": p50(&t_hello), "hello_txt": p50(&t_hello_twin), "echo": p50(&t_echo), "empty_txt": p50(&t_echo_twin),
                       "chain_uncached": p50(&t_chain), "plain_first": p50(&t_plain)},
            "sync_s": {"fresh_component": fresh_sync.as_secs_f64(), "one_file": plain_sync.as_secs_f64()},
            "hello_rs_p50_us": t_rust.as_ref().map(|(t, twin)| json!({"ours": p50(t), "static": p50(twin)})),
            "anchor_wasmtime_serve": anchored.as_ref().map(|a| json!({
                "rate": {"ours": a.rates.0, "wasmtime_serve": a.rates.1},
                "p50_us": {"ours": p50(&a.times.0), "wasmtime_serve": p50(&a.times.1)},
            })),
            "answering_after_sync_s": answering.as_secs_f64(),
            "rss_mib": rss_mib,
            "peak_rss_mib": hwm_mib,
            "first_request_s": first,
            "second_request_s": second,
        }),
    );
}
