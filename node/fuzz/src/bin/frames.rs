//! AFL++ target `frames`: `makiatto::fuzz::frames` in persistent mode.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        makiatto::fuzz::frames(data);
    });
}
