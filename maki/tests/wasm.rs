//! WebAssembly components on real test hosts: `maki sync` carries them in
//! the version's manifest (a section never served), every node fetches
//! them, and a rollback brings back the components of the version it
//! returns to; the example's handler answers on every node with that
//! node's name, and its transform marks every HTML page; hostile
//! components are refused what the sandbox forbids (TCP sockets to
//! non-public addresses, files outside their version, endless loops,
//! memory) while static files are served; a component's wasi:http
//! requests reach a public address and are refused to non-public ones; a
//! node that joins after a sync reads the env values, resealed to it.
//! Needs root.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failure is a panic

use std::time::Duration;

use makiatto_harness::{
    Cluster, Process, copy_examples, copy_examples_with_wasm, require_root, test_component,
    wait_until,
};
use serde_json::Value;

const NODES: [&str; 3] = ["vector", "klukai", "tololo"];

/// The live version every node of the three serves once they agree.
fn live_everywhere(c: &Cluster, what: &str) -> String {
    live_on(c, &NODES, what)
}

/// The live version `nodes` serve once they agree.
fn live_on(c: &Cluster, nodes: &[&str], what: &str) -> String {
    let mut live = String::new();
    wait_until(Duration::from_secs(30), what, || {
        let all: Vec<Value> = nodes
            .iter()
            .map(|n| c.health(n)["sites"]["example.test"].clone())
            .collect();
        live = all[0]["live"].as_str().unwrap_or("").to_owned();
        all.iter()
            .all(|s| s["in_sync"] == true && s["live"].as_str() == Some(live.as_str()))
    });
    live
}

/// The manifest's hash of the version published by `event` (`live` is
/// the version's event id, not its manifest), as `maki sites` lists it.
fn manifest_of(c: &Cluster, event: &str) -> String {
    let listed: Value = serde_json::from_str(&c.ok(&["sites", "--json"])).unwrap();
    let site = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["domain"] == "example.test")
        .unwrap();
    site["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["event"].as_str() == Some(event))
        .and_then(|v| v["manifest"].as_str())
        .unwrap_or_else(|| panic!("no version {event} in {listed}"))
        .to_owned()
}

/// The blob `hash` as `node` holds it, if it does.
fn blob(c: &Cluster, node: &str, hash: &str) -> Option<Vec<u8>> {
    let out = c
        .command(&[
            "local", "exec", node, "--", "makiatto", "blobs", "get", hash, "--hex",
        ])
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| hex::decode(String::from_utf8_lossy(&out.stdout).trim()).unwrap())
}

#[test]
fn components_travel_with_their_version_and_come_back_on_rollback() {
    require_root();
    let c = Cluster::new("wc");
    let project = c.dir.path().join("project");
    let file = copy_examples(&project);
    let file = file.to_str().unwrap();
    let toml = std::fs::read_to_string(file).unwrap();
    std::fs::create_dir_all(project.join("site/api")).unwrap();
    let first: &[u8] = b"\0asm component one";
    std::fs::write(project.join("site/api/hello.wasm"), first).unwrap();
    std::fs::write(
        file,
        format!("{toml}\n[[domain.functions]]\npath = \"api/hello.wasm\"\n"),
    )
    .unwrap();

    c.up(3, &["--no-ca"]);
    c.ok(&["sync", "--file", file, "-m", "first"]);
    let v1 = live_everywhere(&c, "the first version reaches every node");
    let manifest =
        makiatto_events::Manifest::decode(&blob(&c, "vector", &manifest_of(&c, &v1)).unwrap())
            .unwrap();
    let entry = &manifest.components["api/hello.wasm"];
    assert!(
        !manifest.files.contains_key("api/hello.wasm"),
        "a component is never a served file"
    );
    let one = entry.hash.to_hex();
    for n in NODES {
        assert_eq!(blob(&c, n, &one).as_deref(), Some(first), "{n}");
    }
    // Not served as a static file.
    let host = &c.state().hosts[0].ipv4;
    let status = c.curl_writes(
        "vector",
        "%{http_code}",
        &[
            "-H",
            "Host: example.test",
            &format!("http://{host}/api/hello.wasm"),
        ],
    );
    assert_eq!(status, "404");

    // A new component: a new version, whose component every node fetches.
    let second: &[u8] = b"\0asm component two";
    std::fs::write(project.join("site/api/hello.wasm"), second).unwrap();
    let out = c.ok(&["sync", "--file", file, "-m", "second"]);
    assert!(out.contains("published"), "{out}");
    let v2 = live_everywhere(&c, "the second version reaches every node");
    assert_ne!(v1, v2);
    let manifest =
        makiatto_events::Manifest::decode(&blob(&c, "klukai", &manifest_of(&c, &v2)).unwrap())
            .unwrap();
    let two = manifest.components["api/hello.wasm"].hash.to_hex();
    for n in NODES {
        assert_eq!(blob(&c, n, &two).as_deref(), Some(second), "{n}");
    }

    // A rollback returns to the first version, its component included.
    c.ok(&["rollback", "example.test", "-m", "back"]);
    assert_eq!(live_everywhere(&c, "the rollback reaches every node"), v1);
    for n in NODES {
        assert_eq!(blob(&c, n, &one).as_deref(), Some(first), "{n}");
    }
}

