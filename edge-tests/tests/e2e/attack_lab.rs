//! A POP under the attacks of someone without credentials (issue 18): a spoofed SYN flood
//! against a flow table of 4,096 entries while connections are held, and blind RSTs at idle
//! connections. Nothing established may be reset, new clients must get through, and the
//! backends' connection counts must be the real connections'.

use std::{path::Path, time::Duration};

use edge_tests::{
    bpffs_pin_dir,
    pop_lab::{
        agent_config, spawn_echo_load, spawn_echo_load_until, start_agent, topology, CLIENT4, VIP4,
    },
    AgentConfig, Lab, LabProcess,
};

use super::common::{agent_bin, agent_json, echo_backends, summary, tear_down, TestResult};

const BACKENDS: usize = 2;
/// Where the flood's sources come from: routed back to the client namespace, which drops the
/// backends' SYN-ACKs (no such local address), as the Internet drops answers to spoofed hosts.
const SPOOFED: &str = "100.64.0.0/10";
const CLOSED_TIMEOUT_SECS: u64 = 2;

/// A small flow table, fast expiry, and connection limits a flood of counted SYNs would hit.
fn config() -> AgentConfig {
    let mut config = agent_config(BACKENDS)
        .max_flows(4096)
        .closed_timeout_secs(CLOSED_TIMEOUT_SECS)
        .sweep_interval_secs(1);
    for backend in config.services.iter_mut().flat_map(|s| &mut s.backends) {
        backend.soft_limit = Some(500);
        backend.hard_limit = Some(1000);
    }
    config
}

fn lab(label: &str) -> Result<Lab, Box<dyn std::error::Error>> {
    Ok(topology(label, BACKENDS)
        .route("pop", SPOOFED, CLIENT4)
        .up()?)
}

fn forge(lab: &Lab, args: &[&str]) -> Result<LabProcess, Box<dyn std::error::Error>> {
    let bin = env!("CARGO_BIN_EXE_tcp-forge");
    let mut argv = vec![bin];
    argv.extend_from_slice(args);
    Ok(lab.ns("client").spawn("tcp-forge", &argv, &[])?)
}

/// (eligible, live flows) of every backend, as `edge-agent status` reports them.
fn backends(pins: &Path) -> Result<Vec<(bool, u64)>, Box<dyn std::error::Error>> {
    let doc = agent_json(pins, &["status"])?;
    let rows = doc["backends"]
        .as_array()
        .ok_or_else(|| format!("no backends in {doc}"))?;
    Ok(rows
        .iter()
        .map(|b| {
            (
                b["eligible"].as_bool().unwrap_or(false),
                b["active_flows"].as_u64().unwrap_or(0),
            )
        })
        .collect())
}

