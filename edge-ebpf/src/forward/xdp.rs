//! The XDP rewrite: full NAT in place (NAT46 grows the frame at its head), then `XDP_PASS`, so
//! that the kernel routes the translated packet to the overlay and decrements its hop limit.

use aya_ebpf::{bindings::xdp_action, helpers::bpf_xdp_adjust_head, programs::XdpContext};
use edge_common::{flow::TCP_SYN, stats::L4Class, PopConfig, IPPROTO_TCP};
use network_types::ip::Ipv6Hdr;

use super::{
    candidate, flow_for, read_v4, scratch_key, Ports, V4Fields, ETH_LEN, NAT46_GROWTH, V6_TCP,
};
use crate::{bytes, csum, ctx::ptr_at, icmp, parse, stats::Drop, tcp, tcp::Segment};

#[inline(always)]
pub fn forward(ctx: &XdpContext, packet: &parse::Packet, frame_len: usize) -> Result<u32, Drop> {
    if packet.l4 == L4Class::Icmp {
        // An error about a flow goes to its backend (`icmp::client`); echo and the rest pass.
        return Ok(icmp::client::xdp(ctx, packet));
    }
    let Some(matched) = candidate(ctx, packet)? else {
        return Ok(xdp_action::XDP_PASS);
    };
    if matched.v4 {
        forward_v4(ctx, matched.config, frame_len)
    } else {
        forward_v6(ctx, matched.config, frame_len)
    }
}

#[inline(always)]
fn forward_v6(ctx: &XdpContext, config: &PopConfig, bytes: usize) -> Result<u32, Drop> {
    let Some(frame) = ptr_at::<_, [u8; V6_TCP + 20]>(ctx, 0) else {
        return Ok(xdp_action::XDP_PASS);
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
    // SAFETY: all pointers were bounds-checked above; the key is this CPU's scratch slot.
    unsafe {
        bytes::copy16(&raw mut (*key).src, &raw const (*ip).src_addr);
        bytes::copy16(&raw mut (*key).dst, &raw const (*ip).dst_addr);
        (*key).sport = (*ports).source;
        (*key).dport = (*ports).dest;
        let seg = Segment::of(hdr);
        let tcp_flags = seg.flags;
        let Some(flow) = flow_for(config, &*key, seg, bytes, false)? else {
            return Ok(xdp_action::XDP_PASS);
        };
        let check = hdr.cast::<u8>().add(16) as *mut u16;
        // FlowKey and FlowValue both start with src, dst, sport, dport: 36 contiguous bytes
        // that cover every checksummed field the rewrite changes.
        *check = csum::replace_raw(*check, key.cast(), flow.cast(), 36);
        bytes::copy16(&raw mut (*ip).src_addr, &raw const (*flow).new_src);
        bytes::copy16(&raw mut (*ip).dst_addr, &raw const (*flow).new_dst);
        (*ports).source = (*flow).new_sport;
        (*ports).dest = (*flow).new_dport;
        if tcp_flags & TCP_SYN != 0 {
            tcp::clamp_mss(ctx, V6_TCP, config.mss_clamp);
        }
    }
    Ok(xdp_action::XDP_PASS)
}

#[inline(always)]
fn forward_v4(ctx: &XdpContext, config: &PopConfig, bytes: usize) -> Result<u32, Drop> {
    let Some((key, v4)) = read_v4(ctx)? else {
        return Ok(xdp_action::XDP_PASS);
    };
    let V4Fields {
        tos,
        tot_len,
        ttl,
        seg,
        check,
        old,
    } = v4;
    let tcp_flags = seg.flags;
    // SAFETY: this CPU's scratch slot.
    let Some(flow) = flow_for(config, unsafe { &*key }, seg, bytes, true)? else {
        return Ok(xdp_action::XDP_PASS);
    };
    // The pseudo-header's length and protocol words sum the same for IPv4 and IPv6 (RFC 8200
    // section 8.1), so only the addresses and ports change the checksum.
    let sum = csum::diff_raw(old.as_ptr().cast(), 12, flow.cast(), 36, u32::from(!check));
    let check = !csum::fold(u64::from(sum));

    // SAFETY: ctx.ctx is the program's own context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(NAT46_GROWTH as i32)) } != 0 {
        return Err(Drop::ResizeFailed);
    }
    let Some(frame) = ptr_at::<_, [u8; V6_TCP + 20]>(ctx, 0) else {
        return Err(Drop::ResizeFailed);
    };
    // SAFETY: all three lie inside the checked region.
    let (eth, ip, hdr) = unsafe {
        (
            frame as *mut [u8; 14],
            frame.cast::<u8>().add(ETH_LEN) as *mut Ipv6Hdr,
            frame.cast::<u8>().add(V6_TCP) as *mut [u8; 20],
        )
    };
    // SAFETY: bounds-checked against the grown frame; the old Ethernet header is still there,
    // 20 bytes further on, and the flow entry stays valid for this run.
    unsafe {
        let old_eth = eth.cast::<u8>().add(NAT46_GROWTH) as *const [u8; 12];
        let new_eth = eth as *mut [u8; 12];
        *new_eth = *old_eth;
        (*eth)[12] = 0x86;
        (*eth)[13] = 0xdd;
        (*ip).vcf = [0x60 | (tos >> 4), (tos & 0x0f) << 4, 0, 0];
        (*ip).payload_len = (tot_len - 20).to_be_bytes();
        (*ip).next_hdr = IPPROTO_TCP;
        (*ip).hop_limit = ttl;
        bytes::copy16(&raw mut (*ip).src_addr, &raw const (*flow).new_src);
        bytes::copy16(&raw mut (*ip).dst_addr, &raw const (*flow).new_dst);
        let (new_sport, new_dport) = ((*flow).new_sport, (*flow).new_dport);
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
