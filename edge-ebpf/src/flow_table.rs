//! The two flow tables' life cycle, shared by both directions: a flow starts in `HALF_OPEN` and
//! moves to `FLOWS` once the other side has shown it is real (see `edge_common::flow`), and a
//! client's FIN or RST counts only at the sequence number the backend expects.

#![expect(
    clippy::needless_borrows_for_generic_args,
    reason = "map keys and values go by reference: a copy would cost BPF stack (512 bytes)"
)]

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    btf_maps::LruHashMap,
};
use edge_common::{
    flow::{FLOW_RECOVERED, FLOW_TOMBSTONE, TCP_FIN, TCP_RST, TCP_SYN},
    limits::DEFAULT_FLOWS,
    pop::POP_SNAT96,
    FlowKey, FlowValue, PopConfig,
};

use crate::{
    bytes,
    maps::{FLOWS, HALF_OPEN, SCRATCH},
    stats::{self, Drop},
};

/// Writes the key of `entry`'s other direction into this CPU's scratch slot, word by word: the
/// struct `FlowValue::partner_key` returns would be copied with BPF's byte-loop `memcpy` (see
/// `bytes`).
///
/// # Safety
/// `entry` is valid for this run.
#[inline(always)]
pub unsafe fn partner_key(entry: *const FlowValue) -> Option<*mut FlowKey> {
    let scratch = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: the caller's entry; this CPU's scratch slot.
    unsafe {
        let reverse = &raw mut (*scratch).reverse_key;
        write_partner_key(entry, reverse);
        Some(reverse)
    }
}

/// Writes the key of `entry`'s other direction into `dst`.
///
/// # Safety
/// `entry` is valid for this run; `dst` is writable and not referenced elsewhere.
#[inline(always)]
pub unsafe fn write_partner_key(entry: *const FlowValue, dst: *mut FlowKey) {
    // SAFETY: the caller's pointers.
    unsafe {
        bytes::copy16(&raw mut (*dst).src, &raw const (*entry).new_dst);
        bytes::copy16(&raw mut (*dst).dst, &raw const (*entry).new_src);
        (*dst).sport = (*entry).new_dport;
        (*dst).dport = (*entry).new_sport;
    }
}

/// Removes the half-open flow whose reverse half is `reverse_key`, if there is one: a new flow
/// takes its source port. True: there was one.
#[inline(always)]
pub fn displace_half_open(reverse_key: &FlowKey) -> bool {
    let Some(held) = HALF_OPEN.get_ptr(reverse_key) else {
        return false;
    };
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: the entry is valid for this run; the slot is this CPU's and only used here.
    unsafe {
        let forward = &raw mut (*scratch).displaced;
        write_partner_key(held, forward);
        let _ = HALF_OPEN.remove(&*forward);
    }
    let _ = HALF_OPEN.remove(reverse_key);
    true
}

/// Removes the closed flow (a RST, or FINs both ways) whose reverse half in `FLOWS` is
/// `reverse_key`, if there is one: a new flow takes its source port. Closed flows wait out
/// `closed_timeout_secs` for late segments; under a stream of short connections they hold most
/// source ports, as TIME_WAIT sockets would, and the backend accepts a new SYN on such a
/// 4-tuple (RFC 6191). True: there was one.
#[inline(always)]
pub fn displace_closed(reverse_key: &FlowKey) -> bool {
    let Some(reply) = FLOWS.get_ptr(reverse_key) else {
        return false;
    };
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: the entries are valid for this run; the slot is this CPU's and only used here.
    unsafe {
        let forward_key = &raw mut (*scratch).displaced;
        write_partner_key(reply, forward_key);
        let back = (*reply).tcp_flags;
        // A reverse half without its forward one is an orphan, as good as closed.
        let forth = FLOWS
            .get_ptr(&*forward_key)
            .map_or(TCP_FIN | TCP_RST, |f| (*f).tcp_flags);
        let closed = (back | forth) & TCP_RST != 0 || back & forth & TCP_FIN != 0;
        if !closed {
            return false;
        }
        let _ = FLOWS.remove(&*forward_key);
    }
    let _ = FLOWS.remove(reverse_key);
    true
}

/// Whether a flow recovered for the client packet of `key` may take the source `reverse_key`
/// names in `HALF_OPEN`: free, or a tombstone another client left (which goes). A tombstone of
/// this client's own says the port was tried and was not its: the next candidate is.
#[inline(always)]
pub fn may_recover_into(reverse_key: &FlowKey, key: &FlowKey) -> bool {
    let Some(held) = HALF_OPEN.get_ptr(reverse_key) else {
        return true;
    };
    // SAFETY: valid for this run.
    unsafe {
        if (*held).flags & FLOW_TOMBSTONE == 0 || is_partner(held, key) {
            return false;
        }
    }
    let _ = HALF_OPEN.remove(reverse_key);
    true
}

