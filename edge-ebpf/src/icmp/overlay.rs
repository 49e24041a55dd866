//! Errors from the overlay (a router between the POP and a backend, or the backend's host)
//! about a POP -> backend segment, in the reply program: translated to the flow's client as
//! an error from the VIP about the client's own segment (client -> VIP). An IPv4 client gets
//! ICMPv4 (RFC 7915 section 5.2), a Packet Too Big becoming a Fragmentation Needed 20 bytes
//! smaller (`v4_mtu_of_v6`). It leaves as the flow's replies do (`reply::deliver`).
//!
//! The source is the VIP: the client knows no overlay address, and a reply from the VIP is
//! what it expects of the connection (RFC 5508 section 4.2 likewise has a NAT write its own
//! address into errors that come from inside).

use aya_ebpf::{
    bindings::{__sk_buff, TC_ACT_OK, TC_ACT_SHOT},
    programs::TcContext,
};
use edge_common::{
    flow::{FLOW_REVERSE, FLOW_TOMBSTONE, FLOW_V4_CLIENT},
    pop::{POP_READY, POP_SNAT96},
    FlowKey, FlowValue, PopConfig,
};

use super::{
    allow, get, ipv4_header, load, plausible, pseudo, put, scratch, set_checksum, store,
    v4_mtu_of_v6, v6_to_v4, zero, Scratch, HEADER, INNER, IPPROTO_ICMP, IPPROTO_TCP, IPV6_MIN_MTU,
    PSEUDO, TCP, V4_DEST_UNREACH, V4_FRAG_NEEDED, V6_DEST_UNREACH, V6_PACKET_TOO_BIG,
    V6_TIME_EXCEEDED,
};
use crate::{
    bytes, clock,
    ctx::ptr_at,
    maps::{FLOWS, POP_CONFIG},
    reply,
    stats::{self, Drop, Icmp},
};

/// Offsets from the IPv6 header: ICMPv6 header, quoted IPv6 header, quoted TCP ports and
/// sequence number.
const ICMP: usize = 40;
const QUOTE: usize = ICMP + 8;
const QUOTE_TCP: usize = QUOTE + 40;
const END: usize = QUOTE_TCP + 8;
/// What NAT64 takes off: 20 outside, 20 quoted.
const SHRINK: usize = 40;
const BPF_ADJ_ROOM_NET: u32 = 0;

/// What the quote names.
enum Found {
    /// Not a TCP segment from one of the POP's translated sources.
    Other,
    /// The POP's, but no established flow: the kernel gets it, as before.
    NoFlow,
    /// A live flow's (its reverse entry); the scratch slot holds the translated headers.
    Flow(*const FlowValue),
}

/// An ICMPv6 packet arriving from the overlay (an `L2`-byte link header before it). Not
/// inlined: a stack frame of its own beside the reply path's.
#[inline(never)]
pub fn error<const L2: usize>(raw: *mut __sk_buff) -> i32 {
    let ctx = TcContext::new(raw);
    let Some(config) = POP_CONFIG.get(0) else {
        return TC_ACT_OK;
    };
    if config.flags & POP_READY == 0 {
        return TC_ACT_OK;
    }
    let Some(s) = scratch() else {
        return TC_ACT_OK;
    };
    let want = ctx.len().min((L2 + END) as u32);
    if ((ctx.data_end() - ctx.data()) as u32) < want {
        let _ = ctx.pull_data(want);
    }
    let entry = match found::<L2>(&ctx, config, s) {
        Ok(Found::Other) => return TC_ACT_OK,
        Ok(Found::NoFlow) => {
            stats::icmp(Icmp::NoFlow);
            return TC_ACT_OK;
        }
        Ok(Found::Flow(entry)) => entry,
        Err(reason) => {
            stats::icmp(reason);
            return TC_ACT_SHOT;
        }
    };
    // SAFETY: an LRU entry, valid for this run.
    let v4 = unsafe { (*entry).flags } & FLOW_V4_CLIENT != 0;
    let Some(tot_len) = rewrite::<L2>(&ctx, s, v4) else {
        stats::drop(Drop::ResizeFailed);
        return TC_ACT_SHOT;
    };
    stats::icmp(Icmp::ToClient);
    reply::deliver::<L2>(&ctx, config, v4, entry, tot_len, clock::now_ns(config), 0).unwrap_or_else(
        |reason| {
            stats::drop(reason);
            TC_ACT_SHOT
        },
    )
}