#[test]
fn a_spoofed_syn_flood_resets_nothing_and_locks_no_one_out() -> TestResult {
    let lab = lab("flood")?;
    let _servers = echo_backends(&lab, BACKENDS)?;
    let agent = start_agent(&lab, &agent_bin(), &config().to_toml()?, &["--reset"])?;
    let pins = bpffs_pin_dir(lab.ns("pop").name());
    let echo_load = env!("CARGO_BIN_EXE_echo-load").as_ref();
    let go = lab.log_dir().join("go");

    let idle = spawn_echo_load_until(&lab, echo_load, 200, 4096, 300, Some(&go), true)?;
    idle.wait_for_output("holding 200", Duration::from_secs(60))?;
    let active = {
        let (bin, v4) = (echo_load.to_string_lossy(), format!("{VIP4}:7"));
        let go = go.to_string_lossy();
        lab.ns("client").spawn(
            "echo-load-active",
            &[
                &bin,
                "--target",
                &v4,
                "--connections",
                "50",
                "--max-bytes",
                "4096",
                "--seed",
                "7",
                "--hold-secs",
                "300",
                "--go-file",
                &go,
                "--active-ms",
                "50",
                "--recheck",
            ],
            &[],
        )?
    };
    active.wait_for_output("holding 50", Duration::from_secs(60))?;
    let held = backends(&pins)?;
    assert_eq!(
        held.iter().map(|b| b.1).sum::<u64>(),
        250,
        "live flows before the flood: {held:?}"
    );

    let target = format!("{VIP4}:7");
    let flood = forge(
        &lab,
        &[
            "syn",
            "--target",
            &target,
            "--count",
            "300000",
            "--sources",
            SPOOFED,
        ],
    )?;
    flood.wait_for_output("flooding", Duration::from_secs(10))?;
    let during = spawn_echo_load(&lab, echo_load, 100, 2048, 0, false)?;
    let during = summary(&during, "100 new connections during the flood")?;
    let flood_status = flood.wait_exit(Duration::from_secs(120))?;
    let flood_report = flood.output_so_far();
    assert!(flood_status.success(), "the flood: {flood_report}");
    eprintln!("flood: {}", flood_report.trim());
    assert_eq!(during["ok"], 100, "during the flood: {during}");
    let after = spawn_echo_load(&lab, echo_load, 100, 2048, 0, false)?;
    let after = summary(&after, "100 new connections after the flood")?;
    assert_eq!(after["ok"], 100, "after the flood: {after}");

    // Past the closed timeout and a sweep: what a wrongly closed flow would not survive.
    std::thread::sleep(Duration::from_secs(CLOSED_TIMEOUT_SECS + 2));
    let status = agent_json(&pins, &["status"])?;
    let rows = backends(&pins)?;
    assert!(
        rows.iter().all(|b| b.0),
        "every backend stays eligible: {rows:?}"
    );
    assert_eq!(
        rows.iter().map(|b| b.1).sum::<u64>(),
        250,
        "live flows are the 250 held connections, not the flood's: {rows:?}"
    );
    std::fs::write(&go, b"")?;
    let idle = summary(&idle, "200 idle connections")?;
    assert_eq!(
        idle["rechecked"], 200,
        "idle connections after the flood: {idle}"
    );
    let active = summary(&active, "50 active connections")?;
    assert_eq!(
        active["rechecked"], 50,
        "active connections after the flood: {active}"
    );
    assert!(
        active["active_rounds"].as_u64().unwrap_or(0) > 0,
        "the active connections echoed during the hold: {active}"
    );
    eprintln!("after the flood: drops and passes {}", status["drops"]);
    assert_eq!(
        status["drops"]["port_exhausted"].as_u64(),
        Some(0),
        "half-open flows give way to new ones: {}",
        status["drops"]
    );
    drop(agent);
    tear_down(lab);
    Ok(())
}

#[test]
fn a_blind_rst_ends_no_connection_and_a_real_one_does() -> TestResult {
    let lab = lab("blindrst")?;
    let _servers = echo_backends(&lab, BACKENDS)?;
    let agent = start_agent(&lab, &agent_bin(), &config().to_toml()?, &["--reset"])?;
    let pins = bpffs_pin_dir(lab.ns("pop").name());
    let echo_load = env!("CARGO_BIN_EXE_echo-load");
    let go = lab.log_dir().join("go");
    let held = {
        let v4 = format!("{VIP4}:7");
        let go = go.to_string_lossy();
        lab.ns("client").spawn(
            "echo-load",
            &[
                echo_load,
                "--target",
                &v4,
                "--connections",
                "20",
                "--max-bytes",
                "4096",
                "--hold-secs",
                "120",
                "--go-file",
                &go,
                "--recheck",
            ],
            &[],
        )?
    };
    held.wait_for_output("holding 20", Duration::from_secs(60))?;
    let flows = agent_json(&pins, &["flows"])?;
    let ports: Vec<String> = flows["flows"]
        .as_array()
        .ok_or_else(|| format!("no flows in {flows}"))?
        .iter()
        .filter_map(|f| f["client"].as_str())
        .filter_map(|c| c.strip_prefix(&format!("{CLIENT4}:")))
        .map(str::to_owned)
        .collect();
    assert_eq!(ports.len(), 20, "the held connections' ports: {flows}");
    let target = format!("{VIP4}:7");
    let rst = forge(
        &lab,
        &[
            "rst",
            "--target",
            &target,
            "--client",
            CLIENT4,
            "--ports",
            &ports.join(","),
        ],
    )?;
    let status = rst.wait_exit(Duration::from_secs(10))?;
    assert!(status.success(), "{}", rst.output_so_far());
    std::thread::sleep(Duration::from_secs(CLOSED_TIMEOUT_SECS + 2));
    let doc = agent_json(&pins, &["status"])?;
    assert_eq!(
        doc["drops"]["out_of_window"].as_u64(),
        Some(20),
        "each blind RST counted and not recorded: {}",
        doc["drops"]
    );
    std::fs::write(&go, b"")?;
    let held = summary(&held, "20 idle connections")?;
    assert_eq!(held["rechecked"], 20, "after 20 blind RSTs: {held}");

    // A real RST (the client aborts: SO_LINGER 0) closes its flow.
    let before = agent_json(&pins, &["status"])?["drops"]["out_of_window"].as_u64();
    let abort = lab.ns("client").exec_ok(&[
        "python3",
        "-c",
        &format!(
            "import socket,struct\n\
             s=socket.create_connection(('{VIP4}',7))\n\
             s.sendall(b'x'); assert s.recv(1)==b'x'\n\
             print(s.getsockname()[1])\n\
             s.setsockopt(socket.SOL_SOCKET,socket.SO_LINGER,struct.pack('ii',1,0))\n\
             s.close()"
        ),
    ])?;
    let port = abort.stdout.trim().to_owned();
    std::thread::sleep(Duration::from_millis(300));
    let flows = agent_json(&pins, &["flows"])?;
    let state = flows["flows"]
        .as_array()
        .and_then(|all| {
            all.iter()
                .find(|f| f["client"].as_str() == Some(&format!("{CLIENT4}:{port}")))
        })
        .map(|f| f["state"].clone());
    assert_eq!(
        state,
        Some(serde_json::json!("closed")),
        "the aborted connection from port {port}: {flows}"
    );
    let after = agent_json(&pins, &["status"])?["drops"]["out_of_window"].as_u64();
    assert_eq!(before, after, "the real RST was in the window");
    drop(agent);
    tear_down(lab);
    Ok(())
}

