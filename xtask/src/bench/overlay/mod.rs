//! `cargo xtask bench --only overlay`: throughput over the 6PN (docs/6pn.md), beside plain
//! WireGuard with no agent and no data plane, all measured in one lab in one run.
//!
//! ```text
//! client --eth0-- pop --u0--+
//!                 ha  --u0--+-- net (IPv6 underlay router)
//!                 hb  --u0--+   hb runs `iperf3 -s`
//! ```
//!
//! The lines of the table:
//!
//! - (a) `ha -> hb` over plain WireGuard: wireguard-go in each host configured with `wg` and
//!   `ip` (the same addresses, allowed IPs, MTU and keepalive the agents would set). The
//!   baseline: every other line is given as a ratio to it.
//! - (b) `ha -> hb` over the 6PN built by the agents: `edge-agent host` on both (and on the
//!   POP), the mesh from the rows of one SQLite state file.
//! - (d) `client -> pop -> hb`, the POP routing with the kernel (no data plane: its agent runs
//!   as `edge-agent host`): an IPv6 client holding an address of the POP's /96 (a workload
//!   address, instance 2) reaches hb's 6PN address.
//! - (c) `client -> VIP -> hb` through the data plane: the POP's agent as
//!   `edge-agent run` with `[sixpn]` (same key), XDP on its public `eth0`, `overlay.iface` its
//!   WireGuard device; an IPv4 client to the IPv4 VIP (NAT46, the client in the POP's /96 as
//!   `overlay.snat_prefix`), and an IPv6 client to the IPv6 VIP (NAT66).
//!
//! (c)/(d) is then the data plane's cost over the overlay: same client, same POP, same kind of
//! WireGuard device, same backend, with and without the XDP programs. Each line is iperf3 with
//! 1 stream, 4 streams, and 1 stream in reverse (the backend sends: on the POP, the reply
//! program on the WireGuard device instead of the XDP program on `eth0`).
//!
//! The lines are measured in three phases (plain WireGuard; the agents with the POP routing;
//! the agents with the POP's data plane), each starting from no WireGuard device and no data
//! plane. With `--rounds N` the phases run N times, in reverse order every other round, and each
//! figure is the median of its rounds.
//!
//! Here: the phases and their order. The lab is in [`topology`], the phases' setups in [`plain`]
//! and [`agents`], one line's measurement in [`measure`], what is kept in [`results`], and the
//! table and JSON in [`report`].

mod agents;
mod measure;
mod plain;
mod report;
mod results;
mod topology;

use std::{
    io::Write as _,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use edge_tests::{bpffs_pin_dir, Lab, LabProcess};

use crate::{
    bench::{
        check_stop,
        lab::{start_iperf_server, wait_until},
    },
    shell,
};
use plain::wireguard_go_version;
use report::{render_table, to_json};
use results::{Line, Results};
use topology::{client_6pn, deployment, topology, write_state, HA, HB, POP, WG_MTU};

/// How long each iperf3 test runs, and how many times the whole sequence of lines is measured
/// (the median is kept).
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub seconds: u64,
    pub rounds: u32,
}

pub fn run(agent: &Path, settings: Settings, run_ids: &mut Vec<String>) -> anyhow::Result<()> {
    println!(
        "\nbench: === overlay (6PN over WireGuard, beside plain WireGuard; {} s per test, {} round(s)) ===",
        settings.seconds, settings.rounds
    );
    let started = Instant::now();
    let mut results = Results::new(settings.rounds);
    if let Some(version) = wireguard_go_version() {
        results.wireguard.push(version);
    }
    let outcome = (|| -> anyhow::Result<()> {
        let lab = topology().up().context("bringing up the overlay lab")?;
        run_ids.push(lab.run_id().to_string());
        println!("bench: overlay: lab run {} up", lab.run_id());
        // Everything started in there is dropped (stopped) before the lab.
        measure_all(&lab, agent, settings, &mut results)
    })();
    if let Err(e) = &outcome {
        results.fail(&Line::ALL, 0, e);
    }
    let elapsed = started.elapsed();
    println!();
    print!("{}", render_table(&results, settings));
    let path = shell::workspace_root().join("target/bench/overlay.json");
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&to_json(&results, settings, elapsed))?,
    )
    .with_context(|| format!("writing {}", path.display()))?;
    println!("(written to {})", path.display());
    let failed = results.failed();
    if !failed.is_empty() {
        bail!("{}", failed.join("\n  "));
    }
    Ok(())
}

/// What runs while some lines are measured. Each phase starts from nothing running in the
/// members (no WireGuard device, no data plane) and leaves nothing running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// (a): wireguard-go in ha and hb, set up with `wg` and `ip`.
    Plain,
    /// (b), (d): `edge-agent host` in the three members.
    Hosts,
    /// (c), (c6): `edge-agent host` in ha and hb, `edge-agent run` in the POP.
    DataPlane,
}

impl Phase {
    const ALL: [Phase; 3] = [Phase::Plain, Phase::Hosts, Phase::DataPlane];

