//! The client -> backend direction on the public interface: flow lookup, service match on a
//! miss, new-flow setup (geo class, affinity, Maglev pick, source-port allocation), shared by the two
//! hooks that rewrite the packet: `xdp` (XDP; the kernel routes the translated packet) and `tc`
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
pub mod tc;
pub mod xdp;

use core::mem::MaybeUninit;

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    maps::lpm_trie::Key,
};
use edge_common::{
    flow::{
        FLOW_ENDED, FLOW_RECOVERED, FLOW_REVERSE, FLOW_V4_CLIENT, TCP_ACK, TCP_FIN, TCP_RST,
        TCP_SYN,
    },
    geo::{
        embedded_ipv4, slash24_slot, v6_dir_find, v6_dir_line, v6_key32, v6_key48, AffinityValue,
        GEO_CLASSES, GEO_V4_DEEPER, GEO_V6_32_LINES, GEO_V6_48_LINES,
    },
    hash::flow_hash,
    limits::PORT_TRIES,
    pop::{POP_READY, POP_SNAT96},
    service::{BACKEND_ACTIVE, BACKEND_ELIGIBLE, NO_BACKEND, SERVICE_AFFINITY},
    stats::{L3Class, L4Class},
    BackendValue, FlowKey, FlowValue, PopConfig, ServiceKey, ServiceValue, IPPROTO_TCP,
};
use network_types::ip::{Ipv4Hdr, Ipv6Hdr};

use crate::{
    bytes, clock,
    ctx::{ptr_at, Packet},
    debug_log, flow_table,
    maps::{
        NewFlowScratch, AFFINITY, BACKENDS, FLOWS, GEO_V4, GEO_V4_SLASH24, GEO_V6, GEO_V6_32,
        GEO_V6_48, HALF_OPEN, MAGLEV, POP_CONFIG, SCRATCH, SERVICES, SERVICE_PORTS, SERVICE_RINGS,
    },
    parse,
    stats::{self, Drop},
    tcp::Segment,
};

const ETH_LEN: usize = 14;
const V4_TCP: usize = ETH_LEN + 20;
const V6_TCP: usize = ETH_LEN + 40;
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

/// `new_flow`'s result in one register: a backend id, or `FAILED | drop reason`.
const FAILED: u64 = 1 << 32;

#[inline(always)]
fn decode(result: u64) -> Result<u32, Drop> {
    if result & FAILED == 0 {
        return Ok(result as u32);
    }
    Err(match result as u32 {
        0 => Drop::NoBackend,
        1 => Drop::PortExhausted,
        _ => Drop::FlowInsert,
    })
}

#[inline(always)]
fn encode(result: Result<u32, Drop>) -> u64 {
    match result {
        Ok(id) => u64::from(id),
        Err(Drop::NoBackend) => FAILED,
        Err(Drop::PortExhausted) => FAILED | 1,
        Err(_) => FAILED | 2,
    }
}

/// Sets up a new flow. Not inlined: a BPF-to-BPF call gets its own stack frame, and the packet
/// path's frame plus this one fit the 512-byte limit where one merged frame does not. It takes
/// no packet pointer (the verifier's rule for calls; see TOOLCHAIN.md), only the flow key.
/// `meta` packs the TCP flags (bits 0-7), the client family (bit 8: IPv4) and whether the flow
/// is remade mid-connection (`RECOVER`): a BPF call has at most five arguments. (Packing the frame length too made LLVM shift packet pointers, which
/// the verifier refuses.)
#[inline(never)]
fn new_flow(key: &FlowKey, service_id: u32, service_flags: u32, meta: u32, bytes: u64) -> u64 {
    let Some(config) = POP_CONFIG.get(0) else {
        return FAILED;
    };
    let service = ServiceValue {
        service_id,
        flags: service_flags,
    };
    encode(setup_flow(
        key,
        meta as u8,
        bytes as usize,
        config,
        &service,
        meta & 0x100 != 0,
        meta & RECOVER != 0,
    ))
}

/// `new_flow`'s `meta` bit for a flow remade from a mid-connection packet.
const RECOVER: u32 = 0x200;

