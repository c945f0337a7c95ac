//! `http`: the node daemon's HTTPS edge against nginx, on this machine,
//! reported as ratios (issue 8).
//!
//! 1. A site made from a fixed seed: `index.html`, `1k.txt` (1 KiB) and
//!    `100k.txt` (100 KiB) of text, which the node precompresses (br, zstd,
//!    gzip: served only to clients that ask, which h2load does not), and
//!    `10m.bin`, 10 MiB of random bytes, streamed from disk.
//!    `maki local up --nodes 1 --no-ca --sync` serves it as `bench.test`
//!    from one node (the release daemon beside this binary). `--no-ca`
//!    starts no pebble, so the node presents the self-signed certificate it
//!    makes for the name: ECDSA P-256, like an issued one.
//! 2. nginx in a network namespace of its own on the cluster's bridge
//!    (203.0.113.16k+11), root = the same site directory: 2 workers (1
//!    pinned),
//!    `sendfile on`, TLS 1.3 only, a self-signed P-256 certificate made with
//!    `openssl req`, `http2` on the listener, access log off, and our
//!    TLS 1.3 suite preference (AES-128-GCM first, the server's order), so
//!    that both run the same handshake and cipher. The rest are
//!    nginx's defaults (ETag, Last-Modified, no Cache-Control, no
//!    open_file_cache, gzip off), except `keepalive_requests`, raised so
//!    that no server closes a connection during a run.
//! 3. Clients in a third namespace (.16k+12), never on the host:
//!    - h2load (`-t 2`, `-D 10`): 1 KiB over HTTP/1.1 keep-alive, 64
//!      connections; 100 KiB over HTTP/1.1, 64 connections; 1 KiB over
//!      HTTP/2, 64 connections of 10 streams each; 10 MiB over HTTP/1.1,
//!      8 connections;
//!    - full TLS 1.3 handshakes: two `openssl s_time -new -tls1_3` at once
//!      (h2load resumes sessions when it reconnects). s_time sends no SNI,
//!      so our node answers with its fallback certificate (P-256 too).
//! 4. Rounds alternate between the servers (which one goes first swaps
//!    every round); best of three per server and case: the highest rate
//!    and, apart, the lowest CPU per request.
//! 5. Server CPU per request: utime + stime of the serving processes (our
//!    `makiatto … run` with all its threads; nginx's master and workers),
//!    from `/proc` before and after each run, over the requests (or
//!    handshakes) completed. The client's own CPU and how busy the machine
//!    was ("others": neither the server nor the client) are logged on
//!    stderr with every run.
//! 6. Before any load, every file is fetched from both servers with curl
//!    over HTTP/1.1 and HTTP/2 and compared with its source bytes; the
//!    response heads of `1k.txt` are printed.
//! 7. Resident memory of both after the runs (RSS and PSS; nginx summed
//!    over its processes).
//!
//! Goals (issue 8): ≥ 1.2 × nginx's requests per second at ≤ 0.7 × its CPU
//! per request on the small files (1 KiB, 100 KiB) and handshakes;
//! ≥ 1.1 × its throughput on the 10 MiB file.
//!
//! `MAKIATTO_BENCH_CASES=10m-h1,1k-h2`: only the cases with these keys.
//!
//! `MAKIATTO_BENCH_PINNED=1`: every server on CPU 0 with one worker (our
//! daemon restarted under `taskset -c 0`, so it runs one serving thread;
//! nginx with one worker), h2load (`-t 1`) and one `s_time` on CPU 1
//! (`makiatto_harness::Placement`). Without it, servers and clients share
//! both cores (two workers, `-t 2`, two `s_time`).
//!
//! `MAKIATTO_BENCH_INSTRUCTIONS=1`: after the rounds, per request of 1 KiB
//! over HTTP/1.1 and HTTP/2 (20,000 requests, 8 connections),
//! the system calls of each server as it runs (perf), then each restarted
//! under valgrind's callgrind and its user-space instructions counted
//! (`makiatto_harness::instructions`): figures that do not move with the
//! machine's load, for judging changes of a few percent.
//!
//! `MAKIATTO_BENCH_BASELINE=PATH`: a two-node cluster whose second node
//! runs the daemon at PATH (another build of ours), measured as a third
//! server in the same alternating rounds; the table adds its ratios and
//! ours / baseline. Runs on this VM vary by up to 30% from one to the next,
//! so two builds are compared in one run, not across runs.
//!
//! `MAKIATTO_BENCH_PERF=DIR`: after the rounds, one more run per case and
//! server under `perf record -g` (not counted), written to
//! `DIR/<case>-<server>.data`. `MAKIATTO_BENCH_PERF_DWARF=1` records DWARF
//! call graphs (callers of libc's functions too; much larger files).
//!
//! Needs root, nginx, h2load, openssl and curl (`apt-get install
//! nginx-light nghttp2-client`). Build first:
//! `cargo build --release -p makiatto -p makiatto-cli -p makiatto-benches --bins`
//! then `target/release/http`. Everything it made (namespaces, nginx, the
//! cluster) is removed when it ends, also on a panic.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test and benchmark support: a failure is a panic that fails the run

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use makiatto_benches::measure::{fastest_and_cheapest, print_json, print_table};
use makiatto_benches::reports;
use makiatto_harness::cpu::{Sample, Usage, proc_kib};
use makiatto_harness::instructions::UnderCallgrind;
use makiatto_harness::netns::{daemon_pid, in_namespace, netns_pids};
use makiatto_harness::{Lab, Placement, have, stdout, wait_until};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde_json::json;

