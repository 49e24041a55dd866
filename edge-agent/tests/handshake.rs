//! What an attacker without the connection's sequence numbers can do to the flow tables, through
//! `BPF_PROG_TEST_RUN`: a SYN only makes a half-open flow, only the ACK of the backend's SYN-ACK
//! makes it established, spoofed SYNs evict nothing established, a FIN or RST ends a flow only
//! at the sequence number the backend expects (RFC 5961 section 3.2), and a flow whose entries
//! are gone is remade as its SYN made it. Needs root.

#[macro_use]
mod support;

use std::net::IpAddr;

use edge_agent::{config::FlowConfig, dataplane::maps::flows, dataplane::maps::flows::TcpState};
use edge_common::{
    flow::{FLOW_REVERSE, TCP_ACK, TCP_FIN, TCP_SYN},
    limits::PORT_TRIES,
    FlowKey, FlowValue,
};
use etherparse::PacketBuilder;
use support::nat::*;

fn states(nat: &mut Nat) -> Result<Vec<TcpState>, Error> {
    let config = FlowConfig::default();
    let now = flows::monotonic_ns();
    let (_, listing) = flows::sweep(
        &nat.flows()?,
        flows::Table::Established,
        &config,
        now,
        flows::Sweep::List,
    )?;
    Ok(listing.iter().map(|f| f.state).collect())
}

fn only_the_ack_of_the_backends_syn_ack_establishes_a_flow(hook: Hook) -> TestResult {
    let mut nat = Nat::new(hook)?;
    let (_, out) = nat.forward(&syn4(46000, 80)?)?;
    let syn = check(&out)?;
    assert_eq!(
        nat.established()?.len(),
        0,
        "a SYN makes no established flow"
    );
    assert_eq!(nat.entries()?.len(), 2, "it makes a half-open one");

    // The client's ACK before any SYN-ACK, and after one with a guessed number: still half-open,
    // but translated (the backend's own stack judges it).
    let (_, out) = nat.forward(&segment4(46000, 1001, 9001, Flags::Ack, b"")?)?;
    assert!(check(&out)?.dst.is_ipv6(), "an early ACK is translated");
    nat.tc(&syn_ack_to(&syn, 64, None)?)?;
    let (_, out) = nat.forward(&segment4(46000, 1001, 123_456, Flags::Ack, b"")?)?;
    assert!(check(&out)?.dst.is_ipv6(), "a wrong ACK is translated");
    assert_eq!(
        nat.established()?.len(),
        0,
        "an ACK of another number than the backend's ISN + 1 establishes nothing"
    );

    let (_, out) = nat.forward(&segment4(46000, 1001, 9001, Flags::Ack, b"")?)?;
    assert_eq!(
        check(&out)?.dst,
        syn.dst,
        "the handshake ACK goes to the same backend"
    );
    let established = nat.established()?;
    assert_eq!(established.len(), 2, "both halves moved: {established:?}");
    assert_eq!(
        nat.half_open()?.iter().count(),
        0,
        "and left the half-open table"
    );
    let forward = half(&established, false)?.1;
    assert_eq!(
        forward.packets, 4,
        "counters carried over: SYN and three ACKs"
    );
    assert_eq!(
        half(&established, true)?.1.seq,
        9001,
        "the backend's ISN + 1"
    );

    // The connection carries on from FLOWS, both ways.
    let (_, out) = nat.forward(&segment4(46000, 1001, 9001, Flags::Ack, b"GET /")?)?;
    let data = check(&out)?;
    assert_eq!((data.dst, data.sport), (syn.dst, syn.sport));
    let (verdict, out) = nat.tc(&from_backend(&syn, 9001, 1006, b"200 OK")?)?;
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(check(&out)?.payload, b"200 OK");
    assert_eq!(states(&mut nat)?, vec![TcpState::Established]);

    let config = FlowConfig::default();
    let now = flows::monotonic_ns();
    let (report, _) = flows::sweep(
        &nat.flows()?,
        flows::Table::Established,
        &config,
        now,
        flows::Sweep::Count,
    )?;
    assert_eq!(
        report.active_per_backend.values().sum::<u64>(),
        1,
        "{report:?}"
    );
    Ok(())
}

