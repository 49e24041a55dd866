//! The service maps as the kernel holds them: reading what an earlier agent left, and carrying
//! out one decided [`Step`] at a time.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::Ipv6Addr,
};

use aya::{
    maps::{Array, HashMap as BpfHashMap, MapData, MapError},
    Ebpf,
};
use edge_common::{
    geo::{AffinityKey, AffinityValue, GEO_CLASSES},
    limits::MAX_BACKENDS,
    names,
    pop::{POP_READY, POP_SNAT96},
    service::NO_BACKEND,
    BackendValue, PopConfig, ServiceKey, ServiceValue,
};
use tracing::debug;

use super::{ledger::Step, PopSettings, ServicesError};
use crate::dataplane::clock::KernelClock;

fn map_err(name: &'static str) -> impl FnOnce(MapError) -> ServicesError {
    move |source| ServicesError::Map { name, source }
}

fn services_map(
    ebpf: &mut Ebpf,
) -> Result<BpfHashMap<&mut MapData, ServiceKey, ServiceValue>, ServicesError> {
    let name = names::SERVICES;
    let map = ebpf
        .map_mut(name)
        .ok_or(ServicesError::MissingMap { name })?;
    BpfHashMap::try_from(map).map_err(map_err(name))
}

fn array<'e, V: aya::Pod>(
    ebpf: &'e mut Ebpf,
    name: &'static str,
) -> Result<Array<&'e mut MapData, V>, ServicesError> {
    let map = ebpf
        .map_mut(name)
        .ok_or(ServicesError::MissingMap { name })?;
    Array::try_from(map).map_err(map_err(name))
}

/// Sets `port`'s bit in `SERVICE_PORTS`. The reconciler does it before inserting a service that
/// uses the port: the programs pass a packet to an unmarked port without looking further. Never
/// cleared (see the map's comment in the kernel crate).
pub fn mark_port(ebpf: &mut Ebpf, port: u16) -> Result<(), ServicesError> {
    let mut words = array::<u64>(ebpf, names::SERVICE_PORTS)?;
    let index = u32::from(port / 64);
    let word = words
        .get(&index, 0)
        .map_err(map_err(names::SERVICE_PORTS))?;
    words
        .set(index, word | 1 << (port % 64), 0)
        .map_err(map_err(names::SERVICE_PORTS))
}

/// What an earlier agent left in the maps, as `Ledger::recovered` takes it.
pub struct Pinned {
    pub services: HashMap<ServiceKey, ServiceValue>,
    pub backends: Vec<(u32, BackendValue)>,
    /// `SERVICE_RINGS` of every service, by index.
    pub pointers: HashMap<u32, u32>,
    /// What the rings pointed at hold.
    pub tables: HashMap<Vec<u32>, u32>,
    /// How many rings of `table_size` slots `MAGLEV` holds.
    pub rings: u32,
}

/// Reads the (pinned) maps of an earlier agent.
pub fn read_pinned(ebpf: &mut Ebpf, table_size: u32) -> Result<Pinned, ServicesError> {
    let mut services = HashMap::new();
    for entry in services_map(ebpf)?.iter() {
        let (key, value) = entry.map_err(map_err(names::SERVICES))?;
        services.insert(key, value);
    }
    let backends_map = array::<BackendValue>(ebpf, names::BACKENDS)?;
    let backends = (0..backends_map.len().min(MAX_BACKENDS))
        .map(|id| Ok((id, backends_map.get(&id, 0)?)))
        .collect::<Result<Vec<_>, MapError>>()
        .map_err(map_err(names::BACKENDS))?;
    let rings = array::<u32>(ebpf, names::MAGLEV)?.len() / table_size.max(1);
    let pointers_map = array::<u32>(ebpf, names::SERVICE_RINGS)?;
    let mut pointers = HashMap::new();
    for value in services.values() {
        for class in 0..GEO_CLASSES {
            let index = value.service_id * GEO_CLASSES + class;
            let ring = pointers_map
                .get(&index, 0)
                .map_err(map_err(names::SERVICE_RINGS))?;
            pointers.insert(index, ring);
        }
    }
    let in_use: BTreeSet<u32> = pointers.values().copied().collect();
    let tables = ring_contents(ebpf, &in_use, table_size)?;
    Ok(Pinned {
        services,
        backends,
        pointers,
        tables,
        rings,
    })
}

/// What each of `rings` holds, by content (of rings with the same content, one).
fn ring_contents(
    ebpf: &mut Ebpf,
    rings: &BTreeSet<u32>,
    table_size: u32,
) -> Result<HashMap<Vec<u32>, u32>, ServicesError> {
    let name = names::MAGLEV;
    let map = match ebpf.map(name).ok_or(ServicesError::MissingMap { name })? {
        aya::maps::Map::Array(data) => data,
        _ => return Err(ServicesError::MissingMap { name }),
    };
    let size = table_size.max(1);
    let mut tables: BTreeMap<u32, Vec<u32>> = rings
        .iter()
        .map(|&r| (r, vec![NO_BACKEND; size as usize]))
        .collect();
    crate::dataplane::batch::for_each::<u32, u32>(map, |&index, &backend| {
        if let Some(table) = tables.get_mut(&(index / size)) {
            if let Some(slot) = table.get_mut((index % size) as usize) {
                *slot = backend;
            }
        }
    })
    .map_err(map_err(name))?;
    Ok(tables
        .into_iter()
        .map(|(ring, table)| (table, ring))
        .collect())
}

