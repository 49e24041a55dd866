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

use std::{
    fmt::Write as _,
    io::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context as _};
use edge_lab::{bpffs_pin_dir, Lab, LabProcess, NetNs, Topology};
use serde_json::{json, Value};

use super::{
    background_busy, check_stop,
    lab::{exec_bounded, start_iperf_server, wait_ready, wait_until},
    load::parse_iperf3,
    median, NOISY, SETTLE,
};
use crate::shell;

/// The deployment's /48 (the example of docs/6pn.md): its three first groups.
const DEPLOYMENT: [u16; 3] = [0xfd5e, 0xa1c0, 0x7b3d];
const VIP4: Ipv4Addr = Ipv4Addr::new(198, 18, 9, 10);
const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 0x10);
const IPERF_PORT: u16 = 5201;
const WG_PORT: u16 = 51820;
const KEEPALIVE_SECS: u16 = 25;
/// What the agent sets on its device (1500 less IPv6, UDP and WireGuard headers).
const WG_MTU: u16 = 1420;
/// Headroom over a test's own duration before `timeout` kills iperf3.
const SLACK: Duration = Duration::from_secs(20);

/// A member of the mesh: its namespace, region (and the region's number in 6PN addresses),
/// number in the region, and index on the underlay (`2001:db8:6<i>::2`).
struct Member {
    ns: &'static str,
    region: &'static str,
    region_number: u8,
    number: u32,
    underlay: u8,
}

const POP: Member = Member {
    ns: "pop",
    region: "sa",
    region_number: 1,
    number: 1,
    underlay: 0,
};
const HA: Member = Member {
    ns: "ha",
    region: "us",
    region_number: 2,
    number: 1,
    underlay: 1,
};
const HB: Member = Member {
    ns: "hb",
    region: "eu",
    region_number: 3,
    number: 1,
    underlay: 2,
};

impl Member {
    /// Instance `instance` of the member's /96 (1 is the host itself).
    fn instance(&self, instance: u32) -> Ipv6Addr {
        let [d0, d1, d2] = DEPLOYMENT;
        Ipv6Addr::new(
            d0,
            d1,
            d2,
            u16::from(self.region_number) << 8,
            (self.number >> 16) as u16,
            (self.number & 0xffff) as u16,
            (instance >> 16) as u16,
            (instance & 0xffff) as u16,
        )
    }

    /// The host's 6PN address.
    fn addr(&self) -> Ipv6Addr {
        self.instance(1)
    }

    /// The host's /96: its allowed IPs as a peer.
    fn prefix(&self) -> String {
        format!("{}/96", self.instance(0))
    }

    fn underlay(&self) -> String {
        format!("2001:db8:6{}::2", self.underlay)
    }

    fn endpoint(&self) -> String {
        format!("[{}]:{WG_PORT}", self.underlay())
    }
}

fn deployment() -> String {
    let [d0, d1, d2] = DEPLOYMENT;
    format!("{d0:x}:{d1:x}:{d2:x}::/48")
}

/// The client's IPv6 address for line (d): a workload address in the POP's /96, so that the
/// backend's WireGuard accepts it from the POP and sends the replies back to the POP.
fn client_6pn() -> Ipv6Addr {
    POP.instance(2)
}

fn topology() -> Topology {
    let mut t = Topology::new("ovl")
        .ns("client")
        .ns("net")
        .veth(("client", "eth0"), (POP.ns, "eth0"))
        // A wire delivers full checksums into the XDP program (TOOLCHAIN.md), on every line.
        .tx_checksum_off("client", "eth0")
        .addr("client", "eth0", "10.0.1.2/24")
        .addr("client", "eth0", "2001:db8:1::2/64")
        .addr("client", "eth0", &format!("{}/128", client_6pn()))
        .addr(POP.ns, "eth0", "10.0.1.1/24")
        .addr(POP.ns, "eth0", "2001:db8:1::1/64")
        .addr(POP.ns, "lo", &format!("{VIP4}/32"))
        .addr(POP.ns, "lo", &format!("{VIP6}/128"))
        .route("client", "default", "10.0.1.1")
        .route("client", "default", "2001:db8:1::1")
        // The client's 6PN address is on the POP's eth0 side, not behind its WireGuard device
        // (where the rest of the /48 is).
        .route(POP.ns, &format!("{}/128", client_6pn()), "2001:db8:1::2")
        .sysctl("net", "net.ipv6.conf.all.forwarding", "1")
        .sysctl(POP.ns, "net.ipv4.ip_forward", "1")
        .sysctl(POP.ns, "net.ipv6.conf.all.forwarding", "1");
    for m in [&POP, &HA, &HB] {
        let i = m.underlay;
        t = t
            .ns(m.ns)
            .veth((m.ns, "u0"), ("net", &format!("m{i}")))
            .addr(m.ns, "u0", &format!("{}/64", m.underlay()))
            .addr("net", &format!("m{i}"), &format!("2001:db8:6{i}::1/64"))
            .route(m.ns, "2001:db8:60::/44", &format!("2001:db8:6{i}::1"));
    }
    t
}

