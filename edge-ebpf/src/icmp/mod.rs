//! ICMP and ICMPv6 errors about translated flows, both ways (issue 22).
//!
//! An error quotes the packet that caused it, and that packet is the reverse of the error's own
//! direction: a router on the client's path reports a VIP -> client segment (the backend's,
//! translated), a router in the overlay a POP -> backend one (the client's, translated). The
//! quote's addresses and ports, swapped, are the key of the flow entry that translated it, so
//! one flow-table lookup finds the flow; the error is then translated as the quoted packet's
//! flow is and sent to the other end: `client` (the forward hook: from the client side to the
//! backend) and `overlay` (the reply program: from the overlay to the client). Only errors that
//! name an established flow (`FLOWS`) are translated, and only when
//!
//! - the error is addressed to the quoted packet's source (a router reports to the sender),
//! - the quote holds the whole IP header and the first 8 bytes of TCP (RFC 792, RFC 4443
//!   section 3: what a receiver needs to find its socket),
//! - the quoted sequence number is near what the quoted packet's receiver last acknowledged
//!   (`plausible`): a blind forgery must guess it, as for a RST (RFC 5961 section 4 asks the
//!   same of ICMP errors, RFC 5927 section 4.1),
//! - its type and code have a counterpart in the other family where the flow crosses families
//!   (RFC 7915 sections 4.2 and 5.2), and
//! - the flow has not had 10 errors forwarded that way in the last second (`allow`).
//!
//! A refusal drops the error and counts why (`stats::Icmp`); an error that names no established
//! flow goes to the kernel untouched, as before.
//!
//! The checksum is carried over, not recomputed over the whole quote: the bytes from the ICMP
//! header to the quoted TCP sequence number (and for ICMPv6 the pseudo-header) are laid out in
//! the same places of two 96-byte scratch copies, the old and the new, each family's smaller
//! headers padded with zeros, which add nothing to a one's-complement sum. The quote after those
//! bytes starts at an even offset in both families, so its sum is the same in the new message.
//! The quoted TCP checksum is left as it was: the quoted segment is truncated, so nobody can
//! check it, and RFC 5508 section 7 lets a NAT leave it.

pub mod client;
pub mod overlay;

use aya_ebpf::{
    bindings::BPF_ANY,
    btf_maps::{LruHashMap, PerCpuArray},
    macros::btf_map,
};
use edge_common::FlowKey;

use crate::{bytes, csum};

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_ICMPV6: u8 = 58;
const IPPROTO_TCP: u8 = 6;

/// ICMPv4 types and codes (RFC 792, RFC 1191).
const V4_DEST_UNREACH: u8 = 3;
const V4_FRAG_NEEDED: u8 = 4;
const V4_TIME_EXCEEDED: u8 = 11;
/// ICMPv6 types (RFC 4443).
const V6_DEST_UNREACH: u8 = 1;
const V6_PACKET_TOO_BIG: u8 = 2;
const V6_TIME_EXCEEDED: u8 = 3;

/// IPv6's minimum link MTU (RFC 8200 section 5): a Packet Too Big for less says nothing more
/// (Linux's TCP ignores it).
const IPV6_MIN_MTU: u32 = 1280;
/// IPv4 and IPv6 headers differ by this much: what NAT46 adds to a packet, NAT64 takes away.
const V6_GROWTH: u32 = 20;

/// Word offsets of the parts of a scratch copy (`Scratch::old`, `Scratch::new`): the ICMPv6
/// pseudo-header (addresses, length, next header), the ICMP header, the quoted IP header (an
/// IPv4 one in its first 20 bytes), the quoted TCP ports and sequence number.
const PSEUDO: usize = 0;
const HEADER: usize = 10;
const INNER: usize = 12;
const TCP: usize = 22;
const WORDS: usize = 24;

