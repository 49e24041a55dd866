//! Packet tests of the full-NAT data plane through `BPF_PROG_TEST_RUN`: for map contents written
//! by the agent's own reconciler, each input frame must produce exactly the expected output frame,
//! checked with `etherparse` (headers and checksums). Needs root, as `cargo xtask test` runs.

#[macro_use]
mod support;

use std::{net::IpAddr, time::Duration};

use aya::{
    maps::{Array, IterableMap as _, MapData},
    Ebpf,
};
use edge_agent::{
    agent::static_plan, config::AgentConfig, config::FlowConfig, dataplane::batch,
    dataplane::maps::flows, dataplane::maps::flows::TcpState,
};
use edge_common::{
    flow::{FLOW_REVERSE, FLOW_V4_CLIENT, TCP_FIN, TCP_RST, TCP_SYN},
    ipv4_mapped, names, FlowKey, FlowValue,
};
use etherparse::PacketBuilder;
use support::nat::*;

fn ipv4_syn_and_data_are_translated_to_ipv6(hook: Hook) -> TestResult {
    let mut nat = Nat::new(hook)?;
    let (verdict, out) = nat.forward(&syn4(40000, 80)?)?;
    assert_eq!(
        verdict,
        Verdict::Pass,
        "translated SYN goes to the kernel's routing"
    );
    let syn = check(&out)?;
    assert_eq!(
        syn.src,
        OVERLAY.parse::<IpAddr>()?,
        "source is the POP's overlay address"
    );
    assert!(
        backends().contains(&syn.dst),
        "destination {} is a backend",
        syn.dst
    );
    assert_eq!(syn.dport, 8080);
    assert!(
        (10_000..=32_767).contains(&syn.sport),
        "source port {}",
        syn.sport
    );
    assert_eq!(
        syn.ttl, 64,
        "hop limit carries the TTL (the kernel decrements as it forwards)"
    );
    assert_eq!(
        syn.mss,
        Some(MSS_CLAMP),
        "MSS 1460 clamped to the overlay's"
    );
    assert_eq!(&out[12..14], &[0x86, 0xdd]);
    assert_eq!(&out[..12], &syn4(40000, 80)?[..12], "MAC addresses kept");

    let entries = nat.entries()?;
    assert_eq!(entries.len(), 2, "both directions recorded: {entries:?}");
    let reverse = half(&entries, true)?;
    assert_eq!(reverse.1.flags & FLOW_V4_CLIENT, FLOW_V4_CLIENT);
    assert_eq!(reverse.1.new_dst, ipv4_mapped(CLIENT4));
    assert_eq!(u16::from_be(reverse.0.dport), syn.sport);

    let payload: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
    let (verdict, out) = nat.forward(&data4(40000, &payload)?)?;
    assert_eq!(verdict, Verdict::Pass);
    let data = check(&out)?;
    assert_eq!(
        (data.src, data.dst, data.sport, data.dport),
        (syn.src, syn.dst, syn.sport, syn.dport),
        "same flow"
    );
    assert_eq!(data.payload, payload, "payload intact");
    assert_eq!(data.mss, None);
    Ok(())
}

fn ipv6_syn_is_translated_and_its_reply_comes_back(hook: Hook) -> TestResult {
    let mut nat = Nat::new(hook)?;
    let (verdict, out) = nat.forward(&syn6(50000)?)?;
    assert_eq!(verdict, Verdict::Pass);
    let syn = check(&out)?;
    assert_eq!(syn.src, OVERLAY.parse::<IpAddr>()?);
    assert!(backends().contains(&syn.dst));
    assert_eq!(syn.mss, Some(MSS_CLAMP), "MSS 1440 clamped");

    let reply = syn_ack_to(&syn, 63, Some(1440))?;
    let (verdict, out) = nat.tc(&reply)?;
    assert_eq!(
        verdict, TC_ACT_REDIRECT,
        "replies are redirected to the public interface"
    );
    let back = check(&out)?;
    assert_eq!(back.src, VIP6.parse::<IpAddr>()?);
    assert_eq!(back.dst, CLIENT6.parse::<IpAddr>()?);
    assert_eq!((back.sport, back.dport), (80, 50000));
    assert_eq!(back.mss, Some(MSS_CLAMP), "SYN-ACK MSS clamped too");
    assert!(back.syn && back.ack);
    Ok(())
}

