//! The repository's example project (`examples/`: a `makiatto.toml` and
//! its site), which tests and benchmarks sync, and copies of it to change.

use std::path::{Path, PathBuf};

/// The line of `examples/makiatto.toml` after which its WebAssembly
/// parts are configured.
const WASM_MARKER: &str = "# --- WebAssembly";

/// The repository's example `makiatto.toml`, WebAssembly included: its
/// components are built first (`scripts/build-components.sh`).
pub fn example_project_with_wasm() -> PathBuf {
    build_components();
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/makiatto.toml");
    std::fs::canonicalize(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

/// Builds the example's and the tests' components (once per process; the
/// script builds only what changed).
pub fn build_components() {
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(|| {
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/build-components.sh");
        let status = std::process::Command::new(&script)
            .status()
            .unwrap_or_else(|e| panic!("{}: {e}", script.display()));
        assert!(status.success(), "{} failed", script.display());
    });
}

/// The tests' component `name` (`node/tests/components/NAME.wat` or
/// `NAME/app.py`), built first.
pub fn test_component(name: &str) -> PathBuf {
    build_components();
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/components")
        .join(format!("{name}.wasm"));
    std::fs::canonicalize(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The example project without its WebAssembly parts (their components
/// compile a Python interpreter on first use, which the tests of other
/// subsystems should not pay, and the transform changes every page): a
/// copy made once per process under the system's temporary directory.
pub fn example_project() -> PathBuf {
    static COPY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    COPY.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("makiatto-example-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        copy_examples(&dir)
    })
    .clone()
}

/// Copies the example project into `into` without its WebAssembly parts;
/// returns the copy's `makiatto.toml`.
pub fn copy_examples(into: &Path) -> PathBuf {
    let file = copy_examples_with_wasm_sources(into);
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let plain = text
        .split(WASM_MARKER)
        .next()
        .unwrap_or(&text)
        .trim_end()
        .to_owned()
        + "\n";
    std::fs::write(&file, plain).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    for dir in ["site/api", "site/transforms"] {
        let _ = std::fs::remove_dir_all(into.join(dir));
    }
    file
}

/// Copies the example project into `into`, WebAssembly included (its
/// components built first); returns the copy's `makiatto.toml`.
pub fn copy_examples_with_wasm(into: &Path) -> PathBuf {
    build_components();
    copy_examples_with_wasm_sources(into)
}

fn copy_examples_with_wasm_sources(into: &Path) -> PathBuf {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/makiatto.toml");
    let examples =
        std::fs::canonicalize(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    copy_dir(examples.parent().expect("the examples directory"), into);
    let _ = std::fs::remove_dir_all(into.join("components"));
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

/// A query mix over the example project's `example.test`: nine names that
/// exist, one that does not (the DNS benches ask it).
pub const EXAMPLE_DNS_MIX: [(&str, &str); 10] = [
    ("example.test", "A"),
    ("example.test", "AAAA"),
    ("www.example.test", "A"),
    ("example.test", "MX"),
    ("example.test", "TXT"),
    ("_dmarc.example.test", "TXT"),
    ("mail.example.test", "A"),
    ("nope.example.test", "A"),
    ("example.test", "SOA"),
    ("example.test", "NS"),
];