/// Puts the translated headers in the packet (NAT64 first for an IPv4 client); the IP total
/// length, or `None` if the packet could not be resized.
#[inline(always)]
fn rewrite<const L2: usize>(ctx: &TcContext, s: *mut Scratch, v4: bool) -> Option<u16> {
    if !v4 {
        let frame = ptr_at::<_, [u8; END]>(ctx, L2)?;
        // SAFETY: bounds-checked; this CPU's scratch slot.
        return Some(unsafe {
            let p = frame.cast::<u8>();
            store::<10>(p, (&raw const (*s).ip).cast());
            store::<14>(p.add(ICMP), (&raw const (*s).new[HEADER]).cast());
            u16::from_be_bytes([*p.add(4), *p.add(5)]).wrapping_add(40)
        });
    }
    // 20 bytes after the outer IPv6 header, then 20 after the link header: the quoted TCP
    // bytes land where the IPv4 layout has them, and everything before them is rewritten.
    ctx.adjust_room(-20, BPF_ADJ_ROOM_NET, 0).ok()?;
    ctx.change_proto(0x0800u16.to_be(), 0).ok()?;
    let frame = ptr_at::<_, [u8; END - SHRINK]>(ctx, L2)?;
    // SAFETY: bounds-checked; this CPU's scratch slot.
    unsafe {
        let p = frame.cast::<u8>();
        let (new, ip) = (
            (&raw const (*s).new).cast::<u32>(),
            (&raw const (*s).ip).cast::<u32>(),
        );
        store::<5>(p, ip);
        store::<2>(p.add(20), new.add(HEADER));
        store::<5>(p.add(28), new.add(INNER));
        store::<2>(p.add(48), new.add(TCP));
    }
    if L2 == 14 {
        let eth_type = ptr_at::<_, [u8; 2]>(ctx, 12)?;
        // SAFETY: bounds-checked.
        unsafe { *eth_type = [0x08, 0x00] };
    }
    // SAFETY: this CPU's scratch slot: the IPv4 header just written.
    let total = unsafe { super::get((&raw const (*s).ip).cast(), 0) };
    Some(u16::from_be_bytes([total[2], total[3]]))
}

