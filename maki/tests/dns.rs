//! GeoDNS on real test hosts, asked with `dig` and `kdig` from inside the
//! test network: every node answers for the synced zone with the node
//! nearest the client subnet (the expectation computed here, from the
//! GeoIP database and the hosts' coordinates, not by the server's code),
//! the RFC cases (AA, NXDOMAIN, NODATA, REFUSED, case, TCP, truncation),
//! DNS over TLS, a zone change seen on every node with one new serial, a
//! cluster-wide TTL setting, and a killed node leaving the answers and
//! coming back. Needs root and the GeoIP database (scripts/fetch-geoip.sh).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failure is a panic

use std::time::Duration;

use makiatto_harness::{Cluster, copy_examples, example_project, require_root, wait_until};

const NODES: [&str; 3] = ["vector", "klukai", "tololo"];

/// Real-world client subnets, placed by the GeoIP database.
const SUBNETS: [&str; 5] = [
    "81.2.69.0/24",   // London
    "1.0.0.0/24",     // Brisbane
    "200.160.0.0/24", // São Paulo
    "5.5.5.0/24",     // Frankfurt
    "126.0.0.0/16",   // Japan
];

/// The test's own great-circle distance (km), apart from the server's.
fn haversine(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (p1, p2) = (a.0.to_radians(), b.0.to_radians());
    let dp = p2 - p1;
    let dl = (b.1 - a.1).to_radians();
    let h = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * 6371.0 * h.sqrt().asin()
}

/// `dig @server ARGS` run from test host `from`.
fn dig(c: &Cluster, from: &str, server: &str, args: &[&str]) -> String {
    let at = format!("@{server}");
    let mut argv = vec!["dig", at.as_str(), "+norec", "+time=2", "+tries=1"];
    argv.extend(args);
    c.exec(from, &argv)
}

fn short(c: &Cluster, from: &str, server: &str, args: &[&str]) -> Vec<String> {
    let mut a = args.to_vec();
    a.push("+short");
    let mut lines: Vec<String> = dig(c, from, server, &a)
        .lines()
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}

fn serial(c: &Cluster, server: &str) -> String {
    short(c, "vector", server, &["example.test", "SOA"])
        .first()
        .and_then(|l| l.split_whitespace().nth(2).map(str::to_owned))
        .unwrap_or_default()
}

