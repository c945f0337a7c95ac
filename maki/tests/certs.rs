//! Certificates through the real ACME flow: `maki local up` starts Debian's
//! pebble in its own test host; the cluster orders over HTTP-01 through its
//! own nameservers, and every node serves the issued chain for the domain,
//! its alias (HTTPS) and its nameserver name (DNS over TLS), verified
//! against pebble's root. Plain HTTP redirects. The private key never
//! appears in the log. A forced renewal gives a new certificate, and with
//! an observability peer on the mesh the order arrives there as an
//! `acme.order` span. With
//! `acme.challenge = dns-01` and a wildcard alias, names are proved by TXT
//! records in our own zones, and any name under the domain is answered and
//! served. When the ordering node dies in the middle of an order, the next
//! node completes it. An order that could not reach the CA is made again
//! as soon as the route is back. A node that joins after the issue
//! serves the certificate, its key resealed to it; removing a node has
//! the certificates it could open ordered again. Needs root.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failure is a panic

use std::time::Duration;

use makiatto_harness::{
    Cluster, OtlpReceiver, WgPeer, copy_examples, example_project, require_root, wait_seeing,
    wait_until,
};
use serde_json::Value;

fn certs(c: &Cluster) -> Vec<Value> {
    let out: Value = serde_json::from_str(&c.ok(&["certs", "--json"])).unwrap();
    out["names"].as_array().cloned().unwrap_or_default()
}

/// Every name of `certificate` (all of them when `None`) has a
/// certificate from pebble expiring after `after`; if not, what `maki
/// certs` said (for [`wait_seeing`]).
fn all_valid(c: &Cluster, certificate: Option<&str>, after: &str) -> Result<(), String> {
    let all = certs(c);
    let names: Vec<&Value> = all
        .iter()
        .filter(|n| certificate.is_none_or(|want| n["certificate"] == want))
        .collect();
    let valid = !names.is_empty()
        && names.iter().all(|n| {
            n["state"].as_str().is_some_and(|s| s.starts_with("valid"))
                && n["issuer"]
                    .as_str()
                    .is_some_and(|i| i.starts_with("Pebble"))
                && n["not_after"].as_str().is_some_and(|t| t > after)
        });
    if valid {
        Ok(())
    } else {
        Err(serde_json::to_string_pretty(&all).unwrap_or_default())
    }
}

/// `got` is the site's page; if not, what came instead.
fn the_page(got: String, index: &str) -> Result<(), String> {
    if got == index { Ok(()) } else { Err(got) }
}

/// When the site's certificate expires.
fn not_after(c: &Cluster) -> String {
    certs(c)
        .iter()
        .find(|n| n["certificate"] == "example.test")
        .and_then(|n| n["not_after"].as_str())
        .unwrap_or("")
        .to_owned()
}

