//! The full-NAT data plane end to end: a thousand concurrent IPv4 and IPv6 connections to the
//! VIPs, echoed by three backends behind the overlay, every byte checked; each flow lands on the
//! backend the Maglev table predicts for its 5-tuple; backends see the POP's overlay address.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use edge_agent::maglev;
use edge_common::{hash::flow_hash, ipv4_mapped};
use edge_lab::{bpffs_pin_dir, find_leftovers, Lab, LabProcess, Topology};

use super::common::{agent_bin, TestResult};

pub const BACKENDS: [&str; 3] = ["fd00:ee:1:1::2", "fd00:ee:1:2::2", "fd00:ee:1:3::2"];
pub const VIP4: &str = "198.18.0.10";
pub const VIP6: &str = "2001:db8:ff::10";
pub const OVERLAY: &str = "fd00:ee::1";
pub const TABLE_SIZE: u32 = 4099;

/// client -- pop (XDP on eth0, TC on ovl0) -- hub -- be1, be2, be3 (IPv6 only).
pub fn topology(label: &str) -> Topology {
    let mut t = Topology::new(label)
        .ns("client")
        .ns("pop")
        .ns("hub")
        .veth(("client", "eth0"), ("pop", "eth0"))
        .veth(("pop", "ovl0"), ("hub", "up"))
        // What a wire delivers: full checksums into the XDP program.
        .tx_checksum_off("client", "eth0")
        .sysctl("pop", "net.ipv4.ip_forward", "1")
        .sysctl("pop", "net.ipv6.conf.all.forwarding", "1")
        .sysctl("hub", "net.ipv6.conf.all.forwarding", "1")
        .addr("client", "eth0", "10.0.1.2/24")
        .addr("client", "eth0", "2001:db8:1::2/64")
        .addr("pop", "eth0", "10.0.1.1/24")
        .addr("pop", "eth0", "2001:db8:1::1/64")
        .addr("pop", "lo", &format!("{VIP4}/32"))
        .addr("pop", "lo", &format!("{VIP6}/128"))
        .addr("pop", "ovl0", &format!("{OVERLAY}/64"))
        .addr("hub", "up", "fd00:ee::fe/64")
        .route("client", "default", "10.0.1.1")
        .route("client", "default", "2001:db8:1::1")
        .route("pop", "fd00:ee:1::/48", "fd00:ee::fe");
    for (i, addr) in BACKENDS.iter().enumerate() {
        let n = i + 1;
        let (ns, port) = (format!("be{n}"), format!("b{n}"));
        t = t
            .ns(&ns)
            .veth(("hub", &port), (&ns, "eth0"))
            .addr("hub", &port, &format!("fd00:ee:1:{n}::1/64"))
            .addr(&ns, "eth0", &format!("{addr}/64"))
            .route(&ns, "default", &format!("fd00:ee:1:{n}::1"));
    }
    t
}

/// The agent's configuration for this lab, with `extra` appended.
pub fn agent_config(extra: &str) -> String {
    let backends: Vec<String> = BACKENDS
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{{ name = \"be{}\", addr = \"{a}\", port = 7007 }}", i + 1))
        .collect();
    let backends = backends.join(", ");
    format!(
        r#"iface = "eth0"
stats_log_secs = 0

[overlay]
iface = "ovl0"
addr = "{OVERLAY}"

[flows]
max_entries = 65536

[maglev]
table_size = {TABLE_SIZE}
max_services = 8

[[services]]
name = "echo4"
vip = "{VIP4}"
port = 7
backends = [{backends}]

[[services]]
name = "echo6"
vip = "{VIP6}"
port = 7
backends = [{backends}]
{extra}"#
    )
}

pub fn start_backends(lab: &Lab) -> Result<Vec<LabProcess>, Box<dyn std::error::Error>> {
    let mut servers = Vec::new();
    for n in 1..=BACKENDS.len() {
        let server = lab.ns(&format!("be{n}")).spawn(
            "echo-server",
            &[env!("CARGO_BIN_EXE_echo-server"), "[::]:7007"],
            &[],
        )?;
        server.wait_for_output("echo-server ready", Duration::from_secs(10))?;
        servers.push(server);
    }
    Ok(servers)
}

pub fn start_agent(
    lab: &Lab,
    config: &str,
    extra_args: &[&str],
) -> Result<LabProcess, Box<dyn std::error::Error>> {
    let path = lab.log_dir().join("agent.toml");
    std::fs::write(&path, config)?;
    let agent = agent_bin();
    let pins = bpffs_pin_dir(lab.ns("pop").name());
    let (agent, pins, path) = (
        agent.to_string_lossy(),
        pins.to_string_lossy(),
        path.to_string_lossy(),
    );
    let mut argv = vec![&*agent, "--bpffs-root", &*pins, "--config", &*path, "run"];
    argv.extend_from_slice(extra_args);
    let process = lab.ns("pop").spawn("agent", &argv, &[])?;
    process.wait_for_output("edge-agent ready", Duration::from_secs(30))?;
    Ok(process)
}

