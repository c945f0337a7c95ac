//! A bounded run of the fuzz target `project` in the suite: its seed
//! corpus (`node/fuzz/corpus/project/`) and seeded mutations of it as the
//! text of a `makiatto.toml` (`makiatto_cli::fuzz::project`); a panic is a
//! crash. The coverage-guided runs are `scripts/fuzz.sh project SECONDS`
//! (figures in `docs/reliability.md`).

use makiatto_harness::fuzz::run_target;

#[test]
fn makiatto_toml_through_the_project_checker() {
    run_target("project", makiatto_cli::fuzz::project);
}