const DOMAIN: &str = "bench.test";
const SECONDS: u32 = 10;
const ROUNDS: usize = 3;
/// The files of the site, with their sizes (`index.html`: whatever its page takes).
const FILES: [(&str, usize); 4] = [
    ("index.html", 0),
    ("1k.txt", 1 << 10),
    ("100k.txt", 100 << 10),
    ("10m.bin", 10 << 20),
];
/// The files the node precompresses (text over 256 bytes).
const COMPRESSED: [&str; 3] = ["index.html", "1k.txt", "100k.txt"];

/// What a case asks of a server.
#[derive(Debug, Clone, Copy)]
enum Load {
    /// h2load: HTTP/1.1 or HTTP/2, connections, streams per connection.
    H2load {
        h1: bool,
        conns: u32,
        streams: u32,
        path: &'static str,
    },
    /// Full TLS handshakes with `openssl s_time -new`.
    Handshakes,
}

#[derive(Debug, Clone, Copy)]
struct Case {
    key: &'static str,
    label: &'static str,
    load: Load,
    /// Goals: rate ≥ this × nginx's …
    rate_goal: f64,
    /// … at CPU per request ≤ this × nginx's (none for the large file).
    cpu_goal: Option<f64>,
}

const CASES: [Case; 5] = [
    Case {
        key: "1k-h1",
        label: "1 KiB, HTTP/1.1, 64 conns",
        load: Load::H2load {
            h1: true,
            conns: 64,
            streams: 1,
            path: "/1k.txt",
        },
        rate_goal: 1.2,
        cpu_goal: Some(0.7),
    },
    Case {
        key: "100k-h1",
        label: "100 KiB, HTTP/1.1, 64 conns",
        load: Load::H2load {
            h1: true,
            conns: 64,
            streams: 1,
            path: "/100k.txt",
        },
        rate_goal: 1.2,
        cpu_goal: Some(0.7),
    },
    Case {
        key: "1k-h2",
        label: "1 KiB, HTTP/2, 64 conns × 10 streams",
        load: Load::H2load {
            h1: false,
            conns: 64,
            streams: 10,
            path: "/1k.txt",
        },
        rate_goal: 1.2,
        cpu_goal: Some(0.7),
    },
    Case {
        key: "10m-h1",
        label: "10 MiB, HTTP/1.1, 8 conns",
        load: Load::H2load {
            h1: true,
            conns: 8,
            streams: 1,
            path: "/10m.bin",
        },
        rate_goal: 1.1,
        cpu_goal: None,
    },
    Case {
        key: "handshakes",
        label: "full TLS 1.3 handshakes",
        load: Load::Handshakes,
        rate_goal: 1.2,
        cpu_goal: Some(0.7),
    },
];

/// A server under test: where it listens and the processes that serve.
struct Server {
    label: &'static str,
    addr: String,
    pids: Vec<u32>,
}

/// The load generators' namespace and where they run.
struct Client {
    ns: String,
    placement: Placement,
}

impl Client {
    /// `ip netns exec NS [taskset -c 1] ARGV…`.
    fn command(&self, argv: &[&str]) -> Command {
        in_namespace(&self.ns, &self.placement.client(), argv)
    }
}

/// One run of one case against one server.
#[derive(Debug, Clone, Default)]
struct Run {
    /// Requests (or handshakes) completed.
    done: u64,
    seconds: f64,
    /// Response body bytes received.
    data_bytes: u64,
    /// Response head bytes received (HPACK-compressed over HTTP/2).
    header_bytes: u64,
    usage: Usage,
    /// TLS version, cipher, key exchange and ALPN, as h2load saw them.
    tls: String,
}

impl Run {
    fn rate(&self) -> f64 {
        self.done as f64 / self.seconds
    }

    fn data_mb_s(&self) -> f64 {
        self.data_bytes as f64 / self.seconds / 1e6
    }

    fn per_request_us(&self, seconds: f64) -> f64 {
        seconds * 1e6 / self.done.max(1) as f64
    }

    fn user_us(&self) -> f64 {
        self.per_request_us(self.usage.user_s)
    }

    fn sys_us(&self) -> f64 {
        self.per_request_us(self.usage.sys_s)
    }

    fn cpu_us(&self) -> f64 {
        self.user_us() + self.sys_us()
    }

    fn client_us(&self) -> f64 {
        self.per_request_us(self.usage.client_s)
    }
}

