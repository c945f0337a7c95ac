//! AFL++ target `event`: `makiatto::fuzz::event` in persistent mode.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        makiatto::fuzz::event(data);
    });
}
