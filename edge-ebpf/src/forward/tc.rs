//! The TC rewrite: the same full NAT on the skb, then the program forwards the packet itself.
//!
//! NAT46 goes through `bpf_skb_change_proto` (which also fixes the GSO type and size of a
//! coalesced packet), checksums through the kernel's helpers, which know a partial checksum
//! (offload) from a full one. `bpf_fib_lookup` then asks the kernel's routing and neighbour
//! tables for the next hop and `bpf_redirect` hands the frame to the overlay device, skipping the
//! IP stack on the way (`next_hop` keeps its answers briefly). Where it cannot (no
//! neighbour entry yet: the kernel resolves it; an L3 overlay such as WireGuard; a packet over
//! the route's MTU, a coalesced one by its segments; a hop limit about to expire), the
//! translated packet goes up the stack instead, as from XDP.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::bpf_redirect,
    programs::TcContext,
};
use edge_common::{flow::TCP_SYN, stats::L4Class, FlowKey, FlowValue, PopConfig, IPPROTO_TCP};
use network_types::ip::Ipv6Hdr;

use super::{candidate, flow_for, read_v4, scratch_key, Ports, V4Fields, ETH_LEN, V4_TCP, V6_TCP};
use crate::{
    bytes, clock, csum, ctx::ptr_at, icmp, next_hop, parse, stats::Drop, tcp, tcp::Segment,
};

const BPF_F_PSEUDO_HDR: u64 = 0x10;
const ETH_P_IPV6: u16 = 0x86dd;

/// The bytes of a flow key or value that the rewrite changes: addresses (32), ports (4).
const ADDRS_LEN: u32 = 32;
const PORTS_LEN: u32 = 4;

#[inline(always)]
pub fn forward(ctx: &TcContext, frame_len: usize) -> (parse::Packet, Result<i32, Drop>) {
    // A driver may leave headers outside the linear area that direct access sees. Pulled only
    // when short of them: the helper also makes the packet writable, which is not free.
    let linear = (ctx.data_end() - ctx.data()) as u32;
    let need = match ptr_at::<_, [u8; 14]>(ctx, 0) {
        // SAFETY: bounds-checked.
        Some(eth) if unsafe { (*eth)[12] == 0x86 && (*eth)[13] == 0xdd } => V6_TCP + 20,
        _ => V4_TCP + 20,
    } as u32;
    let want = ctx.len().min(need);
    if linear < want {
        let _ = ctx.pull_data(want);
    }
    let packet = parse::classify(ctx);
    let result = translate(ctx, &packet, frame_len);
    (packet, result)
}

#[inline(always)]
fn translate(ctx: &TcContext, packet: &parse::Packet, frame_len: usize) -> Result<i32, Drop> {
    if packet.l4 == L4Class::Icmp {
        // An error about a flow goes to its backend (`icmp::client`); echo and the rest pass.
        return Ok(icmp::client::tc(ctx, packet));
    }
    let Some(matched) = candidate(ctx, packet)? else {
        return Ok(TC_ACT_OK);
    };
    let hash = crate::ctx::flow_hash(ctx);
    let translated = if matched.v4 {
        forward_v4(ctx, matched.config, frame_len)?
    } else {
        forward_v6(ctx, matched.config, frame_len)?
    };
    if !translated {
        return Ok(TC_ACT_OK);
    }
    crate::ctx::keep_flow_hash(ctx, hash);
    redirect(ctx, matched.config)
}

