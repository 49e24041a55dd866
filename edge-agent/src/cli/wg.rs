//! `edge-agent wg show|rotate-key|down`: the 6PN WireGuard device as the running agent reports it,
//! a key rotation published through the state, and removing the interface the agent leaves up.

use std::fmt::Write as _;

use anyhow::Context as _;

use super::Output;
use crate::{
    agent::status::AgentStatus, config::AgentConfig, dataplane::pins::PinDir, model::unix_now,
    sixpn::node::SixpnStatus,
};

pub fn show(pins: &PinDir, output: Output) -> anyhow::Result<()> {
    let sixpn = AgentStatus::read(pins)
        .and_then(|a| a.sixpn)
        .context("no running agent with [sixpn] enabled (its status file says nothing of 6PN)")?;
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&sixpn)?),
        Output::Table => print!("{}", sixpn_table(&sixpn)),
    }
    Ok(())
}

/// The device (implementation, address, key, port), the rows left out, and each peer.
pub fn sixpn_table(s: &SixpnStatus) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "6PN {} ({}): address {}, public key {}, port {}",
        s.ifname,
        s.implementation,
        s.address.map_or_else(|| "-".to_owned(), |a| a.to_string()),
        s.public_key,
        s.listen_port
    );
    for p in &s.problems {
        let _ = writeln!(out, "  left out: {p}");
    }
    let _ = writeln!(
        out,
        "  {:<46} {:<40} {:>14} {:>12} {:>12}  allowed IPs",
        "peer", "endpoint", "handshake", "rx bytes", "tx bytes"
    );
    for p in &s.peers {
        let handshake = p
            .last_handshake_secs_ago
            .map_or_else(|| "never".to_owned(), |a| format!("{a:.0} s ago"));
        let _ = writeln!(
            out,
            "  {:<46} {:<40} {:>14} {:>12} {:>12}  {}",
            p.public_key,
            p.endpoint.as_deref().unwrap_or("-"),
            handshake,
            p.rx_bytes,
            p.tx_bytes,
            p.allowed_ips.join(", ")
        );
    }
    out
}

/// Writes a new key beside the old one, moves it in place, and publishes its public half in
/// this host's row.
pub fn rotate_key(config: &AgentConfig) -> anyhow::Result<()> {
    use crate::sixpn::PrivateKey;
    let sixpn = &config.sixpn;
    let id = sixpn.id.clone().unwrap_or_else(|| config.pop_id.clone());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let store = crate::agent::open_source(config, &runtime)?
        .context("rotating the key needs the state (state.database or Corrosion)")?;
    let (snap, _) = store.snapshot().context("reading the state")?;
    let mut row = snap
        .pops
        .iter()
        .find(|p| p.id == id)
        .cloned()
        .with_context(|| format!("no row {id} in pops: is the agent running?"))?;
    let key = PrivateKey::generate();
    let staged = sixpn.key_file.with_extension("new");
    let _ = std::fs::remove_file(&staged);
    key.store(&staged).context("writing the new key")?;
    std::fs::rename(&staged, &sixpn.key_file).context("moving the new key in place")?;
    row.public_key = Some(key.public_key().to_string());
    store
        .execute(&crate::state::write::upsert_pop(&row, unix_now())?)
        .context("publishing the new public key")?;
    println!("new public key {} published for {id}", key.public_key());
    Ok(())
}

/// Deletes the 6PN interface; says so when there was none.
pub fn down(config: &AgentConfig) -> anyhow::Result<()> {
    let ifname = &config.sixpn.ifname;
    if crate::sixpn::node::down(ifname)? {
        println!("{ifname} deleted");
    } else {
        println!("no interface {ifname}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sixpn::node::SixpnPeerStatus;

    #[test]
    fn the_sixpn_table_reads_the_typed_status() -> Result<(), Box<dyn std::error::Error>> {
        let status = SixpnStatus {
            implementation: "kernel (generic netlink)".to_owned(),
            ifname: "6pn0".to_owned(),
            id: "pop-a".to_owned(),
            address: Some("fdaa:0:1::1".parse()?),
            public_key: "KEY-A".to_owned(),
            listen_port: 51820,
            error: None,
            problems: vec!["pop-c: no key".to_owned()],
            peers: vec![SixpnPeerStatus {
                public_key: "KEY-B".to_owned(),
                endpoint: None,
                allowed_ips: vec!["fdaa:0:2::/48".to_owned(), "10.50.2.1/32".to_owned()],
                last_handshake_secs_ago: Some(4.4),
                rx_bytes: 100,
                tx_bytes: 200,
            }],
        };
        let text = sixpn_table(&status);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "6PN 6pn0 (kernel (generic netlink)): address fdaa:0:1::1, public key KEY-A, port 51820"
        );
        assert_eq!(lines[1], "  left out: pop-c: no key");
        assert_eq!(
            lines[3].split_whitespace().collect::<Vec<_>>(),
            [
                "KEY-B",
                "-",
                "4",
                "s",
                "ago",
                "100",
                "200",
                "fdaa:0:2::/48,",
                "10.50.2.1/32"
            ]
        );
        let never = SixpnStatus::default();
        assert!(sixpn_table(&never).starts_with("6PN  (): address -, public key , port 0\n"));
        Ok(())
    }
}