fn h2load(client: &Client, server: &Server, load: Load) -> Run {
    let Load::H2load {
        h1,
        conns,
        streams,
        path,
    } = load
    else {
        unreachable!("h2load runs h2load cases")
    };
    let mut cmd = client.command(&["timeout", "120", "h2load"]);
    cmd.arg(format!("--connect-to={}:443", server.addr))
        .args(["-t", &client.placement.workers().to_string()])
        .args(["-c", &conns.to_string()])
        .args(["-m", &streams.to_string(), "-D", &SECONDS.to_string()]);
    if h1 {
        cmd.arg("--h1");
    }
    cmd.arg(format!("https://{DOMAIN}{path}"));
    let before = Sample::take(&server.pids);
    let out = stdout(&mut cmd);
    // What the server does as the connections close belongs to this run.
    std::thread::sleep(Duration::from_millis(300));
    let usage = Sample::take(&server.pids).since(&before);
    let report = reports::H2load::parse(&out);
    assert!(
        report.all_ok(),
        "{} {path}: requests failed:\n{out}",
        server.label
    );
    Run {
        done: report.succeeded(),
        seconds: report.seconds,
        data_bytes: report.data_bytes,
        header_bytes: report.header_bytes,
        usage,
        tls: report.tls,
    }
}

/// The cipher suite a full handshake like s_time's (TLS 1.3, no SNI,
/// OpenSSL's default order) gets from the server at `addr`.
fn suite(client_ns: &str, addr: &str) -> String {
    let out = in_namespace(client_ns, &[], &["timeout", "20", "openssl"])
        .args(["s_client", "-tls1_3", "-connect"])
        .arg(format!("{addr}:443"))
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .expect("openssl s_client runs");
    // New, TLSv1.3, Cipher is TLS_AES_128_GCM_SHA256
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.split("Cipher is ").nth(1))
        .unwrap_or("suite unknown")
        .trim()
        .to_owned()
}

fn handshakes(client: &Client, server: &Server) -> Run {
    let before = Sample::take(&server.pids);
    let start = Instant::now();
    let clients: Vec<_> = (0..client.placement.workers())
        .map(|_| {
            client
                .command(&["timeout", "60", "openssl"])
                .args(["s_time", "-new", "-tls1_3", "-connect"])
                .arg(format!("{}:443", server.addr))
                .args(["-time", &SECONDS.to_string()])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("openssl s_time starts")
        })
        .collect();
    let mut done = 0;
    for c in clients {
        let out = c.wait_with_output().expect("openssl s_time ends");
        let text = String::from_utf8_lossy(&out.stdout);
        // 12345 connections in 4.32s; 2857.64 connections/user sec, bytes read 0
        let n = text
            .lines()
            .find(|l| l.contains("connections/user sec"))
            .and_then(|l| l.split_whitespace().next()?.parse::<u64>().ok());
        done += n.unwrap_or_else(|| {
            panic!(
                "{}: openssl s_time failed:\n{text}{}",
                server.label,
                String::from_utf8_lossy(&out.stderr)
            )
        });
    }
    let seconds = start.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(300));
    let usage = Sample::take(&server.pids).since(&before);
    Run {
        done,
        seconds,
        usage,
        tls: format!("TLS 1.3, no SNI, {}", suite(&client.ns, &server.addr)),
        ..Run::default()
    }
}

fn measure(client: &Client, server: &Server, case: &Case) -> Run {
    let r = match case.load {
        Load::H2load { .. } => h2load(client, server, case.load),
        Load::Handshakes => handshakes(client, server),
    };
    eprintln!(
        "{:>5} {:<12}: {:>9.0}/s ({:>7.1} MB/s), {:>7.1} µs/request (user {:.1} + sys {:.1}), client {:.1} µs/request, head {:.0} B, machine busy {:.0}% (others {:.0}%, steal {:.0}%; softirq {:.0}%) [{}] [{}] other processes: [{}]",
        server.label,
        case.key,
        r.rate(),
        r.data_mb_s(),
        r.cpu_us(),
        r.user_us(),
        r.sys_us(),
        r.client_us(),
        r.header_bytes as f64 / r.done.max(1) as f64,
        r.usage.machine_busy * 100.0,
        r.usage.others * 100.0,
        r.usage.steal * 100.0,
        r.usage.softirq * 100.0,
        r.usage.threads,
        r.tls,
        r.usage.other_processes,
    );
    r
}

/// Requests per server and case in the instruction counts: enough that a
/// request's share of fixed costs is small, few enough for valgrind.
const COUNTED_REQUESTS: u32 = 20_000;

/// h2load sending exactly `n` requests of `case` (HTTP/1.1 or HTTP/2,
/// 8 connections) to `server`.
fn fixed_requests(client: &Client, server: &Server, case: &Case, n: u32) {
    let Load::H2load {
        h1, streams, path, ..
    } = case.load
    else {
        unreachable!("counted cases are h2load cases")
    };
    let mut cmd = client.command(&["timeout", "600", "h2load"]);
    cmd.arg(format!("--connect-to={}:443", server.addr))
        .args(["-t", "1", "-c", "8", "-m", &streams.to_string()])
        .args(["-n", &n.to_string()]);
    if h1 {
        cmd.arg("--h1");
    }
    cmd.arg(format!("https://{DOMAIN}{path}"));
    let out = stdout(&mut cmd);
    assert_eq!(
        reports::H2load::parse(&out).succeeded(),
        u64::from(n),
        "{}: not every counted request succeeded:\n{out}",
        server.label
    );
}

