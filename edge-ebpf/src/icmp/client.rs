//! Errors from the client side (a router on the client's path, or the client itself) about a
//! VIP -> client segment, in the forward hook: translated to the backend that sent the segment,
//! as an ICMPv6 error from the POP's overlay address about the backend's own packet (backend ->
//! the flow's POP source). An IPv4 client's ICMP error becomes ICMPv6 (RFC 7915 section 4.2), a
//! Fragmentation Needed a Packet Too Big 20 bytes larger (`v6_mtu_of_v4`). From XDP the kernel
//! routes the result to the overlay; from TC the program forwards it (`forward::tc::redirect`).
//!
//! The source is the overlay address, not the reporting router's: an IPv4 router has no IPv6
//! address to give, and the overlay (WireGuard's allowed IPs, the backends' routes) carries only
//! the POP's own addresses from it (the RFC 6791 choice: a translator's own address).

use aya_ebpf::{
    bindings::{__sk_buff, xdp_action, xdp_md, TC_ACT_OK, TC_ACT_SHOT},
    helpers::bpf_xdp_adjust_head,
    programs::{TcContext, XdpContext},
};
use edge_common::{
    flow::{FLOW_REVERSE, FLOW_V4_CLIENT},
    pop::POP_READY,
    stats::L3Class,
    FlowValue, PopConfig,
};

use super::{
    allow, get, load, plausible, pseudo, put, scratch, set_checksum, store, v4_to_v6, v6_mtu_of_v4,
    zero, Scratch, HEADER, INNER, IPPROTO_ICMPV6, IPPROTO_TCP, IPV6_MIN_MTU, PSEUDO, TCP,
    V4_DEST_UNREACH, V4_TIME_EXCEEDED, V6_DEST_UNREACH, V6_PACKET_TOO_BIG, V6_TIME_EXCEEDED,
};
use crate::{
    bytes, clock,
    ctx::{ptr_at, Packet},
    forward,
    maps::{FLOWS, POP_CONFIG},
    parse,
    stats::{self, Drop, Icmp},
};

const ETH: usize = 14;
/// IPv4 error: ICMP header, quoted IPv4 header, quoted TCP ports and sequence number.
const V4_ICMP: usize = ETH + 20;
const V4_INNER: usize = V4_ICMP + 8;
const V4_TCP: usize = V4_INNER + 20;
const V4_END: usize = V4_TCP + 8;
/// IPv6 error, likewise.
const V6_ICMP: usize = ETH + 40;
const V6_INNER: usize = V6_ICMP + 8;
const V6_TCP: usize = V6_INNER + 40;
const V6_END: usize = V6_TCP + 8;
/// An IPv4 error's headers grow by this much: 20 outside, 20 quoted.
const GROWTH: usize = 40;

/// What the quote names.
enum Found {
    /// Not a TCP segment from a service port: not the data plane's.
    Other,
    /// A service's, but no established flow: the kernel gets it, as before.
    NoFlow,
    /// A live flow's; the scratch slot holds the translated headers.
    Flow,
}

/// Whether the headers sit where the rewrite expects them: untagged, IPv4 without options,
/// IPv6 without extension headers, not a fragment.
#[inline(always)]
fn fixed(packet: &parse::Packet) -> bool {
    let l4 = match packet.l3 {
        L3Class::Ipv4 => V4_ICMP,
        L3Class::Ipv6 => V6_ICMP,
        _ => return false,
    };
    packet.l3_off == ETH && packet.l4_off == l4 && !packet.fragment
}

/// XDP: an ICMP or ICMPv6 packet on the public interface.
#[inline(always)]
pub fn xdp(ctx: &XdpContext, packet: &parse::Packet) -> u32 {
    if !fixed(packet) {
        return xdp_action::XDP_PASS;
    }
    xdp_error(ctx.ctx, u32::from(packet.l3 == L3Class::Ipv4))
}

/// TC: the same; forwarded to the overlay by the program itself.
#[inline(always)]
pub fn tc(ctx: &TcContext, packet: &parse::Packet) -> i32 {
    if !fixed(packet) {
        return TC_ACT_OK;
    }
    tc_error(ctx.skb.skb, u32::from(packet.l3 == L3Class::Ipv4))
}