// ---------------------------------------------------------------------------------------------
// What is measured

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    PlainWg,
    Agents,
    Routed,
    DataPlane4,
    DataPlane6,
}

impl Line {
    /// In the order of the table.
    const ALL: [Line; 5] = [
        Line::PlainWg,
        Line::Agents,
        Line::Routed,
        Line::DataPlane4,
        Line::DataPlane6,
    ];

    fn key(self) -> &'static str {
        match self {
            Line::PlainWg => "a_plain_wireguard",
            Line::Agents => "b_6pn_by_agents",
            Line::Routed => "d_pop_kernel_routing",
            Line::DataPlane4 => "c_pop_data_plane_ipv4",
            Line::DataPlane6 => "c6_pop_data_plane_ipv6",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Line::PlainWg => "(a) host -> host, plain WireGuard (wg + ip)",
            Line::Agents => "(b) host -> host, 6PN built by the agents",
            Line::Routed => "(d) IPv6 client -> POP, kernel routing -> host over 6PN",
            Line::DataPlane4 => "(c) IPv4 client -> VIP, data plane (NAT46) -> host over 6PN",
            Line::DataPlane6 => "(c6) IPv6 client -> VIP, data plane (NAT66) -> host over 6PN",
        }
    }

    fn short(self) -> &'static str {
        match self {
            Line::PlainWg => "a",
            Line::Agents => "b",
            Line::Routed => "d",
            Line::DataPlane4 => "c",
            Line::DataPlane6 => "c6",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Test {
    One,
    Four,
    Reverse,
}

impl Test {
    const ALL: [Test; 3] = [Test::One, Test::Four, Test::Reverse];

    fn key(self) -> &'static str {
        match self {
            Test::One => "iperf3_1_stream",
            Test::Four => "iperf3_4_streams",
            Test::Reverse => "iperf3_1_stream_reverse",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Test::One => "1 stream",
            Test::Four => "4 streams",
            Test::Reverse => "1 stream, reverse",
        }
    }

    fn streams(self) -> u32 {
        match self {
            Test::Four => 4,
            Test::One | Test::Reverse => 1,
        }
    }

    fn reverse(self) -> bool {
        self == Test::Reverse
    }
}

#[derive(Debug)]
struct LineResult {
    line: Line,
    /// Failures of the whole line in a round (its setup, its path), labelled with the round.
    errors: Vec<String>,
    /// Failures of one test in a round.
    test_errors: Vec<(Test, String)>,
    /// Every round's (Gbit/s, retransmits).
    samples: Vec<(Test, Vec<(f64, f64)>)>,
    /// Share of the CPUs busy with the path idle just before the line's tests: the highest of
    /// the rounds.
    background_busy: Option<f64>,
}

impl LineResult {
    /// The median over the rounds; an error if any round of the test failed (a failure is not
    /// averaged away).
    fn value(&self, test: Test) -> Option<Result<f64, String>> {
        if let Some((_, e)) = self.test_errors.iter().find(|(t, _)| *t == test) {
            return Some(Err(e.clone()));
        }
        let gbps: Vec<f64> = self.samples(test).iter().map(|(g, _)| *g).collect();
        median(&gbps).map(Ok)
    }

    fn ok(&self, test: Test) -> Option<f64> {
        self.value(test)?.ok()
    }

    fn samples(&self, test: Test) -> &[(f64, f64)] {
        self.samples
            .iter()
            .find(|(t, _)| *t == test)
            .map_or(&[], |(_, s)| s.as_slice())
    }

    fn push(&mut self, test: Test, sample: (f64, f64)) {
        match self.samples.iter_mut().find(|(t, _)| *t == test) {
            Some((_, v)) => v.push(sample),
            None => self.samples.push((test, vec![sample])),
        }
    }
}

struct Results {
    lines: Vec<LineResult>,
    rounds: u32,
    /// The WireGuard implementation the agents reported, and wireguard-go's version.
    wireguard: Vec<String>,
}

impl Results {
    fn new(rounds: u32) -> Self {
        Results {
            lines: Line::ALL
                .iter()
                .map(|&line| LineResult {
                    line,
                    errors: Vec::new(),
                    test_errors: Vec::new(),
                    samples: Vec::new(),
                    background_busy: None,
                })
                .collect(),
            rounds,
            wireguard: Vec::new(),
        }
    }

    fn line(&self, line: Line) -> Option<&LineResult> {
        self.lines.iter().find(|r| r.line == line)
    }

    fn line_mut(&mut self, line: Line) -> Option<&mut LineResult> {
        self.lines.iter_mut().find(|r| r.line == line)
    }

    /// `text`, prefixed with its round when there are several.
    fn label(&self, round: u32, text: &str) -> String {
        if self.rounds > 1 {
            format!("round {round}: {text}")
        } else {
            text.to_owned()
        }
    }

