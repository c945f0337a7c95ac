//! WebAssembly components on real test hosts: `maki sync` carries them in
//! the version's manifest (a section never served), every node fetches
//! them, and a rollback brings back the components of the version it
//! returns to; the example's handler answers on every node with that
//! node's name, and its transform marks every HTML page. Needs root.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failure is a panic

use std::time::Duration;

use makiatto_harness::{Cluster, copy_examples, copy_examples_with_wasm, require_root, wait_until};
use serde_json::Value;

const NODES: [&str; 3] = ["vector", "klukai", "tololo"];

/// The live manifest every node serves once they agree, with its bytes
/// (fetched from `vector`'s blob store).
fn live_everywhere(c: &Cluster, what: &str) -> String {
    let mut live = String::new();
    wait_until(Duration::from_secs(30), what, || {
        let all: Vec<Value> = NODES
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
