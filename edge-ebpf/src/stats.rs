//! Per-CPU counters: packet classes (`EDGE_STATS`), per service, per backend, and drops by reason.

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_REDIRECT, TC_ACT_SHOT},
    btf_maps::PerCpuArray,
    macros::btf_map,
};
use edge_common::{
    flow::{TCP_RST, TCP_SYN},
    stats::{stats_index, L3Class, L4Class},
    Counters, STATS_ENTRIES,
};

use crate::maps::{BACKEND_STATS, DROP_STATS, SERVICE_STATS};

#[btf_map]
static EDGE_STATS: PerCpuArray<Counters, { STATS_ENTRIES as usize }> = PerCpuArray::new();

#[inline(always)]
pub fn count(l3: L3Class, l4: L4Class, action: u32, frame_len: usize) {
    if let Some(slot) = EDGE_STATS.get_ptr_mut(stats_index(l3, l4, action)) {
        // SAFETY: per-CPU slot, only this CPU writes it while this program runs.
        unsafe {
            (*slot).packets += 1;
            (*slot).bytes += frame_len as u64;
        }
    }
}

/// A TC action as the XDP verdict it amounts to, so that both hooks count in the same slots.
#[inline(always)]
pub fn tc_verdict(action: i32) -> u32 {
    match action {
        TC_ACT_SHOT => xdp_action::XDP_DROP,
        TC_ACT_REDIRECT => xdp_action::XDP_REDIRECT,
        _ => xdp_action::XDP_PASS,
    }
}

/// Why a packet for a service was not translated.
#[derive(Clone, Copy)]
pub enum Drop {
    NoBackend,
    PortExhausted,
    FlowInsert,
    Unsupported,
    ResizeFailed,
    RedirectFailed,
}

#[inline(always)]
pub fn drop(reason: Drop) {
    if let Some(d) = DROP_STATS.get_ptr_mut(0) {
        // SAFETY: per-CPU slot.
        unsafe {
            match reason {
                Drop::NoBackend => (*d).no_backend += 1,
                Drop::PortExhausted => (*d).port_exhausted += 1,
                Drop::FlowInsert => (*d).flow_insert += 1,
                Drop::Unsupported => (*d).unsupported += 1,
                Drop::ResizeFailed => (*d).resize_failed += 1,
                Drop::RedirectFailed => (*d).redirect_failed += 1,
            }
        }
    }
}

/// A non-SYN packet for a VIP with no flow: passed to the kernel (see `forward`).
#[inline(always)]
pub fn no_flow() {
    if let Some(d) = DROP_STATS.get_ptr_mut(0) {
        // SAFETY: per-CPU slot.
        unsafe { (*d).no_flow += 1 }
    }
}

/// A backend's answer to a recovered flow that was not for it.
#[inline(always)]
pub fn recovery_missed() {
    if let Some(d) = DROP_STATS.get_ptr_mut(0) {
        // SAFETY: per-CPU slot.
        unsafe { (*d).recovery_missed += 1 }
    }
}

/// A half-open flow that gave its source port to a new one.
#[inline(always)]
pub fn displaced() {
    if let Some(d) = DROP_STATS.get_ptr_mut(0) {
        // SAFETY: per-CPU slot.
        unsafe { (*d).displaced += 1 }
    }
}

/// A mid-connection packet whose flow was remade (`FLOW_RECOVERED`).
#[inline(always)]
pub fn recovered() {
    if let Some(d) = DROP_STATS.get_ptr_mut(0) {
        // SAFETY: per-CPU slot.
        unsafe { (*d).recovered += 1 }
    }
}

/// A client's FIN or RST not at the sequence number the backend expects (see `FlowValue`).
#[inline(always)]
pub fn out_of_window() {
    if let Some(d) = DROP_STATS.get_ptr_mut(0) {
        // SAFETY: per-CPU slot.
        unsafe { (*d).out_of_window += 1 }
    }
}

#[inline(always)]
pub fn service_packet(service_id: u32, bytes: usize, new_flow: bool) {
    if let Some(s) = SERVICE_STATS.get_ptr_mut(service_id) {
        // SAFETY: per-CPU slot.
        unsafe {
            (*s).packets += 1;
            (*s).bytes += bytes as u64;
            if new_flow {
                (*s).new_flows += 1;
            }
        }
    }
}

#[inline(always)]
pub fn service_no_backend(service_id: u32) {
    if let Some(s) = SERVICE_STATS.get_ptr_mut(service_id) {
        // SAFETY: per-CPU slot.
        unsafe { (*s).no_backend += 1 }
    }
}

#[inline(always)]
pub fn backend_to(backend_id: u32, bytes: usize, new_flow: bool) {
    if let Some(b) = BACKEND_STATS.get_ptr_mut(backend_id) {
        // SAFETY: per-CPU slot.
        unsafe {
            (*b).packets_to += 1;
            (*b).bytes_to += bytes as u64;
            if new_flow {
                (*b).new_flows += 1;
            }
        }
    }
}

/// A packet from a backend; `answered_before` tells whether the flow had already seen the
/// backend's SYN-ACK or RST, so that each flow's answer is counted once.
#[inline(always)]
pub fn backend_from(backend_id: u32, bytes: usize, tcp_flags: u8, answered_before: bool) {
    if let Some(b) = BACKEND_STATS.get_ptr_mut(backend_id) {
        // SAFETY: per-CPU slot.
        unsafe {
            (*b).packets_from += 1;
            (*b).bytes_from += bytes as u64;
            if tcp_flags & TCP_RST != 0 {
                (*b).resets_from += 1;
                if !answered_before {
                    (*b).refused += 1;
                }
            } else if tcp_flags & TCP_SYN != 0 && !answered_before {
                (*b).syn_acks += 1;
            }
        }
    }
}

/// What became of an ICMP error about a translated flow (`icmp`).
#[derive(Clone, Copy)]
pub enum Icmp {
    ToBackend,
    ToClient,
    NoFlow,
    BadQuote,
    OutOfWindow,
    RateLimited,
    Untranslatable,
}

#[inline(always)]
pub fn icmp(event: Icmp) {
    if let Some(d) = DROP_STATS.get_ptr_mut(0) {
        // SAFETY: per-CPU slot.
        unsafe {
            match event {
                Icmp::ToBackend => (*d).icmp_to_backend += 1,
                Icmp::ToClient => (*d).icmp_to_client += 1,
                Icmp::NoFlow => (*d).icmp_no_flow += 1,
                Icmp::BadQuote => (*d).icmp_bad_quote += 1,
                Icmp::OutOfWindow => (*d).icmp_out_of_window += 1,
                Icmp::RateLimited => (*d).icmp_rate_limited += 1,
                Icmp::Untranslatable => (*d).icmp_untranslatable += 1,
            }
        }
    }
}
