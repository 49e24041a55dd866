//! The client -> backend direction, in XDP on the public interface: service match, flow lookup,
//! new-flow setup (Maglev pick, source-port allocation) and the full-NAT rewrite, with NAT46 for
//! IPv4 clients. Translated packets are passed to the kernel, which routes them to the overlay.
//!
//! A non-SYN packet for a VIP with no flow (state lost to LRU eviction, or a stray segment) is
//! passed to the kernel untouched: the VIP is a local address of the POP, so the kernel answers
//! with a RST and the client reconnects at once. Re-picking a backend cannot resume the
//! connection anyway: the backend knows it by the source port this POP allocated, which is gone.

#![expect(
    clippy::needless_borrows_for_generic_args,
    reason = "map keys and values go by reference: a copy would cost BPF stack (512 bytes)"
)]

use aya_ebpf::maps::lpm_trie::Key;
use aya_ebpf::{
    bindings::{xdp_action, BPF_ANY, BPF_NOEXIST},
    helpers::{bpf_ktime_get_coarse_ns, bpf_xdp_adjust_head},
    programs::XdpContext,
};
use edge_common::{
    flow::{FLOW_REVERSE, FLOW_V4_CLIENT, TCP_ACK, TCP_SYN},
    geo::{AffinityKey, AffinityValue, GEO_CLASSES},
    hash::flow_hash,
    ipv4_mapped,
    limits::PORT_TRIES,
    pop::{POP_READY, POP_SNAT96},
    service::{BACKEND_ACTIVE, BACKEND_ELIGIBLE, NO_BACKEND, SERVICE_AFFINITY},
    stats::{L3Class, L4Class},
    BackendValue, FlowKey, FlowValue, PopConfig, ServiceKey, ServiceValue, IPPROTO_TCP,
};
use network_types::ip::{Ipv4Hdr, Ipv6Hdr};

use crate::{
    csum,
    ctx::ptr_at,
    debug_log,
    maps::{
        NewFlowScratch, AFFINITY, BACKENDS, FLOWS, GEO_V4, GEO_V6, MAGLEV, POP_CONFIG, SCRATCH,
        SERVICES, SERVICE_RINGS,
    },
    parse,
    stats::{self, Drop},
    tcp,
};

const ETH_LEN: usize = 14;
const V4_TCP: usize = ETH_LEN + 20;
const V6_TCP: usize = ETH_LEN + 40;
/// NAT46 grows the IP header from 20 to 40 bytes.
const NAT46_GROWTH: i32 = 20;

/// Ports of a TCP header, network byte order as stored.
#[repr(C)]
struct Ports {
    source: u16,
    dest: u16,
}

#[inline(always)]
pub fn forward(ctx: &XdpContext, packet: &parse::Packet, frame_len: usize) -> Result<u32, Drop> {
    if packet.l4 != L4Class::Tcp {
        return Ok(xdp_action::XDP_PASS);
    }
    let Some(config) = POP_CONFIG.get(0) else {
        return Ok(xdp_action::XDP_PASS);
    };
    if config.flags & POP_READY == 0 {
        return Ok(xdp_action::XDP_PASS);
    }
    let v4 = match packet.l3 {
        L3Class::Ipv4 => true,
        L3Class::Ipv6 => false,
        _ => return Ok(xdp_action::XDP_PASS),
    };
    let Some(ports) = ptr_at::<_, Ports>(ctx, packet.l4_off) else {
        return Ok(xdp_action::XDP_PASS);
    };
    let mut key = ServiceKey {
        // SAFETY: bounds-checked.
        port: unsafe { (*ports).dest },
        proto: IPPROTO_TCP,
        ..ServiceKey::default()
    };
    if v4 {
        let Some(ip) = ptr_at::<_, Ipv4Hdr>(ctx, packet.l3_off) else {
            return Ok(xdp_action::XDP_PASS);
        };
        // SAFETY: bounds-checked.
        key.addr = ipv4_mapped(unsafe { (*ip).dst_addr });
    } else {
        let Some(ip) = ptr_at::<_, Ipv6Hdr>(ctx, packet.l3_off) else {
            return Ok(xdp_action::XDP_PASS);
        };
        // SAFETY: bounds-checked.
        key.addr = unsafe { (*ip).dst_addr };
    }
    // SAFETY: the value is read once, by copy.
    let Some(service) = (unsafe { SERVICES.get(&key) }).copied() else {
        return Ok(xdp_action::XDP_PASS);
    };
    // The fast paths below work at fixed offsets: untagged frames, no IPv4 options, no IPv6
    // extension headers, no fragments.
    let fixed = if v4 { V4_TCP } else { V6_TCP };
    if packet.l3_off != ETH_LEN || packet.l4_off != fixed || packet.fragment {
        return Err(Drop::Unsupported);
    }
    if v4 {
        forward_v4(ctx, config, &service, frame_len)
    } else {
        forward_v6(ctx, config, &service, frame_len)
    }
}