/// The flow an overlay error quotes, checked (module comment of `icmp`).
#[inline(always)]
fn found<const L2: usize>(
    ctx: &TcContext,
    config: &PopConfig,
    s: *mut Scratch,
) -> Result<Found, Icmp> {
    let Some(head) = ptr_at::<_, [u8; QUOTE_TCP + 4]>(ctx, L2) else {
        return Ok(Found::Other);
    };
    let p = head.cast::<u8>();
    // SAFETY: bounds-checked up to the quoted ports; the key is this CPU's scratch slot.
    let (kind, code, key) = unsafe {
        let kind = *p.add(ICMP);
        if *p >> 4 != 6
            || (kind != V6_DEST_UNREACH && kind != V6_PACKET_TOO_BIG && kind != V6_TIME_EXCEEDED)
            || *p.add(QUOTE) >> 4 != 6
            || *p.add(QUOTE + 6) != IPPROTO_TCP
        {
            return Ok(Found::Other);
        }
        // The quote is POP -> backend: the reverse entry's key is backend -> POP.
        let ports = get(p.add(QUOTE_TCP).cast(), 0);
        let key = &raw mut (*s).key;
        bytes::copy16(&raw mut (*key).src, p.add(QUOTE + 24).cast());
        bytes::copy16(&raw mut (*key).dst, p.add(QUOTE + 8).cast());
        (*key).sport = u16::from_ne_bytes([ports[2], ports[3]]);
        (*key).dport = u16::from_ne_bytes([ports[0], ports[1]]);
        (kind, *p.add(ICMP + 1), key)
    };
    // SAFETY: this CPU's scratch slot.
    let key = unsafe { &*key };
    let entry = match FLOWS.get_ptr(key) {
        // SAFETY: an LRU entry, valid for this run.
        Some(e) if unsafe { (*e).flags } & (FLOW_REVERSE | FLOW_TOMBSTONE) == FLOW_REVERSE => e,
        _ => return Ok(no_flow(config, key)),
    };
    // SAFETY: bounds-checked above.
    let (to_source, len) = unsafe {
        (
            bytes::eq16(p.add(24).cast(), p.add(QUOTE + 8).cast()),
            u16::from_be_bytes([*p.add(4), *p.add(5)]),
        )
    };
    if !to_source || usize::from(len) < END - ICMP {
        return Err(Icmp::BadQuote);
    }
    let Some(full) = ptr_at::<_, [u8; END]>(ctx, L2) else {
        return Err(Icmp::BadQuote);
    };
    let p = full.cast::<u8>();
    // SAFETY: bounds-checked; the entry is valid for this run.
    let (seq, acked, flags) = unsafe {
        (
            u32::from_be_bytes(get(p.add(QUOTE_TCP + 4).cast(), 0)),
            (*entry).ack,
            (*entry).flags,
        )
    };
    // The quoted segment is the client's; the backend acknowledged `acked` of it last.
    if !plausible(seq, acked) {
        return Err(Icmp::OutOfWindow);
    }
    let v4 = flags & FLOW_V4_CLIENT != 0;
    let (kind, code) = if v4 {
        v6_to_v4(kind, code).ok_or(Icmp::Untranslatable)?
    } else {
        (kind, code)
    };
    if !allow(key, clock::now_ns(config)) {
        return Err(Icmp::RateLimited);
    }
    // SAFETY: bounds-checked; this CPU's scratch slot; the entry is valid for this run.
    unsafe {
        let (old, new) = (
            (&raw mut (*s).old).cast::<u32>(),
            (&raw mut (*s).new).cast::<u32>(),
        );
        pseudo(old.add(PSEUDO), p.add(8).cast(), p.add(24).cast(), len);
        load::<2>(old.add(HEADER), p.add(ICMP));
        let h = get(old.add(HEADER), 0);
        let old_check = u16::from_ne_bytes([h[2], h[3]]);
        put(old.add(HEADER), 0, [h[0], h[1], 0, 0]);
        load::<10>(old.add(INNER), p.add(QUOTE));
        load::<2>(old.add(TCP), p.add(QUOTE_TCP));
        // The client's own segment: client port -> service port, its sequence number.
        let (cport, vport) = (
            (*entry).new_dport.to_ne_bytes(),
            (*entry).new_sport.to_ne_bytes(),
        );
        put(new.add(TCP), 0, [cport[0], cport[1], vport[0], vport[1]]);
        put(new.add(TCP), 1, get(old.add(TCP), 1));
        let word = get(old.add(HEADER), 1);
        if v4 {
            to_v4_client(s, entry, p, kind, code, word, len);
        } else {
            to_v6_client(s, entry, p, kind, code, word, len);
        }
        set_checksum(s, old_check);
    }
    Ok(Found::Flow(entry))
}

/// The ICMPv6 error an IPv6 client gets: the same, from the VIP, about client -> VIP.
///
/// # Safety
/// `s` is this CPU's scratch slot with the old copy loaded; `entry` is valid for this run; `p`
/// has `END` bounds-checked bytes.
#[inline(always)]
unsafe fn to_v6_client(
    s: *mut Scratch,
    entry: *const FlowValue,
    p: *const u8,
    kind: u8,
    code: u8,
    mut word: [u8; 4],
    len: u16,
) {
    // SAFETY: the caller's pointers.
    unsafe {
        let (old, new, ip) = (
            (&raw const (*s).old).cast::<u32>(),
            (&raw mut (*s).new).cast::<u32>(),
            (&raw mut (*s).ip).cast::<u32>(),
        );
        let (vip, client) = (&raw const (*entry).new_src, &raw const (*entry).new_dst);
        pseudo(new.add(PSEUDO), vip, client, len);
        if kind == V6_PACKET_TOO_BIG {
            word = u32::from_be_bytes(word).max(IPV6_MIN_MTU).to_be_bytes();
        }
        put(new.add(HEADER), 0, [kind, code, 0, 0]);
        put(new.add(HEADER), 1, word);
        put(new.add(INNER), 0, get(old.add(INNER), 0));
        put(new.add(INNER), 1, get(old.add(INNER), 1));
        bytes::copy16(new.add(INNER + 2).cast(), client);
        bytes::copy16(new.add(INNER + 6).cast(), vip);
        load::<2>(ip, p);
        bytes::copy16(ip.add(2).cast(), vip);
        bytes::copy16(ip.add(6).cast(), client);
    }
}

