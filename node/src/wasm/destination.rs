//! Where a component may connect: public addresses only. The check is made
//! on the resolved address, and the caller connects to exactly the address
//! checked (no second lookup), so a name that resolves to a public address
//! once and a private one the next time (DNS rebinding) cannot slip
//! through.
//!
//! Refused: the unspecified, loopback, RFC 1918, CGNAT (100.64/10),
//! link-local (169.254/16, fe80::/10), unique-local (fc00::/7), site-local
//! (fec0::/10), multicast, broadcast and reserved (240/4) ranges, `0/8`,
//! the cluster's mesh range, and every IPv6 form that embeds an IPv4
//! address (IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible `::a.b.c.d`,
//! IPv4-translated `::ffff:0:a.b.c.d`, NAT64 `64:ff9b::/96`, 6to4
//! `2002::/16`) when the embedded address is refused; Teredo (`2001::/32`)
//! and the local-use NAT64 prefix (`64:ff9b:1::/48`) always. The
//! documentation ranges (192.0.2/24, 198.51.100/24, 203.0.113/24,
//! 2001:db8::/32) stay allowed: the test hosts live there.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use makiatto_events::payload::Ipv4Net;

/// Why an address was refused (for the log line and the guest's error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("{0} is not a public address")]
    NotPublic(IpAddr),
    #[error("{0} is in the cluster's mesh range")]
    Mesh(IpAddr),
}

/// The rule: public addresses, outside the mesh range.
#[derive(Debug, Clone, Copy, Default)]
pub struct Destinations {
    /// The cluster's mesh range (none before genesis is known).
    pub mesh: Option<Ipv4Net>,
}

impl Destinations {
    /// Whether a component may connect to `addr`.
    pub fn check(&self, addr: IpAddr) -> Result<(), Refused> {
        let v4 = match addr {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(v6) => match embedded_v4(v6) {
                Embedded::Always => return Err(Refused::NotPublic(addr)),
                Embedded::V4(v4) => Some(v4),
                Embedded::None => {
                    if private_v6(v6) {
                        return Err(Refused::NotPublic(addr));
                    }
                    None
                }
            },
        };
        if let Some(v4) = v4 {
            if private_v4(v4) {
                return Err(Refused::NotPublic(addr));
            }
            if self.mesh.is_some_and(|m| m.contains(v4)) {
                return Err(Refused::Mesh(addr));
            }
        }
        Ok(())
    }
}

fn in_v4(addr: Ipv4Addr, net: [u8; 4], prefix: u8) -> bool {
    Ipv4Net::new(Ipv4Addr::from(net), prefix).is_some_and(|n| n.contains(addr))
}

fn private_v4(a: Ipv4Addr) -> bool {
    const DENIED: &[([u8; 4], u8)] = &[
        ([0, 0, 0, 0], 8),
        ([10, 0, 0, 0], 8),
        ([100, 64, 0, 0], 10),
        ([127, 0, 0, 0], 8),
        ([169, 254, 0, 0], 16),
        ([172, 16, 0, 0], 12),
        ([192, 0, 0, 0], 24),
        ([192, 168, 0, 0], 16),
        ([198, 18, 0, 0], 15),
        ([224, 0, 0, 0], 4),
        ([240, 0, 0, 0], 4),
    ];
    DENIED.iter().any(|(net, p)| in_v4(a, *net, *p))
}

fn private_v6(a: Ipv6Addr) -> bool {
    let s = a.segments();
    a.is_unspecified()
        || a.is_loopback()
        || (s[0] & 0xffc0) == 0xfe80 // link-local
        || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
        || (s[0] & 0xfe00) == 0xfc00 // unique local
        || (s[0] & 0xff00) == 0xff00 // multicast
}

/// An IPv4 address carried inside an IPv6 one.
enum Embedded {
    None,
    V4(Ipv4Addr),
    /// A form refused whatever it carries.
    Always,
}

fn embedded_v4(a: Ipv6Addr) -> Embedded {
    let s = a.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        // IPv4-mapped ::ffff:a.b.c.d
        [0, 0, 0, 0, 0, 0xffff, _, _] => Embedded::V4(low),
        // IPv4-translated ::ffff:0:a.b.c.d (RFC 2765)
        [0, 0, 0, 0, 0xffff, 0, _, _] => Embedded::V4(low),
        // IPv4-compatible ::a.b.c.d (deprecated; :: and ::1 are not)
        [0, 0, 0, 0, 0, 0, hi, _] if hi != 0 => Embedded::V4(low),
        // NAT64 well-known prefix 64:ff9b::/96
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Embedded::V4(low),
        // Local-use NAT64 64:ff9b:1::/48: whatever it reaches is local.
        [0x64, 0xff9b, 1, ..] => Embedded::Always,
        // 6to4 2002:AABB:CCDD::/48
        [0x2002, hi, lo, ..] => Embedded::V4(Ipv4Addr::new(
            (hi >> 8) as u8,
            hi as u8,
            (lo >> 8) as u8,
            lo as u8,
        )),
        // Teredo 2001:0::/32
        [0x2001, 0, ..] => Embedded::Always,
        _ => Embedded::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule() -> Destinations {
        Destinations {
            mesh: Ipv4Net::new(Ipv4Addr::new(198, 51, 100, 16), 28),
        }
    }

    #[test]
    fn private_loopback_link_local_and_mesh_addresses_are_refused() {
        for a in [
            "127.0.0.1",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "fe80::1",
            "fc00::1",
            "fd12:3456::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:0:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b::a00:1",
            "64:ff9b:1::1",
            "2002:7f00:1::1",
            "2002:a9fe:a9fe::1",
            "2001:0:4136:e378::1",
            "198.51.100.17",
            "::ffff:198.51.100.17",
        ] {
            let ip: IpAddr = a.parse().unwrap();
            assert!(rule().check(ip).is_err(), "{a} must be refused");
        }
        assert_eq!(
            rule().check("198.51.100.20".parse().unwrap()),
            Err(Refused::Mesh("198.51.100.20".parse().unwrap()))
        );
    }

    #[test]
    fn public_and_documentation_addresses_are_allowed() {
        for a in [
            "1.1.1.1",
            "93.184.216.34",
            "203.0.113.17",
            "198.51.100.200",
            "2001:db8:1::5",
            "2606:4700::1111",
            "::ffff:1.1.1.1",
            "64:ff9b::101:101",
            "2002:101:101::1",
        ] {
            let ip: IpAddr = a.parse().unwrap();
            assert_eq!(rule().check(ip), Ok(()), "{a} must be allowed");
        }
    }
}
