//! The client -> backend direction on the public interface: flow lookup, service match on a
//! miss, new-flow setup (geo class, affinity, Maglev pick, source-port allocation: [`new_flow`]),
//! shared by the two hooks that rewrite the packet: `xdp` (XDP; the kernel routes the translated packet) and `tc`
//! (TC ingress; the program forwards it itself). Which one runs is the agent's choice: XDP where
//! the driver runs it natively on the NIC's buffers, TC on veth, where XDP would first copy
//! every packet the stack hands over out of its skb (see docs/architecture.md).
//!
//! A SYN makes a half-open flow (`HALF_OPEN`); the client's ACK of the backend's SYN-ACK moves
//! it to `FLOWS` (see `edge_common::flow`).
//!
//! A non-SYN packet for a VIP with no flow (state lost to LRU eviction, a sweep, `--reset`) gets
//! the flow its SYN got: the same Maglev pick and the same source port, both derived from the
//! 5-tuple (`FLOW_RECOVERED`, docs/architecture.md "The flow table is a cache"). A RST with no
//! flow, or a packet whose flow cannot be remade, is passed to the kernel untouched.

#![expect(
    clippy::needless_borrows_for_generic_args,
    reason = "map keys and values go by reference: a copy would cost BPF stack (512 bytes)"
)]

mod floor;
mod new_flow;
pub mod tc;
pub mod xdp;

use core::mem::MaybeUninit;

