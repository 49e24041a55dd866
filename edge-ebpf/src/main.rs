//! edgeProxy kernel programs.
//!
//! Entry points stay a few lines long: classify, decide, count, return the action. Parsing lives
//! in `parse`, translation in `forward` (client -> backend, in XDP or TC) and `reply` (TC, backend ->
//! client), counting in `stats`, debug records (off unless the agent asks) in `debug_log`.
#![no_std]
#![no_main]

mod bytes;
mod clock;
mod csum;
mod ctx;
mod debug_log;
mod flow_table;
mod forward;
mod icmp;
mod maps;
mod next_hop;
mod parse;
mod reply;
mod stats;
mod tcp;

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_SHOT},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

/// XDP ingress on the public interface: translate flows to configured services; everything else
/// passes untouched, because traffic the data plane does not own must never be disturbed.
#[xdp]
pub fn edge_xdp(ctx: XdpContext) -> u32 {
    let frame_len = ctx.data_end() - ctx.data();
    let packet = parse::classify(&ctx);
    let action = match forward::xdp::forward(&ctx, &packet, frame_len) {
        Ok(action) => action,
        Err(reason) => {
            stats::drop(reason);
            xdp_action::XDP_DROP
        }
    };
    stats::count(packet.l3, packet.l4, action, frame_len);
    action
}

/// TC ingress on the public interface, where XDP would cost more than it saves (veth): the same
/// translation as `edge_xdp`, and the packet is forwarded to the overlay from here.
#[classifier]
pub fn edge_tc_forward(ctx: TcContext) -> i32 {
    let frame_len = ctx.len() as usize;
    let (packet, result) = forward::tc::forward(&ctx, frame_len);
    let action = result.unwrap_or_else(|reason| {
        stats::drop(reason);
        TC_ACT_SHOT
    });
    stats::count(packet.l3, packet.l4, stats::tc_verdict(action), frame_len);
    action
}

/// The benchmarks' baseline: the same parse and count, no service lookup.
#[xdp]
pub fn edge_xdp_baseline(ctx: XdpContext) -> u32 {
    let frame_len = ctx.data_end() - ctx.data();
    let packet = parse::classify(&ctx);
    stats::count(packet.l3, packet.l4, xdp_action::XDP_PASS, frame_len);
    xdp_action::XDP_PASS
}

/// The agent's clock calibration (`kernel_clock`): the jiffies and CLOCK_MONOTONIC_COARSE
/// nanoseconds of one instant, written over the first 16 bytes of a test-run frame.
#[xdp]
pub fn edge_clock(ctx: XdpContext) -> u32 {
    if let Some(frame) = ctx::ptr_at::<_, [u64; 2]>(&ctx, 0) {
        // SAFETY: bounds-checked; no preconditions for the clocks.
        unsafe {
            *frame = [
                aya_ebpf::helpers::bpf_jiffies64(),
                aya_ebpf::helpers::bpf_ktime_get_coarse_ns(),
            ];
        }
    }
    xdp_action::XDP_PASS
}

/// TC ingress on the overlay interface: replies of translated flows go back to their clients.
#[classifier]
pub fn edge_tc_reply(ctx: TcContext) -> i32 {
    match reply::reply(&ctx) {
        Ok(action) => action,
        Err(reason) => {
            stats::drop(reason);
            TC_ACT_SHOT
        }
    }
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
