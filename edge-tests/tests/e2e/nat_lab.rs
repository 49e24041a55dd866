//! The full-NAT data plane end to end: a thousand concurrent IPv4 and IPv6 connections to the
//! VIPs, echoed by three backends behind the overlay, every byte checked; each flow lands on the
//! backend the Maglev table predicts for its 5-tuple; backends see the POP's overlay address.
//! Also with the POP's interfaces coalescing what they receive (GRO), as a NIC's driver does by
//! default: the TC program then translates segments of up to 64 KB, not one MTU each.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use edge_agent::balancing::maglev;
use edge_common::{hash::flow_hash, ipv4_mapped};
use edge_tests::{
    agent_config::Health,
    bpffs_pin_dir,
    pop_lab::{
        agent_config, backend_addr, spawn_echo_load, start_agent, topology, OVERLAY, TABLE_SIZE,
    },
};

use super::common::{agent_bin, agent_json, echo_backends, tear_down, TestResult};

const BACKENDS: usize = 3;

/// The backend the kernel must pick for a connection, from the same table the agent builds.
fn predicted_backend(table: &[u32], client: SocketAddr, vip: SocketAddr) -> String {
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
    backend_addr(table[(hash % TABLE_SIZE) as usize] as usize + 1)
}

/// With `forward_hook = "auto"`, which picks TC on these veth interfaces.
#[test]
fn a_thousand_connections_are_echoed_intact_through_the_vips() -> TestResult {
    thousand_connections("nat", &[], "tc", Receive::Segments)
}

/// The same through the XDP hook.
#[test]
fn a_thousand_connections_are_echoed_intact_through_the_xdp_hook() -> TestResult {
    thousand_connections("natx", &["--forward-hook", "xdp"], "xdp", Receive::Segments)
}

/// The same through TC with the POP's interfaces coalescing, both ways: NAT46 (which lowers a
/// coalesced packet's segment size by the 20 bytes the IPv6 header adds) and the checksums on
/// packets segmented again further on. Such a packet is longer than the overlay's MTU; its
/// segments are not, and it goes to the next hop whole, as the kernel's forwarding would send it.
#[test]
fn a_thousand_connections_are_echoed_intact_when_the_pop_coalesces_what_it_receives() -> TestResult
{
    thousand_connections("natg", &[], "tc", Receive::Coalesced)
}

/// What the POP's interfaces hand the data plane.
#[derive(PartialEq)]
enum Receive {
    /// One packet per wire segment: XDP's view, and TC's without GRO.
    Segments,
    /// Coalesced by GRO.
    Coalesced,
}

/// The largest frame one wire segment makes on the lab's 1500-byte links.
const WIRE_FRAME: u64 = 1514;

fn thousand_connections(name: &str, args: &[&str], hook: &str, receive: Receive) -> TestResult {
    let mut topology = topology(name, BACKENDS);
    if receive == Receive::Coalesced {
        topology = topology.gro_on("pop", "eth0").gro_on("pop", "ovl0");
    }
    let lab = topology.up()?;
    let _servers = echo_backends(&lab, BACKENDS)?;
    let mut argv = vec!["--reset"];
    argv.extend_from_slice(args);
    // No active checks: the split is predicted from equal weights, and health checks weigh
    // backends by their probes' round trip (halving one whose probe took twice as long, as one
    // can on a loaded CI machine), which would change the table while the connections open.
    let config = agent_config(BACKENDS).health(Health::off()).to_toml()?;
    let agent = start_agent(&lab, &agent_bin(), &config, &argv)?;
    let doc = agent_json(&bpffs_pin_dir(lab.ns("pop").name()), &["status"])?;
    assert_eq!(
        doc["attached"][0]["hook"], hook,
        "the translation's hook: {doc}"
    );

    // Seeded by echo-load's default; payloads of random sizes up to 1 MiB.
    let echo_load = env!("CARGO_BIN_EXE_echo-load").as_ref();
    let load = spawn_echo_load(&lab, echo_load, 1000, 1 << 20, 5, false)?;
    load.wait_for_output("holding", Duration::from_secs(180))
        .map_err(|e| format!("{e}\nagent:\n{}", agent.output_so_far()))?;

    // Every connection is open now: look at them from both ends.
    let mut peers_seen = 0;
    for n in 1..=BACKENDS {
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

    let doc = agent_json(
        &bpffs_pin_dir(lab.ns("pop").name()),
        &["flows", "--limit", "5000"],
    )?;
    let list = doc["flows"].as_array().ok_or("no flows array")?;
    assert_eq!(list.len(), 1000, "one flow per connection");
    // The program counts each packet it translates with its whole length.
    let largest = |bytes: &str, packets: &str| {
        list.iter()
            .filter_map(|f| Some(f[bytes].as_u64()? / f[packets].as_u64()?.max(1)))
            .max()
            .unwrap_or(0)
    };
    let (client_side, backend_side) = (
        largest("bytes_in", "packets_in"),
        largest("bytes_out", "packets_out"),
    );
    eprintln!(
        "largest mean bytes per packet: {client_side} from clients, {backend_side} from backends"
    );
    match receive {
        Receive::Coalesced => assert!(
            client_side > WIRE_FRAME && backend_side > WIRE_FRAME,
            "the program saw coalesced packets both ways: mean bytes per packet at most \
             {client_side} from clients, {backend_side} from backends"
        ),
        Receive::Segments => assert!(
            client_side <= WIRE_FRAME,
            "one wire segment per packet from clients, but a flow averaged {client_side} bytes"
        ),
    }

    // The agent hashes each backend by its id, `<service>/<backend>` for configured services.
    let table_of = |service: &str| {
        let keys: Vec<String> = (1..=BACKENDS).map(|n| format!("{service}/be{n}")).collect();
        let candidates: Vec<maglev::Candidate<'_>> = keys
            .iter()
            .map(|key| maglev::Candidate { key, weight: 1 })
            .collect();
        maglev::build(&candidates, TABLE_SIZE)
    };
    let (table4, table6) = (table_of("echo4")?, table_of("echo6")?);
    let mut observed: BTreeMap<String, u64> = BTreeMap::new();
    let mut predicted: BTreeMap<String, u64> = BTreeMap::new();
    for flow in list {
        let client: SocketAddr = flow["client"].as_str().ok_or("client")?.parse()?;
        let vip: SocketAddr = flow["vip"].as_str().ok_or("vip")?.parse()?;
        let backend: SocketAddr = flow["backend"].as_str().ok_or("backend")?.parse()?;
        let table = if vip.is_ipv4() { &table4 } else { &table6 };
        let expected = predicted_backend(table, client, vip);
        assert_eq!(
            backend.ip().to_string(),
            expected,
            "flow {client} -> {vip} went to {backend}, the Maglev table says {expected}"
        );
        *observed.entry(backend.ip().to_string()).or_default() += 1;
        *predicted.entry(expected).or_default() += 1;
    }
    let shares = maglev::shares(&table4, BACKENDS);
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
    tear_down(lab);
    Ok(())
}
