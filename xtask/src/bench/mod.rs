//! `cargo xtask bench`: the end-to-end benchmark (DESIGN.md, "Performance method").
//!
//! For each mode, the same three-namespace lab (`client` — `lb` — `backend`, see [`lab`]) is
//! built, the backend's servers and the mode's balancer on `lb` are started, the path is probed,
//! then iperf3 (1 and 4 streams), wrk (a new connection per request, and keep-alive) and an echo
//! round-trip client run from `client`; the lab is then torn down. Every process shares the
//! machine's cores, so the absolute figures say little: what counts is each mode's ratio to
//! `plain` (no balancer) measured in the same run. The table goes to stdout and, as JSON, to
//! `target/bench/e2e.json`.
//!
//! A mode that fails (the edgeproxy agent rejecting its config, a balancer dying) is reported and
//! makes the command exit non-zero, after the other modes have been measured and printed.
//!
//! Other sections: `micro` (per packet and control plane), `health` (1,000 backends checked
//! every second, [`health`]) and `overlay` (throughput over the 6PN and through the data plane
//! over it, beside plain WireGuard, [`overlay`]).
//!
//! The end-to-end section's code: [`modes`] starts each balancer, [`measure`] runs one mode's
//! tests ([`load`]) in its [`lab`], [`metric`] is what a mode's outcome holds, [`rounds`] merges
//! the rounds, [`report`] prints the table and writes the JSON that [`chart`] draws.

mod chart;
mod cpu;
mod flood;
mod health;
mod lab;
mod load;
mod measure;
mod metric;
pub mod micro;
mod modes;
mod overlay;
mod report;
mod rounds;

