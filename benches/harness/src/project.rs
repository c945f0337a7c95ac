//! The repository's example project (`examples/`: a `makiatto.toml` and
//! its site), which tests and benchmarks sync, and copies of it to change.

use std::path::{Path, PathBuf};

/// The example project's `makiatto.toml`.
pub fn example_project() -> PathBuf {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/makiatto.toml");
    std::fs::canonicalize(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

/// Copies the example project into `into`; returns the copy's
/// `makiatto.toml`.
pub fn copy_examples(into: &Path) -> PathBuf {
    let examples = example_project();
    copy_dir(examples.parent().expect("the examples directory"), into);
    into.join("makiatto.toml")
}

/// Copies a directory tree.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("{}: {e}", to.display()));
    let entries = std::fs::read_dir(from).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
    for entry in entries {
        let entry = entry.unwrap_or_else(|e| panic!("{}: {e}", from.display()));
        let target = to.join(entry.file_name());
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target)
                .unwrap_or_else(|e| panic!("{}: {e}", entry.path().display()));
        }
    }
}
