//! Where the `maki` and `makiatto` of this build are.
//!
//! Cargo puts a package's binaries in `target/<profile>/` and integration
//! tests in `target/<profile>/deps/`; the benchmarks are binaries
//! themselves. So one rule finds the binaries built with whatever runs:
//! the debug ones for a test, the release ones beside a benchmark.

use std::path::{Path, PathBuf};

/// The directory holding the binaries of one build.
#[derive(Debug, Clone)]
pub struct Binaries {
    dir: PathBuf,
}

impl Binaries {
    /// The binaries beside the running executable (or beside its `deps/`
    /// directory, for a test).
    pub fn of_this_build() -> Binaries {
        let exe = std::env::current_exe().expect("the running executable's path");
        let mut dir = exe.parent().expect("the executable's directory");
        if dir.file_name().is_some_and(|n| n == "deps") {
            dir = dir.parent().expect("the profile's directory");
        }
        Binaries::in_dir(dir)
    }

    /// The binaries in `dir`.
    pub fn in_dir(dir: &Path) -> Binaries {
        Binaries {
            dir: dir.to_owned(),
        }
    }

    /// The CLI.
    pub fn maki(&self) -> PathBuf {
        self.existing("maki")
    }

    /// The daemon, which `maki local up` installs on every test host.
    pub fn makiatto(&self) -> PathBuf {
        self.existing("makiatto")
    }

    /// `dir/name`; panics, saying what to build, when it is missing.
    /// (Cargo builds a package's own binaries for its tests, not the
    /// other package's.)
    fn existing(&self, name: &str) -> PathBuf {
        let path = self.dir.join(name);
        let build = if self.dir.file_name().is_some_and(|n| n == "release") {
            "cargo build --release -p makiatto -p makiatto-cli -p makiatto-benches --bins"
        } else {
            "cargo build -p makiatto -p makiatto-cli"
        };
        assert!(
            path.exists(),
            "{} is missing: build it first ({build})",
            path.display()
        );
        path
    }
}
