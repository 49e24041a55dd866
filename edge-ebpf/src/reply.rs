//! The backend -> client direction, in TC ingress on the overlay interface: the reverse flow
//! entry restores VIP -> client (NAT64 for IPv4 clients), then the packet is redirected to its
//! next hop (`next_hop`: the kernel's routing and neighbour tables, answers kept briefly), or,
//! while the kernel has no neighbour entry for it, out of the public interface with the
//! kernel's neighbour resolution (`bpf_redirect_neigh`). From an L3 overlay such as WireGuard
//! it first gets room for a link-layer header. Going through the IP stack instead would drop
//! it: its source, the VIP, is a local address.
//!
//! Checksums go through `bpf_l4_csum_replace`, which knows whether the skb carries a full
//! checksum or a partial one (a locally generated packet with offload), and updates the
//! pseudo-header part accordingly (`BPF_F_PSEUDO_HDR`).

use core::mem::MaybeUninit;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::{bpf_redirect, bpf_redirect_neigh, bpf_skb_change_head},
    programs::TcContext,
    EbpfContext as _,
};
use edge_common::{
    flow::{FLOW_REVERSE, FLOW_TOMBSTONE, FLOW_V4_CLIENT, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    pop::POP_READY,
    FlowKey, FlowValue, PopConfig, IPPROTO_TCP,
};
use network_types::ip::Ipv6Hdr;

use crate::{
    bytes, clock, csum,
    ctx::ptr_at,
    debug_log, flow_table, icmp,
    maps::{FLOWS, HALF_OPEN, POP_CONFIG},
    next_hop,
    stats::{self, Drop},
    tcp::{self, Segment},
};

const BPF_F_PSEUDO_HDR: u64 = 0x10;
/// How far from the client's sequence number a backend's acknowledgment of a remade flow may
/// be, either way: another connection passes the test once in 8,192.
const RECOVERY_WINDOW: u32 = 256 * 1024;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;

#[repr(C)]
struct Ports {
    source: u16,
    dest: u16,
}

#[inline(always)]
pub fn reply(ctx: &TcContext) -> Result<i32, Drop> {
    let Some(config) = POP_CONFIG.get(0) else {
        return Ok(TC_ACT_OK);
    };
    if config.flags & POP_READY == 0 {
        return Ok(TC_ACT_OK);
    }
    // Constant offsets per link type keep the verifier's packet-range tracking simple.
    if config.overlay_l2_len == 0 {
        reply_at::<0>(ctx, config)
    } else {
        reply_at::<14>(ctx, config)
    }
}

#[inline(always)]
fn reply_at<const L2: usize>(ctx: &TcContext, config: &PopConfig) -> Result<i32, Drop> {
    let hash = crate::ctx::flow_hash(ctx);
    let l2 = L2;
    let tcp_off = l2 + Ipv6Hdr::LEN;
    let Some(ip) = ptr_at::<_, Ipv6Hdr>(ctx, l2) else {
        return Ok(TC_ACT_OK);
    };
    // SAFETY: bounds-checked.
    if unsafe { (*ip).next_hdr } == icmp::IPPROTO_ICMPV6 {
        // An error about a flow's POP -> backend packet goes to its client (`icmp::overlay`).
        return Ok(icmp::overlay::error::<L2>(ctx.skb.skb));
    }
    let (Some(ip), Some(hdr)) = (
        ptr_at::<_, Ipv6Hdr>(ctx, l2),
        ptr_at::<_, [u8; 20]>(ctx, tcp_off),
    ) else {
        return Ok(TC_ACT_OK);
    };
    let ports = hdr as *mut Ports;
    // Field by field (see `bytes`): a literal would go through BPF's byte-loop memmove.
    let mut key = MaybeUninit::<FlowKey>::uninit();
    let k = key.as_mut_ptr();
    // SAFETY: bounds-checked above; `k` points at this frame's key, every field written.
    let (key, seg, hop_limit, tclass, payload_len) = unsafe {
        if (*ip).vcf[0] >> 4 != 6 || (*ip).next_hdr != IPPROTO_TCP {
            return Ok(TC_ACT_OK);
        }
        bytes::copy16(&raw mut (*k).src, &raw const (*ip).src_addr);
        bytes::copy16(&raw mut (*k).dst, &raw const (*ip).dst_addr);
        (*k).sport = (*ports).source;
        (*k).dport = (*ports).dest;
        (
            key.assume_init(),
            Segment::of(hdr),
            (*ip).hop_limit,
            ((*ip).vcf[0] << 4) | ((*ip).vcf[1] >> 4),
            u16::from_be_bytes((*ip).payload_len),
        )
    };
    let tcp_flags = seg.flags;
    // A handshake's SYN-ACK finds its flow in HALF_OPEN; everything after, in FLOWS.
    let mut established = true;
    let entry = match FLOWS.get_ptr_mut(key) {
        Some(entry) => entry,
        None => match HALF_OPEN.get_ptr_mut(key) {
            // SAFETY: valid for this run.
            Some(entry) if unsafe { flow_table::tests_recovery(entry, tcp_flags) } => {
                // The backend's answer to a remade flow tells whether the source port was the
                // client's: its acknowledgment is near the sequence number of the client's
                // packet (past it with data in flight, behind it when earlier data went to a
                // wrong port); another connection's socket on that port answers with its own
                // numbers. A RST says no socket holds the port: the client's next packet tries
                // the next candidate, and only the last candidate's RST (a backend that lost
                // the connection) goes to the client.
                // SAFETY: valid for this run.
                let (flags, expected) = unsafe { ((*entry).flags, (*entry).seq) };
                let answered = flags & FLOW_TOMBSTONE == 0
                    && tcp_flags & (TCP_ACK | TCP_RST) == TCP_ACK
                    && (seg.ack.wrapping_sub(expected) <= RECOVERY_WINDOW
                        || expected.wrapping_sub(seg.ack) <= RECOVERY_WINDOW);
                if !answered {
                    if flags & FLOW_TOMBSTONE == 0 {
                        // SAFETY: a reverse entry of HALF_OPEN, valid for this run.
                        unsafe { flow_table::miss_recovery(entry) };
                    } else {
                        stats::recovery_missed();
                    }
                    return Ok(TC_ACT_SHOT);
                }
                // The backend knew the connection that was remade: established again.
                if flow_table::confirm_recovered(&key, entry) == 1 {
                    FLOWS.get_ptr_mut(key).ok_or(Drop::FlowInsert)?
                } else {
                    entry
                }
            }
            Some(entry) => {
                established = false;
                entry
            }
            None => {
                debug_log::reply_miss(config, &key);
                return Ok(TC_ACT_OK);
            }
        },
    };
    let len = ctx.len() as usize;
    let now = clock::now_ns(config);
    // SAFETY: the entry is valid for this run.
    let (flags, backend_id, new_sport, new_dport, answered_before, acks_the_last_fin) = unsafe {
        let answered_before = (*entry).tcp_flags & (TCP_SYN | TCP_RST) != 0;
        // The backend closed first and this acknowledges the client's FIN, which was recorded
        // only at the number the backend had acknowledged last (`ack`): nothing of this
        // connection is left to carry.
        let acks_the_last_fin = established
            && (*entry).tcp_flags & TCP_FIN != 0
            && tcp_flags & (TCP_SYN | TCP_FIN | TCP_RST | TCP_ACK) == TCP_ACK
            && seg.ack == (*entry).ack.wrapping_add(1);
        (*entry).tcp_flags |= tcp_flags;
        if tcp_flags & TCP_ACK != 0 {
            (*entry).ack = seg.ack;
        }
        if tcp_flags & TCP_SYN != 0 {
            // What the client's handshake ACK must acknowledge.
            (*entry).seq = seg.seq.wrapping_add(1);
        }
        (*entry).last_seen_ns = now;
        (*entry).packets += 1;
        (*entry).bytes += len as u64;
        (
            (*entry).flags,
            (*entry).backend_id,
            (*entry).new_sport,
            (*entry).new_dport,
            answered_before,
            acks_the_last_fin,
        )
    };
    if flags & FLOW_REVERSE == 0 {
        // A forward key seen on the overlay: not a reply of ours.
        return Ok(TC_ACT_OK);
    }
    stats::backend_from(backend_id, len, tcp_flags, answered_before);

    // The key's src and dst, and the entry's new_src and new_dst, are 32 contiguous bytes each.
    let old_addrs = (&key as *const FlowKey).cast::<u8>();
    let out_tcp = if flags & FLOW_V4_CLIENT != 0 {
        // SAFETY: the entry is valid for this run.
        let (vip, client) = unsafe { (&(*entry).new_src, &(*entry).new_dst) };
        let new_addrs = [
            u32::from_ne_bytes([vip[12], vip[13], vip[14], vip[15]]),
            u32::from_ne_bytes([client[12], client[13], client[14], client[15]]),
        ];
        nat64(
            ctx,
            l2,
            old_addrs,
            &new_addrs,
            tclass,
            hop_limit,
            payload_len,
        )?
    } else {
        let diff = csum::diff_raw(old_addrs, 32, entry.cast::<u8>(), 32, 0);
        ctx.l4_csum_replace(tcp_off + 16, 0, u64::from(diff), BPF_F_PSEUDO_HDR)
            .map_err(|_| Drop::ResizeFailed)?;
        let Some(ip) = ptr_at::<_, Ipv6Hdr>(ctx, l2) else {
            return Err(Drop::ResizeFailed);
        };
        // SAFETY: bounds-checked; the entry is valid for this run.
        unsafe {
            bytes::copy16(&raw mut (*ip).src_addr, &raw const (*entry).new_src);
            bytes::copy16(&raw mut (*ip).dst_addr, &raw const (*entry).new_dst);
        }
        tcp_off
    };
    let old_ports = [csum::ports_word(key.sport, key.dport)];
    let new_ports = [csum::ports_word(new_sport, new_dport)];
    let diff = csum::diff_raw(
        old_ports.as_ptr().cast(),
        4,
        new_ports.as_ptr().cast(),
        4,
        0,
    );
    ctx.l4_csum_replace(out_tcp + 16, 0, u64::from(diff), 0)
        .map_err(|_| Drop::ResizeFailed)?;
    let Some(ports) = ptr_at::<_, Ports>(ctx, out_tcp) else {
        return Err(Drop::ResizeFailed);
    };
    // SAFETY: bounds-checked.
    unsafe {
        (*ports).source = new_sport;
        (*ports).dest = new_dport;
    }
    if tcp_flags & TCP_SYN != 0 {
        tcp::clamp_mss(ctx, out_tcp, config.mss_clamp);
    }
    let v4 = flags & FLOW_V4_CLIENT != 0;
    let ip_header = if v4 { 20 } else { 40 };
    // SAFETY: the entry is valid for this run.
    let ended = acks_the_last_fin && unsafe { flow_table::client_closed_too(config, &key, entry) };
    let action = deliver::<L2>(
        ctx,
        config,
        v4,
        entry,
        payload_len.wrapping_add(ip_header),
        now,
        hash,
    );
    if ended {
        // The entry is not read after this.
        flow_table::remove_finished(&key);
    }
    action
}

/// Sends a translated packet of `tot_len` bytes at the IP layer (VIP -> client, `entry`'s new
/// addresses, IPv4-mapped when `v4`) out of the public interface: to its next hop, or, while
/// the kernel has no neighbour entry for it, with the kernel's neighbour resolution. `hash` (0:
/// none) is the flow hash it arrived with.
#[inline(always)]
pub fn deliver<const L2: usize>(
    ctx: &TcContext,
    config: &PopConfig,
    v4: bool,
    entry: *const FlowValue,
    tot_len: u16,
    now: u64,
    hash: u32,
) -> Result<i32, Drop> {
    if L2 == 0 {
        // An L3 overlay (WireGuard, TUN) delivers no link-layer header. Both ways out need
        // one: the next hop's is written into these 14 bytes, and the kernel's redirect_neigh
        // drops a packet without one (it strips that header before writing the next hop's).
        // SAFETY: the context's skb, valid for this run; packet pointers are not used after.
        let rc = unsafe { bpf_skb_change_head(ctx.as_ptr().cast(), 14, 0) };
        if rc != 0 {
            return Err(Drop::ResizeFailed);
        }
    }
    crate::ctx::keep_flow_hash(ctx, hash);
    let ether_type = if v4 { ETH_P_IP } else { ETH_P_IPV6 };
    // SAFETY: the entry is valid for this run; its addresses are the packet's new ones.
    let hop = next_hop::largest_segment(ctx, v4, tot_len).and_then(|wire_len| unsafe {
        next_hop::resolve(
            ctx,
            v4,
            &raw const (*entry).new_src,
            &raw const (*entry).new_dst,
            wire_len,
            now,
        )
    });
    let action = match (hop, ptr_at::<_, [u8; 14]>(ctx, 0)) {
        (Some(hop), Some(frame)) => {
            // SAFETY: bounds-checked; the cache slot is valid for this run.
            unsafe {
                next_hop::write_ethernet(frame, hop, ether_type);
                bpf_redirect((*hop).ifindex, 0)
            }
        }
        // SAFETY: a NULL neighbour asks the kernel to look the next hop up itself.
        _ => unsafe { bpf_redirect_neigh(config.public_ifindex, core::ptr::null_mut(), 0, 0) },
    };
    if action as i32 == TC_ACT_SHOT {
        return Err(Drop::RedirectFailed);
    }
    Ok(action as i32)
}

/// Turns the IPv6 reply into IPv4 (RFC 7915 section 5.1) and returns the new TCP offset.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn nat64(
    ctx: &TcContext,
    l2: usize,
    old_addrs: *const u8,
    new_addrs: &[u32; 2],
    tclass: u8,
    hop_limit: u8,
    payload_len: u16,
) -> Result<usize, Drop> {
    let src4 = new_addrs[0].to_ne_bytes();
    let dst4 = new_addrs[1].to_ne_bytes();
    let diff = csum::diff_raw(old_addrs, 32, new_addrs.as_ptr().cast(), 8, 0);
    ctx.change_proto(ETH_P_IP.to_be(), 0)
        .map_err(|_| Drop::ResizeFailed)?;
    let tcp_off = l2 + 20;
    let tot_len = payload_len.wrapping_add(20).to_be_bytes();
    let mut header = [
        0x45,
        tclass,
        tot_len[0],
        tot_len[1],
        0,
        0,
        0x40,
        0,
        hop_limit,
        IPPROTO_TCP,
        0,
        0,
        src4[0],
        src4[1],
        src4[2],
        src4[3],
        dst4[0],
        dst4[1],
        dst4[2],
        dst4[3],
    ];
    let words = [
        u32::from_ne_bytes([header[0], header[1], header[2], header[3]]),
        u32::from_ne_bytes([header[4], header[5], header[6], header[7]]),
        u32::from_ne_bytes([header[8], header[9], header[10], header[11]]),
        u32::from_ne_bytes(src4),
        u32::from_ne_bytes(dst4),
    ];
    let [c0, c1] = csum::ipv4_header(&words).to_ne_bytes();
    header[10] = c0;
    header[11] = c1;
    let Some(ip) = ptr_at::<_, [u8; 20]>(ctx, l2) else {
        return Err(Drop::ResizeFailed);
    };
    // SAFETY: bounds-checked.
    unsafe { *ip = header };
    if l2 == 14 {
        if let Some(eth_type) = ptr_at::<_, [u8; 2]>(ctx, 12) {
            // SAFETY: bounds-checked.
            unsafe { *eth_type = ETH_P_IP.to_be_bytes() };
        }
    }
    ctx.l4_csum_replace(tcp_off + 16, 0, u64::from(diff), BPF_F_PSEUDO_HDR)
        .map_err(|_| Drop::ResizeFailed)?;
    Ok(tcp_off)
}
