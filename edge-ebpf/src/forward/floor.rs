//! Benchmark-only programs: the least an XDP program can do for a packet of each kind under
//! this design, so that the bench can show what the kernel's flow-table operations cost on the
//! machine beside what the data plane adds to them. An established packet needs one flow-table
//! lookup; a SYN needs two inserts (its reply key, which is the port allocation, and its own).
//! Both parse, read the IPv4 flow key and count exactly as `edge_xdp` does.

use aya_ebpf::{
    bindings::{xdp_action, BPF_NOEXIST},
    macros::xdp,
    programs::XdpContext,
};

use super::read_v4;
use crate::{
    bytes,
    maps::{FLOWS, SCRATCH},
    parse, stats,
};

/// Parse, one flow-table lookup (counted in the entry, as `edge_xdp` counts), pass.
#[xdp]
pub fn edge_xdp_floor_hit(ctx: XdpContext) -> u32 {
    let frame_len = ctx.data_end() - ctx.data();
    let packet = parse::classify(&ctx);
    if let Ok(Some((key, _))) = read_v4(&ctx) {
        // SAFETY: this CPU's scratch key; the entry is valid for this run.
        if let Some(entry) = FLOWS.get_ptr_mut(unsafe { &*key }) {
            // SAFETY: as above.
            unsafe { (*entry).packets += 1 };
        }
    }
    stats::count(packet.l3, packet.l4, xdp_action::XDP_PASS, frame_len);
    xdp_action::XDP_PASS
}

/// Parse, two flow-table inserts (the packet's key and its mirror image), pass.
#[xdp]
pub fn edge_xdp_floor_insert(ctx: XdpContext) -> u32 {
    let frame_len = ctx.data_end() - ctx.data();
    let packet = parse::classify(&ctx);
    if let (Ok(Some((key, _))), Some(scratch)) = (read_v4(&ctx), SCRATCH.get_ptr_mut(0)) {
        // SAFETY: this CPU's scratch slot, used only within this program run.
        unsafe {
            let reverse = &raw mut (*scratch).reverse_key;
            // Word copies, as the data plane makes them: a byte array assignment would be a
            // byte loop and inflate the floor.
            bytes::copy16(&raw mut (*reverse).src, &raw const (*key).dst);
            bytes::copy16(&raw mut (*reverse).dst, &raw const (*key).src);
            (*reverse).sport = (*key).dport;
            (*reverse).dport = (*key).sport;
            let value = &raw const (*scratch).value;
            let _ = FLOWS.insert(&*reverse, &*value, BPF_NOEXIST as u64);
            let _ = FLOWS.insert(&*key, &*value, BPF_NOEXIST as u64);
        }
    }
    stats::count(packet.l3, packet.l4, xdp_action::XDP_PASS, frame_len);
    xdp_action::XDP_PASS
}
