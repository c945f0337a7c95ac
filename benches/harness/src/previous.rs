//! The previous release's `maki` and `makiatto`, for the tests that hold
//! a release compatible with the one before it in both directions (a
//! rolling upgrade mixes them).
//!
//! Built once from this repository's history ([`PREVIOUS_RELEASE`]) into
//! `target/previous/`, reusing this build's compiled dependencies, or
//! taken from `MAKIATTO_PREVIOUS_BIN` (a directory holding both). The
//! commit is an ancestor of every later one, so any clone with history
//! has it; without it (a shallow clone) the tests say so and skip.
//! `scripts/test.sh` deepens a shallow clone first when it can.

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

/// The previous release's binaries, built on first use (a minute or so;
/// later calls, also from other test processes, find them built). `None`
/// when this checkout has no history to build them from (a shallow clone
/// or an exported tree): the caller says so and skips, since the wire
/// forms are still pinned by the golden fixtures of both protocols.
pub fn previous_release() -> Option<Binaries> {
    if let Some(dir) = std::env::var_os("MAKIATTO_PREVIOUS_BIN") {
        return Some(Binaries::in_dir(Path::new(&dir)));
    }
    let root = workspace();
    let known = Command::new("git")
        .arg("-C")
        .arg(&root)
        .args(["cat-file", "-e", &format!("{PREVIOUS_RELEASE}^{{commit}}")])
        .status()
        .is_ok_and(|s| s.success());
    if !known {
        eprintln!(
            "NOTICE: the previous release ({PREVIOUS_RELEASE}) is not in this checkout's \
             history (a shallow clone?): the compatibility tests cannot build it and do not \
             run. Clone with history, or set MAKIATTO_PREVIOUS_BIN to a directory holding that \
             release's maki and makiatto."
        );
        return None;
    }
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
        return Some(Binaries::in_dir(&built));
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
        "git archive of the previous release failed: {}",
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
    Some(Binaries::in_dir(&built))
}
