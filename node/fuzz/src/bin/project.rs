//! AFL++ target `project`: `makiatto_cli::fuzz::project` in persistent mode.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        makiatto_cli::fuzz::project(data);
    });
}