    fn lines(self) -> &'static [Line] {
        match self {
            Phase::Plain => &[Line::PlainWg],
            Phase::Hosts => &[Line::Agents, Line::Routed],
            Phase::DataPlane => &[Line::DataPlane4, Line::DataPlane6],
        }
    }

    fn name(self) -> &'static str {
        match self {
            Phase::Plain => "plain WireGuard",
            Phase::Hosts => "the agents' 6PN, the POP routing",
            Phase::DataPlane => "the agents' 6PN, the POP's data plane",
        }
    }
}

/// One round and one line's measurement context.
pub(super) struct Ctx<'a> {
    pub(super) lab: &'a Lab,
    pub(super) agent: &'a Path,
    pub(super) db: &'a Path,
    pub(super) iperf: &'a LabProcess,
    pub(super) settings: Settings,
    pub(super) round: u32,
    /// Even rounds run the phases, and the lines within each, in reverse order, so that a
    /// drift in background load (another build on a shared machine) hits every line alike.
    pub(super) reversed: bool,
}

fn measure_all(
    lab: &Lab,
    agent: &Path,
    settings: Settings,
    results: &mut Results,
) -> anyhow::Result<()> {
    let db = write_state(lab).context("writing the state file")?;
    // The client's route to the 6PN for line (d): from its 6PN address, with the overlay's MTU
    // (the MSS the data plane clamps the VIP lines' SYNs to).
    lab.ns("client").ip(&[
        "-6",
        "route",
        "add",
        &deployment(),
        "via",
        "2001:db8:1::1",
        "dev",
        "eth0",
        "src",
        &client_6pn().to_string(),
        "mtu",
        &WG_MTU.to_string(),
    ])?;
    let iperf = start_iperf_server(lab.ns(HB.ns))?;

    for round in 1..=settings.rounds {
        let reversed = round % 2 == 0;
        let mut phases = Phase::ALL;
        if reversed {
            phases.reverse();
        }
        let ctx = Ctx {
            lab,
            agent,
            db: &db,
            iperf: &iperf,
            settings,
            round,
            reversed,
        };
        for phase in phases {
            check_stop()?;
            if settings.rounds > 1 {
                println!(
                    "bench: overlay: --- round {round}/{}: {} ---",
                    settings.rounds,
                    phase.name()
                );
            }
            let outcome = clean_slate(lab, agent).and_then(|()| match phase {
                Phase::Plain => plain::plain_wireguard(&ctx, results),
                Phase::Hosts => agents::hosts(&ctx, results),
                Phase::DataPlane => agents::data_plane(&ctx, results),
            });
            if let Err(e) = outcome {
                eprintln!(
                    "bench: overlay: {} FAILED: {e:#}",
                    results.label(round, phase.name())
                );
                results.fail(phase.lines(), round, &e);
            }
        }
    }
    clean_slate(lab, agent)
}

/// Before and after each phase: no WireGuard device left in the members (wireguard-go removes
/// its own when it stops), and no data plane on the POP's `eth0` (it stays attached when its
/// agent exits, by design: the next agent adopts it).
fn clean_slate(lab: &Lab, agent: &Path) -> anyhow::Result<()> {
    let ours = lab.wg_ifname(0);
    let ours = ours.trim_end_matches('0');
    wait_until(Duration::from_secs(10), || {
        for m in [&POP, &HA, &HB] {
            if lab
                .ns(m.ns)
                .ip(&["-o", "link", "show"])?
                .stdout
                .contains(ours)
            {
                return Ok(false);
            }
        }
        Ok(true)
    })
    .context("a WireGuard device outlived its wireguard-go")?;
    let pop = lab.ns(POP.ns);
    let xdp = || -> anyhow::Result<bool> {
        Ok(pop
            .ip(&["-d", "link", "show", "dev", "eth0"])?
            .stdout
            .contains("prog/xdp"))
    };
    if xdp()? {
        let pins = bpffs_pin_dir(pop.name());
        let detach = pop.spawn(
            "edge-agent-detach",
            &[
                &agent.to_string_lossy(),
                "--bpffs-root",
                &pins.to_string_lossy(),
                "detach",
            ],
            &[],
        )?;
        let status = detach.wait_exit(Duration::from_secs(10))?;
        if !status.success() {
            bail!(
                "edge-agent detach failed ({status}): {}",
                detach.output_so_far()
            );
        }
        if xdp()? {
            bail!("the data plane is still attached to the POP's eth0 after `edge-agent detach`");
        }
        println!("bench: overlay: data plane detached from the POP's eth0");
    }
    Ok(())
}

fn alive(process: &LabProcess) -> anyhow::Result<()> {
    if !process.is_running() {
        bail!(
            "`{}` exited; its output:\n{}",
            process.name(),
            process.output_so_far()
        );
    }
    Ok(())
}

/// Runs `cmd` with `input` on its stdin and returns what it printed.
fn run_with_input(cmd: &mut Command, input: &[u8]) -> anyhow::Result<std::process::Output> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    child
        .stdin
        .take()
        .with_context(|| format!("{program}'s stdin"))?
        .write_all(input)
        .with_context(|| format!("writing to {program}"))?;
    child
        .wait_with_output()
        .with_context(|| format!("waiting for {program}"))
}
