//! The daemon's modules import each other without a circle: `daemon`
//! wires the subsystems together; replication (`gossip`) does not reach
//! back up into `daemon`, and the subsystems that follow the log (`dns`,
//! `http`, `acme`, `content`) see replication only through the narrow
//! handles (`changes`, `liveness`, `peer_blobs`), never `gossip` itself.
//!
//! Read from the sources: every `crate::<module>` path in a module's
//! files (a directory module's files count as the module), comments
//! aside; `lib.rs` is the root that declares them all and is left out, and
//! so is `main.rs`, which only calls `cli::main`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failure is a panic

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module → the modules its files name with `crate::`.
type Graph = BTreeMap<String, BTreeSet<String>>;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

/// The modules named by `crate::<name>` in `code`, comments left out.
fn named(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in code.lines() {
        let line = line.split("//").next().unwrap_or("");
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // `use crate::{a, b}` names each.
            if name.is_empty() && after.starts_with('{') {
                let inner = &after[1..after.find('}').unwrap_or(after.len())];
                for part in inner.split(',') {
                    let part = part.trim().split("::").next().unwrap_or("").trim();
                    if !part.is_empty() {
                        out.insert(part.to_string());
                    }
                }
            } else if !name.is_empty() {
                out.insert(name);
            }
            rest = after;
        }
    }
    out
}

fn graph() -> Graph {
    let src = src();
    let mut graph = Graph::new();
    for file in files(&src) {
        let relative = file.strip_prefix(&src).unwrap();
        let first = relative.components().next().unwrap();
        let module = Path::new(first.as_os_str())
            .file_stem()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if module == "main" || module == "lib" {
            continue;
        }
        let code = std::fs::read_to_string(&file).unwrap();
        let edges = graph.entry(module.clone()).or_default();
        edges.extend(named(&code).into_iter().filter(|m| *m != module));
    }
    graph
}

/// A circle through the graph, if there is one (as the path around it).
fn circle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        graph: &Graph,
        node: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut circle = path[at..].to_vec();
            circle.push(node.to_string());
            return Some(circle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(graph, next, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(graph, n, &mut Vec::new(), &mut done))
}

#[test]
fn the_daemons_modules_import_each_other_without_a_circle() {
    let graph = graph();
    assert!(
        graph.contains_key("gossip") && graph.contains_key("daemon"),
        "the sources were not found: {graph:?}"
    );
    if let Some(circle) = circle(&graph) {
        panic!(
            "modules import each other in a circle: {}",
            circle.join(" → ")
        );
    }
}

#[test]
fn replication_does_not_reach_into_the_daemon_nor_the_subsystems_into_it() {
    let graph = graph();
    assert!(
        !graph["gossip"].contains("daemon"),
        "gossip imports daemon: {:?}",
        graph["gossip"]
    );
    for module in ["dns", "http", "acme", "content"] {
        assert!(
            !graph[module].contains("gossip"),
            "{module} imports gossip instead of a narrow handle: {:?}",
            graph[module]
        );
    }
}

#[test]
fn the_reader_of_imports_finds_paths_groups_and_skips_comments() {
    let code = "use crate::a::B;\nuse crate::{b, c::D};\n// crate::e\nlet x = crate::f::g(); // crate::h\n";
    let found: Vec<String> = named(code).into_iter().collect();
    assert_eq!(found, ["a", "b", "c", "f"]);
    let mut g = Graph::new();
    g.entry("x".into()).or_default().insert("y".into());
    g.entry("y".into()).or_default().insert("z".into());
    assert_eq!(circle(&g), None);
    g.entry("z".into()).or_default().insert("x".into());
    assert_eq!(
        circle(&g).unwrap(),
        ["x", "y", "z", "x"].map(String::from).to_vec()
    );
}
