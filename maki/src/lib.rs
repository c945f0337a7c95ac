//! The part of `maki` that reads the operator's own files, as a library so
//! that the coverage-guided fuzzer (`node/fuzz/`, target `project`) and the
//! suite can drive it without the command-line binary.
//!
//! # Layout
//! - [`project`]: `makiatto.toml`, validated (`maki config check`).
//! - [`tree`]: a domain's files as a manifest, hashed in parallel and cached.
//! - [`fuzz`]: the fuzz target's entry point.

pub mod fuzz;
pub mod project;
pub mod tree;
