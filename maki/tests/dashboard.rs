//! `maki dashboard` in a real browser: headless Chromium (Debian's
//! `chromium`, `--no-sandbox`) and the dashboard run in a namespace of
//! their own on the local cluster's bridge, with no route out (nothing
//! could be fetched from elsewhere if the page asked). The page shows the
//! nodes on the map, the latest event after a `maki sync`, and a node cut
//! off as unreachable; a screenshot is saved. Needs root and chromium
//! (scripts/install-deps.sh).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failure is a panic

use std::process::{Command, Stdio};
use std::time::Duration;

use makiatto_harness::netns::in_namespace;
use makiatto_harness::{
    Cluster, Namespace, Process, copy_examples, have, require_root, wait_seeing, wait_until,
};

const LISTEN: &str = "127.0.0.1:7878";

/// `maki ARGS` run inside namespace `ns`, with the cluster's profile and keys.
fn maki_in(c: &Cluster, ns: &str, args: &[&str]) -> Command {
    let inner = c.command(args);
    let mut cmd = in_namespace(ns, &[], &[]);
    cmd.arg(inner.get_program()).args(inner.get_args());
    for (k, v) in inner.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    cmd
}

/// The page as Chromium renders it (scripts run, the state fetched).
fn dom(ns: &str, url: &str) -> String {
    let out = in_namespace(ns, &[], &["chromium"])
        .args(CHROMIUM)
        .args(["--dump-dom", "--virtual-time-budget=8000", url])
        .output()
        .expect("chromium runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const CHROMIUM: [&str; 5] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--user-data-dir=/tmp/maki-dashboard-chromium",
];

#[test]
fn the_dashboard_shows_the_cluster_in_a_browser() {
    require_root();
    assert!(
        have("chromium"),
        "chromium is missing: run scripts/install-deps.sh"
    );
    let c = Cluster::new("db");
    let project_dir = c.dir.path().join("project");
    let project = copy_examples(&project_dir);
    let state = c.up(3, &["--no-ca", "--sync", project.to_str().unwrap()]);
    let ns = Namespace::create(
        &format!("mk-{}-web", c.name),
        &format!("mk{}wb", state.slot),
        state.address(14),
        &state.bridge,
    );
    assert!(
        !ns.run(&["ip", "route"]).contains("default"),
        "the browser's namespace has no route out"
    );
    let printed = c.dir.path().join("dashboard.out");
    let _dashboard = Process::spawn(
        maki_in(
            &c,
            &ns.name,
            &["dashboard", "--listen", LISTEN, "--refresh", "2"],
        )
        .stdout(Stdio::from(std::fs::File::create(&printed).unwrap()))
        .stderr(Stdio::null()),
    );
    let mut url = String::new();
    wait_until(
        Duration::from_secs(20),
        "the dashboard prints its URL",
        || {
            url = std::fs::read_to_string(&printed)
                .unwrap_or_default()
                .lines()
                .find_map(|l| l.strip_prefix("maki dashboard: ").map(str::to_owned))
                .unwrap_or_default();
            !url.is_empty()
        },
    );
    assert!(
        url.starts_with(&format!("http://{LISTEN}/?token=")),
        "{url}"
    );
    let token = url.rsplit('=').next().unwrap().to_owned();
    // Without the token, nothing; with another Host (a rebound name), nothing.
    let refused = ns.run(&[
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("http://{LISTEN}/api/state"),
    ]);
    assert_eq!(refused, "401");
    let rebound = ns.run(&[
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        "Host: attacker.test:7878",
        "-b",
        &format!("maki_dashboard={token}"),
        &format!("http://{LISTEN}/api/state"),
    ]);
    assert_eq!(rebound, "421");
    let headers = ns.run(&[
        "curl",
        "-s",
        "-D",
        "-",
        "-o",
        "/dev/null",
        "-b",
        &format!("maki_dashboard={token}"),
        &format!("http://{LISTEN}/"),
    ]);
    assert!(
        headers.contains("Content-Security-Policy: default-src 'none'; script-src 'self'"),
        "{headers}"
    );
    let state_ready = || {
        ns.run(&[
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-b",
            &format!("maki_dashboard={token}"),
            &format!("http://{LISTEN}/api/state"),
        ]) == "200"
    };
    wait_until(
        Duration::from_secs(60),
        "the dashboard has read the cluster",
        state_ready,
    );

    // The nodes, on the map and listed.
    wait_seeing(
        Duration::from_secs(60),
        "the page shows every node up",
        || {
            let page = dom(&ns.name, &url);
            // Up: its daemon answers (`ok`, or `problems` where only this
            // machine's free disk or the GeoIP copy's age is found wanting).
            let all = ["vector", "klukai", "tololo"].iter().all(|n| {
                ["ok", "problems"]
                    .iter()
                    .any(|s| page.contains(&format!("class=\"node {s}\" data-node=\"{n}\"")))
            });
            if all { Ok(()) } else { Err(page) }
        },
    );

    // The latest event, after a sync.
    std::fs::write(
        project_dir.join("site/index.html"),
        "<h1>seen in a browser</h1>\n",
    )
    .unwrap();
    c.ok(&[
        "sync",
        "--file",
        project.to_str().unwrap(),
        "-m",
        "a change the dashboard shows",
    ]);
    wait_seeing(
        Duration::from_secs(60),
        "the page shows the new version",
        || {
            let page = dom(&ns.name, &url);
            if page.contains("a change the dashboard shows") && page.contains("site-published") {
                Ok(())
            } else {
                Err(page)
            }
        },
    );

    // A node cut off: shown unreachable.
    c.ok(&["local", "cut", "tololo"]);
    wait_seeing(
        Duration::from_secs(90),
        "the page shows tololo cut off",
        || {
            let page = dom(&ns.name, &url);
            if page.contains("class=\"node unreachable\" data-node=\"tololo\"") {
                Ok(())
            } else {
                Err(page)
            }
        },
    );

    // A screenshot, kept beside the test's other output.
    let shot = std::env::temp_dir().join(format!("maki-dashboard-{}.png", c.name));
    let out = in_namespace(&ns.name, &[], &["chromium"])
        .args(CHROMIUM)
        .arg(format!("--screenshot={}", shot.display()))
        .args([
            "--window-size=1280,1100",
            "--virtual-time-budget=8000",
            &url,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    println!("screenshot: {}", shot.display());
    c.ok(&["local", "heal", "tololo"]);
}
