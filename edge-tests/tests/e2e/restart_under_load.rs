//! An agent SIGKILLed and restarted in the middle of a bulk stream through the VIP and 200 idle
//! connections: the pinned maps and links keep every flow, so nothing is reset, the stream
//! completes and the idle connections still echo afterwards.

use std::time::Duration;

use edge_tests::{
    agent_config::Service,
    bpffs_pin_dir,
    pop_lab::{agent_config, backend_addr, spawn_echo_load, start_agent, topology, VIP4},
};

use super::common::{agent_bin, agent_json, echo_backends, tear_down, TestResult};

const BACKENDS: usize = 3;

#[test]
fn sigkill_and_restart_under_load_resets_nothing() -> TestResult {
    let lab = topology("restart", BACKENDS).up()?;
    let _servers = echo_backends(&lab, BACKENDS)?;
    // iperf3's control and data connections must meet the same server: one backend.
    let config = agent_config(BACKENDS)
        .service(Service::new("iperf", VIP4, 5201).backend("be1", &backend_addr(1), 5201))
        .to_toml()?;
    let iperf_server = lab.ns("be1").spawn(
        "iperf3-server",
        &["iperf3", "-s", "-p", "5201", "--forceflush"],
        &[],
    )?;
    iperf_server.wait_for_output("Server listening", Duration::from_secs(10))?;
    let first = start_agent(&lab, &agent_bin(), &config, &["--reset"])?;

    let echo_load = env!("CARGO_BIN_EXE_echo-load").as_ref();
    let idle = spawn_echo_load(&lab, echo_load, 200, 8192, 36, true)?;
    idle.wait_for_output("holding 200", Duration::from_secs(60))?;
    let stream = lab.ns("client").spawn(
        "iperf3",
        &["iperf3", "-c", VIP4, "-p", "5201", "-t", "30", "-J"],
        &[],
    )?;
    std::thread::sleep(Duration::from_secs(8));
    first.kill()?;
    first.wait_exit(Duration::from_secs(5))?;
    std::thread::sleep(Duration::from_secs(1));
    let second = start_agent(&lab, &agent_bin(), &config, &[])?;
    // Its log (stderr) is read on its own thread: it may trail the ready line (stdout).
    if second
        .wait_for_output("adopted the pinned link", Duration::from_secs(5))
        .is_err()
    {
        panic!(
            "the new agent adopts the running data plane:\n{}",
            second.output_so_far()
        );
    }

    let status = stream.wait_exit(Duration::from_secs(60))?;
    let report = stream.output_so_far();
    assert!(
        status.success(),
        "iperf3 failed across the restart:\n{report}"
    );
    let json_start = report.find('{').ok_or("no iperf3 JSON")?;
    let doc: serde_json::Value = serde_json::from_str(&report[json_start..])?;
    assert!(
        doc.get("error").is_none(),
        "iperf3 reported an error: {}",
        doc["error"]
    );
    let sent = doc["end"]["sum_sent"]["bytes"].as_u64().unwrap_or(0);
    let seconds = doc["end"]["sum_sent"]["seconds"].as_f64().unwrap_or(0.0);
    assert!(
        seconds >= 29.0 && sent > 0,
        "the stream ran its 30 s: {seconds} s, {sent} bytes"
    );

    let status = idle.wait_exit(Duration::from_secs(60))?;
    let summary = idle.output_so_far();
    assert!(
        status.success() && summary.contains("\"rechecked\":200"),
        "all 200 idle connections must echo after the restart: {summary}"
    );

    let doc = agent_json(&bpffs_pin_dir(lab.ns("pop").name()), &["status"])?;
    assert_eq!(
        doc["drops"]["no_flow"].as_u64(),
        Some(0),
        "no packet may miss its flow across the restart: {}",
        doc["drops"]
    );
    eprintln!(
        "iperf3 through the restart: {:.2} Gbit/s over {seconds:.1} s",
        sent as f64 * 8.0 / seconds / 1e9
    );
    drop(second);
    tear_down(lab);
    Ok(())
}
