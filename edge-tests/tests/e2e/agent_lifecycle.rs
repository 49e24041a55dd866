//! The data plane outlives its agent: SIGKILL the agent and the program stays attached and keeps
//! counting; a new agent adopts the pinned maps and the counters carry on; `--reset` starts over;
//! `detach` removes everything. The agent's status file does not outlive it (or, after a
//! SIGKILL, the lab); an agent started with `ip netns exec`, whose pins nobody else sees, says so.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use super::common::{agent_bin, counted, tear_down, TestResult};
use edge_agent::dataplane::pins::PinDir;
use edge_tests::{bpffs_pin_dir, pop_lab, Lab, LabProcess, Topology};

/// Part of the warning an agent logs when its pins are on a bpffs of its own.
const HIDDEN_PINS: &str = "the pins are on a bpffs the host does not see";

fn lab() -> edge_tests::Result<Lab> {
    Topology::new("life")
        .ns("client")
        .ns("pop")
        .veth(("client", "eth0"), ("pop", "eth0"))
        .addr("client", "eth0", "192.0.2.2/24")
        .addr("pop", "eth0", "192.0.2.1/24")
        .up()
}

fn start_agent(lab: &Lab, extra: &[&str]) -> Result<LabProcess, Box<dyn std::error::Error>> {
    start_agent_via(lab, &[], extra)
}

/// Starts the agent in the POP through `wrapper` (e.g. `ip netns exec <ns>`), inside the
/// `nsenter --net` every lab process is started with.
fn start_agent_via(
    lab: &Lab,
    wrapper: &[&str],
    extra: &[&str],
) -> Result<LabProcess, Box<dyn std::error::Error>> {
    let agent = agent_bin();
    let pins = bpffs_pin_dir(lab.ns("pop").name());
    let (agent, pins) = (agent.to_string_lossy(), pins.to_string_lossy());
    // XDP, whatever `auto` would pick on this veth: this lab is about the XDP link's adoption
    // (the other labs run the TC hook `auto` picks here).
    let mut argv = wrapper.to_vec();
    argv.extend_from_slice(&[
        &*agent,
        "--bpffs-root",
        &*pins,
        "run",
        "--iface",
        "eth0",
        "--forward-hook",
        "xdp",
    ]);
    argv.extend_from_slice(extra);
    let process = lab
        .ns("pop")
        .spawn("agent", &argv, &[("EDGEPROXY_STATS_LOG_SECS", "0")])?;
    process.wait_for_output("edge-agent ready", Duration::from_secs(20))?;
    Ok(process)
}

fn ping(lab: &Lab, count: u32) -> TestResult {
    lab.ns("client").exec_ok(&[
        "ping",
        "-q",
        "-c",
        &count.to_string(),
        "-i",
        "0.05",
        "-W",
        "1",
        "192.0.2.1",
    ])?;
    Ok(())
}

fn xdp_attached(lab: &Lab) -> Result<bool, Box<dyn std::error::Error>> {
    let out = lab
        .ns("pop")
        .exec_ok(&["ip", "link", "show", "dev", "eth0"])?;
    Ok(out.stdout.contains(" xdp"))
}

#[test]
fn sigkill_keeps_the_data_plane_and_a_new_agent_adopts_it() -> TestResult {
    let lab = lab()?;
    let pins = bpffs_pin_dir(lab.ns("pop").name());
    let icmp = || counted(&pins, "ipv4", "icmp", "pass");

    let first = start_agent(&lab, &["--reset"])?;
    ping(&lab, 5)?;
    let before_kill = icmp()?;
    assert!(
        before_kill >= 5,
        "5 echo requests crossed the POP's eth0; counted {before_kill}"
    );

    first.kill()?;
    first.wait_exit(Duration::from_secs(5))?;
    assert!(xdp_attached(&lab)?, "XDP must stay attached after SIGKILL");
    ping(&lab, 5)?;
    let while_dead = icmp()?;
    assert!(
        while_dead >= before_kill + 5,
        "the program must keep counting with no agent: {before_kill} -> {while_dead}"
    );

    let second = start_agent(&lab, &[])?;
    // Its log (stderr) is read on its own thread: it may trail the ready line (stdout).
    if second
        .wait_for_output("adopted the pinned link", Duration::from_secs(5))
        .is_err()
    {
        panic!(
            "second agent should adopt the pinned link; it said:\n{}",
            second.output_so_far()
        );
    }
    let adopted = icmp()?;
    assert!(
        adopted >= while_dead,
        "adopting must keep the counters: {while_dead} -> {adopted}"
    );
    ping(&lab, 5)?;
    let after = icmp()?;
    assert!(
        after >= adopted + 5,
        "the adopted data plane must count: {adopted} -> {after}"
    );
    drop(second);

    // --reset replaces the pinned objects: counting starts again from zero.
    let third = start_agent(&lab, &["--reset"])?;
    let reset = icmp()?;
    assert!(
        reset < after,
        "--reset must start with fresh maps: {after} before, {reset} after"
    );
    drop(third);

    let detach = std::process::Command::new(agent_bin())
        .arg("--bpffs-root")
        .arg(&pins)
        .arg("detach")
        .output()?;
    assert!(detach.status.success(), "detach failed: {detach:?}");
    assert!(!xdp_attached(&lab)?, "detach must remove the XDP program");
    assert!(!pins.exists(), "detach must remove {}", pins.display());

    tear_down(lab);
    Ok(())
}