/// The backend the kernel must pick for a connection, from the same table the agent builds.
fn predicted_backend(table: &[u32], client: SocketAddr, vip: SocketAddr) -> &'static str {
    let mapped = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => ipv4_mapped(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    };
    let hash = flow_hash(
        &mapped(client.ip()),
        &mapped(vip.ip()),
        client.port().to_be(),
        vip.port().to_be(),
    );
    BACKENDS[table[(hash % TABLE_SIZE) as usize] as usize]
}

#[test]
fn a_thousand_connections_are_echoed_intact_through_the_vips() -> TestResult {
    let lab = topology("nat").up()?;
    let run = lab.run_id().to_string();
    let _servers = start_backends(&lab)?;
    let agent = start_agent(&lab, &agent_config(""), &["--reset"])?;

    let load = lab.ns("client").spawn(
        "echo-load",
        &[
            env!("CARGO_BIN_EXE_echo-load"),
            "--target",
            &format!("{VIP4}:7"),
            "--target",
            &format!("[{VIP6}]:7"),
            "--connections",
            "1000",
            "--max-bytes",
            "1048576",
            "--seed",
            "7",
            "--hold-secs",
            "5",
        ],
        &[],
    )?;
    load.wait_for_output("holding", Duration::from_secs(180))
        .map_err(|e| format!("{e}\nagent:\n{}", agent.output_so_far()))?;

    // Every connection is open now: look at them from both ends.
    let mut peers_seen = 0;
    for n in 1..=BACKENDS.len() {
        let out = lab.ns(&format!("be{n}")).exec_ok(&[
            "ss",
            "-Htn",
            "state",
            "established",
            "( sport = :7007 )",
        ])?;
        for line in out.stdout.lines() {
            let peer = line.split_whitespace().last().unwrap_or_default();
            assert!(
                peer.starts_with(&format!("[{OVERLAY}]:")),
                "be{n} sees a connection from {peer}, not from the POP's overlay address"
            );
            peers_seen += 1;
        }
    }
    assert_eq!(
        peers_seen, 1000,
        "the backends together hold every connection"
    );

    let flows = std::process::Command::new(agent_bin())
        .arg("--bpffs-root")
        .arg(bpffs_pin_dir(lab.ns("pop").name()))
        .args(["flows", "--output", "json", "--limit", "5000"])
        .output()?;
    assert!(flows.status.success(), "edge-agent flows: {flows:?}");
    let doc: serde_json::Value = serde_json::from_slice(&flows.stdout)?;
    let list = doc["flows"].as_array().ok_or("no flows array")?;
    assert_eq!(list.len(), 1000, "one flow per connection");

    let names = ["be1", "be2", "be3"];
    let candidates: Vec<maglev::Candidate<'_>> = names
        .iter()
        .map(|key| maglev::Candidate { key, weight: 1 })
        .collect();
    let table = maglev::build(&candidates, TABLE_SIZE)?;
    let mut observed: BTreeMap<String, u64> = BTreeMap::new();
    let mut predicted: BTreeMap<String, u64> = BTreeMap::new();
    for flow in list {
        let client: SocketAddr = flow["client"].as_str().ok_or("client")?.parse()?;
        let vip: SocketAddr = flow["vip"].as_str().ok_or("vip")?.parse()?;
        let backend: SocketAddr = flow["backend"].as_str().ok_or("backend")?.parse()?;
        let expected = predicted_backend(&table, client, vip);
        assert_eq!(
            backend.ip().to_string(),
            expected,
            "flow {client} -> {vip} went to {backend}, the Maglev table says {expected}"
        );
        *observed.entry(backend.ip().to_string()).or_default() += 1;
        *predicted.entry(expected.to_owned()).or_default() += 1;
    }
    let shares = maglev::shares(&table, names.len());
    eprintln!(
        "table shares {shares:?}; predicted per backend {predicted:?}; observed {observed:?}"
    );
    for (backend, count) in &predicted {
        let seen = observed.get(backend).copied().unwrap_or(0);
        assert!(
            seen.abs_diff(*count) * 10 <= *count,
            "{backend}: {seen} flows, Maglev predicts {count}"
        );
    }

    load.wait_exit(Duration::from_secs(60))?;
    let output = load.output_so_far();
    assert!(
        output.contains("\"ok\":1000") && output.contains("\"failed\":0"),
        "every connection echoed intact: {output}"
    );
    drop(agent);
    drop(lab);
    let left = find_leftovers(Some(&run));
    assert!(left.is_empty(), "run {run} left objects behind:\n{left}");
    Ok(())
}