/// Looks up the flow of `key`, creating it for a SYN. `None`: not a SYN and no flow.
#[inline(always)]
fn flow_for(
    key: &FlowKey,
    tcp_flags: u8,
    bytes: usize,
    service: &ServiceValue,
    v4: bool,
) -> Result<Option<*mut FlowValue>, Drop> {
    // SAFETY: no preconditions. The coarse clock (CLOCK_MONOTONIC_COARSE, jiffy resolution) is
    // plenty for idle timeouts and avoids a clocksource read per packet.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if let Some(entry) = FLOWS.get_ptr_mut(key) {
        // SAFETY: an LRU entry stays valid for this program run; counter updates may race with
        // another CPU's, which only costs a count.
        unsafe {
            (*entry).tcp_flags |= tcp_flags;
            (*entry).last_seen_ns = now;
            (*entry).packets += 1;
            (*entry).bytes += bytes as u64;
            stats::service_packet((*entry).service_id, bytes, false);
            stats::backend_to((*entry).backend_id, bytes, false);
        }
        return Ok(Some(entry));
    }
    if tcp_flags & (TCP_SYN | TCP_ACK) != TCP_SYN {
        stats::no_flow();
        debug_log::no_flow(key, tcp_flags);
        return Ok(None);
    }
    let meta = u32::from(tcp_flags) | u32::from(v4) << 8;
    let backend_id = decode(new_flow(
        key,
        service.service_id,
        service.flags,
        meta,
        bytes as u64,
    ))
    .inspect_err(|&reason| debug_log::refused(key, service.service_id, reason))?;
    stats::service_packet(service.service_id, bytes, true);
    stats::backend_to(backend_id, bytes, true);
    // Read back the entry just written, so that the rewrite works from map memory, not a copy
    // on the 512-byte stack.
    let Some(entry) = FLOWS.get_ptr_mut(key) else {
        debug_log::refused(key, service.service_id, Drop::FlowInsert);
        return Err(Drop::FlowInsert);
    };
    // SAFETY: the LRU entry stays valid for this program run.
    debug_log::new_flow(key, unsafe { &*entry });
    Ok(Some(entry))
}

/// `new_flow`'s result in one register: a backend id, or `FAILED | drop reason`.
const FAILED: u64 = 1 << 32;

#[inline(always)]
fn decode(result: u64) -> Result<u32, Drop> {
    if result & FAILED == 0 {
        return Ok(result as u32);
    }
    Err(match result as u32 {
        0 => Drop::NoBackend,
        1 => Drop::PortExhausted,
        _ => Drop::FlowInsert,
    })
}

#[inline(always)]
fn encode(result: Result<u32, Drop>) -> u64 {
    match result {
        Ok(id) => u64::from(id),
        Err(Drop::NoBackend) => FAILED,
        Err(Drop::PortExhausted) => FAILED | 1,
        Err(_) => FAILED | 2,
    }
}

/// Sets up a new flow. Not inlined: a BPF-to-BPF call gets its own stack frame, and the packet
/// path's frame plus this one fit the 512-byte limit where one merged frame does not. It takes
/// no packet pointer (the verifier's rule for calls; see TOOLCHAIN.md), only the flow key.
/// `meta` packs the TCP flags (bits 0-7) and the client family (bit 8: IPv4): a BPF call has at
/// most five arguments. (Packing the frame length too made LLVM shift packet pointers, which
/// the verifier refuses.)
#[inline(never)]
fn new_flow(key: &FlowKey, service_id: u32, service_flags: u32, meta: u32, bytes: u64) -> u64 {
    let Some(config) = POP_CONFIG.get(0) else {
        return FAILED;
    };
    // SAFETY: no preconditions; the same coarse clock as the caller's.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let service = ServiceValue {
        service_id,
        flags: service_flags,
    };
    encode(setup_flow(
        key,
        meta as u8,
        bytes as usize,
        now,
        config,
        &service,
        meta & 0x100 != 0,
    ))
}

