//! Helpers shared by the end-to-end tests: where the binaries are, and reading the agent's
//! counters the way an operator does (`edge-agent status --output json`).

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use edge_tests::{
    bpffs_pin_dir,
    pop_lab::{backend_addr, BACKEND_PORT, VIP4},
    Lab,
};

pub type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A binary `cargo xtask test` built and named in `var`. Missing means the test was not started
/// by xtask: fail loudly rather than skip.
pub fn bin(var: &str) -> PathBuf {
    match std::env::var_os(var) {
        Some(path) if Path::new(&path).exists() => PathBuf::from(path),
        other => panic!(
            "{var} is {other:?}: the end-to-end tests need the binaries `cargo xtask test` builds; run them through it"
        ),
    }
}

pub fn agent_bin() -> PathBuf {
    bin("EDGE_AGENT_BIN")
}

/// `edge-agent --bpffs-root <pins> <args> --output json`, parsed.
pub fn agent_json(pins: &Path, args: &[&str]) -> Result<serde_json::Value, String> {
    let out = Command::new(agent_bin())
        .arg("--bpffs-root")
        .arg(pins)
        .args(args)
        .args(["--output", "json"])
        .output()
        .map_err(|e| format!("running edge-agent {args:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "edge-agent {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "edge-agent {args:?} JSON: {e}: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Packets counted for (ip, proto, verdict) in the pinned maps under `pins`.
pub fn counted(pins: &Path, ip: &str, proto: &str, verdict: &str) -> Result<u64, String> {
    let doc = agent_json(pins, &["status"])?;
    let classes = doc["counters"]
        .as_array()
        .ok_or_else(|| format!("no counters in {doc}"))?;
    Ok(classes
        .iter()
        .filter(|c| c["ip"] == ip && c["proto"] == proto && c["verdict"] == verdict)
        .filter_map(|c| c["packets"].as_u64())
        .sum())
}

/// Removes `lab` and asserts its run left nothing behind (namespace, interface, WireGuard
/// socket, process, bpffs pin, agent status file).
pub fn tear_down(lab: edge_tests::Lab) {
    let run = lab.run_id().to_string();
    drop(lab);
    let left = edge_tests::find_leftovers(Some(&run));
    assert!(left.is_empty(), "run {run} left objects behind:\n{left}");
}

/// Starts the `echo-server` of this package in backends `be1`..`be<n>` of a POP lab.
pub fn echo_backends(
    lab: &edge_tests::Lab,
    n: usize,
) -> edge_tests::Result<Vec<edge_tests::LabProcess>> {
    edge_tests::pop_lab::start_backends(lab, n, env!("CARGO_BIN_EXE_echo-server").as_ref())
}

type Error = Box<dyn std::error::Error>;

/// The kernel's view of backend `n`: (eligible, new flows so far); (false, 0) if the kernel
/// has no such backend.
pub fn kernel_backend(lab: &Lab, n: usize) -> Result<(bool, u64), Error> {
    let out = Command::new(agent_bin())
        .arg("--bpffs-root")
        .arg(bpffs_pin_dir(lab.ns("pop").name()))
        .args(["status", "--output", "json"])
        .output()?;
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let needle = format!("[{}]:{BACKEND_PORT}", backend_addr(n));
    let Some(rows) = doc["backends"].as_array() else {
        return Err(format!("no backends in {doc}").into());
    };
    // No row yet (a backend not registered yet, or removed): not eligible, no flows.
    Ok(rows
        .iter()
        .find(|b| b["addr"].as_str() == Some(&needle))
        .map_or((false, 0), |row| {
            (
                row["eligible"].as_bool().unwrap_or(false),
                row["new_flows"].as_u64().unwrap_or(0),
            )
        }))
}

/// Polls every 10 ms until backend `n`'s eligibility is `eligible`; returns how long it took.
pub fn wait_eligible(
    lab: &Lab,
    n: usize,
    eligible: bool,
    limit: Duration,
) -> Result<Duration, Error> {
    let started = Instant::now();
    loop {
        if kernel_backend(lab, n)?.0 == eligible {
            return Ok(started.elapsed());
        }
        if started.elapsed() > limit {
            return Err(format!("be{n} not eligible={eligible} after {limit:?}").into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `tcp-churn` against the VIP from the client; returns (ok, failed).
pub fn churn(lab: &Lab, per_sec: u32, secs: u32) -> Result<(u64, u64), Error> {
    let out = lab.ns("client").exec_ok(&[
        env!("CARGO_BIN_EXE_tcp-churn"),
        &format!("{VIP4}:7"),
        &per_sec.to_string(),
        &secs.to_string(),
    ])?;
    let doc: serde_json::Value = serde_json::from_str(out.stdout.trim())?;
    Ok((
        doc["ok"].as_u64().unwrap_or(0),
        doc["failed"].as_u64().unwrap_or(u64::MAX),
    ))
}

/// A backend row of a lab's state: weight 1, limits far from the lab's loads, enabled, the
/// service's check, no lease.
pub fn lab_backend(
    id: &str,
    service: &str,
    region: &str,
    country: &str,
    addr: edge_agent::model::BackendAddr,
) -> Result<edge_agent::model::Backend, Error> {
    Ok(edge_agent::model::Backend {
        id: id.into(),
        service: service.into(),
        region: region.parse()?,
        country: country.parse()?,
        addr,
        port: BACKEND_PORT,
        weight: 1,
        soft_limit: 1000,
        hard_limit: 10_000,
        draining: false,
        enabled: true,
        check: None,
        lease: None,
    })
}

/// A fresh state database in the lab's log directory with one service, `web` on `vip`:7 (the
/// echo port of the lab clients): what most labs start their state from.
pub fn web_state(lab: &Lab, vip: &str) -> Result<(edge_agent::state::SqliteState, PathBuf), Error> {
    let db = lab.log_dir().join("routing.db");
    let state = edge_agent::state::SqliteState::open(&db)?;
    state.upsert_service(&edge_agent::model::Service {
        id: "web".into(),
        vip: vip.parse::<std::net::IpAddr>()?,
        port: 7,
        check: None,
    })?;
    Ok((state, db))
}

/// Waits for `load` (a load generator that ends with a JSON summary line) to exit and returns
/// that line parsed; an error with the line if it failed, or with its output if it printed none.
pub fn summary(load: &edge_tests::LabProcess, what: &str) -> Result<serde_json::Value, Error> {
    let status = load.wait_exit(Duration::from_secs(120))?;
    let out = load.output_so_far();
    let line = out
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .ok_or_else(|| format!("{what}: no summary in {out}"))?;
    let doc: serde_json::Value = serde_json::from_str(line)?;
    if !status.success() {
        return Err(format!("{what} failed: {line}").into());
    }
    Ok(doc)
}