#[inline(always)]
fn setup_flow(
    key: &FlowKey,
    tcp_flags: u8,
    bytes: usize,
    config: &PopConfig,
    service: &ServiceValue,
    v4: bool,
    recover: bool,
) -> Result<u32, Drop> {
    let hash = flow_hash(&key.src, &key.dst, key.sport, key.dport);
    let Some(backend_id) = pick_backend(key, hash, config, service, v4) else {
        stats::service_no_backend(service.service_id);
        return Err(Drop::NoBackend);
    };
    let backend = match BACKENDS.get(backend_id) {
        Some(b) if b.flags & BACKEND_ACTIVE != 0 => b,
        _ => {
            stats::service_no_backend(service.service_id);
            return Err(Drop::NoBackend);
        }
    };
    let family = if v4 { FLOW_V4_CLIENT } else { 0 } | if recover { FLOW_RECOVERED } else { 0 };
    let scratch = SCRATCH.get_ptr_mut(0).ok_or(Drop::FlowInsert)?;
    // SAFETY: this CPU's scratch slot, used only within this program run.
    let (value, reverse_key) = unsafe { (&mut (*scratch).value, &mut (*scratch).reverse_key) };
    // One value, written as the reverse entry and then turned into the forward one.
    // Field by field: a struct literal would be built on the stack first and copied.
    // SAFETY: fields of this CPU's scratch slot and of the caller's key.
    unsafe {
        bytes::copy16(&raw mut value.new_src, &raw const key.dst);
        bytes::copy16(&raw mut value.new_dst, &raw const key.src);
    }
    value.new_sport = key.dport;
    value.new_dport = key.sport;
    value.service_id = service.service_id;
    value.backend_id = backend_id;
    value.flags = FLOW_REVERSE | family;
    value.tcp_flags = 0;
    value.recovery_ports_left = 0;
    value._pad = 0;
    // One word: two zero stores would become a memset call.
    // SAFETY: `seq` and `ack` are adjacent u32s, 8-byte aligned.
    unsafe { (&raw mut value.seq).cast::<u64>().write_volatile(0) };
    if recover {
        // SAFETY: this CPU's scratch slot, written by `flow_for` in this run.
        value.seq = unsafe { (*scratch).recover_seq };
    }
    // The clock is read where it is used (here, and in `pick_backend`) rather than once and
    // passed down: held across the calls in between, it pushed this frame and the caller's
    // past the verifier's 512-byte stack limit.
    let now = clock::now_ns(config);
    value.created_ns = now;
    value.last_seen_ns = now;
    // SAFETY: fields of this CPU's scratch slot (two zero stores would become a memset call).
    unsafe {
        (&raw mut value.packets).write_volatile(0);
        (&raw mut value.bytes).write_volatile(0);
    }
    // SAFETY: fields of this CPU's scratch slot and of map values valid for this run.
    unsafe {
        bytes::copy16(&raw mut reverse_key.src, &raw const backend.addr);
        bytes::copy16(&raw mut reverse_key.dst, &raw const config.overlay_addr);
    }
    reverse_key.sport = backend.port;
    if v4 && config.flags & POP_SNAT96 != 0 {
        // The client's own address and port, under this POP's /96: unique as long as the
        // client's own 4-tuple is.
        reverse_key.dst[..12].copy_from_slice(&config.snat_prefix);
        reverse_key.dst[12..].copy_from_slice(&key.src[12..]);
        reverse_key.dport = key.sport;
        // The overlay address's ports come after this one.
        value.recovery_ports_left = PORT_TRIES as u8;
        if let Some(claimed) = claim(key, value, reverse_key, backend, family, tcp_flags, bytes) {
            return claimed.map(|()| backend_id);
        }
        // Taken (a stale reverse half): fall back to a port of the overlay address.
        // SAFETY: as above.
        unsafe { bytes::copy16(&raw mut reverse_key.dst, &raw const config.overlay_addr) };
    }
    let range = u32::from(config.port_max.saturating_sub(config.port_min)) + 1;
    // Start from other hash bits than the ring slot's, so that one backend's flows spread over
    // the whole port range.
    let start = hash.rotate_left(16);
    for attempt in 0..PORT_TRIES {
        let port = (u32::from(config.port_min) + start.wrapping_add(attempt) % range) as u16;
        reverse_key.dport = port.to_be();
        value.recovery_ports_left = (PORT_TRIES - 1 - attempt) as u8;
        if let Some(claimed) = claim(key, value, reverse_key, backend, family, tcp_flags, bytes) {
            return claimed.map(|()| backend_id);
        }
    }
    // Every candidate is taken. Half-open flows give way: under a SYN flood they hold most
    // ports, and a handshake that eight later ones overtook has most likely failed. So do
    // closed ones waiting out their timeout. An established flow never gives way.
    for attempt in 0..PORT_TRIES {
        let port = (u32::from(config.port_min) + start.wrapping_add(attempt) % range) as u16;
        reverse_key.dport = port.to_be();
        if !flow_table::displace_half_open(reverse_key) && !flow_table::displace_closed(reverse_key)
        {
            continue;
        }
        stats::displaced();
        value.recovery_ports_left = 0;
        if let Some(claimed) = claim(key, value, reverse_key, backend, family, tcp_flags, bytes) {
            return claimed.map(|()| backend_id);
        }
    }
    Err(Drop::PortExhausted)
}

