//! Next hops of the packets the TC programs forward themselves (`bpf_redirect`, skipping the IP
//! stack): the kernel's routing and neighbour tables answer through `bpf_fib_lookup`, and the
//! answer is kept per CPU for 100 ms in a small direct-mapped cache keyed by destination. The
//! lookup costs more than the rest of a program, and a bulk flow sends thousands of packets to
//! the same next hop in that time; a changed route or neighbour is seen at most that late.

use aya_ebpf::{
    bindings::bpf_fib_lookup as FibParams, btf_maps::PerCpuArray, helpers::bpf_fib_lookup,
    macros::btf_map, programs::TcContext, EbpfContext as _,
};
use edge_common::IPPROTO_TCP;

use crate::{
    bytes,
    ctx::ptr_at,
    forward::{V4_TCP, V6_TCP},
    maps::SCRATCH,
};

const SLOTS: u32 = 1024;
const TTL_NS: u64 = 100_000_000;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const FIB_SUCCESS: i64 = 0;

/// One cached answer: where packets to `dst` (IPv4-mapped for IPv4) leave, and the Ethernet
/// addresses they leave with.
#[repr(C)]
pub struct NextHop {
    pub dst: [u8; 16],
    pub ifindex: u32,
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    pub expires_ns: u64,
}

/// Not pinned: a new program starts with an empty cache.
#[btf_map]
static NEXT_HOPS: PerCpuArray<NextHop, { SLOTS as usize }> = PerCpuArray::new();

/// The next hop of a packet from `src` to `dst` (both 16 bytes, IPv4-mapped when `v4`) of
/// `tot_len` bytes at the IP layer, arriving on the program's interface at `now`
/// (`clock::now_ns`). `None`: the kernel has no complete answer (no route, no neighbour entry
/// yet, over the route's MTU); the caller lets the stack handle the packet, which resolves the
/// neighbour or sends the ICMP error itself.
#[inline(always)]
pub fn resolve(
    ctx: &TcContext,
    v4: bool,
    src: *const [u8; 16],
    dst: *const [u8; 16],
    tot_len: u16,
    now: u64,
) -> Option<*const NextHop> {
    // SAFETY: the caller passes 16 readable bytes at each.
    let d = unsafe { read_words(dst) };
    let slot = (d[0] ^ d[1] ^ d[2] ^ d[3]).wrapping_mul(0x9e37_79b1) >> 22;
    let hop = NEXT_HOPS.get_ptr_mut(slot % SLOTS)?;
    // SAFETY: this CPU's slot, used only within this run.
    unsafe {
        if (*hop).expires_ns > now && read_words(&raw const (*hop).dst) == d {
            return Some(hop);
        }
    }
    let scratch = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's scratch and cache slots, used only within this run; `src` and `dst`
    // as above.
    unsafe {
        // Every input field, one by one (see `bytes`); the MACs are outputs.
        let fib = &raw mut (*scratch).fib;
        (*fib).l4_protocol = IPPROTO_TCP;
        (*fib).sport = 0;
        (*fib).dport = 0;
        (*fib).__bindgen_anon_1.tot_len = tot_len;
        (*fib).ifindex = (*ctx.skb.skb).ifindex;
        (*fib).__bindgen_anon_2.flowinfo = 0;
        (*fib).__bindgen_anon_5.tbid = 0;
        if v4 {
            (*fib).family = AF_INET;
            (*fib).__bindgen_anon_2.tos = 0;
            (*fib).__bindgen_anon_3.ipv4_src = read_words(src)[3];
            (*fib).__bindgen_anon_4.ipv4_dst = d[3];
        } else {
            (*fib).family = AF_INET6;
            bytes::copy16((&raw mut (*fib).__bindgen_anon_3).cast(), src);
            bytes::copy16((&raw mut (*fib).__bindgen_anon_4).cast(), dst);
        }
        let rc = bpf_fib_lookup(
            ctx.as_ptr(),
            fib,
            core::mem::size_of::<FibParams>() as i32,
            0,
        );
        if rc != FIB_SUCCESS {
            return None;
        }
        bytes::copy16(&raw mut (*hop).dst, dst);
        (*hop).ifindex = (*fib).ifindex;
        bytes::copy6(&raw mut (*hop).dmac, &raw const (*fib).dmac);
        bytes::copy6(&raw mut (*hop).smac, &raw const (*fib).smac);
        (*hop).expires_ns = now + TTL_NS;
    }
    Some(hop)
}

/// The IP-layer length of the largest packet a translated packet of `tot_len` bytes (an
/// Ethernet frame, IPv4 when `v4`) goes on the wire as: itself, or, for a coalesced TCP packet
/// (GRO on the way in, or TSO from the sender; the translation having moved its segment size by
/// the 20 bytes between the two IP headers), each segment the stack will cut it into. That is
/// what the route's MTU must carry, as the kernel's own forwarding checks it: by its whole
/// length a coalesced packet would never fit, and never reach the next hop directly. `None`: a
/// coalesced packet whose TCP header is out of reach.
#[inline(always)]
pub fn largest_segment(ctx: &TcContext, v4: bool, tot_len: u16) -> Option<u16> {
    // SAFETY: the context's own skb.
    let gso_size = unsafe { (*ctx.skb.skb).gso_size };
    if gso_size == 0 {
        return Some(tot_len);
    }
    // SAFETY (both): bounds-checked.
    let (ip_header, data_offset) = if v4 {
        let frame = ptr_at::<_, [u8; V4_TCP + 13]>(ctx, 0)?;
        (20, unsafe { (*frame)[V4_TCP + 12] } >> 4)
    } else {
        let frame = ptr_at::<_, [u8; V6_TCP + 13]>(ctx, 0)?;
        (40, unsafe { (*frame)[V6_TCP + 12] } >> 4)
    };
    let headers = ip_header + u32::from(data_offset) * 4;
    Some(gso_size.saturating_add(headers).min(u32::from(tot_len)) as u16)
}

/// Writes the next hop's Ethernet header (addresses and `ether_type`) over the frame's first 14
/// bytes.
#[inline(always)]
pub unsafe fn write_ethernet(frame: *mut [u8; 14], hop: *const NextHop, ether_type: u16) {
    // SAFETY: the caller passes a bounds-checked frame and a cache slot valid for this run.
    unsafe {
        bytes::copy6(frame.cast(), &raw const (*hop).dmac);
        bytes::copy6(frame.cast::<u8>().add(6).cast(), &raw const (*hop).smac);
        frame
            .cast::<u8>()
            .add(12)
            .cast::<[u8; 2]>()
            .write(ether_type.to_be_bytes());
    }
}

/// 16 bytes as four words (see `bytes`).
#[inline(always)]
unsafe fn read_words(p: *const [u8; 16]) -> [u32; 4] {
    let w = p.cast::<u32>();
    // SAFETY: the caller passes 16 readable bytes.
    unsafe {
        [
            w.read_volatile(),
            w.add(1).read_volatile(),
            w.add(2).read_volatile(),
            w.add(3).read_volatile(),
        ]
    }
}