/// Not inlined, as the rest of the ICMP path: a BPF call gets its own stack frame, and the
/// forward path's frame stays what it was. It takes the context itself, no packet pointer.
#[inline(never)]
fn xdp_error(raw: *mut xdp_md, v4: u32) -> u32 {
    let ctx = XdpContext::new(raw);
    let (Some(config), Some(s)) = (POP_CONFIG.get(0), scratch()) else {
        return xdp_action::XDP_PASS;
    };
    if config.flags & POP_READY == 0 {
        return xdp_action::XDP_PASS;
    }
    match found(&ctx, config, s, v4 != 0) {
        Ok(Found::Other) => return xdp_action::XDP_PASS,
        Ok(Found::NoFlow) => {
            stats::icmp(Icmp::NoFlow);
            return xdp_action::XDP_PASS;
        }
        Ok(Found::Flow) => {}
        Err(reason) => {
            stats::icmp(reason);
            return xdp_action::XDP_DROP;
        }
    }
    if v4 != 0 {
        // SAFETY: the program's own context.
        if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(GROWTH as i32)) } != 0 {
            stats::drop(Drop::ResizeFailed);
            return xdp_action::XDP_DROP;
        }
        let Some(frame) = ptr_at::<_, [u8; ETH + GROWTH]>(&ctx, 0) else {
            stats::drop(Drop::ResizeFailed);
            return xdp_action::XDP_DROP;
        };
        // The MAC addresses moved with the old headers, 40 bytes on.
        // SAFETY: bounds-checked.
        unsafe {
            let p = frame.cast::<u8>();
            bytes::copy6(p.cast(), p.add(GROWTH).cast());
            bytes::copy6(p.add(6).cast(), p.add(GROWTH + 6).cast());
        }
    }
    if !write(&ctx, s) {
        stats::drop(Drop::ResizeFailed);
        return xdp_action::XDP_DROP;
    }
    stats::icmp(Icmp::ToBackend);
    // The kernel routes it to the overlay (and decrements the hop limit).
    xdp_action::XDP_PASS
}

#[inline(never)]
fn tc_error(raw: *mut __sk_buff, v4: u32) -> i32 {
    let ctx = TcContext::new(raw);
    let (Some(config), Some(s)) = (POP_CONFIG.get(0), scratch()) else {
        return TC_ACT_OK;
    };
    if config.flags & POP_READY == 0 {
        return TC_ACT_OK;
    }
    // The quote may lie beyond the linear part the forward path pulled.
    let want = ctx.len().min(if v4 != 0 { V4_END } else { V6_END } as u32);
    if ((ctx.data_end() - ctx.data()) as u32) < want {
        let _ = ctx.pull_data(want);
    }
    match found(&ctx, config, s, v4 != 0) {
        Ok(Found::Other) => return TC_ACT_OK,
        Ok(Found::NoFlow) => {
            stats::icmp(Icmp::NoFlow);
            return TC_ACT_OK;
        }
        Ok(Found::Flow) => {}
        Err(reason) => {
            stats::icmp(reason);
            return TC_ACT_SHOT;
        }
    }
    if v4 != 0 {
        // 20 bytes after the MAC header (NAT46 of the outer header), then 20 after the new
        // IPv6 header (the quoted one's growth): the quoted TCP bytes land where the IPv6
        // layout has them, and everything before them is rewritten.
        let grown = ctx.change_proto(0x86ddu16.to_be(), 0).is_ok()
            && ctx.adjust_room(20, BPF_ADJ_ROOM_NET, 0).is_ok();
        if !grown {
            stats::drop(Drop::ResizeFailed);
            return TC_ACT_SHOT;
        }
    }
    if !write(&ctx, s) {
        stats::drop(Drop::ResizeFailed);
        return TC_ACT_SHOT;
    }
    stats::icmp(Icmp::ToBackend);
    forward::tc::redirect(&ctx, config).unwrap_or_else(|reason| {
        stats::drop(reason);
        TC_ACT_SHOT
    })
}

const BPF_ADJ_ROOM_NET: u32 = 0;

/// Writes the translated IPv6 headers over the frame's first 110 bytes: EtherType, outer
/// header, ICMPv6 header, quoted header, quoted TCP ports and sequence number.
#[inline(always)]
fn write<C: Packet>(ctx: &C, s: *mut Scratch) -> bool {
    let Some(frame) = ptr_at::<_, [u8; V6_END]>(ctx, 0) else {
        return false;
    };
    // SAFETY: bounds-checked; this CPU's scratch slot.
    unsafe {
        let p = frame.cast::<u8>();
        p.add(12).write_volatile(0x86);
        p.add(13).write_volatile(0xdd);
        store::<10>(p.add(ETH), (&raw const (*s).ip).cast());
        store::<14>(p.add(V6_ICMP), (&raw const (*s).new[HEADER]).cast());
    }
    true
}