/// Per-CPU room to build a translated error in: the 512-byte BPF stack has none to spare.
#[repr(C)]
pub struct Scratch {
    /// The flow the quote names.
    pub key: FlowKey,
    pub _pad: u32,
    old: [u32; WORDS],
    new: [u32; WORDS],
    /// The new outer IP header (IPv4 in its first 20 bytes).
    ip: [u32; 10],
}

#[btf_map]
static ICMP_SCRATCH: PerCpuArray<Scratch, 1> = PerCpuArray::new();

/// How many errors a flow had forwarded in one direction since `since_ns`.
#[repr(C)]
pub struct Rate {
    since_ns: u64,
    count: u32,
    _pad: u32,
}

/// Errors forwarded per flow and direction (the flow key the quote names), at most `BURST` a
/// `PERIOD_NS`. Not pinned: a new program starts with fresh budgets. One shared LRU rather than
/// per CPU: an error's CPU follows the error's own addresses (the router's), not the flow's.
#[btf_map]
static ICMP_RATE: LruHashMap<FlowKey, Rate, 16384> = LruHashMap::new();

const BURST: u32 = 10;
const PERIOD_NS: u64 = 1_000_000_000;

/// How far behind and ahead of the receiver's last acknowledgment a quoted sequence number may
/// be. Behind: a retransmission may start below what the receiver has acknowledged since.
/// Ahead: data in flight, up to a large receive window. A blind forgery passes one time in
/// about 250, then meets the receiving kernel's own exact test (RFC 5927 section 4.1) and the
/// rate limit.
const SEQ_BEHIND: u32 = 1 << 20;
const SEQ_AHEAD: u32 = 16 << 20;

#[inline(always)]
pub fn scratch() -> Option<*mut Scratch> {
    ICMP_SCRATCH.get_ptr_mut(0)
}

/// Whether a quoted sequence number is near `acked`, the last acknowledgment of its receiver.
#[inline(always)]
pub fn plausible(seq: u32, acked: u32) -> bool {
    seq.wrapping_sub(acked).wrapping_add(SEQ_BEHIND) <= SEQ_BEHIND + SEQ_AHEAD
}

/// Takes one error from `key`'s budget at `now`; false when it is spent.
#[inline(always)]
pub fn allow(key: &FlowKey, now: u64) -> bool {
    if let Some(rate) = ICMP_RATE.get_ptr_mut(key) {
        // SAFETY: an LRU entry, valid for this run; a race with another CPU costs one count.
        unsafe {
            if now.wrapping_sub((*rate).since_ns) >= PERIOD_NS {
                (*rate).since_ns = now;
                (*rate).count = 1;
                return true;
            }
            if (*rate).count >= BURST {
                return false;
            }
            (*rate).count += 1;
        }
        return true;
    }
    let fresh = Rate {
        since_ns: now,
        count: 1,
        _pad: 0,
    };
    // Best effort: without an entry this error is still the first of its second.
    let _ = ICMP_RATE.insert(key, &fresh, BPF_ANY as u64);
    true
}

/// ICMPv4 (type, code) -> ICMPv6, RFC 7915 section 4.2. `None`: no counterpart (protocol
/// unreachable cannot concern a TCP flow; precedence violations have none).
#[inline(always)]
fn v4_to_v6(kind: u8, code: u8) -> Option<(u8, u8)> {
    match (kind, code) {
        (V4_DEST_UNREACH, 0 | 1 | 5 | 6 | 7 | 8 | 11 | 12) => Some((V6_DEST_UNREACH, 0)),
        (V4_DEST_UNREACH, 3) => Some((V6_DEST_UNREACH, 4)),
        (V4_DEST_UNREACH, V4_FRAG_NEEDED) => Some((V6_PACKET_TOO_BIG, 0)),
        (V4_DEST_UNREACH, 9 | 10 | 13 | 15) => Some((V6_DEST_UNREACH, 1)),
        (V4_TIME_EXCEEDED, 0 | 1) => Some((V6_TIME_EXCEEDED, code)),
        _ => None,
    }
}

