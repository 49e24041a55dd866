//! `edge-agent wg show|rotate-key|down`: the 6PN WireGuard device as the running agent reports it,
//! a key rotation published through the state, and removing the interface the agent leaves up.

use anyhow::Context as _;

use super::Output;
use crate::{config::AgentConfig, dataplane::pins::PinDir, model::unix_now};

pub fn show(pins: &PinDir, output: Output) -> anyhow::Result<()> {
    let doc = std::fs::read(pins.agent_status_file())
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .map(|a| a["sixpn"].clone())
        .filter(|s| !s.is_null())
        .context("no running agent with [sixpn] enabled (its status file says nothing of 6PN)")?;
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&doc)?),
        Output::Table => print_sixpn(&doc),
    }
    Ok(())
}

pub fn print_sixpn(s: &serde_json::Value) {
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_owned();
    println!(
        "6PN {} ({}): address {}, public key {}, port {}",
        text(&s["ifname"]),
        text(&s["implementation"]),
        text(&s["address"]),
        text(&s["public_key"]),
        s["listen_port"]
    );
    for p in s["problems"].as_array().into_iter().flatten() {
        println!("  left out: {}", text(p));
    }
    println!(
        "  {:<46} {:<40} {:>14} {:>12} {:>12}  allowed IPs",
        "peer", "endpoint", "handshake", "rx bytes", "tx bytes"
    );
    for p in s["peers"].as_array().into_iter().flatten() {
        let handshake = p["last_handshake_secs_ago"]
            .as_f64()
            .map_or_else(|| "never".to_owned(), |a| format!("{a:.0} s ago"));
        let ips: Vec<String> = p["allowed_ips"]
            .as_array()
            .into_iter()
            .flatten()
            .map(text)
            .collect();
        println!(
            "  {:<46} {:<40} {:>14} {:>12} {:>12}  {}",
            text(&p["public_key"]),
            text(&p["endpoint"]),
            handshake,
            p["rx_bytes"].as_u64().unwrap_or(0),
            p["tx_bytes"].as_u64().unwrap_or(0),
            ips.join(", ")
        );
    }
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
