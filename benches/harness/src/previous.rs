//! The previous release's `maki` and `makiatto`, for the tests that hold
//! a release compatible with the one before it in both directions (a
//! rolling upgrade mixes them).
//!
//! Built once from this repository's history ([`PREVIOUS_RELEASE`]) into
//! `target/previous/`, reusing this build's compiled dependencies, or
//! taken from `MAKIATTO_PREVIOUS_BIN` (a directory holding both). The
//! commit is an ancestor of every later one, so any clone with history
//! has it; a shallow clone gets a clear error saying what to do.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::binaries::Binaries;

/// The last commit of release 0.1 (control protocol 1, before the typed
/// protocol crate).
pub const PREVIOUS_RELEASE: &str = "ffd4f15051b9813772daaff1b905a1cfeb86970d";

/// The workspace this harness belongs to.
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The previous release's binaries, built on first use (a few minutes;
/// later calls, also from other test processes, find them built).
pub fn previous_release() -> Binaries {
    if let Some(dir) = std::env::var_os("MAKIATTO_PREVIOUS_BIN") {
        return Binaries::in_dir(Path::new(&dir));
    }
    let root = workspace();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let dir = target.join("previous");
    std::fs::create_dir_all(&dir).expect("target/previous");
    // One builder at a time; the others wait and then find it built.
    let lock = std::fs::File::create(dir.join(".lock")).expect("the build lock");
    let _held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .expect("lock target/previous");
    let built = dir.join("target/debug");
    let done = dir.join(format!("{PREVIOUS_RELEASE}.built"));
    if done.exists() {
        return Binaries::in_dir(&built);
    }
    let src = dir.join("src");
    let _ = std::fs::remove_dir_all(&src);
    std::fs::create_dir_all(&src).expect("target/previous/src");
    let archive = Command::new("git")
        .arg("-C")
        .arg(&root)
        .args(["archive", "--format=tar", PREVIOUS_RELEASE])
        .output()
        .expect("git runs");
    assert!(
        archive.status.success(),
        "the previous release ({PREVIOUS_RELEASE}) is not in this clone's history: \
         clone with history (not --depth), or build it elsewhere and set \
         MAKIATTO_PREVIOUS_BIN to the directory of its maki and makiatto: {}",
        String::from_utf8_lossy(&archive.stderr)
    );
    let unpacked = crate::process::with_input(
        Command::new("tar").arg("-x").arg("-C").arg(&src),
        &archive.stdout,
    );
    assert!(
        unpacked.status.success(),
        "tar could not unpack the release"
    );
    // This build's compiled dependencies, hard-linked: only the previous
    // release's own crates are compiled (the same dependency versions give
    // the same artifacts).
    let ours = target.join("debug");
    if !built.exists() && ours.exists() {
        std::fs::create_dir_all(&built).expect("target/previous/target/debug");
        for sub in ["deps", "build", ".fingerprint"] {
            let _ = Command::new("cp")
                .arg("-al")
                .arg(ours.join(sub))
                .arg(&built)
                .status();
        }
    }
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["build", "--locked", "-p", "makiatto", "-p", "makiatto-cli"])
        .arg("--manifest-path")
        .arg(src.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", dir.join("target"))
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building the previous release failed");
    std::fs::write(&done, b"").expect("mark the build done");
    Binaries::in_dir(&built)
}
