//! `edge-agent status`: the data plane's counters from the pinned maps (they work without a running
//! agent), and what only the running agent knows (state source, health, BGP, 6PN) from its status
//! file.

use super::{wg::print_sixpn, Output};
use crate::{
    dataplane::{maps::counters, pins::PinDir},
    model::unix_now,
};

pub fn run(pins: &PinDir, output: Output) -> anyhow::Result<()> {
    let map = counters::open_pinned(pins)?;
    let snapshot = counters::snapshot(&map)?;
    let nat = counters::nat_report(pins)?;
    let attached = pins.attached_ifaces();
    // What only the running agent knows; written every second, so an old file means no agent.
    let agent = std::fs::read(pins.agent_status_file())
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
    let age = agent
        .as_ref()
        .and_then(|a| a["written_at"].as_i64())
        .map(|at| unix_now() - at);
    let running = age.is_some_and(|a| a <= 5);
    match output {
        Output::Json => {
            let doc = serde_json::json!({
                "agent_running": running,
                "agent": agent,
                "bpffs_root": pins.root(),
                "attached": attached
                    .iter()
                    .map(|(iface, hook)| serde_json::json!({"iface": iface, "hook": hook}))
                    .collect::<Vec<_>>(),
                "counters": snapshot.classes,
                "services": nat.services,
                "backends": nat.backends,
                "drops": nat.drops,
            });
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
        Output::Table => {
            if attached.is_empty() {
                println!(
                    "data plane: not attached (maps at {})",
                    pins.root().display()
                );
            } else {
                let on: Vec<String> = attached
                    .iter()
                    .map(|(iface, hook)| format!("{iface} ({})", hook.to_uppercase()))
                    .collect();
                println!(
                    "data plane: attached to {} (pins at {})",
                    on.join(", "),
                    pins.root().display()
                );
            }
            match (&agent, running) {
                (Some(a), true) => {
                    let stale = a["state"]["stale_secs"].as_f64().map_or_else(
                        || "never read yet".to_owned(),
                        |s| format!("{s:.1} s stale"),
                    );
                    println!(
                        "agent: pid {}, state from {} ({stale}), {} backends checked",
                        a["pid"],
                        a["state"]["source"].as_str().unwrap_or("?"),
                        a["health"]["checking"]
                    );
                }
                (_, false) => println!(
                    "agent: not running{}",
                    age.map_or_else(String::new, |a| format!(" (last status {a} s ago)"))
                ),
                (None, true) => {}
            }
            if running {
                if let Some(bgp) = agent.as_ref().map(|a| &a["bgp"]).filter(|b| !b.is_null()) {
                    print_bgp(bgp);
                }
                if let Some(sixpn) = agent.as_ref().map(|a| &a["sixpn"]).filter(|s| !s.is_null()) {
                    print_sixpn(sixpn);
                    println!();
                }
            }
            print!("{snapshot}");
            if !nat.services.is_empty() || !nat.backends.is_empty() {
                println!();
                print!("{nat}");
            }
        }
    }
    Ok(())
}

/// The BGP part of `edge-agent status`: each session, then each VIP and why it is (not)
/// announced.
fn print_bgp(bgp: &serde_json::Value) {
    if let Some(since) = bgp["draining_since"].as_i64() {
        println!("BGP: draining since {} s ago", unix_now() - since);
    }
    println!(
        "{:<40} {:>10} {:<12} {:>10} {:>9} {:>9}  last error",
        "BGP peer", "AS", "state", "uptime", "announced", "received"
    );
    let now = unix_now();
    for s in bgp["sessions"].as_array().into_iter().flatten() {
        let uptime = s["established_at"]
            .as_i64()
            .map_or_else(|| "-".to_owned(), |t| format!("{} s", now - t));
        // serde_json's numbers ignore widths: print them as strings.
        let num =
            |v: &serde_json::Value| v.as_u64().map_or_else(|| "?".to_owned(), |n| n.to_string());
        println!(
            "{:<40} {:>10} {:<12} {:>10} {:>9} {:>9}  {}",
            s["peer"].as_str().unwrap_or("?"),
            num(&s["asn"]),
            s["state"].as_str().unwrap_or("?"),
            uptime,
            num(&s["prefixes_announced"]),
            num(&s["prefixes_received"]),
            s["last_error"].as_str().unwrap_or("-"),
        );
    }
    for v in bgp["vips"].as_array().into_iter().flatten() {
        println!(
            "  VIP {:<39} as {:<43} {}: {}",
            v["vip"].as_str().unwrap_or("?"),
            v["prefix"].as_str().unwrap_or("?"),
            if v["announced"].as_bool() == Some(true) {
                "announced"
            } else {
                "withdrawn"
            },
            v["reason"].as_str().unwrap_or("?"),
        );
    }
    println!();
}