use std::{
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use crate::{setup, shell};
use lab::Tools;
use measure::measure_mode;
use modes::{Inputs, Mode};
use report::{render_table, to_json, write_json};
use rounds::merge_rounds;
use serde_json::Value;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Modes to compare, comma-separated, in any order (default: all):
    /// plain, plain6, nft-dnat, haproxy, tokio-proxy, edgeproxy, edgeproxy-xdp. Ratios are to
    /// `plain`.
    #[arg(long, value_enum, value_delimiter = ',')]
    modes: Vec<Mode>,
    /// Duration of each iperf3 and wrk test, in seconds.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=300))]
    seconds: u64,
    /// Repeat the whole sequence of modes this many times and report each figure's median.
    /// Rounds alternate the order of the modes, so that a drift in background load (another
    /// build on a shared machine) hits every mode alike. The overlay section's phases alternate
    /// the same way.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20))]
    rounds: u32,
    /// Use this edge-agent binary for the edgeproxy mode instead of building the release one.
    #[arg(long)]
    agent: Option<PathBuf>,
    /// Skip `cargo xtask setup` (packages, bpffs, toolchain checks).
    #[arg(long)]
    no_setup: bool,
    /// Sections to run, comma-separated (default: all): e2e (the modes table), micro (per
    /// packet and control plane), health (1,000 backends checked every second), overlay
    /// (throughput over the 6PN and through the data plane over it, beside plain WireGuard),
    /// flood (new connections per second during a spoofed SYN flood, beside none).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Section>,
    /// Measure nothing: draw the chart (target/bench/e2e.svg) of the last run's
    /// target/bench/e2e.json again.
    #[arg(long)]
    chart_only: bool,
    /// Let every lab interface coalesce what it receives (GRO), as a NIC's driver does: the
    /// data plane and the stacks then handle segments of up to 64 KB. Off by default, so that
    /// figures compare with earlier runs; every mode gets the same lab either way.
    #[arg(long)]
    gro: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Section {
    E2e,
    Micro,
    Health,
    Overlay,
    Flood,
}

/// How the end-to-end section runs: what each mode's measurement follows, and what its table and
/// JSON state beside the figures.
#[derive(Debug, Clone, Copy)]
pub(super) struct RunSettings {
    pub seconds: u64,
    pub rounds: u32,
    /// Every lab interface coalesces what it receives (`--gro`).
    pub gro: bool,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn request_stop(_signal: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Checked between steps: a Ctrl-C stops the tool in the foreground (it shares our process
/// group), then the run unwinds through the labs' destructors instead of leaving them behind.
fn check_stop() -> anyhow::Result<()> {
    if STOP.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Pause between tests, so that one test's connections (TIME_WAIT, closing proxies) settle
/// before the next starts.
const SETTLE: Duration = Duration::from_millis(500);

/// Background CPU use above this share (with the lab idle) is called out next to the figures.
const NOISY: f64 = 0.10;

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.chart_only {
        let path = shell::workspace_root().join("target/bench/e2e.json");
        let doc: Value = serde_json::from_slice(
            &std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
        )
        .with_context(|| format!("parsing {}", path.display()))?;
        let svg = path.with_extension("svg");
        chart::write_svg(&doc, &svg)?;
        println!("written to {}", svg.display());
        return Ok(());
    }
    let modes: Vec<Mode> = if args.modes.is_empty() {
        Mode::ALL.to_vec()
    } else {
        let mut m = args.modes.clone();
        // Columns in a fixed order, `plain` (the baseline) first; each mode once.
        m.sort();
        m.dedup();
        m
    };
    if !args.no_setup {
        setup::run()?;
    }
    let wants = |section| args.only.is_empty() || args.only.contains(&section);
    let tools = build_tools()?;
    let agent: Result<PathBuf, String> = if !modes.iter().any(|m| m.is_edgeproxy())
        && !wants(Section::Health)
        && !wants(Section::Overlay)
        && !wants(Section::Flood)
    {
        Err("not needed".into())
    } else if let Some(path) = &args.agent {
        if path.exists() {
            Ok(path.clone())
        } else {
            Err(format!("{} does not exist", path.display()))
        }
    } else {
        // A broken agent build fails the edgeproxy mode only: the baselines still get measured.
        build_agent().map_err(|e| format!("{e:#}"))
    };

    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(
            libc::SIGINT,
            request_stop as *const () as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGTERM,
            request_stop as *const () as libc::sighandler_t,
        );
    }

    let started = Instant::now();
    let run = RunSettings {
        seconds: args.seconds,
        rounds: args.rounds,
        gro: args.gro,
    };
    let inputs = Inputs {
        tools: &tools,
        agent: &agent,
        run,
    };
    let mut run_ids = Vec::new();
    let mut rounds = Vec::new();
    'rounds: for round in 0..if wants(Section::E2e) { args.rounds } else { 0 } {
        let mut order = modes.clone();
        if round % 2 == 1 {
            order.reverse();
        }
        let mut this_round = Vec::new();
        for mode in order {
            if STOP.load(Ordering::SeqCst) {
                rounds.push(this_round);
                break 'rounds;
            }
            if args.rounds > 1 {
                println!(
                    "\nbench: === {mode} (round {}/{}) ===",
                    round + 1,
                    args.rounds
                );
            } else {
                println!("\nbench: === {mode} ===");
            }
            let result = measure_mode(mode, round, &inputs, &mut run_ids);
            if let Some(e) = &result.error {
                eprintln!("bench: {mode} FAILED: {e}");
            }
            this_round.push(result);
        }
        rounds.push(this_round);
    }
    let results = if wants(Section::E2e) {
        merge_rounds(&modes, &rounds)
    } else {
        Vec::new()
    };
    let elapsed = started.elapsed();

    if wants(Section::E2e) {
        println!();
        print!("{}", render_table(&results, run));
        let path = shell::workspace_root().join("target/bench/e2e.json");
        write_json(&path, &results, run, elapsed)?;
        let svg = path.with_extension("svg");
        chart::write_svg(&to_json(&results, run, elapsed), &svg)?;
        println!("\nwritten to {} and {}", path.display(), svg.display());
    }

    let mut problems = Vec::new();
    for r in &results {
        if let Some(e) = &r.error {
            problems.push(format!("{}: {e}", r.mode));
        }
        for (metric, value) in &r.values {
            if let Err(e) = value {
                problems.push(format!("{} / {}: {e}", r.mode, metric.label()));
            }
        }
    }
    if STOP.load(Ordering::SeqCst) {
        problems.push("interrupted before every mode was measured".into());
    }
    if wants(Section::Micro) {
        if let Err(e) = micro::run() {
            problems.push(format!("per-packet section: {e:#}"));
        }
    }
    if wants(Section::Health) && !STOP.load(Ordering::SeqCst) {
        match &agent {
            Ok(agent) => {
                if let Err(e) = health::run(agent) {
                    problems.push(format!("health section: {e:#}"));
                }
            }
            Err(e) => problems.push(format!("health section: no agent: {e}")),
        }
    }
    if wants(Section::Overlay) && !STOP.load(Ordering::SeqCst) {
        match &agent {
            Ok(agent) => {
                if let Err(e) = overlay::run(
                    agent,
                    overlay::Settings {
                        seconds: args.seconds,
                        rounds: args.rounds,
                    },
                    &mut run_ids,
                ) {
                    problems.push(format!("overlay section: {e:#}"));
                }
            }
            Err(e) => problems.push(format!("overlay section: no agent: {e}")),
        }
    }
    if wants(Section::Flood) && !STOP.load(Ordering::SeqCst) {
        match &agent {
            Ok(agent) => {
                if let Err(e) = flood::run(agent) {
                    problems.push(format!("flood section: {e:#}"));
                }
            }
            Err(e) => problems.push(format!("flood section: no agent: {e}")),
        }
    }
    for id in &run_ids {
        let left = edge_tests::find_leftovers(Some(id));
        if !left.is_empty() {
            problems.push(format!(
                "lab run {id} left objects behind (remove with `cargo xtask lab clean`):\n{left}"
            ));
        }
    }
    if !problems.is_empty() {
        if std::env::var_os(edge_tests::KEEP_LOGS_ENV).is_none() {
            eprintln!(
                "bench: rerun with {}=1 to keep each lab's configs and process logs",
                edge_tests::KEEP_LOGS_ENV
            );
        }
        bail!("the bench had failures:\n- {}", problems.join("\n- "));
    }
    Ok(())
}

fn build_tools() -> anyhow::Result<Tools> {
    // Release: the tokio proxy is a contender, and a debug build would handicap it.
    shell::run(shell::cargo().args(["build", "--release", "--package", "edge-tests", "--bins"]))?;
    let dir = shell::target_dir().join("release");
    let tools = Tools {
        echo_server: dir.join("echo-server"),
        echo_client: dir.join("echo-client"),
        tokio_proxy: dir.join("tokio-proxy"),
    };
    for path in [&tools.echo_server, &tools.echo_client, &tools.tokio_proxy] {
        if !path.exists() {
            bail!("{} is missing after the build", path.display());
        }
    }
    Ok(tools)
}

/// Like `shell::build_agent`, in release: the data plane is measured, not debugged.
fn build_agent() -> anyhow::Result<PathBuf> {
    shell::run(shell::cargo().args(["build", "--release", "--package", "edge-agent"]))?;
    let agent = shell::target_dir().join("release").join("edge-agent");
    if !agent.exists() {
        bail!("{} is missing after the build", agent.display());
    }
    Ok(agent)
}