/// Carries out `step` in the maps, for a Maglev table of `table_size` slots.
pub fn write(ebpf: &mut Ebpf, step: &Step, table_size: u32) -> Result<(), ServicesError> {
    match step {
        Step::Release { .. } | Step::Retire { .. } => {}
        Step::ClearBackend { id, .. } => array::<BackendValue>(ebpf, names::BACKENDS)?
            .set(*id, BackendValue::default(), 0)
            .map_err(map_err(names::BACKENDS))?,
        Step::WriteBackend {
            id,
            addr,
            port,
            flags,
        } => {
            let value = BackendValue {
                addr: addr.octets(),
                port: port.to_be(),
                _pad: 0,
                flags: *flags,
            };
            array::<BackendValue>(ebpf, names::BACKENDS)?
                .set(*id, value, 0)
                .map_err(map_err(names::BACKENDS))?;
        }
        Step::RemoveService { key } => services_map(ebpf)?
            .remove(key)
            .map_err(map_err(names::SERVICES))?,
        Step::Members {
            service_id,
            departed,
            ..
        } => {
            if !departed.is_empty() {
                let removed = drop_bindings(ebpf, *service_id, departed)?;
                debug!(
                    service_id,
                    backends = departed.len(),
                    removed,
                    "bindings to departed backends dropped"
                );
            }
        }
        Step::TakeOver { ring, members } => {
            debug!(
                ring,
                members = members.len(),
                "Maglev table taken over as pinned"
            );
        }
        Step::WriteTable {
            ring,
            members,
            table,
        } => {
            let mut rings = array::<u32>(ebpf, names::MAGLEV)?;
            let base = ring * table_size;
            for (slot, backend) in table.iter().enumerate() {
                rings
                    .set(base + slot as u32, backend, 0)
                    .map_err(map_err(names::MAGLEV))?;
            }
            debug!(ring, members = members.len(), "Maglev table written");
        }
        Step::Point { index, ring } => array::<u32>(ebpf, names::SERVICE_RINGS)?
            .set(*index, *ring, 0)
            .map_err(map_err(names::SERVICE_RINGS))?,
        Step::MarkPort { port } => mark_port(ebpf, *port)?,
        Step::WriteService { key, value } => services_map(ebpf)?
            .insert(key, value, 0)
            .map_err(map_err(names::SERVICES))?,
    }
    Ok(())
}

/// Writes this POP's settings (`POP_CONFIG`), with the kernel clock and table size they go with.
pub fn write_pop(
    ebpf: &mut Ebpf,
    pop: &PopSettings,
    table_size: u32,
    clock: &KernelClock,
) -> Result<(), ServicesError> {
    let config = PopConfig {
        overlay_addr: pop.overlay_addr.octets(),
        mss_clamp: pop.mss_clamp,
        port_min: pop.port_min,
        port_max: pop.port_max,
        overlay_l2_len: pop.overlay_l2_len,
        ring_size: table_size,
        public_ifindex: pop.public_ifindex,
        flags: POP_READY
            | if pop.snat_prefix.is_some() {
                POP_SNAT96
            } else {
                0
            },
        ns_per_jiffy: clock.ns_per_jiffy,
        affinity_ttl_ns: pop.affinity_ttl.as_nanos().min(u128::from(u64::MAX)) as u64,
        snat_prefix: pop
            .snat_prefix
            .map_or([0; 12], |p| snat_prefix(p.network())),
        _pad3: [0; 4],
        clock_offset_ns: clock.offset_ns,
    };
    array::<PopConfig>(ebpf, names::POP_CONFIG)?
        .set(0, config, 0)
        .map_err(map_err(names::POP_CONFIG))
}

/// The first 96 bits of `network`, as `PopConfig::snat_prefix` holds them.
fn snat_prefix(network: Ipv6Addr) -> [u8; 12] {
    let mut prefix = [0; 12];
    prefix.copy_from_slice(&network.octets()[..12]);
    prefix
}

/// Removes the client bindings of `service_id` to any of `backends`: a backend that left a
/// service must not keep receiving its clients through their bindings.
fn drop_bindings(
    ebpf: &mut Ebpf,
    service_id: u32,
    backends: &BTreeSet<u32>,
) -> Result<usize, ServicesError> {
    let name = names::AFFINITY;
    let map = ebpf
        .map_mut(name)
        .ok_or(ServicesError::MissingMap { name })?;
    let mut bindings: BpfHashMap<&mut MapData, AffinityKey, AffinityValue> =
        BpfHashMap::try_from(map).map_err(map_err(name))?;
    let stale: Vec<AffinityKey> = bindings
        .iter()
        .filter_map(Result::ok)
        .filter(|(k, v)| k.service_id == service_id && backends.contains(&v.backend_id))
        .map(|(k, _)| k)
        .collect();
    for key in &stale {
        match bindings.remove(key) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(source) => return Err(ServicesError::Map { name, source }),
        }
    }
    Ok(stale.len())
}
