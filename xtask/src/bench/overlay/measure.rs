//! One round of one line: the path checked and warmed up, then each iperf3 test run once and
//! its sample (or failure) kept against the line.

use std::{
    net::{IpAddr, Ipv6Addr},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use edge_tests::NetNs;

use super::{
    results::{Line, Results, Test},
    topology::IPERF_PORT,
    Ctx,
};
use crate::bench::{
    check_stop,
    cpu::background_busy,
    lab::{exec_bounded, wait_until},
    load::{self, parse_iperf3},
    NOISY, SETTLE,
};

/// Headroom over a test's own duration before `timeout` kills iperf3.
const SLACK: Duration = Duration::from_secs(20);

/// Measures `line` for one round, recording a failure against it instead of returning it.
pub(super) fn measure_or_record(
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

/// Pings `target` from `ns` until it answers: the first packets wait for a WireGuard
/// handshake, which is retried after 5 s if the other side did not know this peer yet.
pub(super) fn wait_ping(ns: &NetNs, target: Ipv6Addr) -> anyhow::Result<()> {
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
) -> anyhow::Result<load::Iperf> {
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
