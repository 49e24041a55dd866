//! How a connection's flow ends, through `BPF_PROG_TEST_RUN`: with a SNAT prefix, a connection
//! the backend closed first is removed from `FLOWS` by the backend's ACK of the client's FIN (its
//! cold entries would otherwise weigh on every later insert for `closed_timeout_secs`), and a
//! late segment of it is remade as any lost flow is; without one, the POP's source port waits out
//! the closed timeout, as the backend's TIME_WAIT does. Needs root.

#[macro_use]
mod support;

use edge_common::flow::TCP_FIN;
use support::nat::*;

const SPORT: u16 = 46500;

/// A request and its answer, then the backend's FIN with the answer (as a server that closes
/// after one response sends it) and the client's FIN: client ISN 1000, backend ISN 9000, both
/// FINs recorded. Returns the translated SYN.
fn closed_by_the_backend(nat: &mut Nat) -> Result<Seen, Error> {
    let syn = nat.handshake4(SPORT)?;
    nat.forward(&segment4(SPORT, 1001, 9001, Flags::Ack, b"GET /")?)?;
    let (verdict, _) = nat.tc(&fin_from_backend(&syn, 9001, 1006, b"200 OK")?)?;
    assert_eq!(verdict, TC_ACT_REDIRECT, "the answer and the backend's FIN");
    let (verdict, out) = nat.forward(&segment4(SPORT, 1006, 9008, Flags::Fin, b"")?)?;
    assert_ne!(verdict, Verdict::Drop);
    assert!(check(&out)?.dst.is_ipv6(), "the client's FIN is translated");
    let forward = half(&nat.established()?, false)?.1;
    assert_ne!(forward.tcp_flags & TCP_FIN, 0, "the client's FIN counted");
    Ok(syn)
}

fn the_backends_ack_of_the_clients_fin_removes_the_flow(hook: Hook) -> TestResult {
    let mut nat = Nat::with(hook, 4096, Some("fd00:ee:ff::/96".parse()?))?;
    let syn = closed_by_the_backend(&mut nat)?;
    assert_eq!(
        nat.established()?.len(),
        2,
        "both halves until the last ACK"
    );
    let (verdict, out) = nat.tc(&from_backend(&syn, 9008, 1007, b"")?)?;
    assert_eq!(
        verdict, TC_ACT_REDIRECT,
        "the last ACK still reaches the client"
    );
    let last = check(&out)?;
    assert!(last.dst.is_ipv4() && last.dport == SPORT, "{last:?}");
    assert!(nat.established()?.is_empty(), "{:?}", nat.established()?);
    assert!(nat.entries()?.is_empty(), "nothing half-open either");

    // The last ACK was lost: the client sends its FIN again, which is remade onto the same
    // backend and source, and the backend's TIME_WAIT answers it.
    let (verdict, out) = nat.forward(&segment4(SPORT, 1006, 9008, Flags::Fin, b"")?)?;
    assert_ne!(verdict, Verdict::Drop);
    let again = check(&out)?;
    assert_eq!(
        (again.src, again.dst, again.sport),
        (syn.src, syn.dst, syn.sport)
    );
    let (verdict, out) = nat.tc(&from_backend(&syn, 9008, 1007, b"")?)?;
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(check(&out)?.dport, SPORT, "the answer reaches the client");
    Ok(())
}

fn an_ack_that_is_not_of_the_clients_fin_removes_nothing(hook: Hook) -> TestResult {
    let mut nat = Nat::with(hook, 4096, Some("fd00:ee:ff::/96".parse()?))?;
    let syn = closed_by_the_backend(&mut nat)?;
    // An older acknowledgment (a retransmitted segment of the backend's) is not the last ACK.
    let (verdict, _) = nat.tc(&from_backend(&syn, 9008, 1006, b"")?)?;
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(nat.established()?.len(), 2);
    Ok(())
}

fn without_a_snat_prefix_a_closed_flow_keeps_its_port(hook: Hook) -> TestResult {
    let mut nat = Nat::new(hook)?;
    let syn = closed_by_the_backend(&mut nat)?;
    let (verdict, _) = nat.tc(&from_backend(&syn, 9008, 1007, b"")?)?;
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(
        nat.established()?.len(),
        2,
        "the POP's source port stays taken for the closed timeout"
    );
    Ok(())
}

for_both_hooks!(
    the_backends_ack_of_the_clients_fin_removes_the_flow,
    an_ack_that_is_not_of_the_clients_fin_removes_nothing,
    without_a_snat_prefix_a_closed_flow_keeps_its_port,
);