fn reply_to_an_ipv4_client_is_translated_to_ipv4(hook: Hook) -> TestResult {
    let mut nat = Nat::new(hook)?;
    let (_, out) = nat.forward(&syn4(40001, 80)?)?;
    let syn = check(&out)?;
    let (IpAddr::V6(backend), IpAddr::V6(overlay)) = (syn.dst, syn.src) else {
        return Err("expected IPv6".into());
    };
    let payload = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec();
    let mut reply = Vec::new();
    PacketBuilder::ethernet2(MAC_POP, MAC_CLIENT)
        .ipv6(backend.octets(), overlay.octets(), 61)
        .tcp(8080, syn.sport, 9001, 65000)
        .ack(1001)
        .psh()
        .write(&mut reply, &payload)?;
    let (verdict, out) = nat.tc(&reply)?;
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(&out[12..14], &[0x08, 0x00], "EtherType IPv4");
    assert_eq!(
        out.len(),
        reply.len() - 20,
        "the IPv6 header became a 20-byte IPv4 header"
    );
    let back = check(&out)?;
    assert_eq!(back.src, IpAddr::from(VIP4));
    assert_eq!(back.dst, IpAddr::from(CLIENT4));
    assert_eq!((back.sport, back.dport), (80, 40001));
    assert_eq!(back.ttl, 61, "TTL carries the hop limit");
    assert_eq!(back.payload, payload);

    let (_, out) = nat.tc(&syn_ack_to(&syn, 64, Some(1440))?)?;
    assert_eq!(
        check(&out)?.mss,
        Some(MSS_CLAMP),
        "SYN-ACK MSS clamped on NAT64 too"
    );
    Ok(())
}

fn traffic_that_is_not_for_a_service_passes_untouched(hook: Hook) -> TestResult {
    let mut nat = Nat::new(hook)?;
    let mut other_host = Vec::new();
    PacketBuilder::ethernet2(MAC_CLIENT, MAC_POP)
        .ipv4(CLIENT4, [198, 18, 0, 11], 64)
        .tcp(40000, 80, 1, 64240)
        .syn()
        .write(&mut other_host, &[])?;
    let mut udp_to_vip = Vec::new();
    PacketBuilder::ethernet2(MAC_CLIENT, MAC_POP)
        .ipv4(CLIENT4, VIP4, 64)
        .udp(40000, 80)
        .write(&mut udp_to_vip, b"dns?")?;
    let reply_unknown = {
        let mut v = Vec::new();
        PacketBuilder::ethernet2(MAC_POP, MAC_CLIENT)
            .ipv6(v6("fd00:ee::9")?, v6(OVERLAY)?, 64)
            .tcp(22, 50000, 1, 100)
            .ack(1)
            .write(&mut v, b"ssh")?;
        v
    };
    for (what, frame) in [
        ("TCP to another address", other_host),
        ("TCP to the VIP on another port", syn4(40000, 443)?),
        ("UDP to the VIP's port", udp_to_vip),
    ] {
        let (verdict, out) = nat.forward(&frame)?;
        assert_eq!(verdict, Verdict::Pass, "{what}");
        assert_eq!(out, frame, "{what}: must not be modified");
    }
    let (verdict, out) = nat.tc(&reply_unknown)?;
    assert_eq!(verdict, 0, "TC_ACT_OK for the host's own overlay traffic");
    assert_eq!(out, reply_unknown);
    assert!(nat.entries()?.is_empty(), "no flow created");
    Ok(())
}

fn a_rst_without_a_flow_goes_to_the_kernel_and_no_backend_drops(hook: Hook) -> TestResult {
    let mut nat = Nat::new(hook)?;
    let frame = segment4(41000, 1001, 0, Flags::Rst, b"")?;
    let (verdict, out) = nat.forward(&frame)?;
    assert_eq!(verdict, Verdict::Pass);
    assert_eq!(out, frame, "untranslated: nothing to remake a flow for");
    assert_eq!(nat.drops()?.no_flow, 1);
    assert!(nat.entries()?.is_empty());

    let (verdict, _) = nat.forward(&syn4(41001, 81)?)?;
    assert_eq!(
        verdict,
        Verdict::Drop,
        "a service with no backend drops SYNs"
    );
    assert_eq!(nat.drops()?.no_backend, 1);
    Ok(())
}

