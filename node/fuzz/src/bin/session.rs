//! AFL++ target `session`: `makiatto::fuzz::session` in persistent mode.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        makiatto::fuzz::session(data);
    });
}
