//! `maki dns nameserver-setup`: the guide's three steps (glue records at
//! the registrar, the nameserver names, a test query) with this cluster's
//! real names and addresses, read from one node's zones projection.

use std::collections::BTreeMap;

use makiatto_events::DomainName;
use makiatto_projections::zones::{Nameserver, Zones};
use makiatto_protocol::request::ShowAs;

use crate::cluster::Ctx;

/// Per domain, its nameservers: all these steps need of a zone.
type Nameservers = BTreeMap<DomainName, Vec<Nameserver>>;

/// Prints the set-up steps for every configured domain.
pub async fn nameserver_setup(ctx: &Ctx, json_out: bool) -> anyhow::Result<()> {
    let (_, remote) = ctx.any_node().await?;
    let zones = remote.ask(ShowAs::<Zones>::now()).await?.state;
    let nameservers: Nameservers = zones
        .zones
        .into_iter()
        .map(|(d, z)| (d, z.nameservers))
        .collect();
    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "domains": nameservers }))?
        );
        return Ok(());
    }
    if nameservers.is_empty() {
        println!("No domains are configured yet: add one to makiatto.toml and run `maki sync`.");
        return Ok(());
    }
    print!("{}", render(&nameservers));
    Ok(())
}

fn render(zones: &Nameservers) -> String {
    let mut s = String::from("Follow these steps to configure your custom nameservers:\n\n");
    s += ":: Step 1: Add glue records to your domain registrar\n\n";
    s += "Glue records tell the internet where to find your nameservers when they're subdomains of your own domain.\n";
    s += "Without them, there's a circular dependency: DNS can't find your nameservers to resolve your domain.\n";
    s += "Add these as glue records (also called 'name server records' or 'host records') in your domain registrar's control panel.\n";
    for (domain, zone) in zones {
        s += &format!("\n:: Glue records for {domain}:\n\n");
        for ns in zone {
            let addrs: Vec<String> = ns
                .ipv4
                .map(|a| a.to_string())
                .into_iter()
                .chain(ns.ipv6.map(|a| a.to_string()))
                .collect();
            s += &format!("  {}: {}\n", ns.name, addrs.join(", "));
        }
        if zone.is_empty() {
            s += "  (no node is a nameserver: `maki machine init` makes nameservers by default)\n";
        }
    }
    s += "\n:: Step 2: Set your domain to use your custom nameservers\n\n";
    s += "After adding glue records, you must also tell your registrar to use your custom nameservers instead of their defaults.\n";
    s += "In your domain registrar's control panel, change the nameservers for your domain to:\n";
    for (domain, zone) in zones {
        s += &format!("\n:: Nameservers for {domain}:\n\n");
        for ns in zone {
            s += &format!("  {}\n", ns.name);
        }
    }
    s += "\n:: Step 3: Testing and verification\n";
    s += "After configuration, test your setup with:\n\n";
    for (domain, zone) in zones {
        if let Some(ns) = zone.first() {
            s += &format!("  dig @{} {domain}\n", ns.name);
        }
    }
    s += "\nNote: DNS changes may take 24-48 hours to propagate globally.\n\n";
    s += "Once DNS propagates, visitors will be automatically routed to their nearest node.\n";
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_steps_name_every_glue_record_and_nameserver() {
        let zones = BTreeMap::from([(
            DomainName::new("example.com").unwrap(),
            vec![
                Nameserver {
                    name: "vector.ns.example.com".into(),
                    node: makiatto_events::NodeName::new("vector").unwrap(),
                    ipv4: Some("203.0.113.1".parse().unwrap()),
                    ipv6: Some("2001:db8::1".parse().unwrap()),
                },
                Nameserver {
                    name: "klukai.ns.example.com".into(),
                    node: makiatto_events::NodeName::new("klukai").unwrap(),
                    ipv4: Some("198.51.100.1".parse().unwrap()),
                    ipv6: None,
                },
            ],
        )]);
        let text = render(&zones);
        assert!(text.contains("  vector.ns.example.com: 203.0.113.1, 2001:db8::1\n"));
        assert!(text.contains("  klukai.ns.example.com: 198.51.100.1\n"));
        assert!(text.contains(
            ":: Nameservers for example.com:\n\n  vector.ns.example.com\n  klukai.ns.example.com\n"
        ));
        assert!(text.contains("  dig @vector.ns.example.com example.com\n"));
    }
}
