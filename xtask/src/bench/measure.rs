//! One mode of the end-to-end section: its lab, backend and balancer up, the path probed, then
//! echo, iperf3 and wrk run from the client, each outcome kept (a failed test fails its metric,
//! not the whole run).

use std::time::Duration;

use anyhow::{bail, Context as _};

use super::{
    check_stop,
    cpu::{background_busy, describe, PerCpu},
    lab,
    lab::CLIENT,
    load,
    metric::{Metric, ModeResult},
    modes::{self, Inputs, Mode},
    NOISY, SETTLE,
};

/// A failed request is not a served one: above this share of errors, a wrk rate is discarded.
const MAX_WRK_ERROR_RATIO: f64 = 0.01;

/// Client ports of one round: the same in every mode of the round, others in the next round,
/// so that every mode meets the same placements of its connections on the CPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Ports {
    /// The echo connection's.
    pub echo: u16,
    /// The first port of each iperf3 run: a test's runs follow one another, each with its own
    /// ports (iperf3 gives a run's streams the ports after its first).
    iperf_first: u16,
}

/// How many iperf3 runs, each with its own client ports, one iperf3 figure of a round averages
/// (fewer when the test lasts fewer seconds). Where four streams run is drawn by their hashes,
/// one CPU or the other for every hop: one draw put a round's total anywhere between 0.75 and
/// 1.0 of another's, in every mode (docs/architecture.md, "Several streams"). Five draws per
/// round narrow that to what the path decides.
pub(super) const PLACEMENTS: u64 = 5;

/// Ports per round: the echo port, then `PLACEMENTS` runs of up to four streams for each of
/// the two iperf3 tests.
const PORTS_PER_ROUND: u16 = 64;

impl Ports {
    pub(super) fn of_round(round: u32) -> Self {
        let first = 20_000 + (round % 600) as u16 * PORTS_PER_ROUND;
        Ports {
            echo: first,
            iperf_first: first + 8,
        }
    }

    /// The first client port of run `run` of the iperf3 test with `streams` streams (1 or 4).
    pub(super) fn iperf(self, streams: u32, run: u64) -> u16 {
        let test = if streams == 1 { 0 } else { 8 };
        self.iperf_first + test + run as u16 * streams as u16
    }
}

pub(super) fn measure_mode(
    mode: Mode,
    round: u32,
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
        runs: Vec::new(),
    };
    if let Err(e) = measure_into(&mut result, Ports::of_round(round), inputs, run_ids) {
        result.error = Some(format!("{e:#}"));
    }
    result
}