/// A flood of SYNs from sources that never answer cycles through the half-open table; the
/// established connections, in a flow table with room for only a few more, stay.
fn spoofed_syns_evict_no_established_flow(hook: Hook) -> TestResult {
    // 64 entries: room for 32 connections in each table.
    let mut nat = Nat::with_flows(hook, 64)?;
    let live = nat.handshakes4(47000..47020)?;
    assert_eq!(nat.established()?.len(), 40);
    for sport in 10_000..15_000u16 {
        let (verdict, out) = nat.forward(&syn4(sport, 80)?)?;
        assert_ne!(verdict, Verdict::Drop, "SYN from port {sport}");
        assert!(
            check(&out)?.dst.is_ipv6(),
            "SYN from port {sport} translated"
        );
    }
    let established = nat.established()?;
    assert_eq!(
        established.len(),
        40,
        "5,000 SYNs evicted established entries"
    );
    for (sport, syn) in &live {
        let (_, out) = nat.forward(&segment4(*sport, 1001, 9001, Flags::Ack, b"ping")?)?;
        let data = check(&out)?;
        assert_eq!(
            (data.dst, data.sport),
            (syn.dst, syn.sport),
            "port {sport} still on its backend and source port"
        );
    }
    let config = FlowConfig::default();
    let (report, _) = flows::sweep(
        &nat.half_open()?,
        flows::Table::HalfOpen,
        &config,
        flows::monotonic_ns(),
        flows::Sweep::Count,
    )?;
    assert!(report.entries <= 64, "the half-open table keeps its size");
    assert!(
        report.active_per_backend.is_empty(),
        "half-open flows count towards no backend's limits: {report:?}"
    );
    Ok(())
}

/// RFC 5961 section 3.2: a RST resets only at exactly the next sequence number the receiver
/// expects. The data plane records a client's FIN or RST only at the backend's last ACK;
/// others are forwarded (the backend judges them) and counted.
fn a_blind_rst_or_fin_ends_nothing(hook: Hook) -> TestResult {
    let mut nat = Nat::new(hook)?;
    let syn = nat.handshake4(48000)?;
    for (seq, flags) in [
        (77_777, Flags::Rst),
        (1_002, Flags::Rst),
        (4_000_000_000, Flags::Fin),
    ] {
        let (verdict, out) = nat.forward(&segment4(48000, seq, 9001, flags, b"")?)?;
        assert_ne!(verdict, Verdict::Drop);
        assert_eq!(check(&out)?.dst, syn.dst, "{flags:?} {seq} still forwarded");
        assert_eq!(
            states(&mut nat)?,
            vec![TcpState::Established],
            "after a {flags:?} at {seq}"
        );
    }
    assert_eq!(nat.drops()?.out_of_window, 3);

    // Ten bytes from the client, acknowledged: the backend then expects 1011.
    nat.forward(&segment4(48000, 1001, 9001, Flags::Ack, b"0123456789")?)?;
    nat.tc(&from_backend(&syn, 9001, 1011, b"")?)?;
    nat.forward(&segment4(48000, 1001, 0, Flags::Rst, b"")?)?;
    assert_eq!(
        states(&mut nat)?,
        vec![TcpState::Established],
        "a RST at an acknowledged number"
    );
    nat.forward(&segment4(48000, 1011, 9001, Flags::Fin, b"")?)?;
    assert_eq!(
        states(&mut nat)?,
        vec![TcpState::Closing],
        "the client's FIN at the expected number"
    );
    nat.forward(&segment4(48000, 1012, 0, Flags::Rst, b"")?)?;
    assert_eq!(
        states(&mut nat)?,
        vec![TcpState::Closing],
        "the FIN is not acknowledged yet: 1012 is ahead"
    );
    nat.tc(&from_backend(&syn, 9001, 1012, b"")?)?;
    nat.forward(&segment4(48000, 1012, 0, Flags::Rst, b"")?)?;
    assert_eq!(states(&mut nat)?, vec![TcpState::Closed]);
    assert_eq!(nat.drops()?.out_of_window, 5);
    Ok(())
}

