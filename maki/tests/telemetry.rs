//! Telemetry on the local cluster, set up as the guide's Observability
//! chapter does, with a real OTLP/gRPC receiver (built from the
//! OpenTelemetry protocol definitions) in place of the collector: a
//! machine outside the cluster (a namespace on its bridge) runs
//! wireguard-go configured from `maki peer wg-config o11y` after
//! `maki peer add o11y …`, and the receiver listens on it at :4317.
//!
//! Asserted: every node's spans, metrics and logs arrive as
//! `makiatto.{node}` with the names and attributes the issue lists (HTTP,
//! images, WebAssembly calls inside their requests, DNS, deployments);
//! the
//! sampling ratio keeps about its share (a binomial bound) and every
//! error; `sampling_ratio` and `tracing_enabled` apply live through
//! `maki sync`, without a restart; with the receiver stopped the nodes
//! keep serving and their drop counter rises. Needs root, wireguard-go
//! and the receiver's Python packages (scripts/install-deps.sh).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failure is a panic

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use makiatto_harness::{
    Cluster, OtlpReceiver, WgPeer, copy_examples, require_root, test_component, wait_until,
};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(60);

/// Writes the project's `[o11y]` table (after the example's domains).
fn set_o11y(file: &Path, o11y: &str) {
    let text = std::fs::read_to_string(file).unwrap();
    let base = text.split("\n[o11y]").next().unwrap().to_owned();
    std::fs::write(file, format!("{base}\n[o11y]\n{o11y}\n")).unwrap();
}

/// `n` requests for `path` from test host `from` to `server` (Host
/// `example.test`), each with `extra` curl arguments; their statuses.
fn requests(c: &Cluster, from: &str, server: &str, path: &str, n: usize, extra: &str) -> Vec<u16> {
    let script = format!(
        "for i in $(seq {n}); do curl -s -o /dev/null -w '%{{http_code}}\\n' --max-time 10 \
         -H 'Host: example.test' {extra} 'http://{server}{path}'; done"
    );
    c.exec(from, &["bash", "-c", &script])
        .lines()
        .map(|l| l.trim().parse().unwrap_or(0))
        .collect()
}

fn attr<'a>(record: &'a Value, key: &str) -> &'a Value {
    &record["attributes"][key]
}

/// The node's telemetry report (`makiatto health`).
fn telemetry(c: &Cluster, node: &str) -> Value {
    c.health(node)["telemetry"].clone()
}

/// The HTTP spans received for `path` from `service`.
fn spans_of(r: &OtlpReceiver, service: &str, path: &str) -> Vec<Value> {
    r.of("span")
        .into_iter()
        .filter(|s| s["service"] == service && attr(s, "url.path") == path)
        .collect()
}

/// The cumulative `server.request.count` of a service and status, as
/// last exported.
fn request_count(r: &OtlpReceiver, service: &str, status: i64) -> i64 {
    r.of("metric")
        .iter()
        .filter(|m| {
            m["service"] == service
                && m["name"] == "server.request.count"
                && attr(m, "http.status_code") == status
        })
        .filter_map(|m| m["value"].as_i64())
        .max()
        .unwrap_or(0)
}

