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

use aya_ebpf::{
    bindings::{xdp_action, BPF_ANY, BPF_NOEXIST},
    helpers::{bpf_ktime_get_coarse_ns, bpf_xdp_adjust_head},
    programs::XdpContext,
};
use edge_common::{
    flow::{FLOW_REVERSE, FLOW_V4_CLIENT, TCP_ACK, TCP_SYN},
    hash::flow_hash,
    ipv4_mapped,
    limits::PORT_TRIES,
    pop::POP_READY,
    service::{BACKEND_ACTIVE, NO_BACKEND},
    stats::{L3Class, L4Class},
    FlowKey, FlowValue, PopConfig, ServiceKey, ServiceValue, IPPROTO_TCP,
};
use network_types::ip::{Ipv4Hdr, Ipv6Hdr};

use crate::{
    csum,
    ctx::ptr_at,
    maps::{BACKENDS, FLOWS, MAGLEV, POP_CONFIG, SERVICES},
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
pub fn forward(ctx: &XdpContext, packet: &parse::Packet) -> Result<u32, Drop> {
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
        forward_v4(ctx, config, &service)
    } else {
        forward_v6(ctx, config, &service)
    }
}

/// Looks up the flow of `key`, creating it for a SYN. `None`: not a SYN and no flow.
#[inline(always)]
fn flow_for(
    key: &FlowKey,
    tcp_flags: u8,
    bytes: usize,
    config: &PopConfig,
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
        return Ok(None);
    }
    let backend_id = new_flow(key, tcp_flags, bytes, now, config, service, v4)?;
    stats::service_packet(service.service_id, bytes, true);
    stats::backend_to(backend_id, bytes, true);
    // Read back the entry just written, so that the rewrite works from map memory, not a copy
    // on the 512-byte stack.
    FLOWS.get_ptr_mut(key).map(Some).ok_or(Drop::FlowInsert)
}

#[inline(always)]
fn new_flow(
    key: &FlowKey,
    tcp_flags: u8,
    bytes: usize,
    now: u64,
    config: &PopConfig,
    service: &ServiceValue,
    v4: bool,
) -> Result<u32, Drop> {
    let hash = flow_hash(&key.src, &key.dst, key.sport, key.dport);
    let ring_size = config.ring_size;
    if ring_size == 0 {
        stats::service_no_backend(service.service_id);
        return Err(Drop::NoBackend);
    }
    let slot = service
        .ring
        .wrapping_mul(ring_size)
        .wrapping_add(hash % ring_size);
    let backend_id = match MAGLEV.get(slot) {
        Some(&id) if id != NO_BACKEND => id,
        _ => {
            stats::service_no_backend(service.service_id);
            return Err(Drop::NoBackend);
        }
    };
    let backend = match BACKENDS.get(backend_id) {
        Some(b) if b.flags & BACKEND_ACTIVE != 0 => *b,
        _ => {
            stats::service_no_backend(service.service_id);
            return Err(Drop::NoBackend);
        }
    };
    let family = if v4 { FLOW_V4_CLIENT } else { 0 };
    // One value on the stack, written as the reverse entry and then turned into the forward one.
    let mut value = FlowValue {
        new_src: key.dst,
        new_dst: key.src,
        new_sport: key.dport,
        new_dport: key.sport,
        service_id: service.service_id,
        backend_id,
        flags: FLOW_REVERSE | family,
        created_ns: now,
        last_seen_ns: now,
        ..FlowValue::default()
    };
    let range = u32::from(config.port_max.saturating_sub(config.port_min)) + 1;
    // Start from other hash bits than the ring slot's, so that one backend's flows spread over
    // the whole port range.
    let start = hash.rotate_left(16);
    for attempt in 0..PORT_TRIES {
        let port = (u32::from(config.port_min) + start.wrapping_add(attempt) % range) as u16;
        let reverse_key = FlowKey {
            src: backend.addr,
            dst: config.overlay_addr,
            sport: backend.port,
            dport: port.to_be(),
            proto: IPPROTO_TCP,
            _pad: [0; 3],
        };
        // NOEXIST makes the insert the allocation: a port in use by any flow to this backend
        // fails here and the next one is tried.
        if FLOWS
            .insert(&reverse_key, &value, BPF_NOEXIST as u64)
            .is_err()
        {
            continue;
        }
        value.new_src = config.overlay_addr;
        value.new_dst = backend.addr;
        value.new_sport = port.to_be();
        value.new_dport = backend.port;
        value.flags = family;
        value.tcp_flags = tcp_flags;
        value.packets = 1;
        value.bytes = bytes as u64;
        if FLOWS.insert(key, &value, BPF_ANY as u64).is_err() {
            let _ = FLOWS.remove(&reverse_key);
            return Err(Drop::FlowInsert);
        }
        return Ok(backend_id);
    }
    Err(Drop::PortExhausted)
}