/// ICMPv6 (type, code) -> ICMPv4, RFC 7915 section 5.2.
#[inline(always)]
fn v6_to_v4(kind: u8, code: u8) -> Option<(u8, u8)> {
    match (kind, code) {
        (V6_DEST_UNREACH, 0 | 2 | 3) => Some((V4_DEST_UNREACH, 1)),
        (V6_DEST_UNREACH, 1) => Some((V4_DEST_UNREACH, 10)),
        (V6_DEST_UNREACH, 4) => Some((V4_DEST_UNREACH, 3)),
        (V6_PACKET_TOO_BIG, _) => Some((V4_DEST_UNREACH, V4_FRAG_NEEDED)),
        (V6_TIME_EXCEEDED, 0 | 1) => Some((V4_TIME_EXCEEDED, code)),
        _ => None,
    }
}

/// The MTU a backend's IPv6 packets get from an IPv4 path of `mtu` bytes (a Fragmentation
/// Needed): NAT64 takes 20 bytes off each, so they may be 20 larger (RFC 7915 section 4.2),
/// and never below IPv6's minimum, which is all a backend can do. An old router's 0 (RFC 1191
/// section 5) is the plateau below the quoted packet's length. The overlay's own overhead is
/// not subtracted: the backend's packets are the overlay's inner packets, and its overlay
/// interface's MTU already accounts for the encapsulation.
#[inline(always)]
fn v6_mtu_of_v4(mtu: u16, quoted_len: u16) -> u32 {
    let mtu = if mtu == 0 { plateau(quoted_len) } else { mtu };
    (u32::from(mtu) + V6_GROWTH).max(IPV6_MIN_MTU)
}

/// RFC 1191 section 7's plateau table: the largest below `len`.
#[inline(always)]
fn plateau(len: u16) -> u16 {
    match len {
        32001.. => 32000,
        17915.. => 17914,
        8167.. => 8166,
        4353.. => 4352,
        2003.. => 2002,
        1493.. => 1492,
        1007.. => 1006,
        509.. => 508,
        297.. => 296,
        _ => 68,
    }
}

/// The MTU an IPv4 client's packets get from an overlay path of `mtu` bytes (a Packet Too Big
/// about their NAT46 translation): 20 less.
#[inline(always)]
fn v4_mtu_of_v6(mtu: u32) -> u16 {
    mtu.saturating_sub(V6_GROWTH).clamp(68, 65535) as u16
}

/// Sets the checksum of the new message in `s.new`: the old one, less the old bytes, plus the
/// new (RFC 1624 eqn. 3 over 96 bytes each; see the module comment). Both copies hold a zero
/// checksum field.
///
/// Not inlined, and reading the copies back from the slot: inlined, LLVM kept every word it
/// had written there in a register or a stack slot until the sum, and the frame outgrew what
/// the callers' frames leave of the 512-byte stack.
#[inline(never)]
fn set_checksum(s: *mut Scratch, old_check: u16) {
    // SAFETY: `s` is this CPU's scratch slot (every caller's), both copies complete.
    unsafe {
        let (old, new) = (
            (&raw const (*s).old).cast::<u32>(),
            (&raw const (*s).new).cast::<u32>(),
        );
        // Two plain sums: the complement of each old word is `u32::MAX` less it, and a
        // multiple of `u32::MAX` folds to nothing (one's-complement zero).
        let (mut old_sum, mut new_sum) = (0u64, 0u64);
        for i in 0..WORDS {
            old_sum += u64::from(old.add(i).read_volatile());
            new_sum += u64::from(new.add(i).read_volatile());
        }
        let sum = u64::from(!old_check) + WORDS as u64 * u64::from(u32::MAX) - old_sum + new_sum;
        let [c0, c1] = (!csum::fold(sum)).to_ne_bytes();
        let header = (&raw mut (*s).new[HEADER]).cast::<u8>();
        header.add(2).write_volatile(c0);
        header.add(3).write_volatile(c1);
    }
}

