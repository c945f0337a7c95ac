//! Every module list in the code is true: each file that declares modules
//! (`mod x;`) lists every one of them in its `//!` docs, and its `# Layout`
//! section names no module that is not there. ARCHITECTURE.md and the
//! module docs are where a reader starts; a list that leaves modules out
//! (or names gone ones) sends them the wrong way.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failure is a panic

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The workspace's Rust sources (not tests, benches' binaries or target).
fn sources(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                if !matches!(name.as_str(), "target" | "tests" | ".git" | "fixtures") {
                    dirs.push(path);
                }
            } else if name.ends_with(".rs") && path.components().any(|c| c.as_os_str() == "src") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// `mod x;` declarations (out-of-line modules) of a file.
fn declared(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| {
            let l = l
                .trim_start_matches("pub(crate) ")
                .trim_start_matches("pub ");
            let name = l.strip_prefix("mod ")?.strip_suffix(';')?;
            Some(name.trim().to_owned())
        })
        .collect()
}

/// The names a list item of the module docs starts with: in
/// "- [`a`], [`b`]: …" or "3. `c`: …", the backticked words before the
/// first colon.
fn item_heads(line: &str) -> Vec<String> {
    let body = line.trim_start_matches("//!").trim_start();
    let rest = if let Some(r) = body.strip_prefix("- ") {
        r
    } else if let Some((n, r)) = body.split_once(". ") {
        if n.chars().all(|c| c.is_ascii_digit()) && !n.is_empty() {
            r
        } else {
            return Vec::new();
        }
    } else {
        return Vec::new();
    };
    let head = rest.split(':').next().unwrap_or("");
    head.split('`')
        .skip(1)
        .step_by(2)
        .map(|s| s.to_owned())
        .filter(|s| {
            s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        })
        .collect()
}

/// List heads anywhere in the module docs, and those under `# Layout`.
fn documented(text: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut all = BTreeSet::new();
    let mut layout = BTreeSet::new();
    let mut in_layout = false;
    for line in text
        .lines()
        .take_while(|l| l.starts_with("//!") || l.is_empty())
    {
        if let Some(h) = line.strip_prefix("//! #") {
            in_layout = h.trim_start_matches('#').trim() == "Layout";
            continue;
        }
        for name in item_heads(line) {
            if in_layout {
                layout.insert(name.clone());
            }
            all.insert(name);
        }
    }
    (all, layout)
}

#[test]
fn every_module_list_matches_the_modules_declared() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut problems = Vec::new();
    let mut checked = 0;
    for file in sources(&root) {
        let text = std::fs::read_to_string(&file).unwrap();
        let modules = declared(&text);
        if modules.is_empty() {
            continue;
        }
        checked += 1;
        let shown = file
            .strip_prefix(&root)
            .unwrap_or(&file)
            .display()
            .to_string();
        let (all, layout) = documented(&text);
        if layout.is_empty() {
            problems.push(format!("{shown}: no `# Layout` list of its modules"));
        }
        for m in modules.difference(&all) {
            problems.push(format!("{shown}: module `{m}` is not in its module docs"));
        }
        for m in layout.difference(&modules) {
            problems.push(format!(
                "{shown}: `# Layout` names `{m}`, which it does not declare"
            ));
        }
    }
    assert!(
        checked >= 10,
        "only {checked} files declare modules: is the root right?"
    );
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn list_heads_are_read_as_written() {
    assert_eq!(
        item_heads("//! - [`append`], [`log`]: the answers"),
        ["append", "log"]
    );
    assert_eq!(
        item_heads("//! 3. [`plan`]: each manifest ([`Planned`])"),
        ["plan"]
    );
    assert_eq!(item_heads("//! - `wire`: reading queries"), ["wire"]);
    assert!(item_heads("//! a [`b`] in prose").is_empty());
}