/// Per server and case: user-space instructions (callgrind) and system
/// calls (perf) per request, over [`COUNTED_REQUESTS`] requests.
struct Counted {
    server: &'static str,
    case: &'static str,
    instructions: f64,
    syscalls: f64,
}

/// `MAKIATTO_BENCH_INSTRUCTIONS=1`: system calls per request on the servers
/// as they run, then each server restarted under callgrind and its
/// instructions per request counted. Runs last: it leaves the servers under
/// valgrind.
fn count_per_request(
    lab: &mut Lab,
    client: &Client,
    servers: &[Server],
    node: &str,
    nginx: (&str, &str, &str),
    cases: &[&Case],
) -> Vec<Counted> {
    let counted: Vec<&&Case> = cases
        .iter()
        .filter(|c| matches!(c.key, "1k-h1" | "1k-h2"))
        .collect();
    let mut out = Vec::new();
    let n = f64::from(COUNTED_REQUESTS);
    let (ours, nginx_server) = (&servers[0], &servers[servers.len() - 1]);
    for s in [ours, nginx_server] {
        for case in &counted {
            // nginx: the master and every worker (whichever took the
            // connections).
            let ((), calls) = makiatto_harness::instructions::count_syscalls(&s.pids, || {
                fixed_requests(client, s, case, COUNTED_REQUESTS)
            });
            out.push(Counted {
                server: s.label,
                case: case.key,
                instructions: 0.0,
                syscalls: calls as f64 / n,
            });
        }
    }
    let dumps = lab.cluster.dir.path().join("callgrind");
    let prefix = makiatto_harness::instructions::callgrind_prefix(&dumps);
    // Ours: the daemon again, in the foreground under callgrind.
    let daemon = UnderCallgrind::restart(&lab.cluster, node, &dumps, || {
        fetch(&client.ns, &ours.addr, "1k.txt", false, &[]).1.len() == 1024
    });
    for case in &counted {
        let ((), ir) = daemon.count(|| fixed_requests(client, ours, case, COUNTED_REQUESTS));
        if let Some(c) = out
            .iter_mut()
            .find(|c| c.server == "ours" && c.case == case.key)
        {
            c.instructions = ir as f64 / n;
        }
    }
    // nginx: one process (no master) under callgrind, in its namespace.
    let (ns, conf, error_log) = nginx;
    let mut argv: Vec<&str> = prefix.iter().map(String::as_str).collect();
    argv.extend([
        "nginx",
        "-c",
        conf,
        "-e",
        error_log,
        "-g",
        "daemon off; master_process off;",
    ]);
    let nginx_pid = lab.spawn_anchor(ns, &argv);
    wait_until(
        Duration::from_secs(60),
        "nginx serves under callgrind",
        || {
            fetch(&client.ns, &nginx_server.addr, "1k.txt", false, &[])
                .1
                .len()
                == 1024
        },
    );
    let within = vec![
        "ip".to_owned(),
        "netns".into(),
        "exec".into(),
        ns.to_owned(),
    ];
    for case in &counted {
        let ((), ir) =
            makiatto_harness::instructions::count_instructions(&within, nginx_pid, &dumps, || {
                fixed_requests(client, nginx_server, case, COUNTED_REQUESTS)
            });
        if let Some(c) = out
            .iter_mut()
            .find(|c| c.server == "nginx" && c.case == case.key)
        {
            c.instructions = ir as f64 / n;
        }
    }
    out
}

/// Runs `f` under `perf record -g` of the server's processes when `dir`
/// is given.
fn profiled<T>(dir: Option<&Path>, name: &str, pids: &[u32], f: impl FnOnce() -> T) -> T {
    let Some(dir) = dir else { return f() };
    let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
    let mut perf = Command::new("perf")
        .args(["record", "-F", "999"])
        .args(
            match std::env::var("MAKIATTO_BENCH_PERF_DWARF").as_deref() {
                // Call graphs through libc, which has no frame pointers.
                Ok("1") => ["--call-graph", "dwarf,16384"],
                _ => ["--call-graph", "fp"],
            },
        )
        .arg("-o")
        .arg(dir.join(format!("{name}.data")))
        .args(["-p", &pids.join(",")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("perf starts");
    std::thread::sleep(Duration::from_millis(500));
    let r = f();
    let _ = Command::new("kill")
        .args(["-INT", &perf.id().to_string()])
        .status();
    let _ = perf.wait();
    r
}

/// Response head (from stderr) and body of `curl https://bench.test/PATH`
/// from the client namespace, to `addr`.
fn fetch(
    client_ns: &str,
    addr: &str,
    path: &str,
    http2: bool,
    extra: &[&str],
) -> (String, Vec<u8>) {
    let resolve = format!("{DOMAIN}:443:{addr}");
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            client_ns,
            "curl",
            "-sk",
            "--max-time",
            "60",
        ])
        .args(["--resolve", &resolve, "-D", "/dev/stderr"])
        .arg(if http2 { "--http2" } else { "--http1.1" })
        .args(extra)
        .arg(format!("https://{DOMAIN}/{path}"))
        .output()
        .expect("curl runs");
    (
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.stdout,
    )
}

