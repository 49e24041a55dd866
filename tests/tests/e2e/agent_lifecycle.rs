//! The data plane outlives its agent: SIGKILL the agent and the program stays attached and keeps
//! counting; a new agent adopts the pinned maps and the counters carry on; `--reset` starts over;
//! `detach` removes everything.

use std::time::Duration;

use super::common::{agent_bin, counted, tear_down, TestResult};
use edge_lab::{bpffs_pin_dir, Lab, LabProcess, Topology};

fn lab() -> edge_lab::Result<Lab> {
    Topology::new("life")
        .ns("client")
        .ns("pop")
        .veth(("client", "eth0"), ("pop", "eth0"))
        .addr("client", "eth0", "192.0.2.2/24")
        .addr("pop", "eth0", "192.0.2.1/24")
        .up()
}

fn start_agent(lab: &Lab, extra: &[&str]) -> Result<LabProcess, Box<dyn std::error::Error>> {
    let agent = agent_bin();
    let pins = bpffs_pin_dir(lab.ns("pop").name());
    let (agent, pins) = (agent.to_string_lossy(), pins.to_string_lossy());
    // XDP, whatever `auto` would pick on this veth: this lab is about the XDP link's adoption
    // (the other labs run the TC hook `auto` picks here).
    let mut argv = vec![
        &*agent,
        "--bpffs-root",
        &*pins,
        "run",
        "--iface",
        "eth0",
        "--forward-hook",
        "xdp",
    ];
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
