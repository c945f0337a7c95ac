//! AFL++ target `http`: `makiatto::fuzz::http_request` in persistent mode.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        makiatto::fuzz::http_request(data);
    });
}