/// Whether `tcp_flags`, of a backend's segment to the half-open reverse entry `entry`, is an
/// answer that tells if the entry's remade flow found the client's source port: anything but a
/// SYN, except a RST at the last candidate port (the backend lost the connection: the client
/// is told).
///
/// # Safety
/// `entry` is an entry of `HALF_OPEN`, valid for this run.
#[inline(always)]
pub unsafe fn tests_recovery(entry: *const FlowValue, tcp_flags: u8) -> bool {
    // SAFETY: the caller's entry.
    let (flags, ports_left) = unsafe { ((*entry).flags, (*entry).recovery_ports_left) };
    flags & FLOW_RECOVERED != 0
        && tcp_flags & TCP_SYN == 0
        && (tcp_flags & TCP_RST == 0 || ports_left > 0 || flags & FLOW_TOMBSTONE != 0)
}

/// The backend answered the recovered flow whose reverse half is `entry` as for another
/// connection (its acknowledgment is not near the client's sequence number) or with a RST: the
/// source port was not the client's. The reverse half becomes a tombstone and the forward one
/// goes, so that the client's next packet recovers onto the next candidate port.
///
/// # Safety
/// `entry` is a reverse entry of `HALF_OPEN`, valid for this run.
#[inline(always)]
pub unsafe fn miss_recovery(entry: *mut FlowValue) {
    // SAFETY: the caller's entry; the scratch slot is this CPU's.
    unsafe {
        (*entry).flags |= FLOW_TOMBSTONE;
        if let Some(forward) = partner_key(entry) {
            let _ = HALF_OPEN.remove(&*forward);
        }
    }
    stats::recovery_missed();
}

/// Whether `seq`, a client's FIN or RST, is the sequence number the backend acknowledged
/// last: RFC 5961 section 3.2's test for a RST that resets. A blind attacker must guess it
/// among 2^32. A FIN or RST sent while data of the client's is still unacknowledged fails it
/// too; it still reaches the backend, whose own FIN or silence then ends the flow.
///
/// # Safety
/// `entry` is a forward entry of `FLOWS`, valid for this run.
#[inline(always)]
pub unsafe fn expected_by_backend(entry: *const FlowValue, seq: u32) -> bool {
    // SAFETY: the caller's entry.
    let Some(reverse) = (unsafe { partner_key(entry) }) else {
        return false;
    };
    // SAFETY: this CPU's scratch slot, just written.
    match FLOWS.get_ptr(unsafe { &*reverse }) {
        // SAFETY: valid for this run.
        Some(reply) => unsafe { (*reply).ack == seq },
        None => false,
    }
}

/// Moves a half-open flow to `FLOWS` when `ack`, the client's, completes its handshake
/// (acknowledges the backend's SYN-ACK). 1: moved, and `entry` is gone from `HALF_OPEN`; 0: not
/// (yet) complete, or it could not be moved. Not inlined: a stack frame of its own.
#[inline(never)]
pub fn confirm(key: &FlowKey, entry: *mut FlowValue, ack: u32) -> u32 {
    // SAFETY: the caller's half-open entry, valid for this run.
    let Some(reverse) = (unsafe { partner_key(entry) }) else {
        return 0;
    };
    // SAFETY: this CPU's scratch slot, just written.
    let reverse = unsafe { &*reverse };
    let Some(reply) = HALF_OPEN.get_ptr_mut(reverse) else {
        return 0;
    };
    // SAFETY: valid for this run.
    if unsafe { (*reply).tcp_flags & TCP_SYN == 0 || (*reply).seq != ack } {
        return 0;
    }
    // SAFETY: both entries are valid for this run.
    unsafe { promote(key, entry, reverse, reply) }
}

/// Moves a recovered half-open flow (`FLOW_RECOVERED`) to `FLOWS` when its backend answers
/// with anything but a RST: the backend knew the connection. 1: moved, `entry` is gone from
/// `HALF_OPEN`.
#[inline(never)]
pub fn confirm_recovered(key: &FlowKey, entry: *mut FlowValue) -> u32 {
    // SAFETY: the caller's half-open reverse entry, valid for this run.
    let Some(forward_key) = (unsafe { partner_key(entry) }) else {
        return 0;
    };
    // SAFETY: this CPU's scratch slot, just written.
    let forward_key = unsafe { &*forward_key };
    let Some(forward) = HALF_OPEN.get_ptr_mut(forward_key) else {
        return 0;
    };
    // SAFETY: both entries are valid for this run.
    unsafe { promote(forward_key, forward, key, entry) }
}