    /// Records that `lines` failed in `round` (0: outside the rounds).
    fn fail(&mut self, lines: &[Line], round: u32, error: &anyhow::Error) {
        let text = if round == 0 {
            format!("{error:#}")
        } else {
            self.label(round, &format!("{error:#}"))
        };
        for &line in lines {
            if let Some(r) = self.line_mut(line) {
                r.errors.push(text.clone());
            }
        }
    }

    /// `line / base` for `test`, when both were measured.
    fn ratio(&self, line: Line, base: Line, test: Test) -> Option<f64> {
        let b = self.line(base)?.ok(test)?;
        let v = self.line(line)?.ok(test)?;
        (b > 0.0).then(|| v / b)
    }

    fn failed(&self) -> Vec<String> {
        let mut out = Vec::new();
        for r in &self.lines {
            for e in &r.errors {
                out.push(format!("{}: {e}", r.line.label()));
            }
            for (test, e) in &r.test_errors {
                out.push(format!("{} / {}: {e}", r.line.label(), test.label()));
            }
        }
        out
    }
}

/// The ratios that isolate the data plane: each data-plane line over the routed one.
const DATA_PLANE_RATIOS: [(Line, Line); 2] = [
    (Line::DataPlane4, Line::Routed),
    (Line::DataPlane6, Line::Routed),
];

// ---------------------------------------------------------------------------------------------
// The run

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
struct Ctx<'a> {
    lab: &'a Lab,
    agent: &'a Path,
    db: &'a Path,
    iperf: &'a LabProcess,
    settings: Settings,
    round: u32,
    /// Even rounds run the phases, and the lines within each, in reverse order, so that a
    /// drift in background load (another build on a shared machine) hits every line alike.
    reversed: bool,
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
                Phase::Plain => plain_wireguard(&ctx, results),
                Phase::Hosts => hosts(&ctx, results),
                Phase::DataPlane => data_plane(&ctx, results),
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

/// Measures `line` for one round, recording a failure against it instead of returning it.
fn measure_or_record(
    ctx: &Ctx<'_>,
    results: &mut Results,
    line: Line,
    ns: &NetNs,
    target: IpAddr,
    alive: &dyn Fn() -> anyhow::Result<()>,
) {
    if let Err(e) = measure_line(ctx, results, line, ns, target, alive) {
        eprintln!(
            "bench: overlay: {} FAILED: {e:#}",
            results.label(ctx.round, line.label())
        );
        results.fail(&[line], ctx.round, &e);
    }
}

/// (b) and (d): every member runs `edge-agent host`.
fn hosts(ctx: &Ctx<'_>, results: &mut Results) -> anyhow::Result<()> {
    let lab = ctx.lab;
    let mut agents = Agents::new(lab, ctx.agent, ctx.db);
    for m in [&POP, &HA, &HB] {
        agents.start(m, Role::Host)?;
    }
    agents.wait_for_mesh()?;
    if results.wireguard.len() < 2 {
        if let Some(implementation) = agents.implementation(&HB) {
            results.wireguard.push(format!("agents: {implementation}"));
        }
    }
    let running = || agents.check_alive().and_then(|()| alive(ctx.iperf));
    let mut lines = [
        (Line::Agents, lab.ns(HA.ns)),
        (Line::Routed, lab.ns("client")),
    ];
    if ctx.reversed {
        lines.reverse();
    }
    for (line, ns) in lines {
        check_stop()?;
        let path = wait_ping(ns, HB.addr());
        match path {
            Ok(()) => measure_or_record(ctx, results, line, ns, IpAddr::V6(HB.addr()), &running),
            Err(e) => results.fail(&[line], ctx.round, &e),
        }
    }
    agents.stop_all()
}