#[inline(always)]
fn found<C: Packet>(ctx: &C, config: &PopConfig, s: *mut Scratch, v4: bool) -> Result<Found, Icmp> {
    if v4 {
        found_v4(ctx, config, s)
    } else {
        found_v6(ctx, config, s)
    }
}

/// The flow an IPv4 error quotes, checked (module comment); on `Found::Flow` the scratch slot
/// holds the ICMPv6 error to send.
#[inline(always)]
fn found_v4<C: Packet>(ctx: &C, config: &PopConfig, s: *mut Scratch) -> Result<Found, Icmp> {
    let Some(head) = ptr_at::<_, [u8; V4_TCP + 4]>(ctx, 0) else {
        return Ok(Found::Other);
    };
    let p = head.cast::<u8>();
    // SAFETY: bounds-checked: up to the quoted ports. The key is this CPU's scratch slot.
    let (kind, code, tot_len, key) = unsafe {
        let kind = *p.add(V4_ICMP);
        let inner = get(p.add(V4_INNER).cast(), 0);
        let frag = get(p.add(V4_INNER).cast(), 1);
        let proto = *p.add(V4_INNER + 9);
        if (kind != V4_DEST_UNREACH && kind != V4_TIME_EXCEEDED)
            || inner[0] != 0x45
            || proto != IPPROTO_TCP
            || (frag[2] & 0x1f != 0 || frag[3] != 0)
        {
            return Ok(Found::Other);
        }
        let ports = get(p.add(V4_TCP).cast(), 0);
        if !forward::marked_port(u16::from_be_bytes([ports[0], ports[1]])) {
            return Ok(Found::Other);
        }
        // The quote is VIP -> client: the flow's key is client -> VIP.
        let key = &raw mut (*s).key;
        bytes::write_mapped(&raw mut (*key).src, get(p.add(V4_INNER + 16).cast(), 0));
        bytes::write_mapped(&raw mut (*key).dst, get(p.add(V4_INNER + 12).cast(), 0));
        (*key).sport = u16::from_ne_bytes([ports[2], ports[3]]);
        (*key).dport = u16::from_ne_bytes([ports[0], ports[1]]);
        (
            kind,
            *p.add(V4_ICMP + 1),
            u16::from_be_bytes([*p.add(ETH + 2), *p.add(ETH + 3)]),
            key,
        )
    };
    // SAFETY: this CPU's scratch slot.
    let key = unsafe { &*key };
    let entry = match FLOWS.get_ptr(key) {
        // SAFETY: an LRU entry, valid for this run.
        Some(e) if unsafe { (*e).flags } & (FLOW_REVERSE | FLOW_V4_CLIENT) == FLOW_V4_CLIENT => e,
        _ => return Ok(no_flow(key)),
    };
    // A router reports to the sender: an error about the VIP's segment is addressed to the VIP.
    // SAFETY: bounds-checked above.
    if unsafe { get(p.add(ETH + 16).cast(), 0) != get(p.add(V4_INNER + 12).cast(), 0) } {
        return Err(Icmp::BadQuote);
    }
    if usize::from(tot_len) < V4_END - ETH {
        return Err(Icmp::BadQuote);
    }
    let Some(full) = ptr_at::<_, [u8; V4_END]>(ctx, 0) else {
        return Err(Icmp::BadQuote);
    };
    let p = full.cast::<u8>();
    // SAFETY: bounds-checked; the entry is valid for this run.
    let (seq, acked, inner_len) = unsafe {
        (
            u32::from_be_bytes(get(p.add(V4_TCP + 4).cast(), 0)),
            (*entry).ack,
            u16::from_be_bytes([*p.add(V4_INNER + 2), *p.add(V4_INNER + 3)]),
        )
    };
    // The quoted segment is the backend's; the client acknowledged `acked` of it last.
    if !plausible(seq, acked) {
        return Err(Icmp::OutOfWindow);
    }
    let Some((kind6, code6)) = v4_to_v6(kind, code) else {
        return Err(Icmp::Untranslatable);
    };
    if inner_len < 20 {
        return Err(Icmp::BadQuote);
    }
    if !allow(key, clock::now_ns(config)) {
        return Err(Icmp::RateLimited);
    }
    // SAFETY: bounds-checked; this CPU's scratch slot; the entry is valid for this run.
    unsafe {
        let (old, new, ip) = (
            (&raw mut (*s).old).cast::<u32>(),
            (&raw mut (*s).new).cast::<u32>(),
            (&raw mut (*s).ip).cast::<u32>(),
        );
        zero::<10>(old.add(PSEUDO));
        load::<2>(old.add(HEADER), p.add(V4_ICMP));
        let h = get(old.add(HEADER), 0);
        let old_check = u16::from_ne_bytes([h[2], h[3]]);
        put(old.add(HEADER), 0, [h[0], h[1], 0, 0]);
        load::<5>(old.add(INNER), p.add(V4_INNER));
        zero::<5>(old.add(INNER + 5));
        load::<2>(old.add(TCP), p.add(V4_TCP));

        let len = tot_len; // 20 bytes less outside, 20 more inside: the IPv6 payload length.
        to_backend(s, entry, config, len);
        let word = if kind6 == V6_PACKET_TOO_BIG {
            let mtu = get(old.add(HEADER), 1);
            v6_mtu_of_v4(u16::from_be_bytes([mtu[2], mtu[3]]), inner_len).to_be_bytes()
        } else {
            [0; 4]
        };
        put(new.add(HEADER), 0, [kind6, code6, 0, 0]);
        put(new.add(HEADER), 1, word);
        let inner = get(old.add(INNER), 0);
        let ttl = get(old.add(INNER), 2)[0];
        let [l0, l1] = (inner_len - 20).to_be_bytes();
        put(
            new.add(INNER),
            0,
            [0x60 | inner[1] >> 4, inner[1] << 4, 0, 0],
        );
        put(new.add(INNER), 1, [l0, l1, IPPROTO_TCP, ttl]);
        let [n0, n1] = len.to_be_bytes();
        let outer = get(p.add(ETH).cast(), 0);
        put(ip, 0, [0x60 | outer[1] >> 4, outer[1] << 4, 0, 0]);
        put(ip, 1, [n0, n1, IPPROTO_ICMPV6, *p.add(ETH + 8)]);
        set_checksum(s, old_check);
    }
    Ok(Found::Flow)
}

