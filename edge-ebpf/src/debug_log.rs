//! Debug records for an operator following a flow, through aya-log: the agent started with
//! `--bpf-debug-log` drains them into its own log under the target `edge_ebpf`.
//!
//! Every record sits behind `DEBUG_LOG`, a global in `.rodata` that the agent sets at load time.
//! aya creates `.rodata` as a read-only (`BPF_F_RDONLY_PROG`) map and freezes it before the
//! programs load, so the verifier reads the switch as a known constant: with it 0 (the default)
//! every logging branch is dead, and the verifier removes it (`opt_remove_dead_code` in
//! kernel/bpf/verifier.c) before the JIT sees it. Only rare paths log (a new flow, a refused
//! one, a segment or reply without a flow); a packet of an established flow never reads the
//! switch at all.
//!
//! The records are built in `#[inline(never)]` functions: each gets its own stack frame beside
//! the packet path's instead of growing it (the BPF stack is 512 bytes), and takes no packet
//! pointer (see `forward::new_flow`).

use aya_ebpf::Global;
use aya_log_ebpf::{info, warn};
use edge_common::{FlowKey, FlowValue, PopConfig};

use crate::stats::Drop;

/// 1: emit the records. Overridden by the agent at load time, never written by a program.
#[no_mangle]
static DEBUG_LOG: Global<u8> = Global::new(0);

const TARGET: &str = "edge_ebpf";

#[inline(always)]
pub fn enabled() -> bool {
    DEBUG_LOG.load() != 0
}

/// A new flow, as written to the flow table: who, which service, which backend, which source.
#[inline(always)]
pub fn new_flow(key: &FlowKey, flow: &FlowValue) {
    if enabled() {
        log_new_flow(key, flow);
    }
}

/// A SYN that got no flow, and why (it is dropped).
#[inline(always)]
pub fn refused(key: &FlowKey, service_id: u32, reason: Drop) {
    if enabled() {
        log_refused(key, service_id, reason);
    }
}

/// A non-SYN segment for a service with no flow: passed to the kernel, which resets it.
#[inline(always)]
pub fn no_flow(key: &FlowKey, tcp_flags: u8) {
    if enabled() {
        log_no_flow(key, tcp_flags);
    }
}

/// A packet on the overlay without a flow entry. Only those addressed to a source this POP
/// allocates are reported: health checks, DNS and the registration API share the overlay
/// address, but the kernel's ephemeral ports lie outside `port_min..=port_max`.
#[inline(always)]
pub fn reply_miss(config: &PopConfig, key: &FlowKey) {
    if !enabled() {
        return;
    }
    let dport = u16::from_be(key.dport);
    let allocated =
        key.dst == config.overlay_addr && (config.port_min..=config.port_max).contains(&dport);
    let snat96 =
        config.flags & edge_common::pop::POP_SNAT96 != 0 && key.dst[..12] == config.snat_prefix;
    if allocated || snat96 {
        log_reply_miss(key);
    }
}

#[inline(never)]
fn log_new_flow(key: &FlowKey, flow: &FlowValue) {
    info!(
        &(),
        target: TARGET,
        "new flow: service {} client [{:i}]:{} vip port {} -> backend {} [{:i}]:{} from [{:i}]:{}",
        flow.service_id,
        key.src,
        u16::from_be(key.sport),
        u16::from_be(key.dport),
        flow.backend_id,
        flow.new_dst,
        u16::from_be(flow.new_dport),
        flow.new_src,
        u16::from_be(flow.new_sport)
    );
}

#[inline(never)]
fn log_refused(key: &FlowKey, service_id: u32, reason: Drop) {
    let (client, sport) = (key.src, u16::from_be(key.sport));
    // One literal per reason: a string argument of varying length would be a copy of
    // non-constant size, which the verifier cannot bound.
    match reason {
        Drop::NoBackend => warn!(
            &(),
            target: TARGET,
            "SYN dropped, no eligible backend: service {} client [{:i}]:{}",
            service_id,
            client,
            sport
        ),
        Drop::PortExhausted => warn!(
            &(),
            target: TARGET,
            "SYN dropped, no free source port: service {} client [{:i}]:{}",
            service_id,
            client,
            sport
        ),
        _ => warn!(
            &(),
            target: TARGET,
            "SYN dropped, flow table full: service {} client [{:i}]:{}",
            service_id,
            client,
            sport
        ),
    }
}

#[inline(never)]
fn log_no_flow(key: &FlowKey, tcp_flags: u8) {
    info!(
        &(),
        target: TARGET,
        "no flow for a non-SYN segment (flags {:x}): client [{:i}]:{} -> [{:i}]:{}, passed to the kernel",
        tcp_flags,
        key.src,
        u16::from_be(key.sport),
        key.dst,
        u16::from_be(key.dport)
    );
}

#[inline(never)]
fn log_reply_miss(key: &FlowKey) {
    info!(
        &(),
        target: TARGET,
        "reply without flow: [{:i}]:{} -> [{:i}]:{}, passed to the kernel",
        key.src,
        u16::from_be(key.sport),
        key.dst,
        u16::from_be(key.dport)
    );
}