#[test]
fn certificates_are_issued_by_the_local_ca_and_served_everywhere() {
    require_root();
    let c = Cluster::new("ce");
    let project = example_project();
    let state = c.up(2, &["--sync", project.to_str().unwrap()]);
    wait_seeing(
        Duration::from_secs(60),
        "every name has a pebble certificate",
        || all_valid(&c, None, ""),
    );
    let names: Vec<String> = certs(&c)
        .iter()
        .map(|n| n["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        names,
        [
            "example.test",
            "klukai.ns.example.test",
            "vector.ns.example.test",
            "www.example.test"
        ]
    );
    let ca = c.ok(&["local", "ca"]).trim().to_owned();
    let hosts: Vec<(String, String)> = state
        .hosts
        .iter()
        .map(|h| (h.node.clone(), h.ipv4.clone()))
        .collect();
    let index = std::fs::read_to_string(project.parent().unwrap().join("site/index.html")).unwrap();

    // HTTPS verified against pebble's root, on every node, for the domain
    // and its alias; DoT for each node's own nameserver name.
    let verified = |node_ip: &str, name: &str| {
        c.exec(
            "klukai",
            &[
                "curl",
                "-s",
                "--max-time",
                "10",
                "--cacert",
                &ca,
                "--resolve",
                &format!("{name}:443:{node_ip}"),
                &format!("https://{name}/"),
            ],
        )
    };
    for (node, ip) in &hosts {
        for name in ["example.test", "www.example.test"] {
            wait_seeing(
                Duration::from_secs(20),
                &format!("{node} serves the issued certificate for {name}"),
                || the_page(verified(ip, name), &index),
            );
        }
        let dot = c.exec(
            "vector",
            &[
                "kdig",
                &format!("@{ip}"),
                &format!("+tls-ca={ca}"),
                &format!("+tls-hostname={node}.ns.example.test"),
                "example.test",
                "SOA",
            ],
        );
        assert!(
            dot.contains("TLS session") && dot.contains("NOERROR"),
            "{node}: {dot}"
        );
        // Plain HTTP now redirects to HTTPS.
        let redirect = c.curl_writes(
            "vector",
            "%{http_code} %{redirect_url}",
            &["-H", "Host: example.test", &format!("http://{ip}/about/")],
        );
        assert_eq!(redirect, "308 https://example.test/about/");
    }

    // The site's certificate covers its alias, so a connection opened for
    // one may carry requests for the other (HTTP/2 coalescing): no 421.
    let (_, first_ip) = &hosts[0];
    let coalesced = c.curl_writes(
        "klukai",
        "%{http_code}",
        &[
            "--cacert",
            &ca,
            "--resolve",
            &format!("example.test:443:{first_ip}"),
            "-H",
            "Host: www.example.test",
            "https://example.test/",
        ],
    );
    assert_eq!(coalesced, "200");

    // The key is sealed: not in `maki log`, not in any event's bytes.
    let log = c.ok(&["log", "--json"]);
    assert!(log.contains("certificate-issued") && log.contains("key sealed to 2 nodes"));
    assert!(!log.contains("PRIVATE KEY"));
    let raw = c.exec(
        "vector",
        &[
            "sh",
            "-c",
            "echo '{\"op\":\"missing\",\"vv\":{},\"max_bytes\":100000000}' | makiatto control",
        ],
    );
    let events: Value = serde_json::from_str(&raw).unwrap();
    let mut saw_chain = false;
    for hex_event in events["ok"].as_array().unwrap() {
        let bytes = hex::decode(hex_event.as_str().unwrap()).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains("PRIVATE KEY"), "a private key in the log");
        saw_chain |= text.contains("BEGIN CERTIFICATE");
    }
    assert!(saw_chain, "the chain itself is in the log, in clear");

    // A forced renewal gives a new certificate, served everywhere; with
    // an observability peer on the mesh (the guide's set-up, a real OTLP
    // receiver as its collector), the order arrives as an `acme.order`
    // span.
    let peer = WgPeer::add(&c, &state, "o11y", 14);
    let receiver = OtlpReceiver::start(&peer.ns, "0.0.0.0:4317", c.dir.path());
    let endpoint = format!("http://{}:4317", peer.mesh_addr);
    for (node, _) in &hosts {
        wait_until(
            Duration::from_secs(60),
            "the nodes find the o11y peer",
            || c.health(node)["telemetry"]["endpoint"] == endpoint.as_str(),
        );
    }
    let first = not_after(&c);
    std::thread::sleep(Duration::from_millis(1100)); // a new expiry second
    c.ok(&["certs", "renew", "www.example.test"]);
    wait_seeing(Duration::from_secs(60), "a renewed certificate", || {
        all_valid(&c, Some("example.test"), &first)
    });
    wait_seeing(Duration::from_secs(60), "the order's span", || {
        let spans = receiver.of("span");
        let orders: Vec<&Value> = spans.iter().filter(|s| s["name"] == "acme.order").collect();
        if orders.is_empty() {
            Err(format!("{} spans, no acme.order", spans.len()))
        } else {
            Ok(())
        }
    });
    let orders: Vec<Value> = receiver
        .of("span")
        .into_iter()
        .filter(|s| s["name"] == "acme.order")
        .collect();
    let order = &orders[0];
    assert_eq!(
        order["attributes"]["acme.certificate"], "example.test",
        "{order}"
    );
    assert_eq!(order["attributes"]["acme.renewal"], true, "{order}");
    assert!(
        order["attributes"]["acme.names"]
            .as_str()
            .is_some_and(|n| n.contains("www.example.test")),
        "{order}"
    );
    assert_ne!(order["status"], 2, "the order succeeded: {order}");
    assert!(
        hosts
            .iter()
            .any(|(node, _)| order["resource"]["makiatto.node"] == node.as_str()),
        "{order}"
    );
    // The peer leaves the cluster again: the rest of the test is ACME's.
    drop(receiver);
    drop(peer);
    c.ok(&["peer", "remove", "o11y", "--force"]);

    // DNS-01 through our own nameservers, and a wildcard alias (only
    // DNS-01 can prove one): the site's certificate gains `*.example.test`,
    // and any name under the domain is answered and served with it.
    let second = not_after(&c);
    // The CA may hand back an authorization it already holds as valid, and
    // then no challenge is opened for that name (a legitimate shortcut).
    // pebble does so for about 1 order in 100 per name even with
    // `PEBBLE_AUTHZREUSE=0` (it reuses unless `rand.Intn(100) > percent`).
    // So that every name of the next order is proved afresh, the nodes
    // forget their ACME account and the next order comes from a new one,
    // which the CA has authorized for nothing.
    let mut forgotten = 0;
    for (node, _) in &hosts {
        let removed = c.exec(
            node,
            // One line per file removed; none when there is none.
            &["sh", "-c", "rm -fv /var/makiatto/acme/account-*.json"],
        );
        forgotten += removed.lines().count();
    }
    assert!(forgotten > 0, "no node held an ACME account to forget");
    c.ok(&["config", "set", "acme.challenge", "dns-01"]);
    let dir = c.dir.path().join("project");
    copy_examples(&dir);
    let toml = std::fs::read_to_string(&project).unwrap().replace(
        r#"aliases = ["www.example.test"]"#,
        r#"aliases = ["www.example.test", "*.example.test"]"#,
    );
    assert!(toml.contains("*.example.test"));
    std::fs::write(dir.join("makiatto.toml"), toml).unwrap();
    c.ok(&[
        "sync",
        "--file",
        dir.join("makiatto.toml").to_str().unwrap(),
    ]);
    wait_seeing(
        Duration::from_secs(60),
        "a certificate with the wildcard, proved by DNS-01",
        || {
            all_valid(&c, Some("example.test"), &second)?;
            if certs(&c).iter().any(|n| n["name"] == "*.example.test") {
                Ok(())
            } else {
                Err("no *.example.test among the names".into())
            }
        },
    );
    // Every name of the order was proved by DNS-01, as every node's log
    // tells (the node `maki log` asks may hold the certificate a moment
    // before the events that closed its challenges).
    let names = ["*.example.test", "example.test", "www.example.test"];
    let proved = |challenges: &str, name: &str| {
        challenges.contains(&format!("ACME DNS-01 challenge for {name} opened"))
            && challenges.contains(&format!("ACME DNS-01 challenge for {name} closed"))
    };
    for (node, _) in &hosts {
        wait_seeing(
            Duration::from_secs(30),
            &format!("{node}: every name proved by DNS-01"),
            || {
                let challenges = c.ok(&["log", "--node", node, "--kind", "acme-challenge"]);
                if names.iter().all(|n| proved(&challenges, n)) {
                    Ok(())
                } else {
                    Err(challenges)
                }
            },
        );
    }
    for (_, ip) in &hosts {
        let answer = c.exec(
            "vector",
            &[
                "dig",
                "+short",
                &format!("@{ip}"),
                "anything.example.test",
                "A",
            ],
        );
        assert!(
            !answer.trim().is_empty()
                && answer
                    .lines()
                    .all(|a| hosts.iter().any(|(_, node_ip)| a == node_ip)),
            "a wildcard answer names nodes: {answer:?}"
        );
        wait_seeing(
            Duration::from_secs(20),
            &format!("{ip} serves the wildcard certificate"),
            || the_page(verified(ip, "anything.example.test"), &index),
        );
    }
    // Challenges are closed: no TXT record is left behind.
    for (_, ip) in &hosts {
        wait_seeing(
            Duration::from_secs(20),
            &format!("{ip}: closed challenges leave no TXT record"),
            || {
                let txt = c.exec(
                    "vector",
                    &[
                        "dig",
                        "+short",
                        &format!("@{ip}"),
                        "_acme-challenge.example.test",
                        "TXT",
                    ],
                );
                if txt.trim().is_empty() {
                    Ok(())
                } else {
                    Err(txt)
                }
            },
        );
    }

    // The ordering node (klukai: first by name) dies in the middle of an
    // order: pebble is paused so the order cannot finish before the kill;
    // vector takes over and completes it.
    let third = not_after(&c);
    let pebble_config = c.cluster_dir().join("pebble/config.json");
    let signal = |sig: &str| {
        let status = std::process::Command::new("pkill")
            .args([sig, "-f", pebble_config.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(status.success(), "pkill {sig} pebble");
    };
    signal("-STOP");
    std::thread::sleep(Duration::from_millis(1100)); // a new expiry second
    c.ok(&["certs", "renew", "example.test"]);
    wait_seeing(
        Duration::from_secs(30),
        "klukai is ordering the renewal",
        || {
            let health = c.exec(
                "klukai",
                &["sh", "-c", "echo '{\"op\":\"health\"}' | makiatto control"],
            );
            let ordering = serde_json::from_str::<Value>(&health)
                .is_ok_and(|h| h["ok"]["acme"]["ordering"] == "example.test");
            if ordering { Ok(()) } else { Err(health) }
        },
    );
    c.ok(&["local", "kill", "klukai"]);
    signal("-CONT");
    wait_seeing(
        Duration::from_secs(60),
        "vector completes the order in klukai's place",
        || all_valid(&c, Some("example.test"), &third),
    );
    let by = c.ok(&["log", "--kind", "certificate-issued"]);
    assert!(by.lines().last().unwrap_or("").contains("vector"), "{by}");
    let vector_ip = &hosts.iter().find(|(n, _)| n == "vector").unwrap().1;
    assert_eq!(verified(vector_ip, "example.test"), index);
}

/// The fault this holds down: an order that failed because the CA could
/// not be reached waited five minutes (the schedule for the CA's own
/// refusals) although it cost the CA nothing, and every name stayed on
/// the self-signed fallback that long after the route came back.
#[test]
fn an_order_that_could_not_reach_the_ca_is_made_again_as_soon_as_the_route_is_back() {
    require_root();
    let c = Cluster::new("cr");
    let state = c.up(3, &[]);
    // The orderer is the first node by name that is alive: klukai. Its
    // route to the CA is gone (a host-unreachable answer to every packet,
    // as a dead link gives); the mesh stays, so it stays the orderer.
    let pebble = state.address(13).to_string();
    let block = [
        "OUTPUT",
        "-d",
        pebble.as_str(),
        "-j",
        "REJECT",
        "--reject-with",
        "icmp-host-unreachable",
    ];
    let iptables = |op: &str| {
        let mut argv = vec!["iptables", op];
        argv.extend(block);
        c.exec("klukai", &argv);
    };
    iptables("-A");
    let project = example_project();
    c.ok(&["sync", "--file", project.to_str().unwrap()]);

    // `maki certs` says what failed, that the CA was not reached, and the
    // schedule the orderer keeps: seconds, not minutes.
    wait_seeing(
        Duration::from_secs(60),
        "maki certs shows an order that did not reach the CA, retried within seconds",
        || {
            let all = certs(&c);
            let unreached = all.iter().find(|n| {
                n["state"]
                    .as_str()
                    .is_some_and(|s| s.contains("failing on klukai") && s.contains("not reached"))
            });
            match unreached.and_then(|n| n["state"].as_str()) {
                Some(s) if retry_within(s, 300) => Ok(()),
                _ => Err(serde_json::to_string_pretty(&all).unwrap_or_default()),
            }
        },
    );

    // The route is back: every name gets its certificate within seconds
    // (a five-minute wait would fail this).
    iptables("-D");
    wait_seeing(
        Duration::from_secs(60),
        "every name has a pebble certificate soon after the route came back",
        || all_valid(&c, None, ""),
    );
}

/// Whether a `maki certs` state says "retry in Ns" with N under `secs`.
fn retry_within(state: &str, secs: u64) -> bool {
    state
        .split("retry in ")
        .nth(1)
        .and_then(|rest| rest.split('s').next())
        .and_then(|n| n.parse::<u64>().ok())
        .is_some_and(|n| n < secs)
}

/// A node that joins after a certificate was issued (its key sealed to
/// the nodes there then) serves it: a node that holds the key reseals it
/// to the newcomer (`secret-resealed`), with no new order.
#[test]
fn a_node_that_joins_later_serves_the_certificate_issued_before() {
    require_root();
    let c = Cluster::new("cj");
    let project = example_project();
    let state = c.up(4, &[]);
    let newcomer = state.hosts[3].clone();
    c.ok(&["machine", "remove", &newcomer.node, "--force"]);
    c.ok(&["sync", "--file", project.to_str().unwrap(), "-m", "site"]);
    wait_seeing(
        Duration::from_secs(60),
        "the site has a pebble certificate",
        || all_valid(&c, Some("example.test"), ""),
    );
    let issued = not_after(&c);
    let log = c.ok(&["log", "--json"]);
    assert!(log.contains("key sealed to 3 nodes"), "{log}");
    c.init_machine(&newcomer);
    let ca = c.ok(&["local", "ca"]).trim().to_owned();
    let index = std::fs::read_to_string(project.parent().unwrap().join("site/index.html")).unwrap();
    wait_seeing(
        Duration::from_secs(60),
        "the newcomer serves the issued certificate",
        || {
            // Until then it serves a self-signed certificate, which
            // curl refuses (its status is not checked here).
            let out = c.maki(&[
                "local",
                "exec",
                "vector",
                "--",
                "curl",
                "-s",
                "--max-time",
                "10",
                "--cacert",
                &ca,
                "--resolve",
                &format!("example.test:443:{}", newcomer.ipv4),
                "https://example.test/",
            ]);
            the_page(String::from_utf8_lossy(&out.stdout).into_owned(), &index)
        },
    );
    // The same certificate, resealed (not ordered again); its key is in
    // no event.
    assert_eq!(not_after(&c), issued);
    let log = c.ok(&["log", "--json"]);
    assert!(log.contains("\"secret-resealed\""), "{log}");
    assert!(!log.contains("PRIVATE KEY"));
}

/// A removed node's access to the certificate keys it could open ends: the
/// certificates are ordered again, with new keys sealed to the nodes that
/// remain.
#[test]
fn a_removed_nodes_certificate_keys_are_replaced() {
    require_root();
    let c = Cluster::new("cr");
    let project = example_project();
    c.up(3, &["--sync", project.to_str().unwrap()]);
    wait_seeing(
        Duration::from_secs(60),
        "the site has a pebble certificate",
        || all_valid(&c, Some("example.test"), ""),
    );
    let site_issued = |log: &str, to: usize| {
        log.lines().any(|l| {
            l.contains("certificate for example.test,")
                && l.contains(&format!("key sealed to {to} nodes"))
        })
    };
    assert!(site_issued(&c.ok(&["log", "--json"]), 3));
    c.ok(&["machine", "remove", "tololo", "--force"]);
    wait_seeing(
        Duration::from_secs(60),
        "a new certificate for the site, its key sealed to the two nodes left",
        || {
            let log = c.ok(&["log", "--json"]);
            if site_issued(&log, 2) {
                all_valid(&c, Some("example.test"), "")
            } else {
                Err(log)
            }
        },
    );
}