#[test]
fn the_o11y_peer_receives_every_nodes_traces_metrics_and_logs_live() {
    require_root();
    let c = Cluster::new("tl");
    let project = c.dir.path().join("project");
    let file = copy_examples(&project);
    for name in ["a.txt", "b.txt", "c.txt", "d.txt", "err.txt"] {
        std::fs::write(project.join("site").join(name), format!("{name}\n")).unwrap();
    }
    // WebAssembly: a handler that answers, one that runs out of time, and
    // a transform for one page (tiny hand-written components).
    std::fs::write(project.join("site/t.html"), "<p>t</p>\n").unwrap();
    for (name, to) in [
        ("echo", "api/echo.wasm"),
        ("loop", "api/loop.wasm"),
        ("passthrough", "transforms/pass.wasm"),
    ] {
        let to = project.join("site").join(to);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(test_component(name), to).unwrap();
    }
    let toml = std::fs::read_to_string(&file).unwrap();
    let wasm = "[[domain.functions]]\npath = \"api/echo.wasm\"\n\n\
                [[domain.functions]]\npath = \"api/loop.wasm\"\ntimeout_ms = 300\n\n\
                [[domain.transforms]]\npath = \"transforms/pass.wasm\"\nfiles = \"**/t.html\"\n";
    std::fs::write(
        &file,
        toml.replacen("\n[o11y]", &format!("\n{wasm}\n[o11y]"), 1),
    )
    .unwrap();
    // Every trace kept at first, DNS queries' too (their own ratio);
    // metrics every second (the test's pace).
    set_o11y(
        &file,
        "sampling_ratio = 1.0\ndns_sampling_ratio = 1.0\nmetrics_interval_secs = 1",
    );
    let state = c.up(2, &["--no-ca", "--sync", file.to_str().unwrap()]);
    let nodes = state.nodes();
    let services: BTreeSet<String> = nodes.iter().map(|n| format!("makiatto.{n}")).collect();
    let (a, b) = (&nodes[0], &nodes[1]);
    let addr_a = state.host(a).ipv4.clone();
    for n in &nodes {
        wait_until(DEADLINE, "the site is served", || {
            requests(&c, n, &state.host(n).ipv4, "/a.txt", 1, "") == [200]
        });
        // No o11y peer yet: nothing is exported, and health says so.
        assert!(telemetry(&c, n)["endpoint"].is_null(), "{n}");
    }

    // The guide's step 1: the observability machine joins the mesh as
    // peer `o11y`, configured from `maki peer wg-config o11y`; its
    // collector (here the receiver) listens on :4317.
    let peer = WgPeer::add(&c, &state, "o11y", 14);
    let mut receiver = OtlpReceiver::start(&peer.ns, "0.0.0.0:4317", c.dir.path());
    let endpoint = format!("http://{}:4317", peer.mesh_addr);
    for n in &nodes {
        wait_until(DEADLINE, "the nodes find the o11y peer", || {
            telemetry(&c, n)["endpoint"] == endpoint.as_str()
        });
        assert_eq!(telemetry(&c, n)["source"], "peer o11y");
    }
    wait_until(DEADLINE, "metrics arrive from every node", || {
        let got: BTreeSet<String> = receiver
            .of("metric")
            .iter()
            .filter_map(|m| m["service"].as_str().map(str::to_owned))
            .collect();
        services.is_subset(&got)
    });

    // Traffic: a file twice (disk, then memory), a file whose blob is
    // gone (503), a caller's trace continued, a malformed one refused.
    assert_eq!(requests(&c, b, &addr_a, "/b.txt", 2, ""), [200, 200]);
    let blob = blake3::hash(b"err.txt\n").to_hex().to_string();
    c.exec(
        a,
        &[
            "rm",
            "-f",
            &format!("/var/makiatto/blobs/{}/{blob}", &blob[..2]),
        ],
    );
    let errors = 12;
    assert_eq!(
        requests(&c, b, &addr_a, "/err.txt", errors, ""),
        vec![503; errors]
    );
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
    assert_eq!(
        requests(
            &c,
            b,
            &addr_a,
            "/a.txt",
            1,
            &format!("-H 'traceparent: {parent}'")
        ),
        [200]
    );
    let head = c.exec(
        b,
        &[
            "curl",
            "-s",
            "-D",
            "-",
            "-o",
            "/dev/null",
            "-H",
            "Host: example.test",
            "-H",
            "traceparent: 00-XYZ-00f067aa0ba902b7-01",
            &format!("http://{addr_a}/a.txt"),
        ],
    );
    assert!(!head.to_ascii_lowercase().contains("traceparent"), "{head}");
    // An image made, then answered from the rendition cache.
    let photo = "/photos/springfield.jpg?w=64&fmt=png";
    assert_eq!(requests(&c, b, &addr_a, photo, 2, ""), [200, 200]);
    // DNS, with a client subnet.
    for n in &nodes {
        c.exec(
            n,
            &[
                "dig",
                &format!("@{addr_a}"),
                "example.test",
                "A",
                "+subnet=81.2.69.0/24",
                "+short",
            ],
        );
    }

    let service_a = format!("makiatto.{a}");
    wait_until(DEADLINE, "the HTTP spans arrive", || {
        spans_of(&receiver, &service_a, "/b.txt").len() == 2
            && spans_of(&receiver, &service_a, "/err.txt").len() == errors
    });
    let b_spans = spans_of(&receiver, &service_a, "/b.txt");
    let hits: BTreeSet<bool> = b_spans
        .iter()
        .map(|s| attr(s, "cdn.cache.hit").as_bool().unwrap())
        .collect();
    assert_eq!(
        hits,
        BTreeSet::from([false, true]),
        "read from disk once, then from memory: {b_spans:?}"
    );
    let s = &b_spans[0];
    assert_eq!(s["name"], "GET");
    assert_eq!(s["kind"], 2, "SPAN_KIND_SERVER");
    assert_eq!(attr(s, "http.request.method"), "GET");
    assert_eq!(attr(s, "http.response.status_code"), 200);
    assert_eq!(attr(s, "server.address"), "example.test");
    assert_eq!(attr(s, "url.scheme"), "http");
    assert_eq!(attr(s, "network.protocol.version"), "1.1");
    assert_eq!(attr(s, "http.response.body.size"), 6);
    assert_eq!(s["resource"]["service.name"], service_a.as_str());
    assert_eq!(s["resource"]["makiatto.node"], a.as_str());
    assert!(s["resource"]["host.name"].is_string());
    assert!(s["resource"]["makiatto.cluster"].is_string());
    assert!(s["resource"]["geo.location.lat"].is_number());
    let err = spans_of(&receiver, &service_a, "/err.txt");
    assert!(
        err.iter()
            .all(|s| s["status"] == 2 && attr(s, "error.type") == "503")
    );
    let continued: Vec<Value> = receiver
        .of("span")
        .into_iter()
        .filter(|s| s["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736")
        .collect();
    assert_eq!(continued.len(), 1, "{continued:?}");
    assert_eq!(continued[0]["parent_span_id"], "00f067aa0ba902b7");

    // The image: made once (a span of its own inside the request's),
    // then from the rendition cache.
    wait_until(DEADLINE, "the image spans arrive", || {
        spans_of(&receiver, &service_a, "/photos/springfield.jpg").len() == 2
    });
    let photos = spans_of(&receiver, &service_a, "/photos/springfield.jpg");
    let hits: Vec<bool> = photos
        .iter()
        .map(|s| attr(s, "cdn.cache.hit").as_bool().unwrap())
        .collect();
    assert_eq!(
        hits.iter().filter(|h| **h).count(),
        1,
        "made once, then from the rendition cache: {photos:?}"
    );
    let made = photos
        .iter()
        .find(|s| attr(s, "cdn.cache.hit") == false)
        .unwrap();
    let render: Vec<Value> = receiver
        .of("span")
        .into_iter()
        .filter(|s| s["name"] == "image.render" && s["trace_id"] == made["trace_id"])
        .collect();
    assert_eq!(render.len(), 1, "{render:?}");
    assert_eq!(render[0]["parent_span_id"], made["span_id"]);
    assert_eq!(attr(&render[0], "makiatto.image.outcome"), "made");

    // WebAssembly calls: spans inside their requests' spans, kept with
    // them; a call that ran out of time is an error.
    assert_eq!(requests(&c, b, &addr_a, "/api/echo", 1, ""), [200]);
    assert_eq!(requests(&c, b, &addr_a, "/api/loop", 1, ""), [504]);
    assert_eq!(requests(&c, b, &addr_a, "/t.html", 1, ""), [200]);
    let call_of = |path: &str, name: &str| -> Option<(Value, Value)> {
        let request = spans_of(&receiver, &service_a, path).into_iter().next()?;
        let call = receiver
            .of("span")
            .into_iter()
            .find(|s| s["name"] == name && s["trace_id"] == request["trace_id"])?;
        Some((request, call))
    };
    wait_until(DEADLINE, "the WebAssembly spans arrive", || {
        call_of("/api/echo", "wasm.handler").is_some()
            && call_of("/api/loop", "wasm.handler").is_some()
            && call_of("/t.html", "wasm.transform").is_some()
    });
    let (request, call) = call_of("/api/echo", "wasm.handler").unwrap();
    assert_eq!(call["parent_span_id"], request["span_id"]);
    assert_eq!(attr(&call, "makiatto.wasm.component"), "api/echo.wasm");
    assert_eq!(attr(&call, "makiatto.wasm.outcome"), "ok");
    assert_eq!(attr(&call, "http.response.status_code"), 200);
    assert_eq!(attr(&request, "cdn.cache.hit"), false, "computed");
    let (request, call) = call_of("/api/loop", "wasm.handler").unwrap();
    assert_eq!(call["parent_span_id"], request["span_id"]);
    assert_eq!(call["status"], 2, "an error: {call}");
    assert_eq!(attr(&call, "makiatto.wasm.outcome"), "timeout");
    let (request, call) = call_of("/t.html", "wasm.transform").unwrap();
    assert_eq!(call["parent_span_id"], request["span_id"]);
    assert_eq!(
        attr(&call, "makiatto.wasm.component"),
        "transforms/pass.wasm"
    );
    assert_eq!(attr(&call, "makiatto.wasm.outcome"), "ok");

    wait_until(DEADLINE, "DNS spans arrive", || {
        receiver
            .of("span")
            .iter()
            .any(|s| s["name"] == "dns.query" && s["service"] == service_a.as_str())
    });
    let dns = receiver
        .of("span")
        .into_iter()
        .find(|s| s["name"] == "dns.query" && s["service"] == service_a.as_str())
        .unwrap();
    assert_eq!(attr(&dns, "dns.question.name"), "example.test.");
    assert_eq!(attr(&dns, "dns.question.type"), "A");
    assert_eq!(attr(&dns, "dns.response.code"), "NOERROR");
    assert_eq!(attr(&dns, "dns.answer.kind"), "geo");
    assert_eq!(attr(&dns, "dns.ecs"), true);
    assert!(
        nodes
            .iter()
            .any(|n| attr(&dns, "makiatto.geo.node") == n.as_str())
    );
    if c.geoip().is_some() {
        assert!(attr(&dns, "makiatto.geo.distance_km").is_number(), "{dns}");
    }

    // Logs: the daemon's records, the 503's with its trace id.
    wait_until(
        DEADLINE,
        "the 503's log record arrives with its trace",
        || {
            let traces: BTreeSet<String> = err
                .iter()
                .map(|s| s["trace_id"].as_str().unwrap().to_owned())
                .collect();
            receiver.of("log").iter().any(|l| {
                l["service"] == service_a.as_str()
                    && l["severity"] == "ERROR"
                    && l["body"]
                        .as_str()
                        .is_some_and(|b| b.contains("cannot be read"))
                    && l["trace_id"].as_str().is_some_and(|t| traces.contains(t))
            })
        },
    );
    assert!(
        receiver
            .of("log")
            .iter()
            .all(|l| !l["attributes"].to_string().contains("telemetry")),
        "the exporter's own records are never exported"
    );

    // Metrics: the guide's, the conventions', DNS, process; never sampled.
    // (Each kind of metric arrives with the next export after its first
    // recording: wait for the DNS queries' too.)
    let geo_queries = |m: &Value| {
        m["name"] == "dns.server.queries"
            && m["service"] == service_a.as_str()
            && attr(m, "network.transport") == "udp"
            && attr(m, "dns.response.code") == "NOERROR"
            && attr(m, "dns.answer.kind") == "geo"
    };
    let wasm_timeout = |m: &Value| {
        m["name"] == "makiatto.wasm.duration"
            && m["service"] == service_a.as_str()
            && attr(m, "makiatto.wasm.kind") == "handler"
            && attr(m, "makiatto.wasm.outcome") == "timeout"
    };
    wait_until(
        DEADLINE,
        "the request and query counts cover the traffic",
        || {
            request_count(&receiver, &service_a, 503) >= errors as i64
                && request_count(&receiver, &service_a, 200) >= 3
                && receiver.of("metric").iter().any(geo_queries)
                && receiver.of("metric").iter().any(wasm_timeout)
        },
    );
    let metrics = receiver.of("metric");
    let named = |name: &str| -> Vec<&Value> {
        metrics
            .iter()
            .filter(|m| m["name"] == name && m["service"] == service_a.as_str())
            .collect()
    };
    let count = named("server.request.count");
    assert!(
        count
            .iter()
            .all(|m| m["monotonic"] == true && m["temporality"] == 2)
    );
    let duration = named("server.request.duration");
    assert!(
        duration
            .iter()
            .all(|m| m["unit"] == "s" && m["type"] == "histogram")
    );
    assert!(
        duration
            .iter()
            .any(|m| m["exemplars"].as_array().is_some_and(|e| !e.is_empty())),
        "exemplars link the histogram to traces"
    );
    let conventions = named("http.server.request.duration");
    assert!(conventions.iter().any(|m| {
        attr(m, "http.request.method") == "GET"
            && attr(m, "http.response.status_code") == 200
            && attr(m, "server.address") == "example.test"
    }));
    assert!(
        named("http.server.response.body.size")
            .iter()
            .all(|m| m["unit"] == "By")
    );
    assert!(
        named("cdn.cache.requests")
            .iter()
            .any(|m| attr(m, "cdn.cache.hit") == true && m["value"].as_i64() >= Some(1))
    );
    assert!(named("dns.server.queries").into_iter().any(geo_queries));
    for name in [
        "process.cpu.time",
        "process.memory.usage",
        "makiatto.peer.up",
        "makiatto.replication.sessions",
        "makiatto.mesh.handshake.age",
        "makiatto.site.deployed",
        "makiatto.telemetry.exported",
        "makiatto.image.duration",
    ] {
        assert!(!named(name).is_empty(), "{name} is exported");
    }

    // Live: a quarter of traces, without a restart; every error kept. The
    // same sync uploads a new version: its upload and every node's switch
    // are spans, and every node logs the switch.
    // (Slow requests are always kept: on a loaded machine some could be,
    // so the threshold is out of reach here and the share is the ratio's.)
    set_o11y(
        &file,
        "sampling_ratio = 0.25\nslow_threshold_ms = 600000\nmetrics_interval_secs = 1",
    );
    std::fs::write(project.join("site").join("e.txt"), "e.txt\n").unwrap();
    c.ok(&["sync", "--file", file.to_str().unwrap()]);
    wait_until(DEADLINE, "every node's deployment span arrives", || {
        let got: BTreeSet<String> = receiver
            .of("span")
            .iter()
            .filter(|s| s["name"] == "site.version.deploy" && s["status"] != 2)
            .filter_map(|s| s["service"].as_str().map(str::to_owned))
            .collect();
        services.is_subset(&got)
    });
    assert!(
        receiver
            .of("span")
            .iter()
            .any(|s| s["name"] == "sync.manifest_put"),
        "the upload of maki sync is a span"
    );
    wait_until(DEADLINE, "every node's log records arrive", || {
        let got: BTreeSet<String> = receiver
            .of("log")
            .iter()
            .filter_map(|l| l["service"].as_str().map(str::to_owned))
            .collect();
        services.is_subset(&got)
    });
    for n in &nodes {
        wait_until(DEADLINE, "sampling_ratio 0.25 applies", || {
            let t = telemetry(&c, n);
            t["sampling_ratio"] == 0.25 && t["slow_threshold_ms"] == 600_000
        });
        // DNS queries' ratio, left out of the file now: its default.
        assert_eq!(telemetry(&c, n)["dns_sampling_ratio"], 0.001);
    }
    let (n, p) = (400usize, 0.25f64);
    assert_eq!(requests(&c, b, &addr_a, "/c.txt", n, ""), vec![200; n]);
    assert_eq!(
        requests(&c, b, &addr_a, "/err.txt", errors, ""),
        vec![503; errors]
    );
    // Once every error span is in, the kept ones that went before it are.
    wait_until(DEADLINE, "every error of the second round is kept", || {
        spans_of(&receiver, &service_a, "/err.txt").len() == 2 * errors
    });
    let kept = spans_of(&receiver, &service_a, "/c.txt").len() as f64;
    let sd = (n as f64 * p * (1.0 - p)).sqrt();
    assert!(
        (kept - n as f64 * p).abs() <= 5.0 * sd,
        "kept {kept} of {n} at {p} (5 sd = {})",
        5.0 * sd
    );

    // Tracing off, live: metrics go on, spans stop.
    set_o11y(
        &file,
        "sampling_ratio = 1.0\ntracing_enabled = false\nmetrics_interval_secs = 1",
    );
    c.ok(&["sync", "--file", file.to_str().unwrap()]);
    for n in &nodes {
        wait_until(DEADLINE, "tracing_enabled = false applies", || {
            telemetry(&c, n)["traces"] == false
        });
    }
    // The spans made before have left (they wait up to 5 s for a batch).
    wait_until(DEADLINE, "the spans queued before have left", || {
        telemetry(&c, a)["spans"]["queued"] == 0
    });
    let spans = telemetry(&c, a)["spans"].clone();
    let before = request_count(&receiver, &service_a, 200);
    assert_eq!(requests(&c, b, &addr_a, "/d.txt", 10, ""), vec![200; 10]);
    wait_until(DEADLINE, "the metrics count the untraced requests", || {
        request_count(&receiver, &service_a, 200) >= before + 10
    });
    // Two more metric exports (a second apart): any span of those
    // requests would have been made by then, and it would be queued,
    // exported or dropped; none is.
    let exports = telemetry(&c, a)["metric_exports"].as_u64().unwrap();
    wait_until(DEADLINE, "two more metric exports", || {
        telemetry(&c, a)["metric_exports"].as_u64().unwrap() >= exports + 2
    });
    assert!(spans_of(&receiver, &service_a, "/d.txt").is_empty());
    let now = telemetry(&c, a)["spans"].clone();
    assert_eq!(now["queued"], 0, "{now}");
    assert_eq!(now["exported"], spans["exported"], "{now}");
    assert_eq!(now["dropped"], spans["dropped"], "{now}");

    // The collector goes away: serving goes on, drops are counted.
    set_o11y(&file, "sampling_ratio = 1.0\nmetrics_interval_secs = 1");
    c.ok(&["sync", "--file", file.to_str().unwrap()]);
    wait_until(DEADLINE, "tracing is on again", || {
        telemetry(&c, a)["traces"] == true
    });
    receiver.stop();
    let dropped = telemetry(&c, a)["spans"]["dropped"].as_u64().unwrap();
    for _ in 0..5 {
        assert_eq!(requests(&c, b, &addr_a, "/a.txt", 20, ""), vec![200; 20]);
        if telemetry(&c, a)["spans"]["dropped"].as_u64().unwrap() > dropped {
            break;
        }
    }
    wait_until(DEADLINE, "the drop counter rises", || {
        telemetry(&c, a)["spans"]["dropped"].as_u64().unwrap() > dropped
    });
    let t = telemetry(&c, a);
    assert!(
        t["spans"]["queued"].as_u64().unwrap() <= 4096
            && t["log_records"]["queued"].as_u64().unwrap() <= 4096,
        "the queues stay bounded: {t}"
    );
    let health: Value = serde_json::from_slice(&c.maki(&["health", "--json"]).stdout).unwrap();
    let shown = health["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == a.as_str())
        .unwrap()
        .clone();
    assert!(
        shown["telemetry"]["spans"]["dropped"].as_u64().unwrap() > dropped,
        "maki health reports the drops: {shown}"
    );

    // Back: exports resume on their own.
    receiver.resume(&peer.ns);
    let exported = telemetry(&c, a)["spans"]["exported"].as_u64().unwrap();
    assert_eq!(requests(&c, b, &addr_a, "/a.txt", 5, ""), vec![200; 5]);
    wait_until(Duration::from_secs(90), "exports resume", || {
        telemetry(&c, a)["spans"]["exported"].as_u64().unwrap() > exported
    });
}