#[test]
fn every_node_answers_authoritatively_with_the_nearest_healthy_node() {
    require_root();
    let c = Cluster::with_geoip("dn");
    let geoip = c.geoip().unwrap();
    let project = example_project();
    let hosts = c
        .up(3, &["--no-ca", "--sync", project.to_str().unwrap()])
        .hosts;
    let addr = |node: &str| hosts.iter().find(|h| h.node == node).unwrap();

    // Every node serves the zone (compiled once the sync reached it).
    for h in &hosts {
        wait_until(Duration::from_secs(20), "the zone is served", || {
            dig(&c, "vector", &h.ipv4, &["example.test", "SOA"]).contains("flags: qr aa")
        });
    }
    // A node counts a peer healthy once it has heard the peer's heartbeat
    // over the mesh, which can come after the zone: wait until every node
    // answers an unplaced client with all three.
    for h in &hosts {
        wait_until(Duration::from_secs(20), "every node is healthy", || {
            short(&c, "vector", &h.ipv4, &["example.test", "A"]).len() == hosts.len()
        });
    }

    // Geography: each subnet gets the nearest node, from every node.
    let mut expected_nodes = std::collections::BTreeSet::new();
    for subnet in SUBNETS {
        let client = geoip.place(subnet);
        let nearest = hosts
            .iter()
            .min_by(|a, b| haversine(client, a.at()).total_cmp(&haversine(client, b.at())))
            .unwrap();
        expected_nodes.insert(nearest.node.clone());
        let ecs = format!("+subnet={subnet}");
        for h in &hosts {
            assert_eq!(
                short(&c, "vector", &h.ipv4, &["example.test", "A", &ecs]),
                std::slice::from_ref(&nearest.ipv4),
                "{subnet} asked at {}: expected {}",
                h.node,
                nearest.node
            );
        }
        // The scope of the answer is echoed.
        let full = dig(
            &c,
            "klukai",
            &addr("vector").ipv4,
            &["example.test", "A", &ecs],
        );
        assert!(
            full.contains(&format!("CLIENT-SUBNET: {subnet}/")),
            "{full}"
        );
    }
    assert_eq!(expected_nodes.len(), 3, "the subnets reach every node");
    // IPv6 clients, AAAA answers, the in-zone alias like the apex.
    let japan6 = geoip.place("2001:200::/32");
    let nearest6 = hosts
        .iter()
        .min_by(|a, b| haversine(japan6, a.at()).total_cmp(&haversine(japan6, b.at())))
        .unwrap();
    assert_eq!(
        short(
            &c,
            "tololo",
            &addr("vector").ipv6,
            &["www.example.test", "AAAA", "+subnet=2001:200::/32"]
        ),
        std::slice::from_ref(&nearest6.ipv6)
    );

    // RFC behaviour, from one node.
    let v = &addr("vector").ipv4;
    let a = dig(&c, "klukai", v, &["ExAmPlE.tEsT", "A"]);
    assert!(a.contains("flags: qr aa;"), "{a}");
    assert!(a.contains("\nExAmPlE.tEsT.\t"), "case preserved: {a}");
    assert!(
        a.contains("ANSWER: 3"),
        "unknown location: every healthy node: {a}"
    );
    let nx = dig(&c, "klukai", v, &["nope.example.test", "A"]);
    assert!(
        nx.contains("status: NXDOMAIN") && nx.contains("flags: qr aa;"),
        "{nx}"
    );
    assert!(
        nx.contains("AUTHORITY: 1") && nx.contains("\tSOA\t"),
        "{nx}"
    );
    let nodata = dig(&c, "klukai", v, &["www.example.test", "MX"]);
    assert!(
        nodata.contains("status: NOERROR") && nodata.contains("ANSWER: 0"),
        "{nodata}"
    );
    assert!(nodata.contains("\tSOA\t"), "{nodata}");
    let refused = dig(&c, "klukai", v, &["example.org", "A"]);
    assert!(
        refused.contains("status: REFUSED") && !refused.contains(" aa"),
        "{refused}"
    );
    assert_eq!(
        short(&c, "klukai", v, &["example.test", "MX"]),
        ["10 mail.example.test."]
    );
    assert_eq!(
        short(&c, "klukai", v, &["_dmarc.example.test", "TXT"]),
        ["\"v=DMARC1; p=reject\""]
    );
    assert_eq!(
        short(&c, "klukai", v, &["mail.example.test", "A"]),
        ["203.0.113.250"]
    );
    assert_eq!(
        short(&c, "klukai", v, &["example.test", "NS"]),
        [
            "klukai.ns.example.test.",
            "tololo.ns.example.test.",
            "vector.ns.example.test."
        ]
    );
    let ns = dig(&c, "klukai", v, &["example.test", "NS"]);
    assert!(
        ns.contains("ADDITIONAL: 7"),
        "glue A and AAAA for three, and the OPT: {ns}"
    );
    assert_eq!(
        short(&c, "klukai", v, &["example.test", "CAA"]),
        ["0 issue \"letsencrypt.org\""]
    );
    let tcp = dig(&c, "klukai", v, &["+tcp", "example.test", "SOA"]);
    assert!(
        tcp.contains("(TCP)") && tcp.contains("flags: qr aa;"),
        "{tcp}"
    );
    let any = short(&c, "klukai", v, &["example.test", "ANY"]);
    assert_eq!(any, ["\"RFC8482\" \"\""], "RFC 8482");

    // DNS over TLS on every node.
    for h in &hosts {
        let out = c.exec(
            "tololo",
            &[
                "kdig",
                &format!("@{}", h.ipv4),
                "+tls",
                "example.test",
                "SOA",
            ],
        );
        assert!(
            out.contains("TLS session") && out.contains("NOERROR"),
            "{}: {out}",
            h.node
        );
    }

    // A zone change (many TXT records: too large for 512 bytes) reaches every
    // node with one new serial.
    let before = serial(&c, v);
    let dir = c.dir.path().join("project");
    copy_examples(&dir);
    let mut toml = std::fs::read_to_string(&project).unwrap();
    for i in 0..12 {
        toml += &format!(
            "\n[[domain.records]]\ntype = \"TXT\"\nname = \"big\"\nvalue = \"{i:02}-{}\"\n",
            "x".repeat(60)
        );
    }
    std::fs::write(dir.join("makiatto.toml"), toml).unwrap();
    c.ok(&[
        "sync",
        "--file",
        dir.join("makiatto.toml").to_str().unwrap(),
    ]);
    let mut after = String::new();
    wait_until(
        Duration::from_secs(20),
        "one new serial on every node",
        || {
            let all: Vec<String> = hosts.iter().map(|h| serial(&c, &h.ipv4)).collect();
            after = all[0].clone();
            all.iter().all(|s| *s == after && *s != before)
        },
    );
    let udp = dig(
        &c,
        "klukai",
        v,
        &["+noedns", "+ignore", "big.example.test", "TXT"],
    );
    assert!(
        udp.contains("flags: qr aa tc;") && udp.contains("ANSWER: 0"),
        "{udp}"
    );
    let retried = dig(&c, "klukai", v, &["+noedns", "big.example.test", "TXT"]);
    assert!(
        retried.contains("ANSWER: 12") && retried.contains("(TCP)"),
        "{retried}"
    );

    // The geo TTL is a cluster-wide setting.
    c.ok(&["config", "set", "dns.geo_ttl", "30"]);
    wait_until(Duration::from_secs(20), "geo TTL 30 everywhere", || {
        hosts.iter().all(|h| {
            let answer = dig(
                &c,
                "vector",
                &h.ipv4,
                &["+noall", "+answer", "example.test", "A"],
            );
            answer.lines().count() == 3
                && answer
                    .lines()
                    .all(|l| l.split_whitespace().nth(1) == Some("30"))
        })
    });

    // A killed node leaves the answers while another is up, and comes back.
    let sao_paulo = "+subnet=200.160.0.0/24";
    let tololo = addr("tololo").ipv4.clone();
    assert_eq!(
        short(&c, "vector", v, &["example.test", "A", sao_paulo]),
        std::slice::from_ref(&tololo)
    );
    c.ok(&["local", "kill", "tololo"]);
    for n in ["vector", "klukai"] {
        wait_until(Duration::from_secs(15), "tololo leaves the answers", || {
            let got = short(
                &c,
                "vector",
                &addr(n).ipv4,
                &["example.test", "A", sao_paulo],
            );
            got.len() == 1 && got[0] != tololo
        });
    }
    c.ok(&["local", "start", "tololo"]);
    for n in NODES {
        wait_until(
            Duration::from_secs(30),
            "tololo is back in the answers",
            || {
                short(
                    &c,
                    "vector",
                    &addr(n).ipv4,
                    &["example.test", "A", sao_paulo],
                ) == [tololo.clone()]
            },
        );
    }

    // The registrar steps name the same nameservers and glue.
    let setup: serde_json::Value =
        serde_json::from_str(&c.ok(&["dns", "nameserver-setup", "--json"])).unwrap();
    let listed = setup["domains"]["example.test"].as_array().unwrap();
    assert_eq!(listed.len(), 3);
    for h in &hosts {
        assert!(
            listed
                .iter()
                .any(|n| n["name"] == format!("{}.ns.example.test", h.node)
                    && n["ipv4"] == h.ipv4.as_str()),
            "{}",
            h.node
        );
    }
}
