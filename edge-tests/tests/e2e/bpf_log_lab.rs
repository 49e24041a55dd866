//! The kernel programs' debug records end to end: an agent run with `--bpf-debug-log` logs a
//! connection's new flow under target `edge_ebpf`; agents without it (the default) log nothing
//! for the same kind of connection. Each agent adopts the previous one's pins, so this also
//! checks that aya-log's ring buffer (never pinned) does not get in the way of adoption.

use std::{collections::BTreeSet, time::Duration};

use edge_agent::cli::maps::MAPS;
use edge_tests::{
    bpffs_pin_dir,
    pop_lab::{agent_config, backend_addr, start_agent, topology, BACKEND_PORT, CLIENT4, VIP4},
    Lab, LabProcess,
};

use super::common::{agent_bin, echo_backends, kernel_backend, tear_down, TestResult};

type Error = Box<dyn std::error::Error>;

const NEW_FLOW: &str = "new flow: service";

/// One echoed round trip through the IPv4 VIP; returns the backend's new flows before and after.
fn connect(lab: &Lab) -> Result<(u64, u64), Error> {
    let before = kernel_backend(lab, 1)?.1;
    lab.ns("client").exec_ok(&[
        env!("CARGO_BIN_EXE_echo-client"),
        &format!("{VIP4}:7"),
        "1",
        "0",
    ])?;
    Ok((before, kernel_backend(lab, 1)?.1))
}

fn adopting_agent(lab: &Lab, extra: &[&str]) -> Result<LabProcess, Error> {
    let agent = start_agent(lab, &agent_bin(), &agent_config(1).to_toml()?, extra)?;
    // Its log (stderr) is read on its own thread: it may trail the ready line (stdout).
    if agent
        .wait_for_output("adopted the pinned link", Duration::from_secs(5))
        .is_err()
    {
        panic!(
            "the agent should adopt the pinned links; it said:\n{}",
            agent.output_so_far()
        );
    }
    Ok(agent)
}

/// A connection through an agent without the switch: a new flow, and no record of it.
fn assert_silent(lab: &Lab, agent: &LabProcess, which: &str) -> TestResult {
    let (before, after) = connect(lab)?;
    assert_eq!(after, before + 1, "{which}: the connection made a new flow");
    // With the switch on, the record reaches the agent within milliseconds.
    std::thread::sleep(Duration::from_millis(500));
    let output = agent.output_so_far();
    assert!(
        !output.contains("edge_ebpf") && !output.contains(NEW_FLOW),
        "{which}: no BPF record without --bpf-debug-log; the agent said:\n{output}"
    );
    Ok(())
}

#[test]
fn bpf_debug_log_shows_new_flows_only_when_switched_on() -> TestResult {
    let lab = topology("bpflog", 1).up()?;
    let _servers = echo_backends(&lab, 1)?;

    let plain = start_agent(
        &lab,
        &agent_bin(),
        &agent_config(1).to_toml()?,
        &["--reset"],
    )?;
    assert_silent(&lab, &plain, "default agent")?;
    drop(plain);

    let debug = adopting_agent(&lab, &["--bpf-debug-log"])?;
    let (before, after) = connect(&lab)?;
    assert_eq!(after, before + 1, "the connection made a new flow");
    if debug
        .wait_for_output(NEW_FLOW, Duration::from_secs(5))
        .is_err()
    {
        panic!(
            "with --bpf-debug-log the agent should log the new flow; it said:\n{}",
            debug.output_so_far()
        );
    }
    let output = debug.output_so_far();
    let line = output
        .lines()
        .find(|l| l.contains(NEW_FLOW))
        .unwrap_or_default();
    let client = format!("client [::ffff:{CLIENT4}]:");
    let backend = format!("[{}]:{BACKEND_PORT}", backend_addr(1));
    for part in ["edge_ebpf", &client, "vip port 7 -> backend ", &backend] {
        assert!(
            line.contains(part),
            "the new-flow record should contain {part:?}: {line}"
        );
    }
    eprintln!("the record: {line}");
    drop(debug);

    // The debug agent left its maps pinned, and nothing else: the log ring is per load.
    let pinned: BTreeSet<String> =
        std::fs::read_dir(bpffs_pin_dir(lab.ns("pop").name()).join("maps"))?
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
    let expected: BTreeSet<String> = MAPS.iter().map(|m| m.name.to_owned()).collect();
    assert_eq!(
        pinned, expected,
        "pinned maps after a --bpf-debug-log agent"
    );

    // The next agent without the switch swaps a silent program into the links.
    let quiet = adopting_agent(&lab, &[])?;
    assert_silent(&lab, &quiet, "agent after a debug agent")?;
    drop(quiet);
    tear_down(lab);
    Ok(())
}