/// The flow table is a cache: a connection whose entries are gone (evicted, swept, deleted by
/// an operator) gets back the backend and source port its SYN got, as long as the backend
/// tables are the same; the backend's answer makes it established again.
fn a_lost_flow_is_remade_on_the_same_backend_and_port(hook: Hook) -> TestResult {
    let mut nat = Nat::new(hook)?;
    let syn = nat.handshake4(49000)?;
    let established = nat.established()?;
    let (forward, reverse) = (half(&established, false)?, half(&established, true)?);

    // Only the forward half lost: it goes back beside the reverse one.
    nat.flows()?.remove(&forward.0)?;
    let (_, out) = nat.forward(&segment4(49000, 1001, 9001, Flags::Ack, b"one")?)?;
    let data = check(&out)?;
    assert_eq!(
        (data.dst, data.sport),
        (syn.dst, syn.sport),
        "same backend and port"
    );
    assert_eq!(nat.established()?.len(), 2, "restored in FLOWS");

    // Both halves lost: remade half-open until the backend answers.
    nat.flows()?.remove(&forward.0)?;
    nat.flows()?.remove(&reverse.0)?;
    let (_, out) = nat.forward(&segment4(49000, 1004, 9001, Flags::Ack, b"two")?)?;
    let data = check(&out)?;
    assert_eq!(
        (data.dst, data.sport),
        (syn.dst, syn.sport),
        "same backend and port"
    );
    assert_eq!(
        nat.established()?.len(),
        0,
        "not established on the client's word"
    );
    let (verdict, out) = nat.tc(&from_backend(&syn, 9001, 1007, b"ok")?)?;
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let back = check(&out)?;
    assert_eq!((back.dst, back.dport), (IpAddr::from(CLIENT4), 49000));
    assert_eq!(
        nat.established()?.len(),
        2,
        "the backend's answer established it"
    );
    assert_eq!(nat.half_open()?.iter().count(), 0);
    assert_eq!(nat.drops()?.recovered, 2);
    assert_eq!(states(&mut nat)?, vec![TcpState::Established]);

    // A backend that does not know the connection answers each candidate port with a RST:
    // the client's retransmissions move on through the candidates, and the last one's RST goes
    // to the client. Nothing is established.
    for attempt in 0..PORT_TRIES {
        let (_, out) = nat.forward(&segment4(49001, 5000, 7000, Flags::Ack, b"??")?)?;
        let (verdict, _) = nat.tc(&rst_from_backend(&check(&out)?, 7000)?)?;
        let last = attempt + 1 == PORT_TRIES;
        assert_eq!(
            verdict,
            if last { TC_ACT_REDIRECT } else { TC_ACT_SHOT },
            "candidate {attempt}: only the last one's RST goes back to the client"
        );
    }
    assert_eq!(nat.established()?.len(), 2, "only the first connection");
    Ok(())
}

/// The RST a backend sends for a segment to a port no socket of its holds, `seq` its
/// acknowledgment.
fn rst_from_backend(sent: &Seen, seq: u32) -> Result<Vec<u8>, Error> {
    let (IpAddr::V6(backend), IpAddr::V6(overlay)) = (sent.dst, sent.src) else {
        return Err(format!("expected IPv6: {sent:?}").into());
    };
    let mut rst = Vec::new();
    PacketBuilder::ethernet2(MAC_POP, MAC_CLIENT)
        .ipv6(backend.octets(), overlay.octets(), 64)
        .tcp(8080, sent.sport, seq, 0)
        .rst()
        .write(&mut rst, &[])?;
    Ok(rst)
}

/// A connection whose SYN got its second candidate port because the first was held by a
/// connection that has ended since: when it loses its entries, its recovery tries the first
/// port, where no socket answers but with a RST. The RST stays in the POP and the
/// retransmission finds the connection's own port.
fn a_recovery_onto_a_free_port_moves_on(hook: Hook) -> TestResult {
    let mut nat = Nat::new(hook)?;
    let (probe, syn) = on_second_candidate(&mut nat, 52000)?;
    // The holder ends, then the connection loses its entries.
    forget_all(&mut nat)?;
    let (_, out) = nat.forward(&segment4(52000, 1001, 9001, Flags::Ack, b"again")?)?;
    let first = check(&out)?;
    assert_eq!(first.sport, probe.sport, "the first candidate, free now");
    let (verdict, _) = nat.tc(&rst_from_backend(&first, 9001)?)?;
    assert_eq!(verdict, TC_ACT_SHOT, "the RST does not reach the client");
    let (_, out) = nat.forward(&segment4(52000, 1001, 9001, Flags::Ack, b"again")?)?;
    let second = check(&out)?;
    assert_eq!(second.sport, syn.sport, "recovered onto its own port");
    let (verdict, _) = nat.tc(&from_backend(&second, 9001, 1006, b"ok")?)?;
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(nat.established()?.len(), 2, "established on its own port");
    Ok(())
}

