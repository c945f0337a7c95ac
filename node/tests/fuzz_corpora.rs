//! A bounded run of every fuzz target, in the suite: each target's seed
//! corpus (`node/fuzz/corpus/<target>/`) and seeded mutations of it go
//! through the same entry point the coverage-guided fuzzer drives
//! (`makiatto::fuzz`); a panic is a crash. The long runs, with AFL++ and
//! coverage guidance, are `scripts/fuzz.sh` (figures in
//! `docs/reliability.md`). `MAKIATTO_FUZZ_CASES` sets the mutations per
//! target (default 20,000), `MAKIATTO_SEED` the seed.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failure is a panic

use makiatto_harness::fuzz::run_target;

#[test]
fn dns_messages_through_parse_and_answer() {
    run_target("dns", makiatto::fuzz::dns_message);
}

#[test]
fn http_requests_through_the_parser_and_router() {
    run_target("http", makiatto::fuzz::http_request);
}

#[test]
fn events_through_decoding_verification_and_admission() {
    run_target("event", makiatto::fuzz::event);
}

#[test]
fn mesh_frames_and_heartbeats_through_their_codec() {
    run_target("frames", makiatto::fuzz::frames);
}

#[test]
fn a_peers_frames_through_the_session_state_machine() {
    run_target("session", makiatto::fuzz::session);
}

#[test]
fn control_lines_both_ways() {
    run_target("control", makiatto::fuzz::control);
}

#[test]
fn image_requests_through_the_parameter_parser_and_the_plan() {
    run_target("image", makiatto::fuzz::image_params);
}

#[test]
fn dns_records_through_the_record_parser() {
    run_target("record", makiatto::fuzz::record);
}