/// Text of `len` bytes: words from a small vocabulary, in lines.
fn text(rng: &mut ChaCha20Rng, len: usize) -> Vec<u8> {
    const WORDS: [&str; 24] = [
        "node", "edge", "cache", "event", "mesh", "zone", "site", "blob", "version", "peer",
        "signed", "replica", "served", "nearest", "health", "request", "the", "a", "of", "and",
        "to", "from", "every", "one",
    ];
    let mut out = String::new();
    let mut line = 0;
    while out.len() < len {
        let w = WORDS[rng.random_range(0..WORDS.len())];
        if line + w.len() > 72 {
            out.push('\n');
            line = 0;
        } else if line > 0 {
            out.push(' ');
            line += 1;
        }
        out.push_str(w);
        line += w.len();
    }
    let mut bytes = out.into_bytes();
    bytes.truncate(len - 1);
    bytes.push(b'\n');
    bytes
}

/// Writes the site and its `makiatto.toml`; returns the project file.
fn make_site(project: &Path) -> PathBuf {
    let site = project.join("site");
    std::fs::create_dir_all(&site).expect("site dir");
    let mut rng = ChaCha20Rng::seed_from_u64(8);
    for (name, size) in FILES {
        let bytes = match name {
            "index.html" => {
                let mut page = String::from(
                    "<!doctype html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\"><title>bench.test</title></head>\n<body>\n<h1>bench.test</h1>\n<ul>\n",
                );
                for (f, _) in FILES.iter().skip(1) {
                    let _ = writeln!(page, "<li><a href=\"/{f}\">{f}</a></li>");
                }
                page.push_str("</ul>\n<p>The files of the HTTPS benchmark of issue 8: the same bytes on the node and on nginx.</p>\n</body>\n</html>\n");
                page.into_bytes()
            }
            n if n.ends_with(".txt") => text(&mut rng, size),
            _ => {
                let mut b = vec![0u8; size];
                rng.fill_bytes(&mut b);
                b
            }
        };
        std::fs::write(site.join(name), bytes).expect("site file");
    }
    let file = project.join("makiatto.toml");
    std::fs::write(
        &file,
        format!("[[domain]]\nname = \"{DOMAIN}\"\npath = \"site\"\n"),
    )
    .expect("makiatto.toml");
    file
}

/// nginx's certificate, configuration and directories under `dir`;
/// returns the configuration file.
fn nginx_conf(dir: &Path, addr: &str, root: &Path, workers: usize) -> PathBuf {
    for d in ["tmp", "logs"] {
        std::fs::create_dir_all(dir.join(d)).expect("nginx dir");
    }
    stdout(
        Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
            ])
            .args(["-nodes", "-days", "30", "-subj", &format!("/CN={DOMAIN}")])
            .args(["-addext", &format!("subjectAltName=DNS:{DOMAIN}")])
            .arg("-keyout")
            .arg(dir.join("key.pem"))
            .arg("-out")
            .arg(dir.join("cert.pem"))
            .stderr(Stdio::null()),
    );
    let d = dir.display();
    let root = root.display();
    let conf = format!(
        "user root;\nworker_processes {workers};\npid {d}/nginx.pid;\nerror_log {d}/logs/error.log warn;\n\
         events {{\n    worker_connections 4096;\n}}\n\
         http {{\n    include /etc/nginx/mime.types;\n    default_type application/octet-stream;\n    \
         charset utf-8;\n    access_log off;\n    sendfile on;\n    tcp_nopush on;\n    tcp_nodelay on;\n    \
         keepalive_timeout 65;\n    keepalive_requests 10000000;\n    \
         client_body_temp_path {d}/tmp/body;\n    proxy_temp_path {d}/tmp/proxy;\n    \
         fastcgi_temp_path {d}/tmp/fastcgi;\n    uwsgi_temp_path {d}/tmp/uwsgi;\n    \
         scgi_temp_path {d}/tmp/scgi;\n    \
         server {{\n        listen {addr}:443 ssl http2;\n        server_name {DOMAIN};\n        \
         ssl_certificate {d}/cert.pem;\n        ssl_certificate_key {d}/key.pem;\n        \
         ssl_protocols TLSv1.3;\n        \
         ssl_conf_command Ciphersuites TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256;\n        \
         ssl_prefer_server_ciphers on;\n        root {root};\n    }}\n}}\n"
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).expect("nginx.conf");
    path
}

/// (RSS, PSS) of processes, summed, in KiB.
fn memory_kib(pids: &[u32]) -> (u64, u64) {
    pids.iter().fold((0, 0), |(rss, pss), &p| {
        (
            rss + proc_kib(p, "status", "VmRSS"),
            pss + proc_kib(p, "smaps_rollup", "Pss"),
        )
    })
}

