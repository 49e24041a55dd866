//! Helpers shared by the end-to-end tests: where the binaries are, and reading the agent's
//! counters the way an operator does (`edge-agent status --output json`).

use std::{
    path::{Path, PathBuf},
    process::Command,
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

/// Packets counted for (ip, proto, verdict) in the pinned maps under `pins`.
pub fn counted(pins: &Path, ip: &str, proto: &str, verdict: &str) -> Result<u64, String> {
    let out = Command::new(agent_bin())
        .arg("--bpffs-root")
        .arg(pins)
        .args(["status", "--output", "json"])
        .output()
        .map_err(|e| format!("running edge-agent status: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "edge-agent status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("status JSON: {e}: {}", String::from_utf8_lossy(&out.stdout)))?;
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
/// socket, process, bpffs pin).
pub fn tear_down(lab: edge_lab::Lab) {
    let run = lab.run_id().to_string();
    drop(lab);
    let left = edge_lab::find_leftovers(Some(&run));
    assert!(left.is_empty(), "run {run} left objects behind:\n{left}");
}

/// Starts the `echo-server` of this package in backends `be1`..`be<n>` of a POP lab.
pub fn echo_backends(lab: &edge_lab::Lab, n: usize) -> edge_lab::Result<Vec<edge_lab::LabProcess>> {
    edge_lab::pop_lab::start_backends(lab, n, env!("CARGO_BIN_EXE_echo-server").as_ref())
}