use edge_common::{
    flow::{FLOW_ENDED, FLOW_REVERSE, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    pop::POP_READY,
    stats::{L3Class, L4Class},
    FlowKey, FlowValue, PopConfig, ServiceKey, ServiceValue, IPPROTO_TCP,
};
use network_types::ip::{Ipv4Hdr, Ipv6Hdr};

use crate::{
    bytes, clock,
    ctx::{ptr_at, Packet},
    debug_log, flow_table,
    maps::{FLOWS, HALF_OPEN, POP_CONFIG, SCRATCH, SERVICES, SERVICE_PORTS},
    parse,
    stats::{self, Drop},
    tcp::Segment,
};
use new_flow::{decode, new_flow, RECOVER};

const ETH_LEN: usize = 14;
/// Where the TCP header starts in an Ethernet frame of IPv4 (no options) and of IPv6.
pub(crate) const V4_TCP: usize = ETH_LEN + 20;
pub(crate) const V6_TCP: usize = ETH_LEN + 40;
/// NAT46 grows the IP header from 20 to 40 bytes.
const NAT46_GROWTH: usize = 20;

/// Ports of a TCP header, network byte order as stored.
#[repr(C)]
struct Ports {
    source: u16,
    dest: u16,
}

/// A TCP packet the rewrites can work on: the data plane is configured and the headers sit at
/// the fixed offsets the rewrites use.
struct Candidate {
    config: &'static PopConfig,
    v4: bool,
}

/// Whether `packet` could be the data plane's. `Ok(None)`: it cannot; pass it untouched.
/// A destination port no service has used settles it with one array load (`SERVICE_PORTS`);
/// otherwise whether it is for a service is asked of the flow table first and of `SERVICES`
/// only on a miss: an established packet needs one hash lookup, not two.
#[inline(always)]
fn candidate<C: Packet>(ctx: &C, packet: &parse::Packet) -> Result<Option<Candidate>, Drop> {
    if packet.l4 != L4Class::Tcp {
        return Ok(None);
    }
    let Some(config) = POP_CONFIG.get(0) else {
        return Ok(None);
    };
    if config.flags & POP_READY == 0 {
        return Ok(None);
    }
    let v4 = match packet.l3 {
        L3Class::Ipv4 => true,
        L3Class::Ipv6 => false,
        _ => return Ok(None),
    };
    // The rewrites work at fixed offsets: untagged frames, no IPv4 options, no IPv6 extension
    // headers, no fragments. Such a packet for a service is dropped and counted; any other
    // passes.
    let fixed = if v4 { V4_TCP } else { V6_TCP };
    if packet.l3_off != ETH_LEN || packet.l4_off != fixed || packet.fragment {
        return match service_at(ctx, packet, v4) {
            Some(_) => Err(Drop::Unsupported),
            None => Ok(None),
        };
    }
    let Some(ports) = ptr_at::<_, Ports>(ctx, fixed) else {
        return Ok(None);
    };
    // SAFETY: bounds-checked.
    let dport = u16::from_be(unsafe { (*ports).dest });
    if marked_port(dport) {
        Ok(Some(Candidate { config, v4 }))
    } else {
        Ok(None)
    }
}

/// Whether some service has used TCP port `port` (host order): one array load.
#[inline(always)]
pub(crate) fn marked_port(port: u16) -> bool {
    matches!(SERVICE_PORTS.get(u32::from(port >> 6)), Some(word) if word & (1 << (port & 63)) != 0)
}

/// The service a packet at any layout is addressed to (the slow path of `candidate`).
#[inline(always)]
fn service_at<C: Packet>(ctx: &C, packet: &parse::Packet, v4: bool) -> Option<ServiceValue> {
    let ports = ptr_at::<_, Ports>(ctx, packet.l4_off)?;
    // Every field written below: a literal would be zeroed with a call to BPF's byte-loop memset.
    let mut key = MaybeUninit::<ServiceKey>::uninit();
    let k = key.as_mut_ptr();
    // SAFETY: bounds-checked; `k` points at this frame's key.
    unsafe {
        (*k).port = (*ports).dest;
        (*k).proto = IPPROTO_TCP;
        (*k)._pad = 0;
    }
    if v4 {
        let ip = ptr_at::<_, Ipv4Hdr>(ctx, packet.l3_off)?;
        // SAFETY: bounds-checked.
        unsafe { bytes::write_mapped(&raw mut (*k).addr, (*ip).dst_addr) };
    } else {
        let ip = ptr_at::<_, Ipv6Hdr>(ctx, packet.l3_off)?;
        // SAFETY: bounds-checked.
        unsafe { bytes::copy16(&raw mut (*k).addr, &raw const (*ip).dst_addr) };
    }
    // SAFETY: every field was written above; the value is read once, by copy.
    unsafe { SERVICES.get(&key.assume_init()).copied() }
}

/// The service a flow key is addressed to.
#[inline(always)]
pub(crate) fn service_of(flow: &FlowKey) -> Option<ServiceValue> {
    let mut key = MaybeUninit::<ServiceKey>::uninit();
    let k = key.as_mut_ptr();
    // SAFETY: `k` points at this frame's key; every field is written before it is read.
    unsafe {
        bytes::copy16(&raw mut (*k).addr, &raw const flow.dst);
        (*k).port = flow.dport;
        (*k).proto = IPPROTO_TCP;
        (*k)._pad = 0;
        SERVICES.get(&key.assume_init()).copied()
    }
}

/// Looks up the flow of `key`, creating it for a SYN to a service. `None`: pass the packet
/// untouched (not for a service, or not a SYN and no flow).
#[inline(always)]
fn flow_for(
    config: &PopConfig,
    key: &FlowKey,
    seg: Segment,
    bytes: usize,
    v4: bool,
) -> Result<Option<*mut FlowValue>, Drop> {
    let syn = seg.flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    if let Some(entry) = FLOWS.get_ptr_mut(key) {
        // SAFETY: an LRU entry stays valid for this program run; counter updates may race with
        // another CPU's, which only costs a count.
        unsafe {
            if (*entry).flags & FLOW_REVERSE != 0 {
                // A backend's 5-tuple arriving from the client side: not ours to translate.
                return Ok(None);
            }
            if !syn && (*entry).flags & FLOW_ENDED != 0 {
                stats::no_flow();
                return Ok(None);
            }
            if syn && (*entry).tcp_flags & (TCP_FIN | TCP_RST) != 0 {
                // A new connection on the 5-tuple of one the client ended (a client reuses
                // its port once its side is closed): a new flow, picked afresh. Kept, it
                // would go to the old backend however that one is doing now, and inherit the
                // closed state the sweeper expires in seconds.
                flow_table::end_flow(&FLOWS, key, entry);
            } else {
                let mut flags = seg.flags;
                if flags & (TCP_FIN | TCP_RST) != 0
                    && !flow_table::expected_by_backend(entry, seg.seq)
                {
                    // Forwarded all the same: the backend judges it by its own window.
                    flags &= !(TCP_FIN | TCP_RST);
                    stats::out_of_window();
                }
                record(config, entry, flags, seg.ack, bytes);
                return Ok(Some(entry));
            }
        }
    } else if let Some(entry) = HALF_OPEN.get_ptr_mut(key) {
        // SAFETY: as above.
        unsafe {
            if (*entry).flags & FLOW_REVERSE != 0 {
                return Ok(None);
            }
            if syn && (*entry).tcp_flags & (TCP_FIN | TCP_RST) != 0 {
                flow_table::end_flow(&HALF_OPEN, key, entry);
            } else {
                record(config, entry, seg.flags, seg.ack, bytes);
                if seg.flags & (TCP_SYN | TCP_ACK | TCP_RST) != TCP_ACK {
                    return Ok(Some(entry));
                }
                // Copied into FLOWS and removed here: the entry pointer is stale after.
                if flow_table::confirm(key, entry, seg.ack) == 0 {
                    return Ok(Some(entry));
                }
                return FLOWS.get_ptr_mut(key).map(Some).ok_or(Drop::FlowInsert);
            }
        }
    }
    let Some(service) = service_of(key) else {
        return Ok(None);
    };
    if !syn && seg.flags & TCP_RST != 0 {
        stats::no_flow();
        debug_log::no_flow(key, seg.flags);
        return Ok(None);
    }
    // A mid-connection packet whose flow is gone is given the flow its SYN got (see
    // `FLOW_RECOVERED`); one that cannot be goes to the kernel, which resets it.
    let recover = if syn { 0 } else { RECOVER };
    if !syn {
        // What the backend's answer must acknowledge for the remade flow to be this one.
        let scratch = SCRATCH.get_ptr_mut(0).ok_or(Drop::FlowInsert)?;
        // SAFETY: this CPU's scratch slot.
        unsafe { (*scratch).recover_seq = seg.seq };
    }
    let meta = u32::from(seg.flags) | u32::from(v4) << 8 | recover;
    let backend_id = match decode(new_flow(
        key,
        service.service_id,
        service.flags,
        meta,
        bytes as u64,
    )) {
        Ok(id) => id,
        Err(_) if !syn => {
            stats::no_flow();
            debug_log::no_flow(key, seg.flags);
            return Ok(None);
        }
        Err(reason) => {
            debug_log::refused(key, service.service_id, reason);
            return Err(reason);
        }
    };
    if !syn {
        stats::recovered();
    }
    stats::service_packet(service.service_id, bytes, syn);
    stats::backend_to(backend_id, bytes, syn);
    // The rewrite works from the copy of the forward entry `new_flow` left in this CPU's
    // scratch slot (map memory, not the 512-byte stack): reading the entry back from the flow
    // table would cost a third hash lookup per SYN.
    let scratch = SCRATCH.get_ptr_mut(0).ok_or(Drop::FlowInsert)?;
    // SAFETY: this CPU's scratch slot, written by `new_flow` in this run.
    let entry = unsafe { &raw mut (*scratch).value };
    // SAFETY: as above.
    debug_log::new_flow(key, unsafe { &*entry });
    Ok(Some(entry))
}

/// Counts a client packet into its flow's forward entry, and keeps its acknowledgment number:
/// how far the client has received the backend's data, against which an ICMP error's quote of
/// a backend segment is judged (`icmp::plausible`).
///
/// # Safety
/// `entry` is a flow-table entry, valid for this run.
#[inline(always)]
unsafe fn record(config: &PopConfig, entry: *mut FlowValue, tcp_flags: u8, ack: u32, bytes: usize) {
    // SAFETY: the caller's entry.
    unsafe {
        if tcp_flags & TCP_ACK != 0 {
            (*entry).ack = ack;
        }
        (*entry).tcp_flags |= tcp_flags;
        // Jiffy resolution is plenty for idle timeouts.
        (*entry).last_seen_ns = clock::now_ns(config);
        (*entry).packets += 1;
        (*entry).bytes += bytes as u64;
        stats::service_packet((*entry).service_id, bytes, false);
        stats::backend_to((*entry).backend_id, bytes, false);
    }
}

/// What NAT46 carries over from an IPv4/TCP packet, read before its header is replaced.
struct V4Fields {
    tos: u8,
    tot_len: u16,
    ttl: u8,
    seg: Segment,
    /// The TCP checksum, as stored.
    check: u16,
    /// The words the checksum covered that the rewrite changes: addresses, then both ports.
    old: [u32; 3],
}

/// Reads an IPv4/TCP packet at the fixed offsets into this CPU's scratch flow key (addresses
/// IPv4-mapped) and the fields NAT46 carries over. `Ok(None)`: the headers are not all there.
#[inline(always)]
fn read_v4<C: Packet>(ctx: &C) -> Result<Option<(*mut FlowKey, V4Fields)>, Drop> {
    // One bounds check for Ethernet, IPv4 and TCP: fewer packet-pointer values for LLVM to
    // juggle (it once merged and shifted them, which the verifier refuses).
    let Some(frame) = ptr_at::<_, [u8; V4_TCP + 20]>(ctx, 0) else {
        return Ok(None);
    };
    // SAFETY: both lie inside the checked region.
    let (ip, hdr) = unsafe {
        (
            frame.cast::<u8>().add(ETH_LEN) as *mut Ipv4Hdr,
            frame.cast::<u8>().add(V4_TCP) as *mut [u8; 20],
        )
    };
    let ports = hdr as *mut Ports;
    let key = scratch_key()?;
    // SAFETY: bounds-checked above; the key is this CPU's scratch slot.
    let fields = unsafe {
        let src4 = (*ip).src_addr;
        let dst4 = (*ip).dst_addr;
        bytes::write_mapped(&raw mut (*key).src, src4);
        bytes::write_mapped(&raw mut (*key).dst, dst4);
        (*key).sport = (*ports).source;
        (*key).dport = (*ports).dest;
        V4Fields {
            tos: (*ip).tos,
            tot_len: u16::from_be_bytes((*ip).tot_len),
            ttl: (*ip).ttl,
            seg: Segment::of(hdr),
            check: u16::from_ne_bytes([(*hdr)[16], (*hdr)[17]]),
            old: [
                u32::from_ne_bytes(src4),
                u32::from_ne_bytes(dst4),
                u32::from_ne_bytes([(*hdr)[0], (*hdr)[1], (*hdr)[2], (*hdr)[3]]),
            ],
        }
    };
    if fields.tot_len < 20 {
        return Err(Drop::Unsupported);
    }
    Ok(Some((key, fields)))
}

/// This CPU's scratch flow key.
#[inline(always)]
fn scratch_key() -> Result<*mut FlowKey, Drop> {
    let scratch = SCRATCH.get_ptr_mut(0).ok_or(Drop::FlowInsert)?;
    // SAFETY: this CPU's scratch slot, used only within this program run.
    Ok(unsafe { &raw mut (*scratch).key })
}
