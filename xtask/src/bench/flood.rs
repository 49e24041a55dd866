//! New connections during a spoofed SYN flood: the real agent in a POP lab, 16 clients opening
//! connections back to back through the VIP (`tcp-churn max`), without a flood and then while
//! `tcp-forge` sends SYNs from random sources as fast as one core sends them; the rate during
//! the flood beside the rate without it, for the TC hook and the XDP hook. The per-SYN cost of
//! a flood's SYNs in the data plane is in the per-packet section (`prog`).

use std::{path::Path, time::Duration};

use anyhow::{bail, Context as _};
use edge_lab::pop_lab::{agent_config, start_agent, topology, CLIENT4, VIP4};
use serde_json::{json, Value};

use crate::shell;

const BACKENDS: usize = 2;
const SPOOFED: &str = "100.64.0.0/10";
const SECONDS: u64 = 5;

struct Rates {
    /// Connections per second without, then during the flood.
    quiet: f64,
    flooded: f64,
    /// SYNs per second the flood sent.
    flood_pps: f64,
    failed_during: u64,
}

fn churn(lab: &edge_lab::Lab, tools: &Path) -> anyhow::Result<(f64, u64)> {
    let churn = tools.join("tcp-churn");
    let target = format!("{VIP4}:7");
    let seconds = SECONDS.to_string();
    let process = lab.ns("client").spawn(
        "tcp-churn",
        &[&churn.to_string_lossy(), &target, "max", &seconds],
        &[],
    )?;
    process.wait_exit(Duration::from_secs(SECONDS + 30))?;
    let out = process.output_so_far();
    let line = out
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .with_context(|| format!("no tcp-churn summary in {out}"))?;
    let doc: Value = serde_json::from_str(line)?;
    let ok = doc["ok"].as_u64().context("no ok count")?;
    let failed = doc["failed"].as_u64().context("no failed count")?;
    Ok((ok as f64 / SECONDS as f64, failed))
}

fn measure(agent_bin: &Path, tools: &Path, hook: &str) -> anyhow::Result<Rates> {
    let lab = topology("fbench", BACKENDS)
        .route("pop", SPOOFED, CLIENT4)
        .up()?;
    let server = tools.join("echo-server");
    let _servers = edge_lab::pop_lab::start_backends(&lab, BACKENDS, &server)?;
    let agent = start_agent(
        &lab,
        agent_bin,
        &agent_config(BACKENDS, ""),
        &["--reset", "--forward-hook", hook],
    )?;
    let (quiet, failed_quiet) = churn(&lab, tools)?;
    if failed_quiet > 0 {
        bail!("{failed_quiet} connections failed without a flood");
    }
    let forge = tools.join("tcp-forge");
    let target = format!("{VIP4}:7");
    let flood_secs = (SECONDS + 2).to_string();
    let flood = lab.ns("client").spawn(
        "tcp-forge",
        &[
            &forge.to_string_lossy(),
            "syn",
            "--target",
            &target,
            "--seconds",
            &flood_secs,
            "--sources",
            SPOOFED,
        ],
        &[],
    )?;
    flood.wait_for_output("flooding", Duration::from_secs(10))?;
    // The flood's first second fills the half-open table; the rate is read after it.
    std::thread::sleep(Duration::from_secs(1));
    let (flooded, failed_during) = churn(&lab, tools)?;
    flood.wait_exit(Duration::from_secs(30))?;
    let report = flood.output_so_far();
    let (sent, secs) = report
        .split_once("sent ")
        .and_then(|(_, r)| {
            let mut words = r.split_whitespace();
            let sent: f64 = words.next()?.parse().ok()?;
            let secs: f64 = words.nth(1)?.parse().ok()?;
            Some((sent, secs))
        })
        .with_context(|| format!("no flood report in {report}"))?;
    drop(agent);
    drop(lab);
    Ok(Rates {
        quiet,
        flooded,
        flood_pps: sent / secs.max(1e-9),
        failed_during,
    })
}

pub fn run(agent_bin: &Path) -> anyhow::Result<()> {
    let tools = shell::target_dir().join("release");
    println!(
        "\nNew connections per second during a spoofed SYN flood (16 clients back to back, {SECONDS} s; \
         flood from {SPOOFED}, one sender):"
    );
    println!(
        "  {:<6} {:>14} {:>14} {:>8} {:>14} {:>16}",
        "hook", "quiet conn/s", "flood conn/s", "ratio", "flood SYN/s", "failed in flood"
    );
    let mut doc = serde_json::Map::new();
    for hook in ["tc", "xdp"] {
        let r = measure(agent_bin, &tools, hook).with_context(|| format!("flood bench, {hook}"))?;
        println!(
            "  {:<6} {:>14.0} {:>14.0} {:>8.2} {:>14.0} {:>16}",
            hook,
            r.quiet,
            r.flooded,
            r.flooded / r.quiet,
            r.flood_pps,
            r.failed_during
        );
        doc.insert(
            hook.into(),
            json!({
                "quiet_conn_per_sec": r.quiet,
                "flood_conn_per_sec": r.flooded,
                "ratio": r.flooded / r.quiet,
                "flood_syn_per_sec": r.flood_pps,
                "failed_during_flood": r.failed_during,
            }),
        );
    }
    let path = shell::workspace_root().join("target/bench/flood.json");
    std::fs::write(&path, serde_json::to_string_pretty(&Value::Object(doc))?)?;
    println!("  (written to {})", path.display());
    Ok(())
}