/// The best of a server's rounds: the highest rate, with the lowest CPU
/// per request of any round.
fn best(runs: &[Run]) -> Run {
    let (fastest, cpu) = fastest_and_cheapest(runs, Run::rate, Run::cpu_us);
    let mut b = fastest.clone();
    // Per request of the cheapest round, scaled to this run's count.
    let scale = b.done as f64 / cpu.done.max(1) as f64;
    b.usage.user_s = cpu.usage.user_s * scale;
    b.usage.sys_s = cpu.usage.sys_s * scale;
    b
}

fn main() {
    for tool in ["nginx", "h2load", "openssl", "curl"] {
        assert!(
            have(tool),
            "{tool} is not installed: apt-get install nginx-light nghttp2-client curl"
        );
    }
    let perf_dir = std::env::var_os("MAKIATTO_BENCH_PERF").map(PathBuf::from);
    if let Some(d) = &perf_dir {
        assert!(
            have("perf"),
            "perf is not installed: apt-get install linux-perf"
        );
        std::fs::create_dir_all(d).expect("the perf directory");
    }
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    let mut lab = Lab::new("h");
    let name = lab.cluster.name.clone();
    let project = lab.cluster.dir.path().join("project");
    let file = make_site(&project);
    let site = project.join("site");
    // `MAKIATTO_BENCH_BASELINE=PATH`: a second node runs that daemon, a
    // third server in the same rounds (an A/B of two builds of ours).
    let baseline = std::env::var_os("MAKIATTO_BENCH_BASELINE").map(PathBuf::from);
    let nodes = if let Some(b) = &baseline {
        eprintln!(
            "bringing up two nodes, the second with {} ({name})",
            b.display()
        );
        let nodes = lab.up(2, &file, &["--no-ca"]);
        lab.cluster.swap_daemon(&nodes[1].node, b);
        nodes
    } else {
        eprintln!("bringing up one node ({name})");
        lab.up(1, &file, &["--no-ca"])
    };
    // `MAKIATTO_BENCH_PINNED=1`: every server on CPU 0 with one worker,
    // the load on CPU 1 (ours restarted under taskset, so it sizes itself).
    let placement = Placement::from_env();
    if placement.pinned() {
        for n in &nodes {
            lab.cluster.restart_daemon(&n.node, &placement.server());
        }
    }
    let node = nodes[0].clone();
    let nginx_ns = format!("mkhttp-{name}-nginx");
    let client_ns = format!("mkhttp-{name}-client");
    let nginx_addr = lab.anchor_namespace(&nginx_ns, "wn");
    lab.client_namespace(&client_ns, "wc");
    let client = Client {
        ns: client_ns.clone(),
        placement,
    };
    // Two s_time clients make ~5,000 connections a second: room for them.
    for setting in [
        "net.ipv4.ip_local_port_range=1024 65535",
        "net.ipv4.tcp_tw_reuse=1",
    ] {
        stdout(&mut in_namespace(
            &client_ns,
            &[],
            &["sysctl", "-qw", setting],
        ));
    }

    let source: Vec<(&str, Vec<u8>)> = FILES
        .iter()
        .map(|(f, _)| (*f, std::fs::read(site.join(f)).expect("site file")))
        .collect();
    // Each node serves the site, with its precompressed variants made (a
    // rebuild after they are empties the small-file cache).
    for n in &nodes {
        wait_until(Duration::from_secs(60), "the node serves the site", || {
            fetch(&client_ns, &n.ipv4, "1k.txt", false, &[]).1 == source[1].1
        });
        wait_until(
            Duration::from_secs(120),
            "the node serves precompressed variants",
            || {
                COMPRESSED.iter().all(|f| {
                    let (head, _) = fetch(
                        &client_ns,
                        &n.ipv4,
                        f,
                        false,
                        &["-H", "accept-encoding: br", "-o", "/dev/null"],
                    );
                    head.to_ascii_lowercase().contains("content-encoding: br")
                })
            },
        );
    }

    let conf = nginx_conf(
        &lab.cluster.dir.path().join("nginx"),
        &nginx_addr,
        &site,
        placement.workers(),
    );
    let conf_arg = conf.to_str().expect("utf-8");
    let error_log = lab.cluster.dir.path().join("nginx/logs/error.log");
    let mut argv = placement.server();
    argv.extend([
        "nginx",
        "-c",
        conf_arg,
        "-e",
        error_log.to_str().expect("utf-8"),
        "-g",
        "daemon off;",
    ]);
    let nginx_pid = lab.spawn_anchor(&nginx_ns, &argv);
    wait_until(Duration::from_secs(20), "nginx serves the site", || {
        fetch(&client_ns, &nginx_addr, "1k.txt", false, &[]).1 == source[1].1
    });
    let nginx_pids = netns_pids(&nginx_ns);
    assert!(
        nginx_pids.contains(&nginx_pid) && nginx_pids.len() == 1 + placement.workers(),
        "nginx: a master and {} workers, found {nginx_pids:?}",
        placement.workers()
    );
    let ours_pid = daemon_pid(&node.netns).expect("the node's `makiatto run` process");

    let mut servers = vec![Server {
        label: "ours",
        addr: node.ipv4.clone(),
        pids: vec![ours_pid],
    }];
    if let Some(base) = nodes.get(1) {
        servers.push(Server {
            label: "base",
            addr: base.ipv4.clone(),
            pids: vec![daemon_pid(&base.netns).expect("the baseline's `makiatto run` process")],
        });
    }
    servers.push(Server {
        label: "nginx",
        addr: nginx_addr.clone(),
        pids: nginx_pids.clone(),
    });
    let last = servers.len() - 1;

    // The same bytes from every server, over both protocols.
    for (name, bytes) in &source {
        for Server {
            label: who, addr, ..
        } in &servers
        {
            for http2 in [false, true] {
                let (head, body) = fetch(&client_ns, addr, name, http2, &[]);
                assert!(
                    body == *bytes,
                    "{who} {name} over {}: {} bytes, not the source's {}\n{head}",
                    if http2 { "HTTP/2" } else { "HTTP/1.1" },
                    body.len(),
                    bytes.len()
                );
            }
        }
    }
    eprintln!("every server returns the source bytes of every file, over HTTP/1.1 and HTTP/2");
    for Server {
        label: who, addr, ..
    } in &servers
    {
        let (head, _) = fetch(&client_ns, addr, "1k.txt", false, &["-o", "/dev/null"]);
        eprintln!("{who}: the response head of 1k.txt:\n{}", head.trim_end());
    }

    // `MAKIATTO_BENCH_CASES=10m-h1,1k-h2`: only these cases (by key).
    let only = std::env::var("MAKIATTO_BENCH_CASES").ok();
    let cases: Vec<&Case> = CASES
        .iter()
        .filter(|c| {
            only.as_deref()
                .is_none_or(|o| o.split(',').any(|k| k == c.key))
        })
        .collect();
    assert!(!cases.is_empty(), "MAKIATTO_BENCH_CASES names no case");
    let mut results = Vec::new(); // per case: all runs of each server
    for case in &cases {
        let mut runs: Vec<Vec<Run>> = vec![Vec::new(); servers.len()];
        for round in 0..ROUNDS {
            for k in 0..servers.len() {
                let i = (k + round) % servers.len();
                runs[i].push(measure(&client, &servers[i], case));
            }
        }
        results.push(runs);
    }
    if let Some(dir) = &perf_dir {
        for case in &cases {
            for s in &servers {
                let name = format!("{}-{}", case.key, s.label);
                eprint!("profiled, not counted: ");
                profiled(Some(dir), &name, &s.pids, || measure(&client, s, case));
            }
        }
    }

    let ours_mem = memory_kib(&[ours_pid]);
    let ours_hwm = proc_kib(ours_pid, "status", "VmHWM");
    let nginx_mem = memory_kib(&nginx_pids);
    let counted = if std::env::var("MAKIATTO_BENCH_INSTRUCTIONS").as_deref() == Ok("1") {
        count_per_request(
            &mut lab,
            &client,
            &servers,
            &node.node,
            (&nginx_ns, conf_arg, error_log.to_str().expect("utf-8")),
            &cases,
        )
    } else {
        Vec::new()
    };

    let mut rows: Vec<(String, String)> = vec![
        ("load average at start".into(), loadavg.trim().to_owned()),
        ("placement".into(), placement.label().to_owned()),
        (
            "rounds".into(),
            format!("best of {ROUNDS} alternating rounds of {SECONDS} s"),
        ),
    ];
    let mut json_cases = serde_json::Map::new();
    for (case, runs) in cases.iter().zip(&results) {
        let (o, n) = (best(&runs[0]), best(&runs[last]));
        let large = case.cpu_goal.is_none();
        // What a case is measured by: data rate for large files, else
        // requests per second.
        let value = |r: &Run| if large { r.data_mb_s() } else { r.rate() };
        let unit = if large { "MB/s" } else { "/s" };
        let (ours_rate, nginx_rate) = (value(&o), value(&n));
        let rate_ratio = ours_rate / nginx_rate;
        let cpu_ratio = o.cpu_us() / n.cpu_us();
        let range = |rs: &[Run]| {
            let lo = rs.iter().map(value).fold(f64::MAX, f64::min);
            let hi = rs.iter().map(value).fold(0.0, f64::max);
            format!("{lo:.0}–{hi:.0}")
        };
        let l = case.label;
        rows.push((
            format!("{l}: ours / nginx"),
            format!("{ours_rate:.0} / {nginx_rate:.0} {unit}"),
        ));
        rows.push((
            format!("{l}: ratio (goal ≥ {})", case.rate_goal),
            format!(
                "{rate_ratio:.2} ({})",
                if rate_ratio >= case.rate_goal {
                    "met"
                } else {
                    "not met"
                }
            ),
        ));
        rows.push((
            format!("{l}: range of the rounds, ours / nginx"),
            format!("{} / {}", range(&runs[0]), range(&runs[last])),
        ));
        rows.push((
            format!("{l}: server CPU per request, ours / nginx"),
            format!(
                "{:.1} µs ({:.1} + {:.1}) / {:.1} µs ({:.1} + {:.1})",
                o.cpu_us(),
                o.user_us(),
                o.sys_us(),
                n.cpu_us(),
                n.user_us(),
                n.sys_us()
            ),
        ));
        rows.push((
            format!(
                "{l}: CPU ratio{}",
                case.cpu_goal
                    .map_or(String::new(), |g| format!(" (goal ≤ {g})"))
            ),
            match case.cpu_goal {
                Some(g) => format!(
                    "{cpu_ratio:.2} ({})",
                    if cpu_ratio <= g { "met" } else { "not met" }
                ),
                None => format!("{cpu_ratio:.2}"),
            },
        ));
        rows.push((
            format!("{l}: client CPU per request, with ours / nginx"),
            format!("{:.1} / {:.1} µs", o.client_us(), n.client_us()),
        ));
        if baseline.is_some() {
            let b = best(&runs[1]);
            rows.push((
                format!("{l}: baseline, rate ratio and CPU ratio to nginx"),
                format!(
                    "{:.2}, {:.2} ({:.1} µs; rounds {})",
                    value(&b) / nginx_rate,
                    b.cpu_us() / n.cpu_us(),
                    b.cpu_us(),
                    range(&runs[1])
                ),
            ));
            rows.push((
                format!("{l}: ours / baseline, rate and CPU"),
                format!(
                    "{:.2}, {:.2}",
                    ours_rate / value(&b),
                    o.cpu_us() / b.cpu_us()
                ),
            ));
        }
        let run_json = |r: &Run, all: &[Run]| {
            json!({
                "rate": r.rate(),
                "data_mb_s": r.data_mb_s(),
                "cpu_us": r.cpu_us(),
                "user_us": r.user_us(),
                "sys_us": r.sys_us(),
                "client_us": r.client_us(),
                "head_bytes": r.header_bytes as f64 / r.done.max(1) as f64,
                "tls": r.tls,
                "rounds": all.iter().map(|r| json!({
                    "rate": r.rate(),
                    "data_mb_s": r.data_mb_s(),
                    "cpu_us": r.cpu_us(),
                    "machine_busy": r.usage.machine_busy,
                    "others_busy": r.usage.others,
                })).collect::<Vec<_>>(),
            })
        };
        json_cases.insert(
            case.key.to_owned(),
            json!({
                "ours": run_json(&o, &runs[0]),
                "nginx": run_json(&n, &runs[last]),
                "rate_ratio": rate_ratio,
                "cpu_ratio": cpu_ratio,
            }),
        );
    }
    let mib = |kib: u64| kib as f64 / 1024.0;
    rows.push((
        "memory ours (makiatto run): RSS / PSS / peak RSS".into(),
        format!(
            "{:.1} / {:.1} / {:.1} MiB",
            mib(ours_mem.0),
            mib(ours_mem.1),
            mib(ours_hwm)
        ),
    ));
    rows.push((
        "memory nginx (master + 2 workers): RSS / PSS".into(),
        format!("{:.1} / {:.1} MiB", mib(nginx_mem.0), mib(nginx_mem.1)),
    ));
    let mut json_counted = Vec::new();
    for key in ["1k-h1", "1k-h2"] {
        let of = |server: &str| counted.iter().find(|c| c.case == key && c.server == server);
        if let (Some(o), Some(n)) = (of("ours"), of("nginx")) {
            rows.push((
                format!("{key}: user-space instructions per request, ours / nginx"),
                format!(
                    "{:.0} / {:.0} (ratio {:.2})",
                    o.instructions,
                    n.instructions,
                    o.instructions / n.instructions
                ),
            ));
            rows.push((
                format!("{key}: system calls per request, ours / nginx"),
                format!(
                    "{:.2} / {:.2} (ratio {:.2})",
                    o.syscalls,
                    n.syscalls,
                    o.syscalls / n.syscalls
                ),
            ));
        }
        for c in counted.iter().filter(|c| c.case == key) {
            json_counted.push(json!({
                "server": c.server, "case": c.case,
                "instructions_per_request": c.instructions,
                "syscalls_per_request": c.syscalls,
            }));
        }
    }
    let rows_ref: Vec<(&str, String)> = rows.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    print_table("http: makiatto vs nginx 1.22 (1 node, 2 cores)", &rows_ref);
    let mut fields = json!({
        "rss_kib": { "ours": ours_mem.0, "nginx": nginx_mem.0 },
        "pss_kib": { "ours": ours_mem.1, "nginx": nginx_mem.1 },
        "peak_rss_kib": { "ours": ours_hwm },
        "seconds": SECONDS,
        "rounds": ROUNDS,
        "pinned": placement.pinned(),
        "per_request_counts": json_counted,
    });
    if let Some(m) = fields.as_object_mut() {
        m.extend(json_cases);
    }
    print_json("http", fields);
    drop(lab);
}