/// The ICMPv4 error an IPv4 client gets (RFC 7915 section 5.2): `kind` and `code` already
/// translated; both IP headers IPv4 (DF, identification 0), the client's quoted segment as it
/// sent it.
///
/// # Safety
/// As for `to_v6_client`.
#[inline(always)]
unsafe fn to_v4_client(
    s: *mut Scratch,
    entry: *const FlowValue,
    p: *const u8,
    kind: u8,
    code: u8,
    word: [u8; 4],
    len: u16,
) {
    // SAFETY: the caller's pointers.
    unsafe {
        let (new, ip) = (
            (&raw mut (*s).new).cast::<u32>(),
            (&raw mut (*s).ip).cast::<u32>(),
        );
        let (vip, client) = (&(*entry).new_src, &(*entry).new_dst);
        let vip4 = [vip[12], vip[13], vip[14], vip[15]];
        let client4 = [client[12], client[13], client[14], client[15]];
        zero::<10>(new.add(PSEUDO));
        let word = if kind == V4_DEST_UNREACH && code == V4_FRAG_NEEDED {
            let [m0, m1] = v4_mtu_of_v6(u32::from_be_bytes(word)).to_be_bytes();
            [0, 0, m0, m1]
        } else {
            [0; 4]
        };
        put(new.add(HEADER), 0, [kind, code, 0, 0]);
        put(new.add(HEADER), 1, word);
        let q = p.add(QUOTE);
        let tclass = (*q << 4) | (*q.add(1) >> 4);
        let quoted_len = u16::from_be_bytes([*q.add(4), *q.add(5)]).wrapping_add(20);
        ipv4_header(
            new.add(INNER),
            tclass,
            quoted_len,
            *q.add(7),
            IPPROTO_TCP,
            [client4, vip4],
        );
        zero::<5>(new.add(INNER + 5));
        let tclass = (*p << 4) | (*p.add(1) >> 4);
        // 20 bytes less outside and 20 less quoted: the ICMPv6 payload length is the IPv4
        // total length.
        ipv4_header(ip, tclass, len, *p.add(7), IPPROTO_ICMP, [vip4, client4]);
    }
}

/// An error quoting no established flow: counted when its quote is from one of the POP's
/// translated sources (the overlay address's port range, the SNAT prefix); the kernel gets it
/// either way, as before.
#[inline(always)]
fn no_flow(config: &PopConfig, key: &FlowKey) -> Found {
    let port = u16::from_be(key.dport);
    let ours = (bytes_eq(&key.dst, &config.overlay_addr)
        && (config.port_min..=config.port_max).contains(&port))
        || (config.flags & POP_SNAT96 != 0 && in_prefix(&key.dst, &config.snat_prefix));
    if ours {
        Found::NoFlow
    } else {
        Found::Other
    }
}

#[inline(always)]
fn bytes_eq(a: &[u8; 16], b: &[u8; 16]) -> bool {
    // SAFETY: two 16-byte arrays.
    unsafe { bytes::eq16(a, b) }
}

/// Whether `addr` is in the /96 `prefix`, compared by words (a slice compare would be BPF's
/// byte-loop `memcmp`).
#[inline(always)]
fn in_prefix(addr: &[u8; 16], prefix: &[u8; 12]) -> bool {
    let word = |b: &[u8], i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    word(addr, 0) == word(prefix, 0)
        && word(addr, 4) == word(prefix, 4)
        && word(addr, 8) == word(prefix, 8)
}