fn measure_into(
    result: &mut ModeResult,
    ports: Ports,
    inputs: &Inputs<'_>,
    run_ids: &mut Vec<String>,
) -> anyhow::Result<()> {
    let mode = result.mode;
    let seconds = inputs.run.seconds;
    let lab = lab::topology(mode.has_vip(), inputs.run.gro)
        .up()
        .context("bringing up the lab")?;
    let run_id = lab.run_id().to_string();
    run_ids.push(run_id.clone());
    println!("bench: {mode}: lab run {run_id} up");
    // Declared after the lab, so dropped before it: processes stop before their namespaces go.
    let _backends = lab::start_backends(&lab, inputs.tools).context("starting the backend")?;
    let balancer = modes::start(mode, &lab, inputs).with_context(|| format!("starting {mode}"))?;
    // Each namespace stands for a machine: what it sends crosses a wire to another, whose NIC
    // hashes the packet's own tuple with a key of its own. No hash a sender's stack, socket or
    // data plane left on a packet reaches the next machine, in any mode.
    let _wire_hash = edge_tests::hash_like_a_nic(&lab, &lab::VETHS)
        .context("hashing received packets by their own tuple, as a NIC does")?;
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

    // The round trips and the request rates count what the whole path costs, on one CPU
    // (`lab::PATH_CPU`): every process of the lab, the balancer's included (the load
    // generators start there too), and the packets' work, which with receive steering off runs
    // where each packet is sent from. Not which CPUs the connections' hashes and the scheduler
    // happened to pick, the same way in every mode.
    let one_cpu = |what: &str| -> anyhow::Result<_> {
        let steering_off = lab
            .steering_off(&lab::VETHS)
            .with_context(|| format!("turning receive steering off for the {what}"))?;
        let pinned = lab
            .pinned(&[CLIENT, lab::LB, lab::BACKEND], lab::PATH_CPU)
            .with_context(|| format!("holding the lab's processes on one CPU for the {what}"))?;
        Ok((steering_off, pinned))
    };

    step()?;
    let path_on_one_cpu = one_cpu("round trips")?;
    let echo = load::echo(client, &inputs.tools.echo_client, target, ports.echo);
    drop(path_on_one_cpu);
    match echo {
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
    let runs = PLACEMENTS.min(seconds);
    let run_seconds = seconds / runs;
    for (metric, streams) in [(Metric::Iperf1, 1), (Metric::Iperf4, 4)] {
        step()?;
        let before = PerCpu::sample();
        let value = (0..runs)
            .map(|run| {
                if run > 0 {
                    // The server takes a moment to be ready for the next test.
                    std::thread::sleep(Duration::from_millis(200));
                }
                load::iperf3(client, target, streams, run_seconds, ports.iperf(streams, run))
            })
            .collect::<anyhow::Result<Vec<_>>>()
            .and_then(|rs| {
                let cpus = before
                    .as_ref()
                    .zip(PerCpu::sample())
                    .map(|(a, b)| describe(&a.shares_until(&b)))
                    .unwrap_or_default();
                let gbps = rs.iter().map(|r| r.gbps).sum::<f64>() / rs.len() as f64;
                let placements: Vec<String> = rs
                    .iter()
                    .map(|r| {
                        let each: Vec<String> =
                            r.per_stream_gbps.iter().map(|g| format!("{g:.2}")).collect();
                        each.join(" + ")
                    })
                    .collect();
                let lost = rs.iter().map(|r| r.retransmits).sum::<f64>();
                println!(
                    "bench: {mode}: iperf3 {streams} stream(s): {gbps:.2} Gbit/s (mean of {} runs: {}), {lost} retransmits; {cpus}",
                    rs.len(),
                    placements.join(" | "),
                );
                if streams > 1 {
                    result.notes.push(format!(
                        "{streams} streams, {} runs: {} Gbit/s; {cpus}",
                        rs.len(),
                        placements.join(" | ")
                    ));
                }
                retransmits.push(format!("{lost} ({streams} stream(s))"));
                result.runs.push((metric, rs.iter().map(|r| r.gbps).collect()));
                if rs.iter().any(|r| r.gbps <= 0.0) {
                    bail!("an iperf3 run moved no data");
                }
                Ok(gbps)
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

    let _path_on_one_cpu = one_cpu("request rates")?;
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

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    /// Every client port a round uses: the echo connection's and every stream of every run.
    fn used(ports: Ports) -> Vec<u16> {
        let mut all = vec![ports.echo];
        for streams in [1, 4] {
            for run in 0..PLACEMENTS {
                let first = ports.iperf(streams, run);
                all.extend((0..streams as u16).map(|s| first + s));
            }
        }
        all
    }

    #[test]
    fn a_rounds_connections_never_share_a_port_and_rounds_use_others() {
        for round in [1, 2, 599, 600, 1000] {
            let ports = used(Ports::of_round(round));
            let distinct: HashSet<u16> = ports.iter().copied().collect();
            assert_eq!(distinct.len(), ports.len(), "round {round}: {ports:?}");
            let (lo, hi) = (ports.iter().min(), ports.iter().max());
            let block = Ports::of_round(round).echo;
            assert!(
                lo == Some(&block) && hi < Some(&(block + PORTS_PER_ROUND)),
                "round {round} stays in its block: {lo:?}..{hi:?}"
            );
        }
        let (one, two): (HashSet<u16>, HashSet<u16>) = (
            used(Ports::of_round(1)).into_iter().collect(),
            used(Ports::of_round(2)).into_iter().collect(),
        );
        assert!(
            one.is_disjoint(&two),
            "the next round meets other placements"
        );
    }
}