/// Claims the source address and port `reverse_key` names and records both directions of the
/// flow in `HALF_OPEN` (a recovered flow whose reverse half is still in `FLOWS` gets its forward
/// half back there). `value` holds the reverse entry on entry and the forward one on return.
/// `None`: the source is in use by an established flow, or by a half-open one (the NOEXIST
/// insert is the allocation), try another.
#[inline(always)]
fn claim(
    key: &FlowKey,
    value: &mut FlowValue,
    reverse_key: &FlowKey,
    backend: &BackendValue,
    family: u8,
    tcp_flags: u8,
    bytes: usize,
) -> Option<Result<(), Drop>> {
    let established = match FLOWS.get_ptr(reverse_key) {
        None => {
            if family & FLOW_RECOVERED != 0 && !flow_table::may_recover_into(reverse_key, key) {
                return None;
            }
            HALF_OPEN
                .insert(reverse_key, &*value, BPF_NOEXIST as u64)
                .ok()?;
            false
        }
        // Only the forward half of an established connection was lost: it goes back beside
        // its reverse half.
        // SAFETY: valid for this run.
        Some(reply)
            if family & FLOW_RECOVERED != 0 && unsafe { flow_table::is_partner(reply, key) } =>
        {
            true
        }
        Some(_) => return None,
    };
    // SAFETY: fields of the caller's scratch slot and of a map value valid for this run.
    unsafe {
        bytes::copy16(&raw mut value.new_src, &raw const reverse_key.dst);
        bytes::copy16(&raw mut value.new_dst, &raw const backend.addr);
    }
    value.new_sport = reverse_key.dport;
    value.new_dport = backend.port;
    value.flags = family;
    value.tcp_flags = tcp_flags;
    value.packets = 1;
    value.bytes = bytes as u64;
    let inserted = if established {
        FLOWS.insert(key, &*value, BPF_ANY as u64)
    } else {
        HALF_OPEN.insert(key, &*value, BPF_ANY as u64)
    };
    if inserted.is_err() {
        let _ = HALF_OPEN.remove(reverse_key);
        return Some(Err(Drop::FlowInsert));
    }
    Some(Ok(()))
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

/// The client's country class: 0 when the geo maps do not know its address. An IPv4 client
/// is one load from the /24 table, and a trie walk only in a /24 split by longer prefixes.
/// IPv6 clients whose address embeds an IPv4 one (6to4, Teredo, IPv4-mapped: see
/// `embedded_ipv4`) are classified by that address, as MaxMind DBs answer them: the loader
/// keeps none of those ranges in the IPv6 trie.
#[inline(always)]
fn geo_class(scratch: *mut NewFlowScratch, client: &[u8; 16], v4: bool) -> u32 {
    let embedded = if v4 {
        Some([client[12], client[13], client[14], client[15]])
    } else {
        embedded_ipv4(client)
    };
    let found = if let Some(v4) = embedded {
        let (word, shift) = slash24_slot(u32::from_be_bytes(v4));
        let class = GEO_V4_SLASH24
            .get(word)
            .map_or(0, |word| (word >> shift) as u8);
        if class != GEO_V4_DEEPER {
            return u32::from(class);
        }
        GEO_V4.get(&Key::new(32, v4)).map(|g| g.class)
    } else {
        // The /32 directory, then the /48 one, then the trie (`geo_maps`): a cache line each,
        // where a trie walk in a large database visits a node per prefix bit.
        let key32 = v6_key32(client);
        let line = GEO_V6_32.get(v6_dir_line(key32, GEO_V6_32_LINES));
        match line.and_then(|line| v6_dir_find(line, key32)) {
            Some(GEO_V4_DEEPER) => {
                let key48 = v6_key48(client);
                let line = GEO_V6_48.get(v6_dir_line(key48, GEO_V6_48_LINES));
                match line.and_then(|line| v6_dir_find(line, key48)) {
                    Some(GEO_V4_DEEPER) | None => {}
                    Some(class) => return u32::from(class),
                }
            }
            Some(class) => return u32::from(class),
            None => {}
        }
        // SAFETY: this CPU's scratch slot.
        let key = unsafe { &mut (*scratch).geo_v6 };
        key.prefix_len = 128;
        // SAFETY: the slot's field and the caller's address.
        unsafe { bytes::copy16(&raw mut key.data, client) };
        GEO_V6.get(key).map(|g| g.class)
    };
    u32::from(found.unwrap_or(0))
}

/// The backend for a new flow: the client's binding if it is still eligible, else the Maglev
/// pick from the ring of the client's country class (the binding is then renewed).
#[inline(always)]
fn pick_backend(
    key: &FlowKey,
    hash: u32,
    config: &PopConfig,
    service: &ServiceValue,
    v4: bool,
) -> Option<u32> {
    let scratch = SCRATCH.get_ptr_mut(0)?;
    let sticky = service.flags & SERVICE_AFFINITY != 0 && config.affinity_ttl_ns != 0;
    // SAFETY: this CPU's scratch slot, used only within this program run.
    let binding = unsafe { &mut (*scratch).binding };
    binding.service_id = service.service_id;
    // SAFETY: the slot's field and the caller's key.
    unsafe { bytes::copy16(&raw mut binding.client, &raw const key.src) };
    if sticky {
        let now = clock::now_ns(config);
        if let Some(bound) = AFFINITY.get_ptr_mut(&*binding) {
            // SAFETY: the LRU entry is valid for this run.
            unsafe {
                let backend_id = (*bound).backend_id;
                let fresh = now.saturating_sub((*bound).last_used_ns) < config.affinity_ttl_ns;
                let eligible =
                    matches!(BACKENDS.get(backend_id), Some(b) if b.flags & BACKEND_ELIGIBLE != 0);
                if fresh && eligible {
                    (*bound).last_used_ns = now;
                    return Some(backend_id);
                }
            }
        }
    }
    let ring_size = config.ring_size;
    if ring_size == 0 {
        return None;
    }
    let class = geo_class(scratch, &key.src, v4);
    let ring = *SERVICE_RINGS.get(
        service
            .service_id
            .wrapping_mul(GEO_CLASSES)
            .wrapping_add(class),
    )?;
    let slot = ring.wrapping_mul(ring_size).wrapping_add(hash % ring_size);
    let backend_id = match MAGLEV.get(slot) {
        Some(&id) if id != NO_BACKEND => id,
        _ => return None,
    };
    if sticky {
        let value = AffinityValue {
            backend_id,
            _pad: 0,
            last_used_ns: clock::now_ns(config),
        };
        // Best effort: without a binding the client is simply picked again next time.
        let _ = AFFINITY.insert(&*binding, &value, BPF_ANY as u64);
    }
    Some(backend_id)
}
