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

mod chart;
mod flood;
mod health;
mod lab;
mod load;
pub mod micro;
mod modes;
mod overlay;

use std::{
    fmt,
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context as _};

use crate::{setup, shell};
use lab::{Tools, CLIENT};
use modes::{Inputs, Mode};
use serde_json::{json, Value};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Modes to compare, comma-separated, in any order (default: all):
    /// plain, nft-dnat, haproxy, tokio-proxy, edgeproxy. Ratios are to `plain`.
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
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Section {
    E2e,
    Micro,
    Health,
    Overlay,
    Flood,
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

/// A failed request is not a served one: above this share of errors, a wrk rate is discarded.
const MAX_WRK_ERROR_RATIO: f64 = 0.01;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Metric {
    Iperf1,
    Iperf4,
    HttpClose,
    HttpKeepAlive,
    EchoP50,
    EchoP99,
}

impl Metric {
    const ALL: [Metric; 6] = [
        Metric::Iperf1,
        Metric::Iperf4,
        Metric::HttpClose,
        Metric::HttpKeepAlive,
        Metric::EchoP50,
        Metric::EchoP99,
    ];

    fn key(self) -> &'static str {
        match self {
            Metric::Iperf1 => "iperf3_1_stream",
            Metric::Iperf4 => "iperf3_4_streams",
            Metric::HttpClose => "http_new_connection_per_request",
            Metric::HttpKeepAlive => "http_keepalive",
            Metric::EchoP50 => "echo_rtt_p50",
            Metric::EchoP99 => "echo_rtt_p99",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Metric::Iperf1 => "iperf3, 1 stream",
            Metric::Iperf4 => "iperf3, 4 streams",
            Metric::HttpClose => "HTTP, new connection per request (= new conn/s)",
            Metric::HttpKeepAlive => "HTTP, keep-alive",
            Metric::EchoP50 => "echo round trip p50 (lower is better)",
            Metric::EchoP99 => "echo round trip p99 (lower is better)",
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Metric::Iperf1 | Metric::Iperf4 => "Gbit/s",
            Metric::HttpClose | Metric::HttpKeepAlive => "req/s",
            Metric::EchoP50 | Metric::EchoP99 => "us",
        }
    }

    fn lower_is_better(self) -> bool {
        matches!(self, Metric::EchoP50 | Metric::EchoP99)
    }

    fn format(self, value: f64) -> String {
        match self {
            Metric::Iperf1 | Metric::Iperf4 => format!("{value:.2}"),
            Metric::HttpClose | Metric::HttpKeepAlive => format!("{value:.0}"),
            Metric::EchoP50 | Metric::EchoP99 => format!("{value:.1}"),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One mode's outcome: a value or an error per metric, or an error for the whole mode.
#[derive(Debug)]
struct ModeResult {
    mode: Mode,
    error: Option<String>,
    values: Vec<(Metric, Result<f64, String>)>,
    /// Facts worth a look beside the figures (retransmits, tolerated socket errors).
    notes: Vec<String>,
    /// Share of the CPUs busy while the lab sat idle just before measuring: work that is not
    /// the benchmark's (another build, another lab) and that skews its figures.
    background_busy: Option<f64>,
    /// Every round's value of each metric (after merging rounds; empty before).
    samples: Vec<(Metric, Vec<f64>)>,
}

impl ModeResult {
    fn value(&self, metric: Metric) -> Option<&Result<f64, String>> {
        self.values
            .iter()
            .find(|(m, _)| *m == metric)
            .map(|(_, v)| v)
    }

    fn failed(&self) -> bool {
        self.error.is_some() || self.values.iter().any(|(_, v)| v.is_err())
    }
}

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
    let inputs = Inputs {
        tools: &tools,
        agent: &agent,
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
            let result = measure_mode(mode, args.seconds, &inputs, &mut run_ids);
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
        print!("{}", render_table(&results, args.seconds, args.rounds));
        let path = shell::workspace_root().join("target/bench/e2e.json");
        write_json(&path, &results, args.seconds, args.rounds, elapsed)?;
        let svg = path.with_extension("svg");
        chart::write_svg(&to_json(&results, args.seconds, args.rounds, elapsed), &svg)?;
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
        let left = edge_lab::find_leftovers(Some(id));
        if !left.is_empty() {
            problems.push(format!(
                "lab run {id} left objects behind (remove with `cargo xtask lab clean`):\n{left}"
            ));
        }
    }
    if !problems.is_empty() {
        if std::env::var_os(edge_lab::KEEP_LOGS_ENV).is_none() {
            eprintln!(
                "bench: rerun with {}=1 to keep each lab's configs and process logs",
                edge_lab::KEEP_LOGS_ENV
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

fn measure_mode(
    mode: Mode,
    seconds: u64,
    inputs: &Inputs<'_>,
    run_ids: &mut Vec<String>,
) -> ModeResult {
    let mut result = ModeResult {
        mode,
        error: None,
        values: Vec::new(),
        notes: Vec::new(),
        background_busy: None,
        samples: Vec::new(),
    };
    if let Err(e) = measure_into(&mut result, seconds, inputs, run_ids) {
        result.error = Some(format!("{e:#}"));
    }
    result
}

fn measure_into(
    result: &mut ModeResult,
    seconds: u64,
    inputs: &Inputs<'_>,
    run_ids: &mut Vec<String>,
) -> anyhow::Result<()> {
    let mode = result.mode;
    let lab = lab::topology(mode.has_vip())
        .up()
        .context("bringing up the lab")?;
    let run_id = lab.run_id().to_string();
    run_ids.push(run_id.clone());
    println!("bench: {mode}: lab run {run_id} up");
    // Declared after the lab, so dropped before it: processes stop before their namespaces go.
    let _backends = lab::start_backends(&lab, inputs.tools).context("starting the backend")?;
    let balancer = modes::start(mode, &lab, inputs).with_context(|| format!("starting {mode}"))?;
    let client = lab.ns(CLIENT);
    let target = mode.target();
    load::probe(client, target, Duration::from_secs(15), &|| {
        balancer.check_alive()
    })
    .with_context(|| format!("HTTP and echo from client to {target} through {mode}"))?;
    println!("bench: {mode}: path client -> {target} -> backend works");
    std::thread::sleep(SETTLE);
    result.background_busy = background_busy(Duration::from_secs(1));
    if let Some(busy) = result.background_busy {
        println!(
            "bench: {mode}: CPUs {:.0}% busy with the lab idle{}",
            busy * 100.0,
            if busy > NOISY {
                " - other work is running: figures will be skewed"
            } else {
                ""
            }
        );
        if busy > NOISY {
            result.notes.push(format!(
                "CPUs were {:.0}% busy with the lab idle: something else was running",
                busy * 100.0
            ));
        }
    }

    // Before each test: stop if asked to, fail the mode if its balancer died, let the last
    // test's connections settle.
    let step = || -> anyhow::Result<()> {
        check_stop()?;
        balancer
            .check_alive()
            .with_context(|| format!("{mode} died during the run"))?;
        std::thread::sleep(SETTLE);
        Ok(())
    };

    step()?;
    match load::echo(client, &inputs.tools.echo_client, target) {
        Ok(echo) => {
            println!(
                "bench: {mode}: echo {} round trips: p50 {:.1} us, p99 {:.1} us",
                echo.samples, echo.p50_us, echo.p99_us
            );
            result.values.push((Metric::EchoP50, Ok(echo.p50_us)));
            result.values.push((Metric::EchoP99, Ok(echo.p99_us)));
        }
        Err(e) => {
            let e = format!("{e:#}");
            result.values.push((Metric::EchoP50, Err(e.clone())));
            result.values.push((Metric::EchoP99, Err(e)));
        }
    }

    let mut retransmits = Vec::new();
    for (metric, streams) in [(Metric::Iperf1, 1), (Metric::Iperf4, 4)] {
        step()?;
        let value = load::iperf3(client, target, streams, seconds).and_then(|r| {
            println!(
                "bench: {mode}: iperf3 {streams} stream(s): {:.2} Gbit/s, {} retransmits",
                r.gbps, r.retransmits
            );
            retransmits.push(format!("{} ({streams} stream(s))", r.retransmits));
            if r.gbps <= 0.0 {
                bail!("iperf3 moved no data");
            }
            Ok(r.gbps)
        });
        result
            .values
            .push((metric, value.map_err(|e| format!("{e:#}"))));
    }
    // Drops on the path show up as retransmissions; veth forwarding has some in every mode.
    if !retransmits.is_empty() {
        result
            .notes
            .push(format!("iperf3 retransmits: {}", retransmits.join(", ")));
    }

    for (metric, close) in [(Metric::HttpKeepAlive, false), (Metric::HttpClose, true)] {
        step()?;
        let value =
            load::wrk(client, target, close, seconds).and_then(|w| {
                println!(
                "bench: {mode}: wrk {}: {:.0} req/s ({} requests, {} socket errors, {} non-2xx)",
                if close { "Connection: close" } else { "keep-alive" },
                w.requests_per_sec,
                w.requests,
                w.socket_errors,
                w.non_2xx
            );
                let errors = w.socket_errors + w.non_2xx;
                if w.error_ratio() > MAX_WRK_ERROR_RATIO || w.requests == 0 {
                    bail!(
                        "{errors} of {} requests failed (socket errors or non-2xx)",
                        w.requests
                    );
                }
                if errors > 0 {
                    result.notes.push(format!(
                        "{}: {errors} of {} requests failed",
                        metric.label(),
                        w.requests
                    ));
                }
                Ok(w.requests_per_sec)
            });
        result
            .values
            .push((metric, value.map_err(|e| format!("{e:#}"))));
    }
    balancer
        .check_alive()
        .with_context(|| format!("{mode} died during the run"))?;
    Ok(())
}

/// One result per mode out of all rounds: the median of each metric, a failure if any round
/// failed (a failure is not averaged away), notes and errors labelled with their round.
fn merge_rounds(modes: &[Mode], rounds: &[Vec<ModeResult>]) -> Vec<ModeResult> {
    let label = |round: usize, text: &str| {
        if rounds.len() > 1 {
            format!("round {}: {text}", round + 1)
        } else {
            text.to_owned()
        }
    };
    modes
        .iter()
        .filter_map(|&mode| {
            let runs: Vec<(usize, &ModeResult)> = rounds
                .iter()
                .enumerate()
                .filter_map(|(i, round)| round.iter().find(|r| r.mode == mode).map(|r| (i, r)))
                .collect();
            if runs.is_empty() {
                return None;
            }
            let error = runs
                .iter()
                .find_map(|(i, r)| r.error.as_deref().map(|e| label(*i, e)));
            let mut values = Vec::new();
            let mut samples = Vec::new();
            for metric in Metric::ALL {
                let got: Vec<(usize, &Result<f64, String>)> = runs
                    .iter()
                    .filter_map(|(i, r)| r.value(metric).map(|v| (*i, v)))
                    .collect();
                let oks: Vec<f64> = got
                    .iter()
                    .filter_map(|(_, v)| v.as_ref().ok())
                    .copied()
                    .collect();
                let first_err = got
                    .iter()
                    .find_map(|(i, v)| v.as_ref().err().map(|e| label(*i, e)));
                if let Some(e) = first_err {
                    values.push((metric, Err(e)));
                } else if let Some(m) = median(&oks) {
                    values.push((metric, Ok(m)));
                }
                if !oks.is_empty() {
                    samples.push((metric, oks));
                }
            }
            let notes = runs
                .iter()
                .flat_map(|(i, r)| r.notes.iter().map(move |n| label(*i, n)))
                .collect();
            let background_busy = runs
                .iter()
                .filter_map(|(_, r)| r.background_busy)
                .reduce(f64::max);
            Some(ModeResult {
                mode,
                error,
                values,
                notes,
                background_busy,
                samples,
            })
        })
        .collect()
}

fn median(values: &[f64]) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => v.get(n / 2).copied(),
        _ => Some((v.get(n / 2 - 1)? + v.get(n / 2)?) / 2.0),
    }
}

/// Share of all CPUs not idle (nor waiting for I/O) over `window`, from /proc/stat.
fn background_busy(window: Duration) -> Option<f64> {
    let sample = || -> Option<(u64, u64)> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        parse_cpu_line(stat.lines().next()?)
    };
    let (busy0, total0) = sample()?;
    std::thread::sleep(window);
    let (busy1, total1) = sample()?;
    let total = total1.checked_sub(total0)?;
    (total > 0).then(|| busy1.saturating_sub(busy0) as f64 / total as f64)
}

/// (busy, total) jiffies from the aggregate `cpu` line of /proc/stat: user nice system idle
/// iowait irq softirq steal (guest time is already inside user).
fn parse_cpu_line(line: &str) -> Option<(u64, u64)> {
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let v: Vec<u64> = fields
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let total: u64 = v.iter().sum();
    let idle = v.get(3)? + v.get(4)?;
    Some((total - idle, total))
}

/// `value / plain`, when both exist.
fn ratio(results: &[ModeResult], r: &ModeResult, metric: Metric) -> Option<f64> {
    let base = results.iter().find(|b| b.mode == Mode::Plain)?;
    let base = *base.value(metric)?.as_ref().ok()?;
    let value = *r.value(metric)?.as_ref().ok()?;
    (base > 0.0).then(|| value / base)
}

fn cell(results: &[ModeResult], r: &ModeResult, metric: Metric) -> String {
    match r.value(metric) {
        _ if r.error.is_some() && r.value(metric).is_none() => "FAILED".into(),
        None => "-".into(),
        Some(Err(_)) => "error".into(),
        Some(Ok(v)) => match ratio(results, r, metric) {
            Some(q) => format!("{} ({q:.2})", metric.format(*v)),
            None => metric.format(*v),
        },
    }
}

fn render_table(results: &[ModeResult], seconds: u64, rounds: u32) -> String {
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut header = vec!["metric".to_owned()];
    header.extend(results.iter().map(|r| r.mode.to_string()));
    rows.push(header);
    for metric in Metric::ALL {
        let mut row = vec![format!("{} [{}]", metric.label(), metric.unit())];
        row.extend(results.iter().map(|r| cell(results, r, metric)));
        rows.push(row);
    }
    let mut out = format!(
        "end-to-end, value (ratio to plain), {}{seconds} s per iperf3/wrk test, \
         wrk {} threads x {} connections, echo {} x {} B round trips:\n",
        if rounds > 1 {
            format!("median of {rounds} rounds, ")
        } else {
            String::new()
        },
        load::WRK_THREADS,
        load::WRK_CONNECTIONS,
        load::ECHO_COUNT,
        load::ECHO_SIZE
    );
    out.push_str(&markdown_table(&rows, &[0]));
    out.push_str(
        "Throughput and request rates: higher is better. Round trips: lower is better.\n\
         The new-connection-per-request rate (wrk with `Connection: close`) is the new \
         connections per second.\n",
    );
    if !results.iter().any(|r| r.mode == Mode::Plain) {
        out.push_str("No ratios: `plain` was not among the modes.\n");
    }
    let busy: Vec<String> = results
        .iter()
        .filter_map(|r| Some(format!("{} {:.0}%", r.mode, r.background_busy? * 100.0)))
        .collect();
    if !busy.is_empty() {
        out.push_str(&format!(
            "CPUs busy with the lab idle, just before measuring (other work skews the figures): {}\n",
            busy.join(", ")
        ));
    }
    for r in results {
        for note in &r.notes {
            out.push_str(&format!("note: {}: {note}\n", r.mode));
        }
        if let Some(e) = &r.error {
            out.push_str(&format!("FAILED: {}: {e}\n", r.mode));
        }
        for (metric, value) in &r.values {
            if let Err(e) = value {
                out.push_str(&format!("error: {} / {}: {e}\n", r.mode, metric.label()));
            }
        }
    }
    out
}

fn to_json(results: &[ModeResult], seconds: u64, rounds: u32, elapsed: Duration) -> Value {
    let unix_time = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let metrics: Vec<Value> = Metric::ALL
        .iter()
        .map(|&metric| {
            let per_mode: serde_json::Map<String, Value> = results
                .iter()
                .map(|r| {
                    let v = match r.value(metric) {
                        Some(Ok(v)) => json!({
                            "value": v,
                            "ratio_to_plain": ratio(results, r, metric),
                            "rounds": r
                                .samples
                                .iter()
                                .filter(|(m, _)| *m == metric)
                                .flat_map(|(_, v)| v.iter().copied())
                                .collect::<Vec<f64>>(),
                        }),
                        Some(Err(e)) => json!({ "error": e }),
                        None => json!({
                            "error": r.error.clone().unwrap_or_else(|| "not measured".into())
                        }),
                    };
                    (r.mode.name().to_owned(), v)
                })
                .collect();
            json!({
                "key": metric.key(),
                "label": metric.label(),
                "unit": metric.unit(),
                "better": if metric.lower_is_better() { "lower" } else { "higher" },
                "modes": per_mode,
            })
        })
        .collect();
    let failed: serde_json::Map<String, Value> = results
        .iter()
        .filter(|r| r.failed())
        .map(|r| {
            let why = r.error.clone().unwrap_or_else(|| "a metric failed".into());
            (r.mode.name().to_owned(), Value::from(why))
        })
        .collect();
    let busy: serde_json::Map<String, Value> = results
        .iter()
        .map(|r| (r.mode.name().to_owned(), json!(r.background_busy)))
        .collect();
    let notes: serde_json::Map<String, Value> = results
        .iter()
        .filter(|r| !r.notes.is_empty())
        .map(|r| (r.mode.name().to_owned(), json!(r.notes)))
        .collect();
    json!({
        "generated_by": "cargo xtask bench",
        "unix_time": unix_time,
        "duration_s": elapsed.as_secs_f64().round(),
        "kernel": kernel.trim(),
        "cpus": cpus,
        "baseline": Mode::Plain.name(),
        "settings": {
            "seconds_per_test": seconds,
            "rounds": rounds,
            "wrk_threads": load::WRK_THREADS,
            "wrk_connections": load::WRK_CONNECTIONS,
            "echo_round_trips": load::ECHO_COUNT,
            "echo_warmup": load::ECHO_WARMUP,
            "echo_message_bytes": load::ECHO_SIZE,
        },
        "modes": results.iter().map(|r| r.mode.name()).collect::<Vec<_>>(),
        "metrics": metrics,
        "failed_modes": failed,
        "background_cpu_busy": busy,
        "notes": notes,
    })
}

fn write_json(
    path: &std::path::Path,
    results: &[ModeResult],
    seconds: u64,
    rounds: u32,
    elapsed: Duration,
) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(
        path,
        serde_json::to_string_pretty(&to_json(results, seconds, rounds, elapsed))?,
    )
    .with_context(|| format!("writing {}", path.display()))
}

/// `rows` as a Markdown table, columns padded to their widest cell (the first left-aligned,
/// the others right-aligned), with a rule under each row listed in `rules_after`.
pub(crate) fn markdown_table(rows: &[Vec<String>], rules_after: &[usize]) -> String {
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|row| row.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(c, (s, w))| {
                if c == 0 {
                    format!("{s:<w$}")
                } else {
                    format!("{s:>w$}")
                }
            })
            .collect();
        out.push_str(&format!("| {} |\n", cells.join(" | ")));
        if rules_after.contains(&i) {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            out.push_str(&format!("|-{}-|\n", rule.join("-|-")));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<ModeResult> {
        vec![
            ModeResult {
                mode: Mode::Plain,
                error: None,
                values: vec![
                    (Metric::Iperf1, Ok(10.0)),
                    (Metric::HttpClose, Ok(20000.0)),
                    (Metric::EchoP50, Ok(40.0)),
                ],
                notes: vec![],
                background_busy: Some(0.02),
                samples: vec![(Metric::Iperf1, vec![10.0])],
            },
            ModeResult {
                mode: Mode::Haproxy,
                error: None,
                values: vec![
                    (Metric::Iperf1, Ok(5.0)),
                    (Metric::HttpClose, Err("boom".into())),
                    (Metric::EchoP50, Ok(50.0)),
                ],
                notes: vec!["x".into()],
                background_busy: None,
                samples: vec![],
            },
            ModeResult {
                mode: Mode::EdgeProxy,
                error: Some("agent exited".into()),
                values: vec![],
                notes: vec![],
                background_busy: None,
                samples: vec![],
            },
        ]
    }

    #[test]
    fn table_shows_values_ratios_and_failures() {
        let results = sample();
        let table = render_table(&results, 5, 1);
        assert!(table.contains("10.00 (1.00)"), "{table}");
        assert!(table.contains("5.00 (0.50)"), "{table}");
        assert!(table.contains("50.0 (1.25)"), "{table}");
        assert!(table.contains("FAILED: edgeproxy: agent exited"), "{table}");
        assert!(table.contains("error: haproxy / HTTP"), "{table}");
    }

    #[test]
    fn rounds_merge_to_medians_and_keep_failures() {
        let round = |iperf: f64, close: Result<f64, String>, busy: f64| ModeResult {
            mode: Mode::Haproxy,
            error: None,
            values: vec![(Metric::Iperf1, Ok(iperf)), (Metric::HttpClose, close)],
            notes: vec!["n".into()],
            background_busy: Some(busy),
            samples: vec![],
        };
        let rounds = vec![
            vec![round(3.0, Ok(10.0), 0.1)],
            vec![round(1.0, Err("wrk died".into()), 0.5)],
            vec![round(2.0, Ok(30.0), 0.0)],
        ];
        let merged = merge_rounds(&[Mode::Plain, Mode::Haproxy], &rounds);
        assert_eq!(merged.len(), 1, "plain never ran, so it has no column");
        let h = &merged[0];
        assert_eq!(h.value(Metric::Iperf1), Some(&Ok(2.0)));
        assert_eq!(
            h.value(Metric::HttpClose),
            Some(&Err("round 2: wrk died".into()))
        );
        assert_eq!(h.background_busy, Some(0.5));
        assert_eq!(h.notes.len(), 3);
        assert_eq!(
            h.samples.first(),
            Some(&(Metric::Iperf1, vec![3.0, 1.0, 2.0]))
        );
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn proc_stat_cpu_line() {
        // Recorded from /proc/stat on the 2-core lab machine.
        let line = "cpu  113259 0 38441 98544 3429 0 11756 1226 0 0";
        let busy = 113259 + 38441 + 11756 + 1226;
        assert_eq!(parse_cpu_line(line), Some((busy, busy + 98544 + 3429)));
        assert_eq!(parse_cpu_line("cpu0 1 2 3 4 5 6 7 8"), None);
        assert_eq!(parse_cpu_line("cpu  1 2 x"), None);
    }

    #[test]
    fn json_report_parses_back() {
        let results = sample();
        let text = serde_json::to_string_pretty(&to_json(&results, 5, 1, Duration::from_secs(3)))
            .unwrap_or_default();
        let doc: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let Some(Value::Array(metrics)) = doc.get("metrics") else {
            panic!("no metrics in {text}");
        };
        let iperf = &metrics[0];
        assert_eq!(
            iperf.pointer("/modes/haproxy/ratio_to_plain"),
            Some(&json!(0.5))
        );
        assert_eq!(
            iperf
                .pointer("/modes/edgeproxy/error")
                .and_then(Value::as_str),
            Some("agent exited")
        );
        assert!(doc.pointer("/failed_modes/haproxy").is_some());
    }
}
