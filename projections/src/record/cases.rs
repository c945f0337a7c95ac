//! The table of good and bad records that every path parsing records is
//! tested against: this crate's parser, `maki config check` (the CLI's
//! `project.rs` tests) and the node's zone compiler (`dns/zone.rs` tests).
//! Each asserts the verdict of every row here, so the CLI and the nodes
//! cannot come to disagree without a test failing. Rows marked "was" note
//! what the CLI or the nodes did before they shared the parser.

use super::RecordText;

/// The domain every row is a record of.
pub const DOMAIN: &str = "example.com";

/// What every path must do with a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    /// Refuse, with a reason containing this text.
    Refuse(&'static str),
}

/// One `[[domain.records]]` entry of [`DOMAIN`] and its verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Case {
    pub rtype: &'static str,
    pub name: &'static str,
    pub value: &'static str,
    pub ttl: Option<i64>,
    pub priority: Option<i64>,
    pub verdict: Verdict,
}

impl Case {
    pub fn text(&self) -> RecordText<'static> {
        RecordText {
            rtype: self.rtype,
            name: self.name,
            value: self.value,
            ttl: self.ttl,
            priority: self.priority,
        }
    }

    const fn ttl(mut self, ttl: i64) -> Case {
        self.ttl = Some(ttl);
        self
    }

    const fn priority(mut self, priority: i64) -> Case {
        self.priority = Some(priority);
        self
    }
}

const fn ok(rtype: &'static str, name: &'static str, value: &'static str) -> Case {
    Case {
        rtype,
        name,
        value,
        ttl: None,
        priority: None,
        verdict: Verdict::Accept,
    }
}

const fn bad(
    rtype: &'static str,
    name: &'static str,
    value: &'static str,
    why: &'static str,
) -> Case {
    Case {
        verdict: Verdict::Refuse(why),
        ..ok(rtype, name, value)
    }
}

/// `N` bytes of `x`, with a dot after every 63 (a name of full labels when
/// `N` is not a multiple of 64).
const fn filler<const N: usize>(dots: bool) -> [u8; N] {
    let mut out = [b'x'; N];
    let mut i = 63;
    while dots && i < N {
        out[i] = b'.';
        i += 64;
    }
    out
}

