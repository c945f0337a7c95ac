//! AFL++ target `record`: `makiatto::fuzz::record` in persistent mode.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        makiatto::fuzz::record(data);
    });
}
