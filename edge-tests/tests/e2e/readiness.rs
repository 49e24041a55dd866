//! systemd readiness (`Type=notify` in deploy/edge-agent.service): the agent sends READY=1 to
//! `NOTIFY_SOCKET` once it serves, and STOPPING=1 when it stops.

use std::{os::unix::net::UnixDatagram, time::Duration};

use edge_tests::{
    bpffs_pin_dir,
    pop_lab::{agent_config, topology},
};

use super::common::{agent_bin, tear_down, TestResult};

#[test]
fn the_agent_tells_systemd_when_it_is_ready_and_stopping() -> TestResult {
    let lab = topology("notify", 1).up()?;
    let socket_path = lab.log_dir().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path)?;
    socket.set_read_timeout(Some(Duration::from_secs(30)))?;
    let config = lab.log_dir().join("agent.toml");
    std::fs::write(&config, agent_config(1).to_toml()?)?;
    let pins = bpffs_pin_dir(lab.ns("pop").name());
    let agent = lab.ns("pop").spawn(
        "agent",
        &[
            &agent_bin().to_string_lossy(),
            "--bpffs-root",
            &pins.to_string_lossy(),
            "--config",
            &config.to_string_lossy(),
            "run",
            "--reset",
        ],
        &[("NOTIFY_SOCKET", &socket_path.to_string_lossy())],
    )?;
    let mut buf = [0u8; 256];
    let n = socket.recv(&mut buf)?;
    let message = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(message.contains("READY=1"), "{message:?}");
    // READY=1 comes once the agent serves (its stdout is read on another thread: wait).
    agent.wait_for_output("edge-agent ready", Duration::from_secs(5))?;
    agent.signal(libc::SIGTERM)?;
    let n = socket.recv(&mut buf)?;
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"));
    agent.wait_exit(Duration::from_secs(10))?;
    tear_down(lab);
    Ok(())
}