#[inline(always)]
fn setup_flow(
    key: &FlowKey,
    tcp_flags: u8,
    bytes: usize,
    now: u64,
    config: &PopConfig,
    service: &ServiceValue,
    v4: bool,
) -> Result<u32, Drop> {
    let hash = flow_hash(&key.src, &key.dst, key.sport, key.dport);
    let Some(backend_id) = pick_backend(key, hash, now, config, service, v4) else {
        stats::service_no_backend(service.service_id);
        return Err(Drop::NoBackend);
    };
    let backend = match BACKENDS.get(backend_id) {
        Some(b) if b.flags & BACKEND_ACTIVE != 0 => b,
        _ => {
            stats::service_no_backend(service.service_id);
            return Err(Drop::NoBackend);
        }
    };
    let family = if v4 { FLOW_V4_CLIENT } else { 0 };
    let scratch = SCRATCH.get_ptr_mut(0).ok_or(Drop::FlowInsert)?;
    // SAFETY: this CPU's scratch slot, used only within this program run.
    let (value, reverse_key) = unsafe { (&mut (*scratch).value, &mut (*scratch).reverse_key) };
    // One value, written as the reverse entry and then turned into the forward one.
    // Field by field: a struct literal would be built on the stack first and copied.
    value.new_src = key.dst;
    value.new_dst = key.src;
    value.new_sport = key.dport;
    value.new_dport = key.sport;
    value.service_id = service.service_id;
    value.backend_id = backend_id;
    value.flags = FLOW_REVERSE | family;
    value.tcp_flags = 0;
    value._pad = [0; 2];
    value.created_ns = now;
    value.last_seen_ns = now;
    value.packets = 0;
    value.bytes = 0;
    reverse_key.src = backend.addr;
    reverse_key.dst = config.overlay_addr;
    reverse_key.sport = backend.port;
    reverse_key.proto = IPPROTO_TCP;
    reverse_key._pad = [0; 3];
    if v4 && config.flags & POP_SNAT96 != 0 {
        // The client's own address and port, under this POP's /96: unique as long as the
        // client's own 4-tuple is.
        reverse_key.dst[..12].copy_from_slice(&config.snat_prefix);
        reverse_key.dst[12..].copy_from_slice(&key.src[12..]);
        reverse_key.dport = key.sport;
        if let Some(claimed) = claim(key, value, reverse_key, backend, family, tcp_flags, bytes) {
            return claimed.map(|()| backend_id);
        }
        // Taken (a stale reverse half): fall back to a port of the overlay address.
        reverse_key.dst = config.overlay_addr;
    }
    let range = u32::from(config.port_max.saturating_sub(config.port_min)) + 1;
    // Start from other hash bits than the ring slot's, so that one backend's flows spread over
    // the whole port range.
    let start = hash.rotate_left(16);
    for attempt in 0..PORT_TRIES {
        let port = (u32::from(config.port_min) + start.wrapping_add(attempt) % range) as u16;
        reverse_key.dport = port.to_be();
        if let Some(claimed) = claim(key, value, reverse_key, backend, family, tcp_flags, bytes) {
            return claimed.map(|()| backend_id);
        }
    }
    Err(Drop::PortExhausted)
}

/// Claims the source address and port `reverse_key` names and records both directions of the
/// flow. `value` holds the reverse entry on entry and the forward one on return. `None`: the
/// source is in use (the NOEXIST insert is the allocation), try another.
#[inline(always)]
fn claim(
    key: &FlowKey,
    value: &mut FlowValue,
    reverse_key: &FlowKey,
    backend: &BackendValue,
    family: u8,
    tcp_flags: u8,
    bytes: usize,
) -> Option<Result<(), Drop>> {
    FLOWS
        .insert(reverse_key, &*value, BPF_NOEXIST as u64)
        .ok()?;
    value.new_src = reverse_key.dst;
    value.new_dst = backend.addr;
    value.new_sport = reverse_key.dport;
    value.new_dport = backend.port;
    value.flags = family;
    value.tcp_flags = tcp_flags;
    value.packets = 1;
    value.bytes = bytes as u64;
    if FLOWS.insert(key, &*value, BPF_ANY as u64).is_err() {
        let _ = FLOWS.remove(reverse_key);
        return Some(Err(Drop::FlowInsert));
    }
    Some(Ok(()))
}

/// This CPU's scratch flow key, with its constant fields set.
#[inline(always)]
fn scratch_key() -> Result<*mut FlowKey, Drop> {
    let scratch = SCRATCH.get_ptr_mut(0).ok_or(Drop::FlowInsert)?;
    // SAFETY: this CPU's scratch slot, used only within this program run.
    unsafe {
        let key = &raw mut (*scratch).key;
        (*key).proto = IPPROTO_TCP;
        (*key)._pad = [0; 3];
        Ok(key)
    }
}

