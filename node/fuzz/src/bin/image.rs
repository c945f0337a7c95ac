//! AFL++ target `image`: `makiatto::fuzz::image_params` in persistent mode.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        makiatto::fuzz::image_params(data);
    });
}