/// Waits up to 5 s for `path` to exist.
fn wait_for_file(path: &Path) -> TestResult {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !path.exists() {
        if Instant::now() > deadline {
            return Err(
                format!("expected {} within 5 s; it never appeared", path.display()).into(),
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Stops `agent` with SIGTERM and returns everything it printed.
fn stop(agent: LabProcess) -> Result<String, Box<dyn std::error::Error>> {
    agent.signal(libc::SIGTERM)?;
    agent.wait_exit(Duration::from_secs(10))?;
    // Its last log line: everything before it has been captured too.
    agent.wait_for_output("agent stopping", Duration::from_secs(5))?;
    Ok(agent.output_so_far())
}

/// Issue 24: `bgp_lab` SIGKILLed an agent and its status file stayed under /run/edgeproxy.
#[test]
fn a_status_file_goes_with_its_agent_or_with_the_lab() -> TestResult {
    // An agent with services: only such an agent writes a status file.
    let lab = pop_lab::topology("status", 1).up()?;
    let config = pop_lab::agent_config(1).to_toml()?;
    let start = |args: &[&str]| pop_lab::start_agent(&lab, &agent_bin(), &config, args);
    let status = PinDir::new(bpffs_pin_dir(lab.ns("pop").name())).agent_status_file();

    let first = start(&["--reset"])?;
    wait_for_file(&status)?;
    let said = stop(first)?;
    assert!(
        !status.exists(),
        "an agent that exits must remove its status file; {} is still there",
        status.display()
    );
    assert!(
        !said.contains(HIDDEN_PINS),
        "an agent started with `nsenter --net` sees the host's bpffs and must not warn; it said:\n{said}"
    );

    let second = start(&[])?;
    wait_for_file(&status)?;
    second.kill()?;
    second.wait_exit(Duration::from_secs(5))?;
    assert!(
        status.exists(),
        "a SIGKILLed agent cannot remove its status file, yet {} is gone",
        status.display()
    );
    drop(second);
    tear_down(lab);
    assert!(
        !status.exists(),
        "the lab must remove the status file of the agent it killed; {} is still there",
        status.display()
    );
    Ok(())
}

/// Issue 24: `ip netns exec` gives the agent a private /sys, where it mounts a bpffs of its own.
#[test]
fn an_agent_started_with_ip_netns_exec_warns_that_its_pins_are_hidden() -> TestResult {
    let lab = lab()?;
    let pins = bpffs_pin_dir(lab.ns("pop").name());
    let ns = lab.ns("pop").name().to_owned();
    let agent = start_agent_via(&lab, &["ip", "netns", "exec", &ns], &["--reset"])?;
    if agent
        .wait_for_output(HIDDEN_PINS, Duration::from_secs(5))
        .is_err()
    {
        panic!(
            "expected a warning containing `{HIDDEN_PINS}`; the agent said:\n{}",
            agent.output_so_far()
        );
    }
    let said = agent.output_so_far();
    let warning = said
        .lines()
        .find(|line| line.contains(HIDDEN_PINS))
        .unwrap_or_default();
    assert!(
        warning.contains("nsenter --net=/run/netns/") && warning.contains("WARN"),
        "the warning must say how to start the agent instead; it is:\n{warning}"
    );

    // What the warning means: the agent serves, but the host sees no pins.
    assert!(xdp_attached(&lab)?, "the agent must serve (XDP on eth0)");
    assert!(
        !pins.exists(),
        "{} must not exist on the host's bpffs",
        pins.display()
    );
    let status = std::process::Command::new(agent_bin())
        .arg("--bpffs-root")
        .arg(&pins)
        .arg("status")
        .output()?;
    let stderr = String::from_utf8_lossy(&status.stderr);
    assert!(
        !status.status.success() && stderr.contains("is the data plane loaded"),
        "expected `status` on the host to find nothing; it said ({}):\n{stderr}",
        status.status
    );
    // ... and the data plane goes with the agent's private bpffs.
    stop(agent)?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while xdp_attached(&lab)? {
        assert!(
            Instant::now() < deadline,
            "XDP still attached 5 s after the agent with the private bpffs exited"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    tear_down(lab);
    Ok(())
}

#[test]
fn status_without_a_data_plane_says_so() -> TestResult {
    let out = std::process::Command::new(agent_bin())
        .args([
            "--bpffs-root",
            "/sys/fs/bpf/edgeproxy-never-loaded",
            "status",
        ])
        .output()?;
    assert!(
        !out.status.success(),
        "status must fail with nothing pinned"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("is the data plane loaded"),
        "status should say the data plane is not loaded; said:\n{stderr}"
    );
    Ok(())
}