/// Ports are marked for the programs' first check (`SERVICE_PORTS`) and never unmarked: a
/// removed service's established flows are still translated until they end.
fn a_removed_services_flows_keep_their_translation(hook: Hook) -> TestResult {
    let mut nat = Nat::new(hook)?;
    let marked = |ebpf: &Ebpf, port: u16| -> Result<bool, Error> {
        let ports: Array<&MapData, u64> =
            Array::try_from(ebpf.map(names::SERVICE_PORTS).ok_or("no SERVICE_PORTS")?)?;
        Ok(ports.get(&u32::from(port / 64), 0)? & 1 << (port % 64) != 0)
    };
    assert!(
        marked(&nat.ebpf, 80)? && marked(&nat.ebpf, 81)?,
        "the services' ports"
    );
    for other in [443, 79, 82] {
        assert!(!marked(&nat.ebpf, other)?, "port {other} is no service's");
    }

    let (_, out) = nat.forward(&syn4(40003, 80)?)?;
    let syn = check(&out)?;
    let empty = AgentConfig::default();
    let applied = nat
        .reconciler
        .apply(&mut nat.ebpf, &nat.pop, &static_plan(&empty))?;
    assert_eq!(applied.services, 0);
    assert!(marked(&nat.ebpf, 80)?, "port 80 stays marked");
    let (verdict, out) = nat.forward(&data4(40003, b"still here")?)?;
    assert_ne!(verdict, Verdict::Drop);
    let data = check(&out)?;
    assert_eq!(
        (data.src, data.dst),
        (syn.src, syn.dst),
        "translated as before"
    );
    assert_eq!(data.payload, b"still here");
    let (verdict, out) = nat.forward(&syn4(40004, 80)?)?;
    assert_eq!(verdict, Verdict::Pass, "a new connection is no longer ours");
    assert!(check(&out)?.dst.is_ipv4(), "and passes untouched");
    Ok(())
}

fn an_expected_rst_closes_the_flow_and_the_sweeper_removes_it(hook: Hook) -> TestResult {
    let mut nat = Nat::new(hook)?;
    nat.handshake4(42000)?;
    // The backend acknowledged the client's SYN (ISN 1000): it expects 1001 next.
    let (verdict, out) = nat.forward(&segment4(42000, 1001, 0, Flags::Rst, b"")?)?;
    assert_ne!(verdict, Verdict::Drop);
    assert!(
        check(&out)?.dst.is_ipv6(),
        "the RST is translated to the backend too"
    );
    let forward = half(&nat.established()?, false)?;
    assert_eq!(forward.1.tcp_flags & TCP_RST, TCP_RST);

    let config = FlowConfig::default();
    let now = forward.1.last_seen_ns;
    let table = flows::Table::Established;
    let (_, listing) = flows::sweep(&nat.flows()?, table, &config, now, flows::Sweep::List)?;
    assert_eq!(listing.first().map(|f| f.state), Some(TcpState::Closed));
    let (report, _) = flows::sweep(&nat.flows()?, table, &config, now, flows::Sweep::Expire)?;
    assert_eq!(report.expired, 0, "a closed flow lingers for its timeout");
    let later = now + (config.closed_timeout_secs + 1) * 1_000_000_000;
    let (report, _) = flows::sweep(&nat.flows()?, table, &config, later, flows::Sweep::Expire)?;
    assert_eq!(report.expired, 2, "both directions removed");
    assert!(nat.entries()?.is_empty());
    Ok(())
}

fn a_syn_on_the_tuple_of_an_ended_flow_starts_a_new_flow(hook: Hook) -> TestResult {
    let mut nat = Nat::new(hook)?;
    nat.forward(&syn4(42000, 80)?)?;
    let mut fin = Vec::new();
    PacketBuilder::ethernet2(MAC_CLIENT, MAC_POP)
        .ipv4(CLIENT4, VIP4, 64)
        .tcp(42000, 80, 1001, 65535)
        .fin()
        .ack(1)
        .write(&mut fin, &[])?;
    nat.forward(&fin)?;
    let ended = half(&nat.entries()?, false)?.1;
    assert_ne!(ended.tcp_flags & TCP_FIN, 0);

    // The client reuses its port: a new connection, not the old one's leftovers.
    let (verdict, out) = nat.forward(&syn4(42000, 80)?)?;
    assert_ne!(verdict, Verdict::Drop);
    let seen = check(&out)?;
    assert!(seen.syn && backends().contains(&seen.dst), "{seen:?}");
    let entries = nat.entries()?;
    assert_eq!(
        entries.len(),
        2,
        "the old reply half was removed, not left beside the new one"
    );
    let fresh = half(&entries, false)?.1;
    assert_eq!(fresh.tcp_flags, TCP_SYN, "the new flow starts clean");
    assert_eq!(fresh.packets, 1);
    assert_eq!(half(&entries, true)?.0, fresh.partner_key());

    // A retransmitted SYN of a live flow keeps it.
    nat.forward(&syn4(42000, 80)?)?;
    let again = half(&nat.entries()?, false)?.1;
    assert_eq!(again.packets, 2);
    assert_eq!(again.created_ns, fresh.created_ns);
    Ok(())
}