/// (c) and (c6): the hosts run `edge-agent host`, the POP `edge-agent run` with the data plane.
fn data_plane(ctx: &Ctx<'_>, results: &mut Results) -> anyhow::Result<()> {
    let lab = ctx.lab;
    let mut agents = Agents::new(lab, ctx.agent, ctx.db);
    for m in [&HA, &HB] {
        agents.start(m, Role::Host)?;
    }
    agents.start(&POP, Role::Pop)?;
    agents.wait_for_mesh()?;
    wait_ping(lab.ns(POP.ns), HB.addr())?;
    let running = || agents.check_alive().and_then(|()| alive(ctx.iperf));
    let mut lines = [
        (Line::DataPlane4, IpAddr::V4(VIP4)),
        (Line::DataPlane6, IpAddr::V6(VIP6)),
    ];
    if ctx.reversed {
        lines.reverse();
    }
    for (line, vip) in lines {
        check_stop()?;
        measure_or_record(ctx, results, line, lab.ns("client"), vip, &running);
    }
    agents.stop_all()
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

/// The state file: the schema, the deployment's prefix, and one service per VIP whose backend
/// is hb's iperf3 on its 6PN address. The members publish their own rows.
fn write_state(lab: &Lab) -> anyhow::Result<PathBuf> {
    let db = lab.log_dir().join("state.db");
    let mut sql = String::from(include_str!("../../../edge-agent/schema/edgeproxy.sql"));
    let _ = writeln!(
        sql,
        "INSERT INTO settings (key, value) VALUES ('sixpn.prefix', '{}');",
        deployment()
    );
    for (id, vip) in [("iperf4", IpAddr::V4(VIP4)), ("iperf6", IpAddr::V6(VIP6))] {
        let _ = writeln!(
            sql,
            "INSERT INTO services (id, vip, port) VALUES ('{id}', '{vip}', {IPERF_PORT});\n\
             INSERT INTO backends (id, service_id, region, country, address, port, soft_limit, hard_limit) \
             VALUES ('{id}-hb', '{id}', '{}', 'DE', '{}', {IPERF_PORT}, 1000, 10000);",
            HB.region,
            HB.addr()
        );
    }
    let out = run_with_input(Command::new("sqlite3").arg(&db), sql.as_bytes())?;
    if !out.status.success() {
        bail!(
            "sqlite3 {} failed ({}): {}",
            db.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(db)
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

// ---------------------------------------------------------------------------------------------
// (a) plain WireGuard

/// A (private, public) key pair from `wg genkey` and `wg pubkey`.
fn wg_keypair() -> anyhow::Result<(String, String)> {
    let private = Command::new("wg")
        .arg("genkey")
        .output()
        .context("running wg genkey")?;
    if !private.status.success() {
        bail!(
            "wg genkey failed: {}",
            String::from_utf8_lossy(&private.stderr)
        );
    }
    let public = run_with_input(Command::new("wg").arg("pubkey"), &private.stdout)?;
    if !public.status.success() {
        bail!(
            "wg pubkey failed: {}",
            String::from_utf8_lossy(&public.stderr)
        );
    }
    Ok((
        String::from_utf8_lossy(&private.stdout).trim().to_owned(),
        String::from_utf8_lossy(&public.stdout).trim().to_owned(),
    ))
}

/// wireguard-go in `m`'s namespace on `ifname`, as the agent starts it (foreground, userspace
/// preferred); returns once its UAPI socket exists.
fn start_wireguard_go(lab: &Lab, m: &Member, ifname: &str) -> anyhow::Result<LabProcess> {
    let p = lab.ns(m.ns).spawn(
        &format!("wireguard-go-{}", m.ns),
        &["wireguard-go", "-f", ifname],
        &[("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1")],
    )?;
    let socket = PathBuf::from(format!("/var/run/wireguard/{ifname}.sock"));
    wait_until(Duration::from_secs(10), || {
        alive(&p)?;
        Ok(socket.exists())
    })
    .with_context(|| format!("waiting for {}", socket.display()))?;
    Ok(p)
}

fn plain_wireguard(ctx: &Ctx<'_>, results: &mut Results) -> anyhow::Result<()> {
    let lab = ctx.lab;
    let members = [&HA, &HB];
    let mut keys = Vec::new();
    for m in members {
        let (private, public) = wg_keypair()?;
        let path = lab.log_dir().join(format!("plain-{}.key", m.ns));
        std::fs::write(&path, format!("{private}\n"))
            .with_context(|| format!("writing {}", path.display()))?;
        keys.push((path, public));
    }
    let mut devices = Vec::new();
    for (i, m) in members.iter().enumerate() {
        let ifname = lab.wg_ifname(u16::try_from(i)?);
        devices.push(start_wireguard_go(lab, m, &ifname)?);
        let other = members[1 - i];
        let key = keys[i].0.to_string_lossy().into_owned();
        let (keepalive, port) = (KEEPALIVE_SECS.to_string(), WG_PORT.to_string());
        let ns = lab.ns(m.ns);
        ns.exec_ok(&[
            "wg",
            "set",
            &ifname,
            "private-key",
            &key,
            "listen-port",
            &port,
            "peer",
            &keys[1 - i].1,
            "endpoint",
            &other.endpoint(),
            "allowed-ips",
            &other.prefix(),
            "persistent-keepalive",
            &keepalive,
        ])?;
        // As the agent does: the whole deployment on-link, WireGuard's allowed IPs pick the peer.
        ns.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{}/48", m.addr()),
            "dev",
            &ifname,
            "nodad",
        ])?;
        ns.ip(&[
            "link",
            "set",
            "dev",
            &ifname,
            "mtu",
            &WG_MTU.to_string(),
            "up",
        ])?;
    }
    println!("bench: overlay: plain WireGuard between ha and hb up (wg, ip)");
    wait_ping(lab.ns(HA.ns), HB.addr())?;
    let running = || {
        devices.iter().try_for_each(alive)?;
        alive(ctx.iperf)
    };
    measure_or_record(
        ctx,
        results,
        Line::PlainWg,
        lab.ns(HA.ns),
        IpAddr::V6(HB.addr()),
        &running,
    );
    // wireguard-go deletes its device and socket on SIGTERM (the next phase waits for that).
    drop(devices);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// (b), (c), (d): the agents

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// `edge-agent host`: the mesh only.
    Host,
    /// `edge-agent run` with `[sixpn]`: the mesh and the data plane.
    Pop,
}

struct Agents<'a> {
    lab: &'a Lab,
    agent: &'a Path,
    db: &'a Path,
    /// (namespace, WireGuard interface, process).
    running: Vec<(&'static str, String, LabProcess)>,
}

impl<'a> Agents<'a> {
    fn new(lab: &'a Lab, agent: &'a Path, db: &'a Path) -> Self {
        Agents {
            lab,
            agent,
            db,
            running: Vec::new(),
        }
    }

    /// Member `m`'s device (plain WireGuard's are 0 and 1).
    fn ifname(&self, m: &Member) -> String {
        self.lab.wg_ifname(10 + u16::from(m.underlay))
    }

    fn config(&self, m: &Member, role: Role, ifname: &str) -> String {
        let key = self.lab.log_dir().join(format!("{}.key", m.ns));
        let mut toml = format!(
            "# Written by cargo xtask bench (overlay).\n\
             pop_id = \"{ns}\"\nregion = \"{region}\"\nstats_log_secs = 0\n",
            ns = m.ns,
            region = m.region,
        );
        if role == Role::Pop {
            toml.push_str("iface = \"eth0\"\n");
        }
        let _ = write!(
            toml,
            "\n[state]\ndatabase = \"{}\"\n\n[dns]\nenabled = false\n",
            self.db.display()
        );
        if role == Role::Pop {
            let _ = write!(
                toml,
                "\n[overlay]\niface = \"{ifname}\"\naddr = \"{addr}\"\nmtu = {WG_MTU}\n\
                 # IPv4 clients appear as <POP /96>:<client IPv4> (docs/6pn.md).\n\
                 snat_prefix = \"{prefix}\"\n\n\
                 [flows]\nmax_entries = 65536\n\n[maglev]\nmax_services = 4\n\n\
                 [affinity]\nttl_secs = 0\n\n\
                 # No checks: nothing but iperf3 on the backend's port.\n\
                 [health]\nenabled = false\n",
                addr = m.addr(),
                prefix = m.prefix(),
            );
        }
        let _ = write!(
            toml,
            "\n[sixpn]\nenabled = true\nid = \"{ns}\"\nhost_number = {number}\nifname = \"{ifname}\"\n\
             listen_port = {WG_PORT}\nendpoint = \"{endpoint}\"\nkey_file = \"{key}\"\n\
             keepalive_secs = {KEEPALIVE_SECS}\nmtu = {WG_MTU}\n",
            ns = m.ns,
            number = m.number,
            endpoint = m.endpoint(),
            key = key.display(),
        );
        toml
    }

    fn pins(&self, m: &Member) -> PathBuf {
        bpffs_pin_dir(self.lab.ns(m.ns).name())
    }

    fn start(&mut self, m: &'static Member, role: Role) -> anyhow::Result<()> {
        let ifname = self.ifname(m);
        let (subcommand, ready) = match role {
            Role::Host => ("host", "edge-agent host ready"),
            Role::Pop => ("run", "edge-agent ready"),
        };
        let path = self
            .lab
            .log_dir()
            .join(format!("{}-{subcommand}.toml", m.ns));
        std::fs::write(&path, self.config(m, role, &ifname))
            .with_context(|| format!("writing {}", path.display()))?;
        let agent = self.agent.to_string_lossy();
        let pins = self.pins(m);
        let pins = pins.to_string_lossy();
        let config = path.to_string_lossy();
        let mut argv = vec![
            &*agent,
            "--bpffs-root",
            &*pins,
            "--config",
            &*config,
            subcommand,
        ];
        if role == Role::Pop {
            argv.push("--reset");
        }
        let p = self.lab.ns(m.ns).spawn(
            &format!("agent-{}-{subcommand}", m.ns),
            &argv,
            &[("EDGEPROXY_STATS_LOG_SECS", "0")],
        )?;
        wait_ready(&p, ready, Duration::from_secs(30))
            .with_context(|| format!("starting `edge-agent {subcommand}` in {}", m.ns))?;
        println!(
            "bench: overlay: `edge-agent {subcommand}` ready in {}",
            m.ns
        );
        self.running.push((m.ns, ifname, p));
        Ok(())
    }

    /// Stops every agent, then deletes its 6PN device (which the agent leaves up, as it leaves
    /// the data plane attached): wireguard-go exits with it.
    fn stop_all(mut self) -> anyhow::Result<()> {
        for (ns, ifname, p) in self.running.drain(..) {
            p.signal(libc::SIGTERM)?;
            p.wait_exit(Duration::from_secs(10))
                .with_context(|| format!("stopping the agent in {ns}"))?;
            self.lab
                .ns(ns)
                .ip(&["link", "del", &ifname])
                .with_context(|| format!("deleting {ifname} in {ns}"))?;
        }
        Ok(())
    }

    fn check_alive(&self) -> anyhow::Result<()> {
        self.running.iter().try_for_each(|(_, _, p)| alive(p))
    }

    /// Waits until every running member lists every other as a peer.
    fn wait_for_mesh(&self) -> anyhow::Result<()> {
        let started = Instant::now();
        let want = self.running.len() - 1;
        wait_until(Duration::from_secs(20), || {
            self.check_alive()?;
            for (ns, ifname, _) in &self.running {
                let out = self.lab.ns(ns).exec(&["wg", "show", ifname, "peers"])?;
                if out.stdout.lines().filter(|l| !l.trim().is_empty()).count() != want {
                    return Ok(false);
                }
            }
            Ok(true)
        })
        .context("the agents did not build the full mesh from the rows")?;
        println!(
            "bench: overlay: mesh of {} from rows alone after {} ms",
            self.running.len(),
            started.elapsed().as_millis()
        );
        Ok(())
    }

    /// What `edge-agent wg show` says of member `m`'s WireGuard.
    fn implementation(&self, m: &Member) -> Option<String> {
        let out = Command::new(self.agent)
            .arg("--bpffs-root")
            .arg(self.pins(m))
            .args(["wg", "show", "--output", "json"])
            .output()
            .ok()?;
        let doc: Value = serde_json::from_slice(&out.stdout).ok()?;
        doc.get("implementation")?.as_str().map(str::to_owned)
    }
}

// ---------------------------------------------------------------------------------------------
// Probes and iperf3

/// Pings `target` from `ns` until it answers: the first packets wait for a WireGuard
/// handshake, which is retried after 5 s if the other side did not know this peer yet.
fn wait_ping(ns: &NetNs, target: Ipv6Addr) -> anyhow::Result<()> {
    let target = target.to_string();
    let started = Instant::now();
    wait_until(Duration::from_secs(25), || {
        check_stop()?;
        Ok(ns
            .exec(&["ping", "-6", "-c", "1", "-W", "1", &target])?
            .success())
    })
    .with_context(|| format!("{} cannot ping {target}", ns.name()))?;
    let took = started.elapsed();
    if took > Duration::from_secs(1) {
        println!(
            "bench: overlay: {target} answered after {} ms",
            took.as_millis()
        );
    }
    Ok(())
}

fn iperf3(
    ns: &NetNs,
    target: IpAddr,
    streams: u32,
    reverse: bool,
    seconds: u64,
) -> anyhow::Result<super::load::Iperf> {
    let (target, port, time, parallel) = (
        target.to_string(),
        IPERF_PORT.to_string(),
        seconds.to_string(),
        streams.to_string(),
    );
    let mut argv = vec![
        "iperf3",
        "--client",
        &target,
        "--port",
        &port,
        "--time",
        &time,
        "--parallel",
        &parallel,
        "--connect-timeout",
        "3000",
        "--json",
    ];
    if reverse {
        argv.push("--reverse");
    }
    parse_iperf3(&exec_bounded(
        ns,
        Duration::from_secs(seconds) + SLACK,
        &argv,
    )?)
}

/// A 1-second iperf3 run until one works: the path is up (and warm) before measuring.
fn warm_up(
    ns: &NetNs,
    target: IpAddr,
    alive: &dyn Fn() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut last = None;
    let done = wait_until(Duration::from_secs(30), || {
        check_stop()?;
        alive()?;
        match iperf3(ns, target, 1, false, 1) {
            Ok(r) if r.gbps > 0.0 => Ok(true),
            Ok(_) => {
                last = Some(anyhow::anyhow!("iperf3 moved no data"));
                Ok(false)
            }
            Err(e) => {
                last = Some(e);
                std::thread::sleep(Duration::from_millis(500));
                Ok(false)
            }
        }
    });
    match (done, last) {
        (Ok(()), _) => Ok(()),
        (Err(e), Some(last)) => Err(e.context(format!("last attempt: {last:#}"))),
        (Err(e), None) => Err(e),
    }
}

/// One round of `line`: the path is checked (and warmed), then each test runs once.
fn measure_line(
    ctx: &Ctx<'_>,
    results: &mut Results,
    line: Line,
    ns: &NetNs,
    target: IpAddr,
    alive: &dyn Fn() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let tag = line.short();
    let round = if ctx.settings.rounds > 1 {
        format!(", round {}/{}", ctx.round, ctx.settings.rounds)
    } else {
        String::new()
    };
    warm_up(ns, target, alive).with_context(|| format!("iperf3 from {} to {target}", ns.name()))?;
    println!("bench: overlay: ({tag}{round}) path to {target} works");
    std::thread::sleep(SETTLE);
    let busy = background_busy(Duration::from_secs(1));
    if let Some(busy) = busy.filter(|b| *b > NOISY) {
        println!(
            "bench: overlay: ({tag}{round}) CPUs {:.0}% busy with the path idle - other work is running: figures will be skewed",
            busy * 100.0
        );
    }
    let label = |text: &str| results.label(ctx.round, text);
    let mut samples = Vec::new();
    let mut errors = Vec::new();
    for test in Test::ALL {
        check_stop()?;
        alive()?;
        std::thread::sleep(SETTLE);
        let seconds = ctx.settings.seconds;
        match iperf3(ns, target, test.streams(), test.reverse(), seconds) {
            Ok(m) if m.gbps > 0.0 => {
                println!(
                    "bench: overlay: ({tag}{round}) iperf3 {}: {:.2} Gbit/s, {} retransmits",
                    test.label(),
                    m.gbps,
                    m.retransmits
                );
                samples.push((test, (m.gbps, m.retransmits)));
            }
            Ok(_) => errors.push((test, label("iperf3 moved no data"))),
            Err(e) => errors.push((test, label(&format!("{e:#}")))),
        }
    }
    let Some(r) = results.line_mut(line) else {
        bail!("no line {line:?}");
    };
    r.background_busy = match (r.background_busy, busy) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    for (test, sample) in samples {
        r.push(test, sample);
    }
    r.test_errors.extend(errors);
    alive()
}

fn wireguard_go_version() -> Option<String> {
    let out = Command::new("wireguard-go")
        .arg("--version")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().next().map(|l| l.trim().to_owned())
}

// ---------------------------------------------------------------------------------------------
// Reports

fn cell(results: &Results, line: Line, test: Test) -> String {
    let Some(r) = results.line(line) else {
        return "-".into();
    };
    match r.value(test) {
        None if !r.errors.is_empty() => "FAILED".into(),
        None => "-".into(),
        Some(Err(_)) => "error".into(),
        Some(Ok(v)) => match results.ratio(line, Line::PlainWg, test) {
            Some(q) => format!("{v:.2} ({q:.2})"),
            None => format!("{v:.2}"),
        },
    }
}

fn render_table(results: &Results, settings: Settings) -> String {
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut header = vec!["path".to_owned()];
    header.extend(Test::ALL.iter().map(|t| format!("iperf3, {}", t.label())));
    rows.push(header);
    for line in Line::ALL {
        let mut row = vec![line.label().to_owned()];
        row.extend(Test::ALL.iter().map(|&t| cell(results, line, t)));
        rows.push(row);
    }
    for (line, base) in DATA_PLANE_RATIOS {
        let mut row = vec![format!(
            "data plane over kernel routing, ({})/({})",
            line.short(),
            base.short()
        )];
        row.extend(Test::ALL.iter().map(|&t| {
            results
                .ratio(line, base, t)
                .map_or_else(|| "-".to_owned(), |q| format!("{q:.2}"))
        }));
        rows.push(row);
    }
    let mut out = format!(
        "overlay throughput, Gbit/s (ratio to plain WireGuard, line a), {} s per iperf3 test{}:\n",
        settings.seconds,
        if settings.rounds > 1 {
            format!(
                ", median of {} rounds (phases in alternating order)",
                settings.rounds
            )
        } else {
            String::new()
        }
    );
    out.push_str(&super::markdown_table(&rows, &[0, Line::ALL.len()]));
    out.push_str(
        "Reverse: the backend sends (iperf3 --reverse). Lines a and b run between two backend \
         hosts; d, c and c6 from a client through the POP to one of them.\n",
    );
    for w in &results.wireguard {
        let _ = writeln!(out, "WireGuard: {w}");
    }
    let busy: Vec<String> = results
        .lines
        .iter()
        .filter_map(|r| {
            Some(format!(
                "{} {:.0}%",
                r.line.short(),
                r.background_busy? * 100.0
            ))
        })
        .collect();
    if !busy.is_empty() {
        let _ = writeln!(
            out,
            "CPUs busy with the path idle, just before measuring: {}",
            busy.join(", ")
        );
    }
    for r in &results.lines {
        let parts: Vec<String> = Test::ALL
            .iter()
            .filter_map(|&t| {
                let n: Vec<f64> = r.samples(t).iter().map(|(_, n)| *n).collect();
                Some(format!("{:.0} ({})", median(&n)?, t.label()))
            })
            .collect();
        if !parts.is_empty() {
            let _ = writeln!(
                out,
                "note: ({}) iperf3 retransmits{}: {}",
                r.line.short(),
                if settings.rounds > 1 { ", median" } else { "" },
                parts.join(", ")
            );
        }
    }
    for problem in results.failed() {
        let _ = writeln!(out, "FAILED: {problem}");
    }
    out
}

fn to_json(results: &Results, settings: Settings, elapsed: Duration) -> Value {
    let unix_time = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let lines: Vec<Value> = results
        .lines
        .iter()
        .map(|r| {
            let tests: serde_json::Map<String, Value> = Test::ALL
                .iter()
                .map(|&t| {
                    let v = match r.value(t) {
                        Some(Ok(v)) => json!({
                            "gbit_per_s": v,
                            "ratio_to_plain_wireguard": results.ratio(r.line, Line::PlainWg, t),
                            "rounds": r.samples(t).iter().map(|(g, _)| *g).collect::<Vec<f64>>(),
                            "retransmits": r.samples(t).iter().map(|(_, n)| *n).collect::<Vec<f64>>(),
                        }),
                        Some(Err(e)) => json!({ "error": e }),
                        None => json!({
                            "error": r.errors.first().cloned().unwrap_or_else(|| "not measured".into())
                        }),
                    };
                    (t.key().to_owned(), v)
                })
                .collect();
            json!({
                "key": r.line.key(),
                "label": r.line.label(),
                "background_cpu_busy": r.background_busy,
                "errors": r.errors,
                "tests": tests,
            })
        })
        .collect();
    let data_plane: serde_json::Map<String, Value> = DATA_PLANE_RATIOS
        .iter()
        .map(|&(line, base)| {
            let per_test: serde_json::Map<String, Value> = Test::ALL
                .iter()
                .map(|&t| (t.key().to_owned(), json!(results.ratio(line, base, t))))
                .collect();
            (
                format!("{}_over_{}", line.short(), base.short()),
                Value::Object(per_test),
            )
        })
        .collect();
    json!({
        "generated_by": "cargo xtask bench --only overlay",
        "unix_time": unix_time,
        "duration_s": elapsed.as_secs_f64().round(),
        "kernel": kernel.trim(),
        "cpus": cpus,
        "wireguard": results.wireguard,
        "baseline": Line::PlainWg.key(),
        "settings": {
            "seconds_per_test": settings.seconds,
            "rounds": settings.rounds,
            "wireguard_mtu": WG_MTU,
            "deployment": deployment(),
        },
        "lines": lines,
        "data_plane_over_kernel_routing": data_plane,
        "failed": results.failed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_follow_the_documented_plan() {
        // docs/6pn.md, "Worked examples": POP 1 in sa.
        assert_eq!(POP.addr().to_string(), "fd5e:a1c0:7b3d:100:0:1:0:1");
        assert_eq!(POP.prefix(), "fd5e:a1c0:7b3d:100:0:1::/96");
        assert_eq!(HB.addr().to_string(), "fd5e:a1c0:7b3d:300:0:1:0:1");
        assert_eq!(client_6pn().to_string(), "fd5e:a1c0:7b3d:100:0:1:0:2");
        assert_eq!(deployment(), "fd5e:a1c0:7b3d::/48");
        assert_eq!(HA.endpoint(), "[2001:db8:61::2]:51820");
    }

    #[test]
    fn rounds_give_medians_and_keep_failures() {
        let mut results = Results::new(3);
        if let Some(r) = results.line_mut(Line::Agents) {
            for g in [0.5, 0.3, 0.4] {
                r.push(Test::One, (g, 10.0));
            }
            r.push(Test::Four, (0.6, 0.0));
            r.test_errors
                .push((Test::Four, results_label(2, "iperf3 moved no data")));
        }
        let r = results.line(Line::Agents);
        assert_eq!(r.and_then(|r| r.value(Test::One)), Some(Ok(0.4)));
        assert_eq!(
            r.and_then(|r| r.value(Test::Four)),
            Some(Err("round 2: iperf3 moved no data".into()))
        );
        assert_eq!(r.and_then(|r| r.value(Test::Reverse)), None);
        results.fail(&[Line::Routed], 3, &anyhow::anyhow!("no ping"));
        assert_eq!(
            results.failed(),
            vec![
                "(b) host -> host, 6PN built by the agents / 4 streams: round 2: iperf3 moved no data",
                "(d) IPv6 client -> POP, kernel routing -> host over 6PN: round 3: no ping",
            ]
        );
    }

    fn results_label(round: u32, text: &str) -> String {
        Results::new(3).label(round, text)
    }

    #[test]
    fn table_shows_ratios_to_plain_wireguard_and_of_the_data_plane() {
        let mut results = Results::new(1);
        let set = |results: &mut Results, line, v: f64| {
            if let Some(r) = results.line_mut(line) {
                for t in Test::ALL {
                    r.push(t, (v, 0.0));
                }
            }
        };
        set(&mut results, Line::PlainWg, 2.0);
        set(&mut results, Line::Agents, 1.9);
        set(&mut results, Line::Routed, 1.6);
        set(&mut results, Line::DataPlane4, 0.8);
        results.fail(&[Line::DataPlane6], 1, &anyhow::anyhow!("agent exited"));
        let settings = Settings {
            seconds: 5,
            rounds: 1,
        };
        let table = render_table(&results, settings);
        assert!(table.contains("2.00 (1.00)"), "{table}");
        assert!(table.contains("1.90 (0.95)"), "{table}");
        assert!(
            table.contains("| data plane over kernel routing, (c)/(d)"),
            "{table}"
        );
        assert!(table.contains("0.80 (0.40)"), "{table}");
        assert!(table.contains("FAILED: (c6)"), "{table}");
        let doc = to_json(&results, settings, Duration::from_secs(1));
        assert_eq!(
            doc.pointer("/data_plane_over_kernel_routing/c_over_d/iperf3_1_stream"),
            Some(&json!(0.5))
        );
        assert!(doc
            .pointer("/lines/4/tests/iperf3_1_stream/error")
            .is_some());
    }
}
