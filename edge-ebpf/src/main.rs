//! edgeProxy kernel programs.
//!
//! Entry points stay a few lines long: classify, decide, count, return the action. The parsing
//! lives in `parse`, the counting in `stats`.
#![no_std]
#![no_main]

mod parse;
mod stats;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

/// XDP ingress on the public interface. In this first slice it only classifies and counts;
/// everything passes, because traffic the data plane does not own must never be disturbed.
#[xdp]
pub fn edge_xdp(ctx: XdpContext) -> u32 {
    let packet = parse::classify(&ctx);
    let action = xdp_action::XDP_PASS;
    stats::count(packet.l3, packet.l4, action, ctx.data_end() - ctx.data());
    action
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier proves no panic path is reachable; this only satisfies no_std.
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