/// The client's country class: 0 when the geo tries do not know its address.
#[inline(always)]
fn geo_class(scratch: *mut NewFlowScratch, client: &[u8; 16], v4: bool) -> u32 {
    let found = if v4 {
        let key = Key::new(32, [client[12], client[13], client[14], client[15]]);
        GEO_V4.get(&key).map(|g| g.class)
    } else {
        // SAFETY: this CPU's scratch slot.
        let key = unsafe { &mut (*scratch).geo_v6 };
        *key = Key::new(128, *client);
        GEO_V6.get(key).map(|g| g.class)
    };
    u32::from(found.unwrap_or(0))
}

/// The backend for a new flow: the client's binding if it is still eligible, else the Maglev
/// pick from the ring of the client's country class (the binding is then renewed).
#[inline(always)]
fn pick_backend(
    key: &FlowKey,
    hash: u32,
    now: u64,
    config: &PopConfig,
    service: &ServiceValue,
    v4: bool,
) -> Option<u32> {
    let scratch = SCRATCH.get_ptr_mut(0)?;
    let sticky = service.flags & SERVICE_AFFINITY != 0 && config.affinity_ttl_ns != 0;
    // SAFETY: this CPU's scratch slot, used only within this program run.
    let binding = unsafe { &mut (*scratch).binding };
    *binding = AffinityKey {
        service_id: service.service_id,
        client: key.src,
    };
    if sticky {
        if let Some(bound) = AFFINITY.get_ptr_mut(&*binding) {
            // SAFETY: the LRU entry is valid for this run.
            unsafe {
                let backend_id = (*bound).backend_id;
                let fresh = now.saturating_sub((*bound).last_used_ns) < config.affinity_ttl_ns;
                let eligible =
                    matches!(BACKENDS.get(backend_id), Some(b) if b.flags & BACKEND_ELIGIBLE != 0);
                if fresh && eligible {
                    (*bound).last_used_ns = now;
                    return Some(backend_id);
                }
            }
        }
    }
    let ring_size = config.ring_size;
    if ring_size == 0 {
        return None;
    }
    let class = geo_class(scratch, &key.src, v4);
    let ring = *SERVICE_RINGS.get(
        service
            .service_id
            .wrapping_mul(GEO_CLASSES)
            .wrapping_add(class),
    )?;
    let slot = ring.wrapping_mul(ring_size).wrapping_add(hash % ring_size);
    let backend_id = match MAGLEV.get(slot) {
        Some(&id) if id != NO_BACKEND => id,
        _ => return None,
    };
    if sticky {
        let value = AffinityValue {
            backend_id,
            _pad: 0,
            last_used_ns: now,
        };
        // Best effort: without a binding the client is simply picked again next time.
        let _ = AFFINITY.insert(&*binding, &value, BPF_ANY as u64);
    }
    Some(backend_id)
}

#[inline(always)]
fn forward_v6(
    ctx: &XdpContext,
    config: &PopConfig,
    service: &ServiceValue,
    bytes: usize,
) -> Result<u32, Drop> {
    let Some(frame) = ptr_at::<_, [u8; V6_TCP + 20]>(ctx, 0) else {
        return Ok(xdp_action::XDP_PASS);
    };
    // SAFETY: both lie inside the checked region.
    let (ip, hdr) = unsafe {
        (
            frame.cast::<u8>().add(ETH_LEN) as *mut Ipv6Hdr,
            frame.cast::<u8>().add(V6_TCP) as *mut [u8; 20],
        )
    };
    let ports = hdr as *mut Ports;
    let key = scratch_key()?;
    // SAFETY: all pointers were bounds-checked above; the key is this CPU's scratch slot.
    unsafe {
        (*key).src = (*ip).src_addr;
        (*key).dst = (*ip).dst_addr;
        (*key).sport = (*ports).source;
        (*key).dport = (*ports).dest;
        let tcp_flags = (*hdr)[13];
        let Some(flow) = flow_for(&*key, tcp_flags, bytes, service, false)? else {
            return Ok(xdp_action::XDP_PASS);
        };
        let check = hdr.cast::<u8>().add(16) as *mut u16;
        // FlowKey and FlowValue both start with src, dst, sport, dport: 36 contiguous bytes
        // that cover every checksummed field the rewrite changes.
        *check = csum::replace_raw(*check, key.cast(), flow.cast(), 36);
        (*ip).src_addr = (*flow).new_src;
        (*ip).dst_addr = (*flow).new_dst;
        (*ports).source = (*flow).new_sport;
        (*ports).dest = (*flow).new_dport;
        if tcp_flags & TCP_SYN != 0 {
            tcp::clamp_mss(ctx, V6_TCP, config.mss_clamp);
        }
    }
    Ok(xdp_action::XDP_PASS)
}

