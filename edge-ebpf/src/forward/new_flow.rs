//! New-flow setup, for a SYN to a service or a mid-connection packet whose flow is gone: the
//! client's geo class, its affinity binding, the Maglev pick, and the source port the reverse
//! half is claimed with. Apart from the per-packet path of [`super`] because it runs behind one
//! BPF-to-BPF call ([`new_flow`]) with its own stack frame, and shares nothing with the packet
//! but the flow key.

#![expect(
    clippy::needless_borrows_for_generic_args,
    reason = "map keys and values go by reference: a copy would cost BPF stack (512 bytes)"
)]

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    maps::lpm_trie::Key,
};
use edge_common::{
    flow::{FLOW_RECOVERED, FLOW_REVERSE, FLOW_V4_CLIENT},
    geo::{
        embedded_ipv4, slash24_slot, v6_dir_find, v6_dir_line, v6_key32, v6_key48, AffinityValue,
        GEO_CLASSES, GEO_V4_DEEPER, GEO_V6_32_LINES, GEO_V6_48_LINES,
    },
    hash::flow_hash,
    limits::PORT_TRIES,
    pop::POP_SNAT96,
    service::{BACKEND_ACTIVE, BACKEND_ELIGIBLE, NO_BACKEND, SERVICE_AFFINITY},
    BackendValue, FlowKey, FlowValue, PopConfig, ServiceValue,
};

use crate::{
    bytes, clock, flow_table,
    maps::{
        NewFlowScratch, AFFINITY, BACKENDS, FLOWS, GEO_V4, GEO_V4_SLASH24, GEO_V6, GEO_V6_32,
        GEO_V6_48, HALF_OPEN, MAGLEV, POP_CONFIG, SCRATCH, SERVICE_RINGS,
    },
    stats::{self, Drop},
};

/// `new_flow`'s result in one register: a backend id, or `FAILED | drop reason`.
const FAILED: u64 = 1 << 32;

#[inline(always)]
pub(super) fn decode(result: u64) -> Result<u32, Drop> {
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
pub(super) fn new_flow(
    key: &FlowKey,
    service_id: u32,
    service_flags: u32,
    meta: u32,
    bytes: u64,
) -> u64 {
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
pub(super) const RECOVER: u32 = 0x200;

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