/// Status line and head (stderr) and body of one `curl` from `node`.
fn curl(c: &Cluster, node: &str, args: &[&str]) -> (String, String) {
    let mut cmd = c.command(&[
        "local",
        "exec",
        node,
        "--",
        "curl",
        "-s",
        "--max-time",
        "200",
        "-D",
        "/dev/stderr",
    ]);
    cmd.args(args);
    let out = cmd.output().unwrap();
    (
        String::from_utf8_lossy(&out.stderr).into_owned(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn the_example_handler_answers_on_every_node_and_pages_carry_the_comment() {
    require_root();
    let c = Cluster::new("wh");
    let project = c.dir.path().join("project");
    let file = copy_examples_with_wasm(&project);
    let state = c.up(3, &["--no-ca", "--sync", file.to_str().unwrap()]);
    let live = live_everywhere(&c, "the example reaches every node");
    // Compiled on arrival: once a node's edge serves the version, both of
    // its components (a Python interpreter each) are compiled and linked,
    // before any request.
    for n in NODES {
        let mut health = Value::Null;
        wait_until(
            Duration::from_secs(400),
            &format!("{n} serves the example's version"),
            || {
                health = c.health(n);
                health["http"]["sites"]["example.test"]["version"].as_str() == Some(live.as_str())
            },
        );
        let wasm = &health["http"]["wasm"];
        assert_eq!(wasm["components_ready"], 2, "{n}: {wasm}");
        assert_eq!(wasm["calls"], 0, "{n}: {wasm}");
    }
    for h in &state.hosts {
        let url = |p: &str| format!("http://{}{p}", h.ipv4);
        let answer = curl(
            &c,
            &h.node,
            &["-H", "Host: example.test", &url("/api/hello")],
        );
        assert!(
            answer.0.starts_with("HTTP/1.1 200"),
            "{}: {}",
            h.node,
            answer.0
        );
        let (head, body) = &answer;
        assert!(
            body.starts_with(&format!("hello from node {} at (", h.node)),
            "{}: {head}{body}",
            h.node
        );
        assert!(
            head.to_ascii_lowercase().contains("x-request-id: "),
            "{head}"
        );
        // `maki health` counts what the node runs.
        let wasm = c.health(&h.node)["http"]["wasm"].clone();
        assert_eq!(wasm["functions"], 1, "{wasm}");
        assert!(wasm["transforms"].as_u64() >= Some(1), "{wasm}");
        assert!(wasm["components_ready"].as_u64() >= Some(1), "{wasm}");
        assert!(wasm["calls"].as_u64() >= Some(1), "{wasm}");
        // The daemon has dropped root, and its pool still resets a
        // call's memory by the pages written (its engine was made
        // before the drop).
        assert_eq!(wasm["memory_reset"], "page-scan", "{wasm}");
        // Below the route too; a method the function does not allow: 405
        // with Allow, before the static method check.
        let (head, _) = curl(
            &c,
            &h.node,
            &["-H", "Host: example.test", &url("/api/hello/x")],
        );
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let (head, _) = curl(
            &c,
            &h.node,
            &["-X", "POST", "-H", "Host: example.test", &url("/api/hello")],
        );
        assert!(head.starts_with("HTTP/1.1 405"), "{head}");
        assert!(
            head.to_ascii_lowercase().contains("allow: get, head"),
            "{head}"
        );
        // Every HTML page carries the transformer's comment, with an ETag
        // of its own that revalidates; other files are untouched.
        let page = curl(&c, &h.node, &["-H", "Host: example.test", &url("/")]);
        assert!(
            page.1
                .contains(&format!("<!-- served by {} via Makiatto -->", h.node)),
            "{}",
            page.1
        );
        let etag = page
            .0
            .lines()
            .find_map(|l| {
                l.strip_prefix("etag: ")
                    .or_else(|| l.strip_prefix("ETag: "))
            })
            .unwrap()
            .trim()
            .to_owned();
        assert!(etag.starts_with("\"t"), "{etag}");
        let (head, _) = curl(
            &c,
            &h.node,
            &[
                "-H",
                "Host: example.test",
                "-H",
                &format!("If-None-Match: {etag}"),
                &url("/"),
            ],
        );
        assert!(head.starts_with("HTTP/1.1 304"), "{head}");
        let (_, css) = curl(
            &c,
            &h.node,
            &["-H", "Host: example.test", &url("/css/style.css")],
        );
        assert!(!css.contains("served by"), "{css}");
    }
}

/// The hostile component's answer to `query` on `node` (its own public
/// address): status line and body.
/// The example's index page as `ip` serves it now (asked from `node`'s
/// host), and a check that it is still served, unchanged.
fn static_page<'a>(c: &'a Cluster, node: &'a str, ip: &'a str) -> (String, impl Fn() + 'a) {
    let page = move || {
        curl(
            c,
            node,
            &[
                "-H",
                "Host: example.test",
                &format!("http://{ip}/index.html"),
            ],
        )
    };
    let (_, index) = page();
    assert!(index.contains("<html"), "{index}");
    let served = index.clone();
    let check = move || {
        let (head, body) = page();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(body, served, "the static file is served unchanged");
    };
    (index, check)
}

fn hostile(c: &Cluster, node: &str, ip: &str, query: &str) -> (String, String) {
    let (head, body) = curl(
        c,
        node,
        &[
            "-H",
            "Host: example.test",
            &format!("http://{ip}/api/hostile?{query}"),
        ],
    );
    (head.lines().next().unwrap_or("").trim().to_owned(), body)
}

/// The version of `domain` whose manifest `maki sites` lists as live.
fn live_manifest(c: &Cluster, domain: &str) -> String {
    let listed: Value = serde_json::from_str(&c.ok(&["sites", "--json"])).unwrap();
    let site = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["domain"] == domain)
        .unwrap();
    site["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["live"] == true)
        .and_then(|v| v["manifest"].as_str())
        .unwrap()
        .to_owned()
}

/// `node`'s mesh address, as `maki machine list` shows it.
fn mesh_addr(c: &Cluster, node: &str) -> String {
    c.ok(&["machine", "list", "--json"])
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|m| m["name"] == node)
        .and_then(|m| m["mesh_addr"].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("no mesh address of {node}"))
}

/// The sandbox on a cluster, with the hostile component (Python, wasi
/// sockets and files) and hand-written ones: TCP connections reach a
/// public address and are refused to loopback, private, link-local, the
/// mesh and a name for loopback; files are its own version's, read-only;
/// a body too large is refused before the call; endless loops end at
/// their timeout while static files, DNS and replication go on; memory,
/// recursion and a huge response fail the call alone. wasi:http requests:
/// `a_component_fetches_through_wasi_http_from_public_addresses_only`.
#[test]
fn hostile_components_are_refused_and_static_files_are_served_meanwhile() {
    require_root();
    let c = Cluster::new("wx");
    let project = c.dir.path().join("project");
    let file = copy_examples(&project);
    let toml = std::fs::read_to_string(&file).unwrap();
    std::fs::create_dir_all(project.join("site/api")).unwrap();
    for name in ["hostile", "loop", "memory", "recursion", "huge"] {
        std::fs::copy(
            test_component(name),
            project.join(format!("site/api/{name}.wasm")),
        )
        .unwrap();
    }
    // Another domain, whose file the component must not reach.
    std::fs::create_dir_all(project.join("other")).unwrap();
    std::fs::write(project.join("other/secret.txt"), "other.test's own\n").unwrap();
    std::fs::write(project.join("other/index.html"), "<p>other</p>\n").unwrap();
    std::fs::write(
        &file,
        format!(
            "{toml}
[[domain.functions]]
path = \"api/hostile.wasm\"

[[domain.functions]]
path = \"api/loop.wasm\"
timeout_ms = 8000

[[domain.functions]]
path = \"api/memory.wasm\"

[[domain.functions]]
path = \"api/recursion.wasm\"

[[domain.functions]]
path = \"api/huge.wasm\"

[[domain]]
name = \"other.test\"
path = \"./other\"
"
        ),
    )
    .unwrap();
    let state = c.up(3, &["--no-ca"]);
    c.ok(&["sync", "--file", file.to_str().unwrap(), "-m", "hostile"]);
    let live = live_everywhere(&c, "the version reaches every node");
    let (me, other) = (&state.hosts[0], &state.hosts[1]);
    wait_until(
        Duration::from_secs(400),
        "vector serves the version, its components compiled",
        || {
            c.health(&me.node)["http"]["sites"]["example.test"]["version"].as_str()
                == Some(live.as_str())
        },
    );
    let mesh_of_other = mesh_addr(&c, &other.node);
    let (index, static_ok) = static_page(&c, &me.node, &me.ipv4);

    // Outgoing TCP (wasi:sockets): a public address (another node's HTTP port) is reached,
    // which shows the component can connect at all; loopback, private,
    // link-local (cloud metadata), the mesh and a name for loopback are
    // refused by the sandbox's rule, before any packet.
    let (status, body) = hostile(
        &c,
        &me.node,
        &me.ipv4,
        &format!("connect={}:80", other.ipv4),
    );
    assert_eq!(
        (status.as_str(), body.trim()),
        (
            "HTTP/1.1 200 OK",
            format!("done: connected to {}:80", other.ipv4).as_str()
        )
    );
    for target in [
        "127.0.0.1:80".to_owned(),
        "10.0.0.1:80".to_owned(),
        "169.254.169.254:80".to_owned(),
        format!("{mesh_of_other}:80"),
        "localhost:80".to_owned(),
    ] {
        let (status, body) = hostile(&c, &me.node, &me.ipv4, &format!("connect={target}"));
        assert!(
            status.starts_with("HTTP/1.1 403"),
            "{target}: {status} {body}"
        );
        assert!(
            body.starts_with("refused: PermissionError"),
            "{target}: {body}"
        );
        static_ok();
    }
    // An IPv4-mapped IPv6 address: WASI refuses it on an IPv6 socket before
    // the rule sees it (which refuses it too: destination.rs's tests).
    let (status, body) = hostile(&c, &me.node, &me.ipv4, "connect=%5B::ffff:127.0.0.1%5D:80");
    assert!(status.starts_with("HTTP/1.1 403"), "{status} {body}");
    assert!(body.starts_with("refused: "), "{body}");
    let log = c.exec(&me.node, &["cat", "/var/makiatto/daemon.log"]);
    for why in [
        "127.0.0.1 is not a public address",
        "10.0.0.1 is not a public address",
        "169.254.169.254 is not a public address",
        &format!("{mesh_of_other} is in the cluster's mesh range"),
    ] {
        assert!(
            log.lines()
                .any(|l| l.contains("a component's connection was refused")
                    && l.contains("domain=example.test")
                    && l.contains(why)),
            "no log line for {why}"
        );
    }

    // Files: its own version's, read-only; nothing above its root, not
    // another domain's, no write.
    let (status, body) = hostile(&c, &me.node, &me.ipv4, "read=/index.html");
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    assert_eq!(
        body.trim(),
        format!("done: read {} bytes of /index.html", index.len())
    );
    let other_manifest = live_manifest(&c, "other.test");
    for (query, refused) in [
        (
            "read=/../../../daemon.log".to_owned(),
            "refused: PermissionError",
        ),
        ("list=/..".to_owned(), "refused: PermissionError"),
        (
            "read=/../../../../etc/hostname".to_owned(),
            "refused: PermissionError",
        ),
        ("read=/secret.txt".to_owned(), "refused: FileNotFoundError"),
        (
            format!("read=/../{other_manifest}/secret.txt"),
            "refused: PermissionError",
        ),
        ("write=/index.html".to_owned(), "refused: PermissionError"),
        ("write=/new.txt".to_owned(), "refused: PermissionError"),
    ] {
        let (status, body) = hostile(&c, &me.node, &me.ipv4, &query);
        assert!(
            status.starts_with("HTTP/1.1 403"),
            "{query}: {status} {body}"
        );
        assert!(body.starts_with(refused), "{query}: {body}");
        static_ok();
    }
    let (_, listing) = hostile(&c, &me.node, &me.ipv4, "list=/");
    assert!(
        listing.contains("index.html") && !listing.contains("new.txt"),
        "{listing}"
    );

    // A body over wasm.max_request_kb (1024 KiB by default): 413, before
    // the component runs; one under it is given whole.
    let post = |bytes: usize| {
        c.exec(
            &me.node,
            &[
                "sh",
                "-c",
                &format!(
                    "head -c {bytes} /dev/zero | curl -s -w ' %{{http_code}}' -X POST --data-binary @- -H 'Host: example.test' http://{}/api/hostile",
                    me.ipv4
                ),
            ],
        )
    };
    let big = post(2 << 20);
    assert!(big.ends_with(" 413"), "{big}");
    assert_eq!(post(100_000), "body of 100000 bytes\n 200");

    // Two loops fill the work pool until their timeout (504); static
    // files, DNS and replication go on meanwhile. Then a memory bomb, a
    // deep recursion and a 1 GiB response each get 500.
    let calls = |c: &Cluster| {
        c.health(&me.node)["http"]["wasm"]["calls"]
            .as_u64()
            .unwrap()
    };
    let before = calls(&c);
    let url = format!("http://{}/api/loop", me.ipv4);
    let mut loops: Vec<std::process::Child> = (0..2)
        .map(|_| {
            c.command(&[
                "local",
                "exec",
                &me.node,
                "--",
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-H",
                "Host: example.test",
                &url,
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    wait_until(Duration::from_secs(5), "both loops run", || {
        calls(&c) >= before + 2
    });
    let started = std::time::Instant::now();
    static_ok();
    let static_took = started.elapsed();
    let answer = c.exec(
        &other.node,
        &[
            "dig",
            "+short",
            "+time=2",
            "+tries=1",
            &format!("@{}", me.ipv4),
            "example.test",
            "A",
        ],
    );
    assert!(
        answer
            .lines()
            .any(|l| l.parse::<std::net::Ipv4Addr>().is_ok()),
        "DNS while the loops run: {answer:?}"
    );
    // An event appended on the busy node reaches another.
    let events = c.events(&other.node);
    c.ok(&["config", "set", "wasm.outgoing_calls", "17"]);
    wait_until(
        Duration::from_secs(5),
        "the setting replicates while the loops run",
        || c.events(&other.node) > events && c.events(&me.node) == c.events(&other.node),
    );
    assert!(
        loops.iter_mut().all(|l| l.try_wait().unwrap().is_none()),
        "static files, DNS and replication answered while both loops ran"
    );
    eprintln!("the static page took {static_took:?} while both loops filled the pool");
    for l in loops {
        let out = l.wait_with_output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "504");
    }
    let (head, _) = curl(
        &c,
        &me.node,
        &[
            "-H",
            "Host: example.test",
            &format!("http://{}/api/memory", me.ipv4),
        ],
    );
    assert!(head.starts_with("HTTP/1.1 500"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("x-request-id: "),
        "{head}"
    );
    static_ok();
    for name in ["recursion", "huge"] {
        let (head, body) = curl(
            &c,
            &me.node,
            &[
                "-H",
                "Host: example.test",
                &format!("http://{}/api/{name}", me.ipv4),
            ],
        );
        assert!(head.starts_with("HTTP/1.1 500"), "{name}: {head}");
        assert!(body.len() < 1024, "{name}: a body of {} bytes", body.len());
        static_ok();
    }
    let log = c.exec(&me.node, &["cat", "/var/makiatto/daemon.log"]);
    for name in ["memory", "recursion", "huge"] {
        assert!(
            log.lines().any(|l| l.contains("a function call failed")
                && l.contains(&format!("function=api/{name}.wasm"))),
            "no log line for {name}"
        );
    }
    let wasm = c.health(&me.node)["http"]["wasm"].clone();
    assert!(wasm["timeouts"].as_u64() >= Some(2), "{wasm}");
    assert!(wasm["failed"].as_u64() >= Some(5), "{wasm}");
}

/// The fetch component's answer to a GET of `url` on `node` (its own
/// public address `ip`): status line and body.
fn fetch(c: &Cluster, node: &str, ip: &str, url: &str) -> (String, String) {
    let (head, body) = curl(
        c,
        node,
        &[
            "-G",
            "--data-urlencode",
            &format!("url={url}"),
            "-H",
            "Host: example.test",
            &format!("http://{ip}/api/fetch"),
        ],
    );
    (head.lines().next().unwrap_or("").trim().to_owned(), body)
}

/// wasi:http on a cluster: the fetch component
/// (`node/tests/components/fetch/`) GETs through wasi:http's outgoing
/// handler, which the node's own sender carries out
/// (`node/src/wasm/outgoing.rs`). A server in another test host, at its
/// public (documentation-range) address, answers; loopback, private,
/// link-local (cloud metadata), IPv4-mapped IPv6 loopback, the mesh
/// (where the same server listens too) and a name for loopback (resolved
/// by the test host's `/etc/hosts`) are refused by the destination rule
/// with `destination-ip-prohibited`, before any connection, each logged,
/// and the node serves static files meanwhile. A closed port at a public
/// address gets `connection-refused`: the network's answer, not the rule's.
#[test]
fn a_component_fetches_through_wasi_http_from_public_addresses_only() {
    require_root();
    let c = Cluster::new("wf");
    let project = c.dir.path().join("project");
    let file = copy_examples(&project);
    let toml = std::fs::read_to_string(&file).unwrap();
    std::fs::create_dir_all(project.join("site/api")).unwrap();
    std::fs::copy(test_component("fetch"), project.join("site/api/fetch.wasm")).unwrap();
    std::fs::write(
        &file,
        format!("{toml}\n[[domain.functions]]\npath = \"api/fetch.wasm\"\n"),
    )
    .unwrap();
    // What the server in the other host serves: this test's own file.
    let served = c.dir.path().join("served");
    std::fs::create_dir_all(&served).unwrap();
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let page = format!("served by the other host, {nonce}\n");
    std::fs::write(served.join("page.txt"), &page).unwrap();

    let state = c.up(2, &["--no-ca"]);
    let (me, other) = (&state.hosts[0], &state.hosts[1]);
    c.ok(&["sync", "--file", file.to_str().unwrap(), "-m", "fetch"]);
    let live = live_on(
        &c,
        &[&me.node, &other.node],
        "the version reaches both nodes",
    );
    // The server listens on every address of the other host, its mesh
    // address included; it ends with the cluster (`maki local down` ends
    // every process of a host).
    let _server = Process::spawn(
        c.command(&[
            "local",
            "exec",
            &other.node,
            "--",
            "/usr/bin/python3",
            "-m",
            "http.server",
            "--bind",
            "0.0.0.0",
            "--directory",
            served.to_str().unwrap(),
            "8000",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null()),
    );
    let mesh_of_other = mesh_addr(&c, &other.node);
    let from_me = |url: &str| {
        c.maki(&[
            "local",
            "exec",
            &me.node,
            "--",
            "curl",
            "-s",
            "-f",
            "--max-time",
            "5",
            url,
        ])
        .status
        .success()
    };
    wait_until(
        Duration::from_secs(20),
        "the other host's server answers at its public and mesh addresses",
        || {
            from_me(&format!("http://{}:8000/page.txt", other.ipv4))
                && from_me(&format!("http://{mesh_of_other}:8000/page.txt"))
        },
    );
    wait_until(
        Duration::from_secs(400),
        "vector serves the version, its component compiled",
        || {
            c.health(&me.node)["http"]["sites"]["example.test"]["version"].as_str()
                == Some(live.as_str())
        },
    );
    let (_, static_ok) = static_page(&c, &me.node, &me.ipv4);

    // A public address: the response and its body.
    let (status, body) = fetch(
        &c,
        &me.node,
        &me.ipv4,
        &format!("http://{}:8000/page.txt", other.ipv4),
    );
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    assert_eq!(body.trim_end(), format!("fetched 200: {page}").trim_end());
    let (status, body) = fetch(
        &c,
        &me.node,
        &me.ipv4,
        &format!("http://{}:8000/missing.txt", other.ipv4),
    );
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    assert!(body.starts_with("fetched 404: "), "{body}");
    // A closed port at a public address: the rule let it through, the
    // network refused it.
    let (status, body) = fetch(
        &c,
        &me.node,
        &me.ipv4,
        &format!("http://{}:8001/page.txt", other.ipv4),
    );
    assert!(status.starts_with("HTTP/1.1 403"), "{status} {body}");
    assert_eq!(body.trim(), "refused: connection-refused");

    // Non-public destinations: refused by the rule, whatever listens.
    let refused = [
        ("127.0.0.1", "127.0.0.1"),
        ("10.0.0.1", "10.0.0.1"),
        ("169.254.169.254", "169.254.169.254"),
        ("[::ffff:127.0.0.1]", "::ffff:127.0.0.1"),
        (mesh_of_other.as_str(), mesh_of_other.as_str()),
        ("localhost", "localhost"),
    ];
    for (host, _) in refused {
        let url = format!("http://{host}:8000/page.txt");
        let (status, body) = fetch(&c, &me.node, &me.ipv4, &url);
        assert!(status.starts_with("HTTP/1.1 403"), "{url}: {status} {body}");
        assert_eq!(body.trim(), "refused: destination-ip-prohibited", "{url}");
        static_ok();
    }
    let log = c.exec(&me.node, &["cat", "/var/makiatto/daemon.log"]);
    for (_, logged) in refused {
        assert!(
            log.lines().any(|l| l
                .contains("a component's request to a non-public address was refused")
                && l.contains("domain=example.test")
                && l.contains(&format!("host={logged} "))),
            "no log line for {logged}"
        );
    }
    let wasm = c.health(&me.node)["http"]["wasm"].clone();
    assert_eq!(wasm["failed"], 0, "every call answered: {wasm}");
}

#[test]
fn an_env_value_is_resealed_to_a_node_that_joins_later() {
    require_root();
    let c = Cluster::new("wr");
    let project = c.dir.path().join("project");
    let file = copy_examples(&project);
    let toml = std::fs::read_to_string(&file).unwrap();
    std::fs::create_dir_all(project.join("site/api")).unwrap();
    std::fs::copy(
        test_component("hostile"),
        project.join("site/api/hostile.wasm"),
    )
    .unwrap();
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let secret = format!("resealed-value-{nonce}");
    std::fs::write(
        &file,
        format!(
            "{toml}\n[[domain.functions]]\npath = \"api/hostile.wasm\"\nenv = {{ SECRET_VALUE = \"{secret}\" }}\n"
        ),
    )
    .unwrap();
    let state = c.up(4, &["--no-ca"]);
    let newcomer = state.hosts[3].clone();
    // The fourth machine leaves before the sync, so the value is sealed
    // to three nodes; it then joins again, with new keys.
    c.ok(&["machine", "remove", &newcomer.node, "--force"]);
    c.ok(&["sync", "--file", file.to_str().unwrap(), "-m", "env"]);
    let live = live_everywhere(&c, "the version reaches the three nodes");
    c.init_machine(&newcomer);
    let ask = |h: &makiatto_harness::Host| {
        curl(
            &c,
            &h.node,
            &[
                "-H",
                "Host: example.test",
                &format!("http://{}/api/hostile?env=SECRET_VALUE", h.ipv4),
            ],
        )
    };
    // A node there at the sync opens its own entry.
    wait_until(
        Duration::from_secs(400),
        "vector serves the version",
        || {
            c.health(&state.hosts[0].node)["http"]["sites"]["example.test"]["version"].as_str()
                == Some(live.as_str())
        },
    );
    let (head, body) = ask(&state.hosts[0]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}{body}");
    assert_eq!(body.trim(), format!("done: {secret}"));
    // The newcomer serves the version once fetched and compiled, and
    // opens the value with the entry a node resealed to it.
    wait_until(
        Duration::from_secs(400),
        "the newcomer serves the version",
        || {
            c.health(&newcomer.node)["http"]["sites"]["example.test"]["version"].as_str()
                == Some(live.as_str())
        },
    );
    let mut answer = (String::new(), String::new());
    wait_until(
        Duration::from_secs(60),
        "the newcomer's function sees the value",
        || {
            answer = ask(&newcomer);
            answer.1.trim() == format!("done: {secret}")
        },
    );
    // The log has the reseal, and nowhere the value: not in `maki log
    // --json`, not in any file of any node (log store, daemon log, blobs,
    // compiled components).
    let log = c.ok(&["log", "--json", "--node", &newcomer.node]);
    assert!(log.contains("\"secret-resealed\""), "{log}");
    assert!(!log.contains(&secret), "the value is in `maki log --json`");
    for h in &state.hosts {
        let found = std::process::Command::new("grep")
            .args(["-r", "-l", "-a", "-F", &secret])
            .arg(c.host_dir(&h.node))
            .output()
            .unwrap();
        assert_eq!(
            found.status.code(),
            Some(1),
            "the value is in a file of {}: {}",
            h.node,
            String::from_utf8_lossy(&found.stdout)
        );
    }
    // A removed node's entry ends with the next sync: the value, unchanged
    // in the file, is sealed anew to the nodes left, which still read it.
    let removed = &state.hosts[2].node;
    c.ok(&["machine", "remove", removed, "--force"]);
    let out = c.ok(&[
        "sync",
        "--file",
        file.to_str().unwrap(),
        "-m",
        "after removal",
    ]);
    assert!(out.contains("configuration: changed"), "{out}");
    let log = c.ok(&["log", "--json", "--node", &state.hosts[0].node]);
    assert!(!log.contains(&secret), "the value is in `maki log --json`");
    wait_until(
        Duration::from_secs(60),
        "the nodes left read the value sealed anew",
        || {
            [&state.hosts[0], &newcomer]
                .iter()
                .all(|h| ask(h).1.trim() == format!("done: {secret}"))
        },
    );
}