/// A recovery whose first packet went to a wrong port and whose next one found the right port
/// is answered with an acknowledgment behind that packet (the backend never got the first
/// one): the remade flow is the connection's all the same.
fn a_backend_behind_the_recovering_packet_confirms_it(hook: Hook) -> TestResult {
    let mut nat = Nat::new(hook)?;
    let syn = nat.handshake4(53000)?;
    forget_all(&mut nat)?;
    // The segment after the lost one (1001..1401) recovers the flow.
    let (_, out) = nat.forward(&segment4(53000, 1401, 9001, Flags::Ack, b"later")?)?;
    assert_eq!(check(&out)?.sport, syn.sport);
    // The backend still expects 1001: a duplicate acknowledgment.
    let (verdict, _) = nat.tc(&from_backend(&syn, 9001, 1001, b"")?)?;
    assert_eq!(
        verdict, TC_ACT_REDIRECT,
        "the duplicate ACK goes to the client"
    );
    assert_eq!(nat.established()?.len(), 2, "established again");
    assert_eq!(nat.drops()?.recovery_missed, 0);
    Ok(())
}

/// A connection from `port` whose SYN found its first candidate port held by another
/// connection, and got the second: (the first candidate, the connection's translated SYN).
fn on_second_candidate(nat: &mut Nat, port: u16) -> Result<(Seen, Seen), Error> {
    let (probe, reverse) = nat.probe_ports(port)?;
    let holder = FlowKey {
        dport: probe.sport.to_be(),
        ..reverse
    };
    nat.flows()?.insert(
        holder,
        FlowValue {
            flags: FLOW_REVERSE,
            tcp_flags: TCP_SYN | TCP_ACK,
            new_src: [1; 16],
            new_dst: [2; 16],
            ..FlowValue::default()
        },
        0,
    )?;
    let syn = nat.handshake4(port)?;
    assert_eq!(syn.sport, probe.sport + 1, "the second candidate");
    Ok((probe, syn))
}

/// Removes every entry of `FLOWS`, as an operator's `bpftool map delete` would.
fn forget_all(nat: &mut Nat) -> TestResult {
    let all: Vec<FlowKey> = nat.established()?.into_iter().map(|(k, _)| k).collect();
    for key in all {
        nat.flows()?.remove(&key)?;
    }
    Ok(())
}

/// A connection whose SYN found its first candidate port held got the second. When both it
/// and the holder lose their entries, its recovery tries the first port again; the backend's
/// answer there (another connection's numbers) sends it on to the second, its own.
fn a_recovery_onto_another_connections_port_moves_on(hook: Hook) -> TestResult {
    let mut nat = Nat::new(hook)?;
    let (probe, syn) = on_second_candidate(&mut nat, 51000)?;
    // Both lose their entries.
    forget_all(&mut nat)?;
    let (_, out) = nat.forward(&segment4(51000, 1001, 9001, Flags::Ack, b"again")?)?;
    let first = check(&out)?;
    assert_eq!(
        first.sport, probe.sport,
        "recovery tries the first candidate first"
    );
    // The other connection's socket answers with its own numbers.
    let (verdict, _) = nat.tc(&from_backend(&first, 777_000, 123_456_789, b"")?)?;
    assert_eq!(
        verdict, TC_ACT_SHOT,
        "another connection's answer is dropped"
    );
    assert_eq!(nat.drops()?.recovery_missed, 1);
    // The client retransmits: the next candidate, its own.
    let (_, out) = nat.forward(&segment4(51000, 1001, 9001, Flags::Ack, b"again")?)?;
    let second = check(&out)?;
    assert_eq!(second.sport, syn.sport, "recovered onto its own port");
    let (verdict, out) = nat.tc(&from_backend(&second, 9001, 1006, b"ok")?)?;
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(check(&out)?.payload, b"ok");
    assert_eq!(nat.established()?.len(), 2, "established on its own port");
    Ok(())
}

