//! AFL++ target `control`: `makiatto::fuzz::control` in persistent mode.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        makiatto::fuzz::control(data);
    });
}
