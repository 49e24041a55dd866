//! New connections during a spoofed SYN flood: the real agent in a POP lab, 16 clients opening
//! connections back to back through the VIP (`tcp-churn max`), without a flood and then while
//! `tcp-forge` sends SYNs from random sources as fast as one core sends them; the rate during
//! the flood beside the rate without it, for the TC hook and the XDP hook. The per-SYN cost of
//! a flood's SYNs in the data plane is in the per-packet section (`prog`).

use std::{path::Path, time::Duration};

use anyhow::{bail, Context as _};
use edge_tests::pop_lab::{agent_config, start_agent, topology, CLIENT4, SNAT_PREFIX, VIP4};
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
    /// The agent's drop counters after the flood.
    drops: String,
}

fn churn(lab: &edge_tests::Lab, tools: &Path) -> anyhow::Result<(f64, u64)> {
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

/// SYNs per second of the flood: one the 2-core lab's sender, POP and backends absorb.
const FLOOD_PPS: u32 = 20_000;

/// How the POP picks the source of a translated IPv4 flow.
#[derive(Clone, Copy)]
enum Source {
    /// The POP's overlay address and a port it allocates (the default).
    Port,
    /// The client's own address under `overlay.snat_prefix`, and its own port.
    Prefix,
}

/// A POP lab with the agent on `hook`, and the drop counters it reports.
struct Pop {
    lab: edge_tests::Lab,
    _servers: Vec<edge_tests::LabProcess>,
    agent: edge_tests::LabProcess,
}

impl Pop {
    fn up(agent_bin: &Path, tools: &Path, hook: &str, source: Source) -> anyhow::Result<Pop> {
        // The backends' SYN-ACKs to the spoofed sources go back to the client namespace, which
        // drops them, as the Internet loses answers to spoofed hosts.
        let lab = topology("fbench", BACKENDS)
            .route("pop", SPOOFED, CLIENT4)
            .up()?;
        let servers =
            edge_tests::pop_lab::start_backends(&lab, BACKENDS, &tools.join("echo-server"))?;
        let mut config = agent_config(BACKENDS);
        if let Source::Prefix = source {
            config = config.snat_prefix(SNAT_PREFIX);
        }
        let agent = start_agent(
            &lab,
            agent_bin,
            &config.to_toml()?,
            &["--reset", "--forward-hook", hook],
        )?;
        Ok(Pop {
            lab,
            _servers: servers,
            agent,
        })
    }

    fn drops(&self, agent_bin: &Path) -> String {
        let pins = edge_tests::bpffs_pin_dir(self.lab.ns("pop").name());
        std::process::Command::new(agent_bin)
            .arg("--bpffs-root")
            .arg(&pins)
            .args(["status", "--output", "json"])
            .output()
            .ok()
            .and_then(|o| serde_json::from_slice::<Value>(&o.stdout).ok())
            .map(|doc| doc["drops"].to_string())
            .unwrap_or_default()
    }
}

/// The quiet rate and the flooded one, each in a lab of its own: the closed flows and the
/// client's TIME_WAIT sockets of 15,000 quiet connections would otherwise weigh on the flooded
/// measurement (the agent's sweep of them shares the two cores).
fn measure(agent_bin: &Path, tools: &Path, hook: &str, source: Source) -> anyhow::Result<Rates> {
    let quiet = {
        let pop = Pop::up(agent_bin, tools, hook, source)?;
        let (rate, failed) = churn(&pop.lab, tools)?;
        if failed > 0 {
            bail!(
                "{failed} connections failed without a flood; drops: {}",
                pop.drops(agent_bin)
            );
        }
        drop(pop.agent);
        rate
    };
    let pop = Pop::up(agent_bin, tools, hook, source)?;
    let forge = tools.join("tcp-forge");
    let forge = forge.to_string_lossy();
    let (target, flood_secs, pps) = (
        format!("{VIP4}:7"),
        (SECONDS + 2).to_string(),
        FLOOD_PPS.to_string(),
    );
    let flood = pop.lab.ns("client").spawn(
        "tcp-forge",
        &[
            &*forge,
            "syn",
            "--target",
            &target,
            "--seconds",
            &flood_secs,
            "--sources",
            SPOOFED,
            "--pps",
            &pps,
        ],
        &[],
    )?;
    flood.wait_for_output("flooding", Duration::from_secs(10))?;
    // The flood's first second fills the half-open table; the rate is read after it.
    std::thread::sleep(Duration::from_secs(1));
    let (flooded, failed_during) = churn(&pop.lab, tools)?;
    flood.wait_exit(Duration::from_secs(30))?;
    let drops = pop.drops(agent_bin);
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
    Ok(Rates {
        quiet,
        flooded,
        flood_pps: sent / secs.max(1e-9),
        failed_during,
        drops,
    })
}

pub fn run(agent_bin: &Path) -> anyhow::Result<()> {
    let tools = shell::target_dir().join("release");
    println!(
        "\nNew connections per second during a spoofed SYN flood ({FLOOD_PPS} SYN/s from {SPOOFED}; \
         16 clients back to back, {SECONDS} s, 300 ms deadline each):"
    );
    println!(
        "  {:<6} {:<22} {:>13} {:>13} {:>7} {:>12} {:>8}",
        "hook", "IPv4 source", "quiet conn/s", "flood conn/s", "ratio", "flood SYN/s", "failed"
    );
    let mut doc = Vec::new();
    for hook in ["tc", "xdp"] {
        for source in [Source::Port, Source::Prefix] {
            let r = measure(agent_bin, &tools, hook, source)
                .with_context(|| format!("flood bench, {hook}"))?;
            let label = match source {
                Source::Port => "overlay address + port",
                Source::Prefix => "snat_prefix /96",
            };
            println!(
                "  {:<6} {:<22} {:>13.0} {:>13.0} {:>7.2} {:>12.0} {:>8}",
                hook,
                label,
                r.quiet,
                r.flooded,
                r.flooded / r.quiet,
                r.flood_pps,
                r.failed_during
            );
            println!("         drops and passes after the flood: {}", r.drops);
            doc.push(json!({
                "hook": hook,
                "source": label,
                "quiet_conn_per_sec": r.quiet,
                "flood_conn_per_sec": r.flooded,
                "ratio": r.flooded / r.quiet,
                "flood_syn_per_sec": r.flood_pps,
                "failed_during_flood": r.failed_during,
            }));
        }
    }
    let path = shell::workspace_root().join("target/bench/flood.json");
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&path, serde_json::to_string_pretty(&Value::Array(doc))?)?;
    println!("  (written to {})", path.display());
    Ok(())
}