/// Spoofed mid-connection packets remake flows only in the half-open table.
fn spoofed_acks_evict_no_established_flow(hook: Hook) -> TestResult {
    let mut nat = Nat::with_flows(hook, 64)?;
    let live = nat.handshakes4(47000..47020)?;
    for sport in 10_000..13_000u16 {
        nat.forward(&segment4(
            sport,
            u32::from(sport) * 7,
            99,
            Flags::Ack,
            b"x",
        )?)?;
    }
    assert_eq!(
        nat.established()?.len(),
        40,
        "3,000 ACKs evicted established entries"
    );
    for (sport, syn) in &live {
        let (_, out) = nat.forward(&segment4(*sport, 1001, 9001, Flags::Ack, b"ping")?)?;
        let data = check(&out)?;
        assert_eq!((data.dst, data.sport), (syn.dst, syn.sport), "port {sport}");
    }
    assert_eq!(nat.drops()?.recovered, 3_000);
    Ok(())
}

/// When every candidate source port of a new flow is held, half-open and closed flows give
/// theirs up; established ones never do.
fn half_open_flows_give_way_to_new_ones(hook: Hook) -> TestResult {
    let mut nat = Nat::new(hook)?;
    let (first, reverse) = nat.probe_ports(44000)?;
    {
        let mut half_open = nat.half_open()?;
        // Another client's half-open flows on every candidate port.
        for n in 0..edge_common::limits::PORT_TRIES as u16 {
            let key = FlowKey {
                dport: (first.sport + n).to_be(),
                ..reverse
            };
            let value = FlowValue {
                flags: FLOW_REVERSE,
                new_dst: [9; 16],
                ..FlowValue::default()
            };
            half_open.insert(key, value, 0)?;
        }
    }
    let (verdict, out) = nat.forward(&syn4(44000, 80)?)?;
    assert_ne!(verdict, Verdict::Drop, "a half-open flow gave way");
    assert_eq!(
        check(&out)?.sport,
        first.sport,
        "the first candidate's port"
    );
    let drops = nat.drops()?;
    assert_eq!((drops.displaced, drops.port_exhausted), (1, 0), "{drops:?}");

    // Other clients' established flows on every candidate port: the SYN is dropped.
    let taken: Vec<FlowKey> = nat.entries()?.into_iter().map(|(k, _)| k).collect();
    let mut half_open = nat.half_open()?;
    for key in taken {
        let _ = half_open.remove(&key);
    }
    let occupy = |nat: &mut Nat, flags: u8| -> Result<(), Error> {
        let mut flows = nat.flows()?;
        for n in 0..edge_common::limits::PORT_TRIES as u16 {
            let key = FlowKey {
                dport: (first.sport + n).to_be(),
                ..reverse
            };
            let value = FlowValue {
                flags: FLOW_REVERSE,
                new_src: [1; 16],
                new_dst: [2; 16],
                new_sport: 80u16.to_be(),
                new_dport: (30_000 + n).to_be(),
                tcp_flags: flags,
                ..FlowValue::default()
            };
            flows.insert(key, value, 0)?;
            let forward = FlowValue {
                tcp_flags: flags,
                ..FlowValue::default()
            };
            flows.insert(value.partner_key(), forward, 0)?;
        }
        Ok(())
    };
    occupy(&mut nat, TCP_SYN | TCP_ACK)?;
    let (verdict, _) = nat.forward(&syn4(44000, 80)?)?;
    assert_eq!(verdict, Verdict::Drop);
    assert_eq!(nat.drops()?.port_exhausted, 1);

    // The same flows closed (FINs both ways), waiting out their timeout: they give way.
    occupy(&mut nat, TCP_SYN | TCP_ACK | TCP_FIN)?;
    let (verdict, out) = nat.forward(&syn4(44000, 80)?)?;
    assert_ne!(verdict, Verdict::Drop, "a closed flow gave way");
    assert_eq!(check(&out)?.sport, first.sport);
    assert_eq!(nat.drops()?.displaced, 2);
    assert_eq!(nat.drops()?.port_exhausted, 1);
    Ok(())
}

for_both_hooks!(
    only_the_ack_of_the_backends_syn_ack_establishes_a_flow,
    spoofed_syns_evict_no_established_flow,
    a_blind_rst_or_fin_ends_nothing,
    a_lost_flow_is_remade_on_the_same_backend_and_port,
    spoofed_acks_evict_no_established_flow,
    half_open_flows_give_way_to_new_ones,
    a_recovery_onto_another_connections_port_moves_on,
    a_recovery_onto_a_free_port_moves_on,
    a_backend_behind_the_recovering_packet_confirms_it,
);