#[inline(always)]
fn forward_v6(ctx: &XdpContext, config: &PopConfig, service: &ServiceValue) -> Result<u32, Drop> {
    let bytes = ctx.data_end() - ctx.data();
    let (Some(ip), Some(hdr)) = (
        ptr_at::<_, Ipv6Hdr>(ctx, ETH_LEN),
        ptr_at::<_, [u8; 20]>(ctx, V6_TCP),
    ) else {
        return Ok(xdp_action::XDP_PASS);
    };
    let ports = hdr as *mut Ports;
    // SAFETY: all three pointers were bounds-checked above.
    unsafe {
        let key = FlowKey {
            src: (*ip).src_addr,
            dst: (*ip).dst_addr,
            sport: (*ports).source,
            dport: (*ports).dest,
            proto: IPPROTO_TCP,
            _pad: [0; 3],
        };
        let tcp_flags = (*hdr)[13];
        let Some(flow) = flow_for(&key, tcp_flags, bytes, config, service, false)? else {
            return Ok(xdp_action::XDP_PASS);
        };
        let check = hdr.cast::<u8>().add(16) as *mut u16;
        // FlowKey and FlowValue both start with src, dst, sport, dport: 36 contiguous bytes
        // that cover every checksummed field the rewrite changes.
        *check = csum::replace_raw(*check, (&key as *const FlowKey).cast(), flow.cast(), 36);
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
fn forward_v4(ctx: &XdpContext, config: &PopConfig, service: &ServiceValue) -> Result<u32, Drop> {
    let bytes = ctx.data_end() - ctx.data();
    let (Some(eth), Some(ip), Some(hdr)) = (
        ptr_at::<_, [u8; 12]>(ctx, 0),
        ptr_at::<_, Ipv4Hdr>(ctx, ETH_LEN),
        ptr_at::<_, [u8; 20]>(ctx, V4_TCP),
    ) else {
        return Ok(xdp_action::XDP_PASS);
    };
    let ports = hdr as *mut Ports;
    // SAFETY: bounds-checked above; nothing is read through these pointers after adjust_head.
    let (macs, tos, tot_len, ttl, src4, dst4, key, tcp_flags, check) = unsafe {
        let src4 = (*ip).src_addr;
        let dst4 = (*ip).dst_addr;
        let key = FlowKey {
            src: ipv4_mapped(src4),
            dst: ipv4_mapped(dst4),
            sport: (*ports).source,
            dport: (*ports).dest,
            proto: IPPROTO_TCP,
            _pad: [0; 3],
        };
        (
            *eth,
            (*ip).tos,
            u16::from_be_bytes((*ip).tot_len),
            (*ip).ttl,
            src4,
            dst4,
            key,
            (*hdr)[13],
            u16::from_ne_bytes([(*hdr)[16], (*hdr)[17]]),
        )
    };
    if tot_len < 20 {
        return Err(Drop::Unsupported);
    }
    let Some(flow) = flow_for(&key, tcp_flags, bytes, config, service, true)? else {
        return Ok(xdp_action::XDP_PASS);
    };
    // The pseudo-header's length and protocol words sum the same for IPv4 and IPv6 (RFC 8200
    // section 8.1), so only the addresses and ports change the checksum.
    let old = [
        u32::from_ne_bytes(src4),
        u32::from_ne_bytes(dst4),
        csum::ports_word(key.sport, key.dport),
    ];
    let sum = csum::diff_raw(old.as_ptr().cast(), 12, flow.cast(), 36, u32::from(!check));
    let check = !csum::fold(u64::from(sum));
    // SAFETY: the flow entry stays valid for this run.
    let (new_src, new_dst, new_sport, new_dport) = unsafe {
        (
            (*flow).new_src,
            (*flow).new_dst,
            (*flow).new_sport,
            (*flow).new_dport,
        )
    };

    // SAFETY: ctx.ctx is the program's own context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -NAT46_GROWTH) } != 0 {
        return Err(Drop::ResizeFailed);
    }
    let (Some(eth), Some(ip), Some(hdr)) = (
        ptr_at::<_, [u8; 14]>(ctx, 0),
        ptr_at::<_, Ipv6Hdr>(ctx, ETH_LEN),
        ptr_at::<_, [u8; 20]>(ctx, V6_TCP),
    ) else {
        return Err(Drop::ResizeFailed);
    };
    // SAFETY: bounds-checked against the grown frame.
    unsafe {
        let mut frame = [0u8; 14];
        frame[..12].copy_from_slice(&macs);
        frame[12] = 0x86;
        frame[13] = 0xdd;
        *eth = frame;
        (*ip).vcf = [0x60 | (tos >> 4), (tos & 0x0f) << 4, 0, 0];
        (*ip).payload_len = (tot_len - 20).to_be_bytes();
        (*ip).next_hdr = IPPROTO_TCP;
        (*ip).hop_limit = ttl;
        (*ip).src_addr = new_src;
        (*ip).dst_addr = new_dst;
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