/// Copies both halves of a half-open flow into `FLOWS` and removes them from `HALF_OPEN`.
///
/// # Safety
/// Both entries are `HALF_OPEN`'s, valid for this run.
#[inline(always)]
unsafe fn promote(
    forward_key: &FlowKey,
    forward: *const FlowValue,
    reverse_key: &FlowKey,
    reverse: *const FlowValue,
) -> u32 {
    // The reverse key is this flow's source address and port: not yet in FLOWS, unless
    // another flow took it there since the SYN (`claim` checked). NOEXIST keeps that one.
    // SAFETY: the caller's entries.
    if FLOWS
        .insert(reverse_key, unsafe { &*reverse }, BPF_NOEXIST as u64)
        .is_err()
    {
        stats::drop(Drop::FlowInsert);
        return 0;
    }
    // SAFETY: as above.
    if FLOWS
        .insert(forward_key, unsafe { &*forward }, BPF_ANY as u64)
        .is_err()
    {
        let _ = FLOWS.remove(reverse_key);
        stats::drop(Drop::FlowInsert);
        return 0;
    }
    let _ = HALF_OPEN.remove(reverse_key);
    let _ = HALF_OPEN.remove(forward_key);
    1
}

/// Whether `entry`, a reverse half, belongs to the connection whose client packet has `key`.
///
/// # Safety
/// `entry` is valid for this run.
#[inline(always)]
pub unsafe fn is_partner(entry: *const FlowValue, key: &FlowKey) -> bool {
    // SAFETY: the caller's entry and key.
    unsafe {
        (*entry).new_sport == key.dport
            && (*entry).new_dport == key.sport
            && bytes::eq16(&raw const (*entry).new_dst, &raw const key.src)
            && bytes::eq16(&raw const (*entry).new_src, &raw const key.dst)
    }
}

/// Removes both halves of the flow of `key`, whose forward entry in `table` is `entry`: its
/// source address and port are free again for `new_flow`, and a later packet of the new flow
/// must not find the old entry.
///
/// # Safety
/// `entry` is `key`'s entry in `table`, valid for this run.
#[inline(always)]
pub unsafe fn end_flow<const FLAGS: usize>(
    table: &LruHashMap<FlowKey, FlowValue, { DEFAULT_FLOWS as usize }, FLAGS>,
    key: &FlowKey,
    entry: *const FlowValue,
) {
    // SAFETY: the caller's entry.
    if let Some(reverse) = unsafe { partner_key(entry) } {
        // SAFETY: this CPU's scratch slot, just written; `new_flow` rewrites it before use.
        let _ = table.remove(unsafe { &*reverse });
    }
    let _ = table.remove(key);
}

/// Whether the flow whose reverse half (`reverse_key`, `entry`) the backend's final ACK just
/// passed through is over: its client sent its FIN too, and the client's address and port are
/// the source the backend sees (`POP_SNAT96`), so that only this client can reuse the 4-tuple
/// the backend keeps in TIME_WAIT, as without a POP. A POP source port freed at once could go
/// to another client's connection, which that TIME_WAIT would refuse: such flows wait out
/// `closed_timeout_secs` instead. Leaves the forward key in this CPU's scratch slot for
/// `remove_finished`.
///
/// # Safety
/// `entry` is a reverse entry of `FLOWS`, valid for this run.
#[inline(always)]
pub unsafe fn client_closed_too(
    config: &PopConfig,
    reverse_key: &FlowKey,
    entry: *const FlowValue,
) -> bool {
    if config.flags & POP_SNAT96 == 0 {
        return false;
    }
    // SAFETY: 12 bytes each; the key's address and the config's prefix are word-aligned.
    if !unsafe { bytes::eq12(reverse_key.dst.as_ptr(), config.snat_prefix.as_ptr()) } {
        return false;
    }
    // SAFETY: the caller's entry.
    let Some(forward_key) = (unsafe { partner_key(entry) }) else {
        return false;
    };
    // SAFETY: this CPU's scratch slot, just written; the entry is valid for this run.
    match FLOWS.get_ptr(unsafe { &*forward_key }) {
        Some(forward) => unsafe { (*forward).tcp_flags & TCP_FIN != 0 },
        None => false,
    }
}

/// Removes both halves of a finished flow: the reverse one by `reverse_key`, the forward one by
/// the key `client_closed_too` left in this CPU's scratch slot.
#[inline(always)]
pub fn remove_finished(reverse_key: &FlowKey) {
    if let Some(scratch) = SCRATCH.get_ptr_mut(0) {
        // SAFETY: this CPU's scratch slot, written by `client_closed_too` in this run.
        let _ = FLOWS.remove(unsafe { &(*scratch).reverse_key });
    }
    let _ = FLOWS.remove(reverse_key);
}