/// The programs stamp flows with jiffies scaled by the agent's calibration (`kernel_clock`):
/// the stamps must read as the agent's own clock, or the sweeper would expire flows early or
/// never.
fn flows_are_stamped_in_the_agents_clock(hook: Hook) -> TestResult {
    // Two ticks at the slowest kernel tick rate (100 Hz) and a little more.
    let slack = 25_000_000;
    let mut nat = Nat::new(hook)?;
    let before = flows::monotonic_ns();
    let (_, out) = nat.forward(&syn4(40002, 80)?)?;
    let syn = check(&out)?;
    std::thread::sleep(Duration::from_millis(60));
    nat.tc(&syn_ack_to(&syn, 64, None)?)?;
    let after = flows::monotonic_ns();
    let entries = nat.entries()?;
    let forward = half(&entries, false)?.1;
    let reverse = half(&entries, true)?.1;
    let within = |ns: u64| ns + slack >= before && ns <= after + slack;
    assert!(
        within(forward.created_ns) && within(reverse.last_seen_ns),
        "stamps {} and {} outside [{before}, {after}]",
        forward.created_ns,
        reverse.last_seen_ns
    );
    let gap = reverse.last_seen_ns.saturating_sub(forward.last_seen_ns);
    assert!(
        (60_000_000 - slack..=after - before + slack).contains(&gap),
        "the reply came 60 ms after the SYN, the stamps say {gap} ns"
    );
    Ok(())
}

fn new_flows_are_admitted_when_the_flow_table_is_full(hook: Hook) -> TestResult {
    // 32 entries hold 16 connections; open 64: the least recently used are evicted.
    let mut nat = Nat::with_flows(hook, 32)?;
    let mut first = None;
    for sport in 43000..43064 {
        let (verdict, out) = nat.forward(&syn4(sport, 80)?)?;
        assert_eq!(verdict, Verdict::Pass, "SYN from port {sport}");
        let syn = check(&out)?;
        assert!(syn.dst.is_ipv6(), "SYN from port {sport} translated");
        first.get_or_insert(syn);
    }
    let entries = nat.entries()?.len();
    assert!(entries <= 32, "table holds at most its size: {entries}");
    let (verdict, out) = nat.forward(&data4(43000, b"evicted?")?)?;
    assert_eq!(verdict, Verdict::Pass);
    let first = first.ok_or("no SYN")?;
    let data = check(&out)?;
    assert_eq!(
        (data.dst, data.sport),
        (first.dst, first.sport),
        "the oldest flow was evicted; its packet gets the flow its SYN got"
    );
    assert_eq!(nat.drops()?.recovered, 1);
    Ok(())
}

fn source_ports_in_use_are_skipped(hook: Hook) -> TestResult {
    let mut nat = Nat::new(hook)?;
    let (_, out) = nat.forward(&syn4(44000, 80)?)?;
    let first = check(&out)?;
    let taken: Vec<(FlowKey, FlowValue)> = nat.entries()?;
    // Forget the connection but keep its reverse key: the port stays in use.
    let forward = half(&taken, false)?.0;
    nat.half_open()?.remove(&forward)?;
    let (verdict, out) = nat.forward(&syn4(44000, 80)?)?;
    assert_eq!(verdict, Verdict::Pass);
    let second = check(&out)?;
    assert_eq!(second.dst, first.dst, "Maglev picks the same backend");
    assert_ne!(
        second.sport, first.sport,
        "the taken port {} was skipped",
        first.sport
    );
    assert_eq!(second.sport, first.sport + 1, "next candidate port");
    // Every candidate taken: handshake.rs, `half_open_flows_give_way_to_new_ones`.
    Ok(())
}