/// Copies `N` words from packet bytes at `src` to `dst`.
///
/// # Safety
/// `src` has `4 * N` bounds-checked bytes, `dst` room for `N` words.
#[inline(always)]
unsafe fn load<const N: usize>(dst: *mut u32, src: *const u8) {
    let src = src.cast::<u32>();
    for i in 0..N {
        // SAFETY: the caller's bounds; see `bytes` on unaligned packet words.
        unsafe { dst.add(i).write_volatile(src.add(i).read_volatile()) };
    }
}

/// Copies `N` words from `src` to packet bytes at `dst`.
///
/// # Safety
/// `dst` has `4 * N` bounds-checked writable bytes.
#[inline(always)]
unsafe fn store<const N: usize>(dst: *mut u8, src: *const u32) {
    let dst = dst.cast::<u32>();
    for i in 0..N {
        // SAFETY: as above.
        unsafe { dst.add(i).write_volatile(src.add(i).read_volatile()) };
    }
}

/// Writes `v` at word `i` of `words`.
///
/// # Safety
/// `words` has more than `i` words.
#[inline(always)]
unsafe fn put(words: *mut u32, i: usize, v: [u8; 4]) {
    // SAFETY: the caller's bounds.
    unsafe { words.add(i).write_volatile(u32::from_ne_bytes(v)) };
}

/// The four bytes of word `i` of `words`.
///
/// # Safety
/// `words` has more than `i` words.
#[inline(always)]
unsafe fn get(words: *const u32, i: usize) -> [u8; 4] {
    // SAFETY: the caller's bounds.
    unsafe { words.add(i).read_volatile().to_ne_bytes() }
}

/// Writes an IPv6 pseudo-header (RFC 8200 section 8.1) of `src`, `dst` and an ICMPv6 message of
/// `len` bytes at `words`.
///
/// # Safety
/// `words` has 10 writable words; `src` and `dst` 16 readable bytes each.
#[inline(always)]
unsafe fn pseudo(words: *mut u32, src: *const [u8; 16], dst: *const [u8; 16], len: u16) {
    // SAFETY: the caller's pointers.
    unsafe {
        bytes::copy16(words.cast(), src);
        bytes::copy16(words.add(4).cast(), dst);
        let [hi, lo] = len.to_be_bytes();
        put(words, 8, [0, 0, hi, lo]);
        put(words, 9, [0, 0, 0, IPPROTO_ICMPV6]);
    }
}

/// Zeroes `N` words from `words`.
///
/// # Safety
/// `words` has `N` writable words.
#[inline(always)]
unsafe fn zero<const N: usize>(words: *mut u32) {
    for i in 0..N {
        // SAFETY: the caller's bounds.
        unsafe { words.add(i).write_volatile(0) };
    }
}

/// An IPv4 header (20 bytes, no options, DF, id 0) of `len` total bytes into `words`, its
/// checksum computed.
///
/// # Safety
/// `words` has 5 writable words.
#[inline(always)]
unsafe fn ipv4_header(words: *mut u32, tos: u8, len: u16, ttl: u8, proto: u8, addrs: [[u8; 4]; 2]) {
    let [l0, l1] = len.to_be_bytes();
    let mut w = [
        u32::from_ne_bytes([0x45, tos, l0, l1]),
        u32::from_ne_bytes([0, 0, 0x40, 0]),
        u32::from_ne_bytes([ttl, proto, 0, 0]),
        u32::from_ne_bytes(addrs[0]),
        u32::from_ne_bytes(addrs[1]),
    ];
    let [c0, c1] = csum::ipv4_header(&w).to_ne_bytes();
    w[2] = u32::from_ne_bytes([ttl, proto, c0, c1]);
    for (i, word) in w.iter().enumerate() {
        // SAFETY: the caller's bounds.
        unsafe { words.add(i).write_volatile(*word) };
    }
}