/// The flow an IPv6 error quotes, checked; on `Found::Flow` the scratch slot holds the error to
/// send.
#[inline(always)]
fn found_v6<C: Packet>(ctx: &C, config: &PopConfig, s: *mut Scratch) -> Result<Found, Icmp> {
    let Some(head) = ptr_at::<_, [u8; V6_TCP + 4]>(ctx, 0) else {
        return Ok(Found::Other);
    };
    let p = head.cast::<u8>();
    // SAFETY: bounds-checked up to the quoted ports; the key is this CPU's scratch slot.
    let (kind, key) = unsafe {
        let kind = *p.add(V6_ICMP);
        if (kind != V6_DEST_UNREACH && kind != V6_PACKET_TOO_BIG && kind != V6_TIME_EXCEEDED)
            || *p.add(V6_INNER) >> 4 != 6
            || *p.add(V6_INNER + 6) != IPPROTO_TCP
        {
            return Ok(Found::Other);
        }
        let ports = get(p.add(V6_TCP).cast(), 0);
        if !forward::marked_port(u16::from_be_bytes([ports[0], ports[1]])) {
            return Ok(Found::Other);
        }
        let key = &raw mut (*s).key;
        bytes::copy16(&raw mut (*key).src, p.add(V6_INNER + 24).cast());
        bytes::copy16(&raw mut (*key).dst, p.add(V6_INNER + 8).cast());
        (*key).sport = u16::from_ne_bytes([ports[2], ports[3]]);
        (*key).dport = u16::from_ne_bytes([ports[0], ports[1]]);
        (kind, key)
    };
    // SAFETY: this CPU's scratch slot.
    let key = unsafe { &*key };
    let entry = match FLOWS.get_ptr(key) {
        // SAFETY: an LRU entry, valid for this run.
        Some(e) if unsafe { (*e).flags } & (FLOW_REVERSE | FLOW_V4_CLIENT) == 0 => e,
        _ => return Ok(no_flow(key)),
    };
    // SAFETY: bounds-checked above.
    let (to_vip, len) = unsafe {
        (
            bytes::eq16(p.add(ETH + 24).cast(), p.add(V6_INNER + 8).cast()),
            u16::from_be_bytes([*p.add(ETH + 4), *p.add(ETH + 5)]),
        )
    };
    if !to_vip || usize::from(len) < V6_END - V6_ICMP {
        return Err(Icmp::BadQuote);
    }
    let Some(full) = ptr_at::<_, [u8; V6_END]>(ctx, 0) else {
        return Err(Icmp::BadQuote);
    };
    let p = full.cast::<u8>();
    // SAFETY: bounds-checked; the entry is valid for this run.
    let (seq, acked) = unsafe {
        (
            u32::from_be_bytes(get(p.add(V6_TCP + 4).cast(), 0)),
            (*entry).ack,
        )
    };
    if !plausible(seq, acked) {
        return Err(Icmp::OutOfWindow);
    }
    if !allow(key, clock::now_ns(config)) {
        return Err(Icmp::RateLimited);
    }
    // SAFETY: bounds-checked; this CPU's scratch slot; the entry is valid for this run.
    unsafe {
        let (old, new, ip) = (
            (&raw mut (*s).old).cast::<u32>(),
            (&raw mut (*s).new).cast::<u32>(),
            (&raw mut (*s).ip).cast::<u32>(),
        );
        pseudo(
            old.add(PSEUDO),
            p.add(ETH + 8).cast(),
            p.add(ETH + 24).cast(),
            len,
        );
        load::<2>(old.add(HEADER), p.add(V6_ICMP));
        let h = get(old.add(HEADER), 0);
        let old_check = u16::from_ne_bytes([h[2], h[3]]);
        put(old.add(HEADER), 0, [h[0], h[1], 0, 0]);
        load::<10>(old.add(INNER), p.add(V6_INNER));
        load::<2>(old.add(TCP), p.add(V6_TCP));

        to_backend(s, entry, config, len);
        let mut word = get(old.add(HEADER), 1);
        if kind == V6_PACKET_TOO_BIG {
            // Both sides carry the same packet: the MTU stands, only IPv6's floor applies.
            word = u32::from_be_bytes(word).max(IPV6_MIN_MTU).to_be_bytes();
        }
        put(new.add(HEADER), 0, [h[0], h[1], 0, 0]);
        put(new.add(HEADER), 1, word);
        put(new.add(INNER), 0, get(old.add(INNER), 0));
        put(new.add(INNER), 1, get(old.add(INNER), 1));
        load::<2>(ip, p.add(ETH));
        set_checksum(s, old_check);
    }
    Ok(Found::Flow)
}

