//! The agent in a privileged podman container (`cargo xtask container`'s image) against a lab
//! POP's network namespace: clients' flows pass through it, and stopping and starting the
//! container adopts the pinned data plane without resetting established connections.

use std::{process::Command, time::Duration, time::Instant};

use edge_tests::{
    bpffs_pin_dir,
    pop_lab::{agent_config, spawn_echo_load, topology},
};

use super::common::{agent_bin, bin, churn, echo_backends, tear_down, wait_eligible, TestResult};

type Error = Box<dyn std::error::Error>;

const IMAGE: &str = "localhost/edge-agent:dev";

fn podman(args: &[&str]) -> Result<String, Error> {
    let out = Command::new("podman")
        .args(["--runtime", "runc"])
        .args(args)
        .output()?;
    if !out.status.success() {
        return Err(format!("podman {args:?}: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

/// Removes the container, whatever happens to the test.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["--runtime", "runc", "rm", "-f", "-t", "5", &self.0])
            .output();
    }
}

fn wait_logs(name: &str, needle: &str, times: usize) -> Result<(), Error> {
    let started = Instant::now();
    loop {
        let logs = podman(&["logs", name])?;
        if logs.matches(needle).count() >= times {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(30) {
            return Err(format!("{needle:?} x{times} not in the container's logs:\n{logs}").into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_agent_serves_from_a_container_and_restarts_without_resets() -> TestResult {
    // The agent the suite built: compiling a release one here would load the machine while
    // other labs run.
    let built = Command::new(bin("EDGE_XTASK_BIN"))
        .args(["container", "--no-setup", "--agent"])
        .arg(agent_bin())
        .status()?;
    assert!(built.success(), "cargo xtask container failed");
    let lab = topology("ctr", 2).up()?;
    let _servers = echo_backends(&lab, 2)?;
    let dir = lab.log_dir().to_path_buf();
    let config = dir.join("agent.toml");
    std::fs::write(&config, agent_config(2).to_toml()?)?;
    let pins = bpffs_pin_dir(lab.ns("pop").name());
    let name = format!("edge-agent-{}", lab.run_id());
    let container = Container(name.clone());
    let network = format!("ns:{}", lab.ns("pop").path().display());
    let volume = format!("{0}:{0}", dir.display());
    podman(&[
        "run",
        "-d",
        "--name",
        &name,
        "--privileged",
        "--network",
        &network,
        // Explicit, and within this sandbox's own hard limits (TOOLCHAIN.md).
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
        "-v",
        "/sys/fs/bpf:/sys/fs/bpf",
        "-v",
        &volume,
        IMAGE,
        "--bpffs-root",
        &pins.to_string_lossy(),
        "--config",
        &config.to_string_lossy(),
        "run",
    ])?;
    wait_logs(&name, "edge-agent ready", 1)?;
    wait_eligible(&lab, 1, true, Duration::from_secs(10))?;
    let (ok, failed) = churn(&lab, 50, 1)?;
    assert_eq!(
        (ok, failed),
        (50, 0),
        "clients' flows pass through the containerised agent"
    );

    let idle = spawn_echo_load(
        &lab,
        env!("CARGO_BIN_EXE_echo-load").as_ref(),
        50,
        4096,
        15,
        true,
    )?;
    idle.wait_for_output("holding 50", Duration::from_secs(30))?;
    podman(&["stop", "-t", "10", &name])?;
    podman(&["start", &name])?;
    wait_logs(&name, "edge-agent ready", 2)?;
    wait_logs(&name, "adopted the pinned link", 1)?;
    let status = idle.wait_exit(Duration::from_secs(60))?;
    let summary = idle.output_so_far();
    assert!(
        status.success() && summary.contains("\"rechecked\":50"),
        "all 50 connections echo after the container's restart: {summary}"
    );
    drop(container);
    tear_down(lab);
    Ok(())
}
