//! AFL++ target `dns`: `makiatto::fuzz::dns_message` in persistent mode.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        makiatto::fuzz::dns_message(data);
    });
}