/// Writes what both families' errors to a backend share: the pseudo-header, the addresses of
/// the outer (overlay address -> backend) and quoted (backend -> the flow's POP source)
/// headers, the quoted ports (backend port -> POP port) and sequence number.
///
/// # Safety
/// `s` is this CPU's scratch slot with the old quote loaded; `entry` a forward entry valid for
/// this run.
#[inline(always)]
unsafe fn to_backend(s: *mut Scratch, entry: *const FlowValue, config: &PopConfig, len: u16) {
    // SAFETY: the caller's pointers.
    unsafe {
        let (new, ip) = (
            (&raw mut (*s).new).cast::<u32>(),
            (&raw mut (*s).ip).cast::<u32>(),
        );
        pseudo(
            new.add(PSEUDO),
            &raw const config.overlay_addr,
            &raw const (*entry).new_dst,
            len,
        );
        bytes::copy16(new.add(INNER + 2).cast(), &raw const (*entry).new_dst);
        bytes::copy16(new.add(INNER + 6).cast(), &raw const (*entry).new_src);
        let (dport, sport) = (
            (*entry).new_dport.to_ne_bytes(),
            (*entry).new_sport.to_ne_bytes(),
        );
        put(new.add(TCP), 0, [dport[0], dport[1], sport[0], sport[1]]);
        put(
            new.add(TCP),
            1,
            get((&raw const (*s).old).cast::<u32>().add(TCP), 1),
        );
        bytes::copy16(ip.add(2).cast(), &raw const config.overlay_addr);
        bytes::copy16(ip.add(6).cast(), &raw const (*entry).new_dst);
    }
}

/// An error quoting no established flow: counted when its quote is a service's (the kernel gets
/// it either way, as before).
#[inline(always)]
fn no_flow(key: &edge_common::FlowKey) -> Found {
    if forward::service_of(key).is_some() {
        Found::NoFlow
    } else {
        Found::Other
    }
}