fn with_a_snat_prefix_ipv4_clients_keep_their_address_and_port(hook: Hook) -> TestResult {
    let mut nat = Nat::with(hook, 4096, Some("fd00:ee:ff::/96".parse()?))?;
    let (verdict, out) = nat.forward(&syn4(45000, 80)?)?;
    assert_eq!(verdict, Verdict::Pass);
    let syn = check(&out)?;
    let embedded: IpAddr = "fd00:ee:ff::c633:6407".parse()?;
    assert_eq!(
        syn.src, embedded,
        "source is the /96 plus the client's 198.51.100.7"
    );
    assert_eq!(syn.sport, 45000, "the client's own port is kept");
    let (IpAddr::V6(backend), IpAddr::V6(src)) = (syn.dst, syn.src) else {
        return Err("expected IPv6".into());
    };
    let mut reply = Vec::new();
    PacketBuilder::ethernet2(MAC_POP, MAC_CLIENT)
        .ipv6(backend.octets(), src.octets(), 64)
        .tcp(8080, 45000, 9000, 65000)
        .syn()
        .ack(1001)
        .write(&mut reply, &[])?;
    let (verdict, out) = nat.tc(&reply)?;
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let back = check(&out)?;
    assert_eq!(
        (back.src, back.dst),
        (IpAddr::from(VIP4), IpAddr::from(CLIENT4))
    );
    assert_eq!((back.sport, back.dport), (80, 45000));

    // IPv6 clients cannot be embedded in a /96: they still get a port of the overlay address.
    let (_, out) = nat.forward(&syn6(50001)?)?;
    assert_eq!(check(&out)?.src, OVERLAY.parse::<IpAddr>()?);
    Ok(())
}

/// The sweeper reads and deletes in batches of a few thousand: a table several batches long is
/// read whole, expired entries go, and keys already gone when their delete comes are skipped.
#[test]
fn the_sweeper_walks_and_expires_a_table_larger_than_one_batch() -> TestResult {
    let mut nat = Nat::with_flows(Hook::Xdp, 32_768)?;
    let config = FlowConfig::default();
    let now = 1_000 * 1_000_000_000;
    let idle = now - (config.closed_timeout_secs + 1) * 1_000_000_000;
    // Never the all-zero key: that is the partner a zeroed value names.
    let key = |i: u32| {
        let mut key = FlowKey::default();
        key.src[..4].copy_from_slice(&(i + 1).to_be_bytes());
        key
    };
    let mut flows = nat.flows()?;
    // 10,000 reverse halves without their forward half (orphans): even ones fresh, odd ones
    // idle past the closed timeout.
    for i in 0..10_000u32 {
        let value = FlowValue {
            flags: FLOW_REVERSE,
            last_seen_ns: if i % 2 == 0 { now } else { idle },
            ..FlowValue::default()
        };
        flows.insert(key(i), value, 0)?;
    }
    let (report, _) = flows::sweep(
        &flows,
        flows::Table::Established,
        &config,
        now,
        flows::Sweep::Count,
    )?;
    assert_eq!(report.entries, 10_000);
    let deleted = batch::delete(flows.map(), &[key(1), key(3), key(1), key(4_097)])?;
    assert_eq!(deleted, 3, "the repeated key was gone by its turn");
    let (report, _) = flows::sweep(
        &flows,
        flows::Table::Established,
        &config,
        now,
        flows::Sweep::Expire,
    )?;
    assert_eq!(report.entries, 9_997);
    assert_eq!(report.expired, 4_997);
    let (report, _) = flows::sweep(
        &flows,
        flows::Table::Established,
        &config,
        now,
        flows::Sweep::Count,
    )?;
    assert_eq!(report.entries, 5_000, "only the fresh half is left");
    Ok(())
}

for_both_hooks!(
    ipv4_syn_and_data_are_translated_to_ipv6,
    ipv6_syn_is_translated_and_its_reply_comes_back,
    reply_to_an_ipv4_client_is_translated_to_ipv4,
    traffic_that_is_not_for_a_service_passes_untouched,
    a_rst_without_a_flow_goes_to_the_kernel_and_no_backend_drops,
    an_expected_rst_closes_the_flow_and_the_sweeper_removes_it,
    a_removed_services_flows_keep_their_translation,
    a_syn_on_the_tuple_of_an_ended_flow_starts_a_new_flow,
    flows_are_stamped_in_the_agents_clock,
    new_flows_are_admitted_when_the_flow_table_is_full,
    source_ports_in_use_are_skipped,
    with_a_snat_prefix_ipv4_clients_keep_their_address_and_port,
);
