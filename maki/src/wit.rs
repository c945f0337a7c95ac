//! `maki wasm fetch`: the WIT packages a component is built against,
//! embedded in this CLI (the ones its nodes link), written to a directory.
//! Nothing is downloaded: the packages are those of this `maki`'s version.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// The packages, as `wit/` in the source tree holds them: (path under the
/// target directory, text).
pub const PACKAGES: [(&str, &str); 2] = [
    ("http/http.wit", include_str!("../../wit/http/http.wit")),
    (
        "transform/transform.wit",
        include_str!("../../wit/transform/transform.wit"),
    ),
];

/// Writes the packages under `dir` (made if missing), replacing files of
/// the same name; returns the paths written.
pub fn write(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut written = Vec::with_capacity(PACKAGES.len());
    for (rel, text) in PACKAGES {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot make {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// `maki wasm fetch`.
pub fn fetch(dir: &Path) -> anyhow::Result<()> {
    for path in write(dir)? {
        println!("wrote {}", path.display());
    }
    println!(
        "WIT packages of maki {} (makiatto:http, makiatto:transform); build a component against them, e.g. componentize-py -d {}/http -w http componentize app -o app.wasm",
        env!("CARGO_PKG_VERSION"),
        dir.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_packages_written_are_the_ones_the_nodes_link() {
        let dir = tempfile::tempdir().unwrap();
        let written = write(&dir.path().join("wit")).unwrap();
        assert_eq!(written.len(), 2);
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit");
        for (rel, _) in PACKAGES {
            assert_eq!(
                std::fs::read(dir.path().join("wit").join(rel)).unwrap(),
                std::fs::read(source.join(rel)).unwrap(),
                "{rel}"
            );
        }
        // Again: the files are replaced, not refused.
        assert_eq!(write(&dir.path().join("wit")).unwrap().len(), 2);
    }
}