/// Every flow entry of 100 live connections deleted from the pinned table (what `bpftool map
/// delete` does, or a table lost to `--reset`): each connection's next packet remakes its flow
/// on the same backend and source port, and it carries on.
#[test]
fn connections_whose_flows_are_deleted_carry_on_on_the_same_backend() -> TestResult {
    use aya::maps::{HashMap, Map, MapData};
    use edge_common::{names, FlowKey, FlowValue};

    let lab = lab("lostflows")?;
    let _servers = echo_backends(&lab, BACKENDS)?;
    // Closed flows stay listed long enough to compare the placement after the load ends.
    let config = config().closed_timeout_secs(60).to_toml()?;
    let agent = start_agent(&lab, &agent_bin(), &config, &["--reset"])?;
    let pins = bpffs_pin_dir(lab.ns("pop").name());
    let echo_load = env!("CARGO_BIN_EXE_echo-load").as_ref();
    let go = lab.log_dir().join("go");
    let held = spawn_echo_load_until(&lab, echo_load, 100, 4096, 120, Some(&go), true)?;
    held.wait_for_output("holding 100", Duration::from_secs(60))?;
    let placement = |doc: &serde_json::Value| -> Vec<(String, String)> {
        let mut all: Vec<(String, String)> = doc["flows"]
            .as_array()
            .map(|flows| {
                flows
                    .iter()
                    .map(|f| (f["client"].to_string(), f["backend"].to_string()))
                    .collect()
            })
            .unwrap_or_default();
        all.sort();
        all
    };
    let before = placement(&agent_json(&pins, &["flows", "--limit", "1000"])?);
    assert_eq!(before.len(), 100, "the held connections' flows");

    let table = pins.join("maps").join(names::FLOWS);
    let data = MapData::from_pin(&table)?;
    let mut flows: HashMap<MapData, FlowKey, FlowValue> = HashMap::try_from(Map::LruHashMap(data))?;
    let keys: Vec<FlowKey> = flows.keys().collect::<Result<_, _>>()?;
    assert_eq!(keys.len(), 200, "both halves of 100 connections");
    for key in &keys {
        flows.remove(key)?;
    }
    assert_eq!(flows.keys().count(), 0, "the flow table is empty");

    std::fs::write(&go, b"")?;
    let held = summary(&held, "100 connections whose flows were deleted")?;
    assert_eq!(
        held["rechecked"], 100,
        "after their flows were deleted: {held}"
    );
    // Each connection's flow is remade once, and once more for each candidate port a backend
    // answered as not its own (a connection whose SYN found its first ports held walks them
    // again): every remake past the hundredth is matched by such an answer.
    let doc = agent_json(&pins, &["status"])?;
    let (recovered, missed) = (
        doc["drops"]["recovered"].as_u64().unwrap_or(0),
        doc["drops"]["recovery_missed"].as_u64().unwrap_or(0),
    );
    assert!(
        recovered >= 100 && recovered - 100 <= missed,
        "each connection's flow remade once, plus once per port answered as another's: {}",
        doc["drops"]
    );
    // Between the recheck's echoes the connections were established again.
    let after = placement(&agent_json(&pins, &["flows", "--limit", "1000"])?);
    assert_eq!(after, before, "every connection on its backend as before");
    drop(agent);
    tear_down(lab);
    Ok(())
}