/// Rewrites an IPv6 packet in place. False: no flow and not a SYN (left to the kernel).
#[inline(always)]
fn forward_v6(ctx: &TcContext, config: &PopConfig, bytes: usize) -> Result<bool, Drop> {
    let Some(frame) = ptr_at::<_, [u8; V6_TCP + 20]>(ctx, 0) else {
        return Ok(false);
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
    // SAFETY: bounds-checked above; the key is this CPU's scratch slot.
    let seg = unsafe {
        bytes::copy16(&raw mut (*key).src, &raw const (*ip).src_addr);
        bytes::copy16(&raw mut (*key).dst, &raw const (*ip).dst_addr);
        (*key).sport = (*ports).source;
        (*key).dport = (*ports).dest;
        Segment::of(hdr)
    };
    let tcp_flags = seg.flags;
    // SAFETY: this CPU's scratch slot.
    let Some(flow) = flow_for(config, unsafe { &*key }, seg, bytes, false)? else {
        return Ok(false);
    };
    let addrs = csum::diff_raw(key.cast(), ADDRS_LEN, flow.cast(), ADDRS_LEN, 0);
    finish(ctx, config, key, flow, addrs, tcp_flags)
}

/// Turns an IPv4 packet into the IPv6 one of its flow (NAT46). False: no flow and not a SYN.
#[inline(always)]
fn forward_v4(ctx: &TcContext, config: &PopConfig, bytes: usize) -> Result<bool, Drop> {
    let Some((key, v4)) = read_v4(ctx)? else {
        return Ok(false);
    };
    let V4Fields {
        tos,
        tot_len,
        ttl,
        seg,
        old,
        ..
    } = v4;
    let tcp_flags = seg.flags;
    // SAFETY: this CPU's scratch slot.
    let Some(flow) = flow_for(config, unsafe { &*key }, seg, bytes, true)? else {
        return Ok(false);
    };
    // The pseudo-header's length and protocol words sum the same for IPv4 and IPv6 (RFC 8200
    // section 8.1): only the addresses change it.
    let addrs = csum::diff_raw(old.as_ptr().cast(), 8, flow.cast::<u8>(), ADDRS_LEN, 0);
    ctx.change_proto(ETH_P_IPV6.to_be(), 0)
        .map_err(|_| Drop::ResizeFailed)?;
    let Some(frame) = ptr_at::<_, [u8; V6_TCP]>(ctx, 0) else {
        return Err(Drop::ResizeFailed);
    };
    // SAFETY: bounds-checked against the grown packet.
    unsafe {
        let ip = frame.cast::<u8>().add(ETH_LEN) as *mut Ipv6Hdr;
        (*frame)[12] = 0x86;
        (*frame)[13] = 0xdd;
        (*ip).vcf = [0x60 | (tos >> 4), (tos & 0x0f) << 4, 0, 0];
        (*ip).payload_len = (tot_len - 20).to_be_bytes();
        (*ip).next_hdr = IPPROTO_TCP;
        (*ip).hop_limit = ttl;
    }
    finish(ctx, config, key, flow, addrs, tcp_flags)
}

/// The rest of both rewrites, on the IPv6 packet: the address change `addrs` (pseudo-header)
/// and the port change (segment) applied to the TCP checksum, the flow's addresses and ports
/// written, a SYN's MSS clamped.
#[inline(always)]
fn finish(
    ctx: &TcContext,
    config: &PopConfig,
    key: *mut FlowKey,
    flow: *mut FlowValue,
    addrs: u32,
    tcp_flags: u8,
) -> Result<bool, Drop> {
    // FlowKey and FlowValue both start with the two addresses, then the two ports.
    // SAFETY: both structs are longer than 36 bytes.
    let ports = unsafe {
        csum::diff_raw(
            key.cast::<u8>().add(ADDRS_LEN as usize),
            PORTS_LEN,
            flow.cast::<u8>().add(ADDRS_LEN as usize),
            PORTS_LEN,
            0,
        )
    };
    let check = V6_TCP + 16;
    ctx.l4_csum_replace(check, 0, u64::from(addrs), BPF_F_PSEUDO_HDR)
        .map_err(|_| Drop::ResizeFailed)?;
    ctx.l4_csum_replace(check, 0, u64::from(ports), 0)
        .map_err(|_| Drop::ResizeFailed)?;
    write_addresses_and_ports(ctx, flow)?;
    if tcp_flags & TCP_SYN != 0 {
        tcp::clamp_mss(ctx, V6_TCP, config.mss_clamp);
    }
    Ok(true)
}

/// Writes the flow's new addresses and ports into the IPv6 packet.
#[inline(always)]
fn write_addresses_and_ports(ctx: &TcContext, flow: *mut FlowValue) -> Result<(), Drop> {
    // Looked up again: the checksum helpers may have moved the packet.
    let Some(frame) = ptr_at::<_, [u8; V6_TCP + 4]>(ctx, 0) else {
        return Err(Drop::ResizeFailed);
    };
    // SAFETY: bounds-checked; the flow entry stays valid for this run.
    unsafe {
        let ip = frame.cast::<u8>().add(ETH_LEN) as *mut Ipv6Hdr;
        let ports = frame.cast::<u8>().add(V6_TCP) as *mut Ports;
        bytes::copy16(&raw mut (*ip).src_addr, &raw const (*flow).new_src);
        bytes::copy16(&raw mut (*ip).dst_addr, &raw const (*flow).new_dst);
        (*ports).source = (*flow).new_sport;
        (*ports).dest = (*flow).new_dport;
    }
    Ok(())
}

/// Sends the translated packet to its next hop on the overlay, or up the stack when there is no
/// complete answer (see `next_hop`).
#[inline(always)]
pub(crate) fn redirect(ctx: &TcContext, config: &PopConfig) -> Result<i32, Drop> {
    if config.overlay_l2_len == 0 {
        return Ok(TC_ACT_OK);
    }
    let Some(frame) = ptr_at::<_, [u8; V6_TCP]>(ctx, 0) else {
        return Ok(TC_ACT_OK);
    };
    // SAFETY: bounds-checked.
    let ip = unsafe { frame.cast::<u8>().add(ETH_LEN) as *mut Ipv6Hdr };
    // SAFETY: as above.
    let (hop_limit, tot_len) = unsafe {
        (
            (*ip).hop_limit,
            u16::from_be_bytes((*ip).payload_len).wrapping_add(Ipv6Hdr::LEN as u16),
        )
    };
    if hop_limit <= 1 {
        // The kernel answers with Time Exceeded.
        return Ok(TC_ACT_OK);
    }
    let Some(wire_len) = next_hop::largest_segment(ctx, false, tot_len) else {
        return Ok(TC_ACT_OK);
    };
    // SAFETY: bounds-checked addresses of the packet.
    let hop = unsafe {
        next_hop::resolve(
            ctx,
            false,
            &raw const (*ip).src_addr,
            &raw const (*ip).dst_addr,
            wire_len,
            clock::now_ns(config),
        )
    };
    let Some(hop) = hop else {
        return Ok(TC_ACT_OK);
    };
    // SAFETY: bounds-checked; the cache slot is valid for this run.
    let action = unsafe {
        next_hop::write_ethernet(frame.cast(), hop, ETH_P_IPV6);
        (*ip).hop_limit = hop_limit - 1;
        bpf_redirect((*hop).ifindex, 0)
    };
    if action as i32 == TC_ACT_SHOT {
        return Err(Drop::RedirectFailed);
    }
    Ok(action as i32)
}
