//! The entry point of the fuzz target `project` (`node/fuzz/`): arbitrary
//! bytes as the text of a `makiatto.toml`, read the way `maki config check`
//! and `maki sync` read it, in a small project directory made once (a site
//! directory with two components, an `env_file` inside it and one beside
//! it). A panic is what the fuzzer reports as a crash. The suite replays
//! the seed corpus and seeded mutations of it (`maki/tests/fuzz_corpora.rs`).
//!
//! Checked: no panic; every problem names a line and column inside the
//! text and renders; a file that passes turns into the configuration
//! document that every node folds — written by `maki`'s edit, decoded and
//! applied as a node applies it, read back equal.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use makiatto_events::AuthorKey;
use makiatto_projections::config::{ConfigDoc, DesiredConfig};

use crate::project::Project;

/// The project directory the cases are read in (made once per process).
fn root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let root =
            std::env::temp_dir().join(format!("makiatto-fuzz-project-{}", std::process::id()));
        let files: [(&str, &[u8]); 5] = [
            ("dist/index.html", b"<p>hello</p>"),
            ("dist/api/hello.wasm", b"\0asm"),
            ("dist/minify.wasm", b"\0asm"),
            ("dist/.env", b"# inside the site\nTOKEN=\"abc\"\n"),
            ("secrets.env", b"DB_URL='postgres://db'\n\nKEY=value\n"),
        ];
        for (path, body) in files {
            let path = root.join(path);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            }
            std::fs::write(&path, body).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
        root
    })
}

/// One case: `data` as the text of `makiatto.toml`.
pub fn project(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let root = root();
    let file = root.join(crate::project::FILE_NAME);
    match Project::parse(&file, root, text.to_owned()) {
        Err(problems) => {
            assert!(!problems.problems.is_empty(), "an error with no problem");
            let lines = text.split('\n').count();
            for p in &problems.problems {
                assert!(p.line >= 1 && p.line <= lines, "line {} of {lines}", p.line);
                assert!(p.column >= 1, "column {}", p.column);
            }
            let shown = problems.to_string();
            let first = &problems.problems[0];
            let at = format!("{}:{}:{}: ", file.display(), first.line, first.column);
            assert!(
                shown.starts_with(&at),
                "{shown:?} does not start with {at:?}"
            );
        }
        Ok(project) => {
            for d in &project.domains {
                assert_eq!(d.name, d.name.to_ascii_lowercase());
                assert!(!d.name.ends_with('.'));
                for f in &d.functions {
                    assert!(f.path.ends_with(".wasm") && d.config_files.contains(&f.path));
                    assert!(
                        !f.path
                            .split('/')
                            .any(|s| s.is_empty() || s == "." || s == "..")
                    );
                }
            }
            let wanted = project
                .to_desired(&DesiredConfig::default(), |_, _, _, v| Ok(v.to_owned()))
                .unwrap_or_else(|e| panic!("no seal fails here: {e}"));
            let mut edited = ConfigDoc::default();
            let changes = edited
                .edit(&AuthorKey([7; 32]), [1; 16], &wanted)
                .unwrap_or_else(|e| panic!("a valid project's configuration is not written: {e}"));
            let mut folded = ConfigDoc::default();
            let decoded = ConfigDoc::decode(&changes)
                .unwrap_or_else(|e| panic!("the changes do not decode: {e}"));
            assert_eq!(folded.apply_as_folded(decoded), 0, "a change was refused");
            let seen = folded
                .view()
                .unwrap_or_else(|e| panic!("the folded document does not read back: {e}"));
            assert_eq!(seen, wanted, "the nodes would see another configuration");
        }
    }
}
