//! The hardened systemd unit that `makiatto service install` writes is
//! checked as systemd would read it, without running systemd: `systemd-
//! analyze verify` finds nothing wrong with it, and `systemd-analyze
//! security --offline=yes` rates its exposure under 2.0 of 10 (1.9 when
//! this was written: docs/design.md says what it keeps and why). Needs
//! Debian's `systemd` package (scripts/install-deps.sh).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failure is a panic

use std::process::Command;

use makiatto_harness::daemon::makiatto;
use makiatto_harness::stdout;

/// The unit, written where `systemd-analyze` reads it.
fn unit() -> (tempfile::TempDir, std::path::PathBuf) {
    let text = stdout(makiatto().args([
        "--data-dir",
        "/var/makiatto",
        "service",
        "install",
        "--print",
    ]));
    assert!(text.contains("ExecReload="), "a reload hands over: {text}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("makiatto.service");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

#[test]
fn systemd_finds_nothing_wrong_with_the_unit() {
    let (_dir, path) = unit();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian's systemd package; scripts/install-deps.sh)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}");
    assert!(
        !said.contains("makiatto.service"),
        "systemd-analyze verify warns about the unit:\n{said}"
    );
}

#[test]
fn the_units_exposure_stays_low() {
    let (_dir, path) = unit();
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian's systemd package; scripts/install-deps.sh)");
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    let score: f64 = said
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for makiatto.service: ")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no exposure level in:\n{said}"));
    println!("exposure {score}");
    assert!(score <= 2.0, "the unit's exposure rose to {score}:\n{said}");
}