#[inline(always)]
fn forward_v4(
    ctx: &XdpContext,
    config: &PopConfig,
    service: &ServiceValue,
    bytes: usize,
) -> Result<u32, Drop> {
    // One bounds check for Ethernet, IPv4 and TCP: fewer packet-pointer values for LLVM to
    // juggle (it once merged and shifted them, which the verifier refuses).
    let Some(frame) = ptr_at::<_, [u8; V4_TCP + 20]>(ctx, 0) else {
        return Ok(xdp_action::XDP_PASS);
    };
    // SAFETY: both lie inside the checked region.
    let (ip, hdr) = unsafe {
        (
            frame.cast::<u8>().add(ETH_LEN) as *mut Ipv4Hdr,
            frame.cast::<u8>().add(V4_TCP) as *mut [u8; 20],
        )
    };
    let ports = hdr as *mut Ports;
    let key = scratch_key()?;
    // SAFETY: bounds-checked above; nothing is read through these pointers after adjust_head.
    let (tos, tot_len, ttl, tcp_flags, check, old) = unsafe {
        let src4 = (*ip).src_addr;
        let dst4 = (*ip).dst_addr;
        (*key).src = ipv4_mapped(src4);
        (*key).dst = ipv4_mapped(dst4);
        (*key).sport = (*ports).source;
        (*key).dport = (*ports).dest;
        (
            (*ip).tos,
            u16::from_be_bytes((*ip).tot_len),
            (*ip).ttl,
            (*hdr)[13],
            u16::from_ne_bytes([(*hdr)[16], (*hdr)[17]]),
            // The words the checksum covered: addresses, then both ports.
            [
                u32::from_ne_bytes(src4),
                u32::from_ne_bytes(dst4),
                u32::from_ne_bytes([(*hdr)[0], (*hdr)[1], (*hdr)[2], (*hdr)[3]]),
            ],
        )
    };
    if tot_len < 20 {
        return Err(Drop::Unsupported);
    }
    // SAFETY: this CPU's scratch slot.
    let Some(flow) = flow_for(unsafe { &*key }, tcp_flags, bytes, service, true)? else {
        return Ok(xdp_action::XDP_PASS);
    };
    // The pseudo-header's length and protocol words sum the same for IPv4 and IPv6 (RFC 8200
    // section 8.1), so only the addresses and ports change the checksum.
    let sum = csum::diff_raw(old.as_ptr().cast(), 12, flow.cast(), 36, u32::from(!check));
    let check = !csum::fold(u64::from(sum));

    // SAFETY: ctx.ctx is the program's own context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -NAT46_GROWTH) } != 0 {
        return Err(Drop::ResizeFailed);
    }
    let Some(frame) = ptr_at::<_, [u8; V6_TCP + 20]>(ctx, 0) else {
        return Err(Drop::ResizeFailed);
    };
    // SAFETY: all three lie inside the checked region.
    let (eth, ip, hdr) = unsafe {
        (
            frame as *mut [u8; 14],
            frame.cast::<u8>().add(ETH_LEN) as *mut Ipv6Hdr,
            frame.cast::<u8>().add(V6_TCP) as *mut [u8; 20],
        )
    };
    // SAFETY: bounds-checked against the grown frame; the old Ethernet header is still there,
    // 20 bytes further on, and the flow entry stays valid for this run.
    unsafe {
        let old_eth = eth.cast::<u8>().add(NAT46_GROWTH as usize) as *const [u8; 12];
        let new_eth = eth as *mut [u8; 12];
        *new_eth = *old_eth;
        (*eth)[12] = 0x86;
        (*eth)[13] = 0xdd;
        (*ip).vcf = [0x60 | (tos >> 4), (tos & 0x0f) << 4, 0, 0];
        (*ip).payload_len = (tot_len - 20).to_be_bytes();
        (*ip).next_hdr = IPPROTO_TCP;
        (*ip).hop_limit = ttl;
        (*ip).src_addr = (*flow).new_src;
        (*ip).dst_addr = (*flow).new_dst;
        let (new_sport, new_dport) = ((*flow).new_sport, (*flow).new_dport);
        let ports = hdr as *mut Ports;
        (*ports).source = new_sport;
        (*ports).dest = new_dport;
        let [c0, c1] = check.to_ne_bytes();
        (*hdr)[16] = c0;
        (*hdr)[17] = c1;
    }
    if tcp_flags & TCP_SYN != 0 {
        tcp::clamp_mss(ctx, V6_TCP, config.mss_clamp);
    }
    Ok(xdp_action::XDP_PASS)
}