const fn text(bytes: &'static [u8]) -> &'static str {
    match std::str::from_utf8(bytes) {
        Ok(s) => s,
        Err(_) => panic!("ASCII filler"),
    }
}

const TXT_OVER: [u8; 4001] = filler(false);
const TXT_FULL: [u8; 4000] = filler(false);
/// 4 labels, 243 characters: a valid name alone, 255 with `.example.com`.
const LONG_OWNER: [u8; 243] = filler(true);

pub const CASES: &[Case] = &[
    // Every type, as the guide writes them.
    ok("A", "www", "192.0.2.10"),
    ok("a", "www", "192.0.2.11"),
    ok("AAAA", "www", "2001:db8::10"),
    ok("CNAME", "blog", "www.example.com"),
    ok("CNAME", "blog", "example.net."),
    ok("NS", "sub", "ns1.other.net."),
    ok("MX", "@", "mail.example.com").priority(10),
    ok("MX", "@", ".").priority(0),
    ok("SRV", "_sip._tcp", "5 5060 sip.example.com").priority(1),
    ok("SRV", "_sip._tcp", "  5\t5060   sip.example.com ").priority(1),
    ok("TXT", "_dmarc", "v=DMARC1; p=none"),
    ok("TXT", "@", ""),
    ok("TXT", "@", " padded "),
    ok("TXT", "@", text(&TXT_FULL)),
    ok("TXT", "*.wild", "x"),
    ok("TXT", "example.com", "the apex, named in full"),
    ok("TXT", " WWW ", "x"),
    ok("TXT", "@", "x").ttl(1),
    ok("TXT", "@", "x").ttl(2_147_483_647),
    ok("CAA", "@", "0 issue \"letsencrypt.org\""),
    ok("CAA", "@", "128 issuewild \";\""),
    ok("CAA", "@", "0 issue \"\""),
    ok("CAA", "@", "0 issue \" letsencrypt.org \""),
    ok("CAA", "@", "0 issue \"letsencrypt.org;\""),
    ok(
        "CAA",
        "@",
        "0 issue \"ca.example.net; account=12345; validationmethods=dns-01\"",
    ),
    ok("CAA", "@", "0 issue \"ca.example.net;account = 1\""),
    ok("CAA", "@", "0 ISSUE \"letsencrypt.org\""),
    // Was refused by the nodes (they split on one space).
    ok("CAA", "@", "0  issue \"letsencrypt.org\""),
    ok("CAA", "@", "0\tissue\t\"letsencrypt.org\""),
    ok("CAA", "@", "0 iodef \"mailto:security@example.com\""),
    ok("CAA", "@", "0 iodef \"https://example.com/caa-report\""),
    ok("CAA", "@", "0 contactemail \"ops@example.com\""),
    ok("CAA", "@", "0 tbs \"free text, with spaces\""),
    // Types.
    bad(
        "PTR",
        "x",
        "x.example.com",
        "record type \"PTR\" is not supported",
    ),
    bad("A ", "www", "192.0.2.10", "is not supported"),
    // Names.
    bad(
        "TXT",
        "www.example.com",
        "x",
        "record names are relative to example.com",
    ),
    // Was served by the nodes (at the apex, or without the dot).
    bad("TXT", "", "x", "the name is empty"),
    bad("TXT", "www.", "x", "empty label"),
    bad("TXT", "bad name", "x", "holds ' '"),
    bad("TXT", "-www", "x", "starts or ends with a hyphen"),
    // Was accepted by the CLI, then skipped by every node.
    bad(
        "TXT",
        text(&LONG_OWNER),
        "x",
        "is longer than 253 characters",
    ),
    // Apex.
    bad("A", "@", "192.0.2.1", "made by GeoDNS"),
    bad("AAAA", "example.com", "2001:db8::1", "made by GeoDNS"),
    bad(
        "CNAME",
        "@",
        "elsewhere.example.net",
        "a CNAME cannot be at the apex",
    ),
    // Was served by the nodes, beside the cluster's own NS records.
    bad("NS", "@", "ns1.other.net", "they are made for you"),
    // Addresses. Was served by the nodes (they trimmed the value).
    bad("A", "www", " 192.0.2.10", "is not an IPv4 address"),
    bad("A", "www", "300.1.1.1", "is not an IPv4 address"),
    bad("AAAA", "www", "192.0.2.1", "is not an IPv6 address"),
    // Host names. Was served by the nodes.
    bad("CNAME", "blog", "bad host!", "is not a host name"),
    bad("CNAME", "blog", "*.example.net", "is not a host name"),
    // Was accepted by the CLI (it took off every trailing dot).
    bad("MX", "@", "mail.example.com..", "empty label").priority(10),
    // Priorities. Was served by the nodes with a default.
    bad(
        "MX",
        "@",
        "mail.example.com",
        "an MX record needs a priority",
    ),
    bad(
        "SRV",
        "_sip._tcp",
        "5 5060 sip.example.com",
        "a SRV record needs a priority",
    ),
    bad(
        "MX",
        "@",
        "mail.example.com",
        "priority must be from 0 to 65535",
    )
    .priority(65_536),
    bad(
        "MX",
        "@",
        "mail.example.com",
        "priority must be from 0 to 65535",
    )
    .priority(-1),
    // Was served by the nodes, the priority ignored.
    bad("TXT", "@", "x", "a TXT record has no priority").priority(5),
    // TTLs. Was served by the nodes.
    bad("TXT", "@", "x", "ttl must be from 1 to 2147483647 seconds").ttl(0),
    bad("TXT", "@", "x", "ttl must be from 1").ttl(2_147_483_648),
    bad("TXT", "@", "x", "ttl must be from 1").ttl(-1),
    // TXT.
    bad("TXT", "@", text(&TXT_OVER), "longer than 4,000 bytes"),
    // SRV.
    bad(
        "SRV",
        "_sip._tcp",
        "5 sip.example.com",
        "is not WEIGHT PORT TARGET",
    )
    .priority(1),
    bad("SRV", "_sip._tcp", "5 70000 sip.example.com", "the port").priority(1),
    bad("SRV", "_sip._tcp", "x 5060 sip.example.com", "the weight").priority(1),
    bad("SRV", "_sip._tcp", "5 5060 sip..example.com", "the target").priority(1),
    // CAA shape.
    bad("CAA", "@", "0 issue letsencrypt.org", "double quotes"),
    bad("CAA", "@", "0 issue", "is not FLAGS TAG"),
    bad("CAA", "@", "x issue \"a\"", "the CAA flags \"x\""),
    // Was accepted by both: RFC 8659 reserves the other bits.
    bad(
        "CAA",
        "@",
        "1 issue \"letsencrypt.org\"",
        "neither 0 nor 128",
    ),
    bad(
        "CAA",
        "@",
        "255 issue \"letsencrypt.org\"",
        "neither 0 nor 128",
    ),
    // Was accepted by the CLI, then skipped by every node.
    bad(
        "CAA",
        "@",
        "0 issuewildcardsxy \"x\"",
        "not 1 to 15 ASCII letters",
    ),
    bad("CAA", "@", "0 is-sue \"x\"", "not 1 to 15 ASCII letters"),
    // Values: was accepted by both.
    bad("CAA", "@", "0 tbs \"say \"hi\"\"", "holds '\"'"),
    bad("CAA", "@", "0 tbs \"a\\b\"", "holds '\\\\'"),
    bad(
        "CAA",
        "@",
        "0 issue \"not a domain\"",
        "the issue issuer \"not a domain\"",
    ),
    bad(
        "CAA",
        "@",
        "0 issuewild \"lets_encrypt.org\"",
        "the issuewild issuer",
    ),
    bad("CAA", "@", "0 issue \"letsencrypt.org.\"", "empty label"),
    bad(
        "CAA",
        "@",
        "0 issue \"ca.example.net; account\"",
        "is not KEY=VALUE",
    ),
    bad("CAA", "@", "0 issue \"ca.example.net;; a=b\"", "is empty"),
    bad(
        "CAA",
        "@",
        "0 issue \"ca.example.net; a=b c\"",
        "holding a space",
    ),
    bad("CAA", "@", "0 issue \"ca.example.net; -a=b\"", "has a key"),
    bad(
        "CAA",
        "@",
        "0 iodef \"security@example.com\"",
        "is not a mailto:",
    ),
    bad(
        "CAA",
        "@",
        "0 iodef \"ftp://example.com/\"",
        "is not a mailto:",
    ),
    bad("CAA", "@", "0 iodef \"https://\"", "is not a mailto:"),
    bad(
        "CAA",
        "@",
        "0 iodef \"mailto:sec urity@example.com\"",
        "is not a mailto:",
    ),
];
