//! Writes a balancing plan into the kernel maps: stable ids, deduplicated Maglev tables swapped
//! in atomically, per-country table pointers, and this POP's settings.
//!
//! Ids survive agent restarts because they are read back from the pinned maps: a backend is
//! known by its overlay address and port, a service by its VIP and port. So do tables: a
//! restarted agent takes over each pinned ring whose content is a table it would build, and a
//! restart with the same state writes no table at all. A table is never
//! rewritten in place: a changed eligible set gets a free ring, and then each country's pointer
//! (`SERVICE_RINGS`) is flipped with one map update, so a SYN always reads a complete table.
//! Rings no longer pointed at are reused only after a grace period, once no program run can
//! still be reading them.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::{IpAddr, Ipv6Addr},
    time::{Duration, Instant},
};

use aya::{
    maps::{Array, HashMap as BpfHashMap, MapData, MapError},
    Ebpf,
};
use edge_common::{
    geo::GEO_CLASSES,
    ipv4_mapped,
    limits::MAX_BACKENDS,
    names,
    pop::{POP_READY, POP_SNAT96},
    service::{BACKEND_ACTIVE, BACKEND_ELIGIBLE, NO_BACKEND, SERVICE_AFFINITY},
    BackendValue, PopConfig, ServiceKey, ServiceValue, IPPROTO_TCP,
};
use thiserror::Error;
use tracing::{debug, info, warn};

use crate::{
    balancing::maglev, balancing::plan::Member, balancing::plan::Plan, dataplane::clock,
    dataplane::clock::KernelClock,
};

#[derive(Debug, Error)]
pub enum ServicesError {
    #[error("map {name} is missing from the loaded object")]
    MissingMap { name: &'static str },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("Maglev table: {0}")]
    Maglev(#[from] maglev::MaglevError),
    #[error("data-plane clock: {0}")]
    Clock(#[from] clock::ClockError),
}

fn map_err(name: &'static str) -> impl FnOnce(MapError) -> ServicesError {
    move |source| ServicesError::Map { name, source }
}

/// This POP's data-plane settings, resolved (interface indexes known).
#[derive(Clone, Debug)]
pub struct PopSettings {
    pub overlay_addr: Ipv6Addr,
    pub mss_clamp: u16,
    pub port_min: u16,
    pub port_max: u16,
    pub public_ifindex: u32,
    pub overlay_l2_len: u16,
    /// How long an unused client binding lasts; zero turns affinity off.
    pub affinity_ttl: Duration,
    /// A /96 routed to this POP over the overlay: IPv4 clients appear from it with their own
    /// address and port (see `PopConfig::snat_prefix`).
    pub snat_prefix: Option<ipnet::Ipv6Net>,
}

/// A service or backend left out of the maps, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    pub what: String,
    pub reason: String,
}

/// What one `apply` did.
#[derive(Clone, Debug, Default)]
pub struct Applied {
    pub services: usize,
    pub backends: usize,
    /// Maglev tables built and written.
    pub tables_built: usize,
    /// Distinct tables in use.
    pub tables: usize,
    pub rejected: Vec<Rejected>,
}

/// How long a ring that nothing points at any more stays untouched.
const RING_GRACE: Duration = Duration::from_secs(2);

/// The agent's view of what it wrote, rebuilt from the maps at start.
pub struct Reconciler {
    table_size: u32,
    rings: u32,
    service_ids: HashMap<ServiceKey, ServiceValue>,
    backend_ids: HashMap<(Ipv6Addr, u16), u32>,
    backend_flags: HashMap<u32, u32>,
    /// Ring per distinct member list, with the backend ids the table was built from.
    ring_of: HashMap<Vec<Member>, u32>,
    /// `SERVICE_RINGS` as last written.
    pointers: HashMap<u32, u32>,
    retiring: Vec<(u32, Instant)>,
    free: BTreeSet<u32>,
    /// What the rings a previous agent left in use hold, by content: a table this agent would
    /// build that one already holds is taken over as it is, so that a restart writes nothing.
    /// A ring leaves here when it is taken over or freed.
    pinned_tables: HashMap<Vec<u32>, u32>,
    /// Backend ids each service's tables hold, to drop bindings to backends that left it.
    members: HashMap<u32, BTreeSet<u32>>,
    /// How the kernel programs read the time (written into `PopConfig`).
    clock: KernelClock,
    /// Ports set in `SERVICE_PORTS` by this reconciler (bits are never cleared).
    marked_ports: HashSet<u16>,
}

pub fn service_key(vip: IpAddr, port: u16) -> ServiceKey {
    let addr = match vip {
        IpAddr::V4(v4) => ipv4_mapped(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    };
    ServiceKey {
        addr,
        port: port.to_be(),
        proto: IPPROTO_TCP,
        _pad: 0,
    }
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

impl Reconciler {
    /// Reads the ids an earlier agent assigned from the (pinned) maps; the rings it used are
    /// kept out of reuse until this agent's own tables have replaced them.
    pub fn recover(ebpf: &mut Ebpf, table_size: u32) -> Result<Self, ServicesError> {
        let mut service_ids = HashMap::new();
        for entry in services_map(ebpf)?.iter() {
            let (key, value) = entry.map_err(map_err(names::SERVICES))?;
            service_ids.insert(key, value);
        }
        let mut backend_ids = HashMap::new();
        let mut backend_flags = HashMap::new();
        let backends = array::<BackendValue>(ebpf, names::BACKENDS)?;
        for id in 0..backends.len().min(MAX_BACKENDS) {
            let value = backends.get(&id, 0).map_err(map_err(names::BACKENDS))?;
            if value.flags & BACKEND_ACTIVE != 0 {
                backend_ids.insert((Ipv6Addr::from(value.addr), u16::from_be(value.port)), id);
                backend_flags.insert(id, value.flags);
            }
        }
        let rings = array::<u32>(ebpf, names::MAGLEV)?.len() / table_size.max(1);
        let mut in_use = BTreeSet::new();
        let pointers_map = array::<u32>(ebpf, names::SERVICE_RINGS)?;
        let mut pointers = HashMap::new();
        for value in service_ids.values() {
            for class in 0..GEO_CLASSES {
                let index = value.service_id * GEO_CLASSES + class;
                let ring = pointers_map
                    .get(&index, 0)
                    .map_err(map_err(names::SERVICE_RINGS))?;
                in_use.insert(ring);
                pointers.insert(index, ring);
            }
        }
        let pinned_tables = ring_contents(ebpf, &in_use, table_size)?;
        let clock = clock::calibrate(ebpf)?;
        let now = Instant::now();
        let retiring = in_use.iter().map(|&r| (r, now)).collect();
        let free = (0..rings).filter(|r| !in_use.contains(r)).collect();
        if !service_ids.is_empty() {
            info!(
                services = service_ids.len(),
                backends = backend_ids.len(),
                rings_in_use = in_use.len(),
                "recovered ids from the pinned maps"
            );
        }
        Ok(Reconciler {
            table_size,
            rings,
            service_ids,
            backend_ids,
            backend_flags,
            ring_of: HashMap::new(),
            pointers,
            retiring,
            free,
            pinned_tables,
            members: HashMap::new(),
            clock,
            marked_ports: HashSet::new(),
        })
    }

    /// Makes the maps match `plan`. What cannot be applied (too many services, backends or
    /// tables) is rejected with the reason; everything else is applied.
    pub fn apply(
        &mut self,
        ebpf: &mut Ebpf,
        pop: &PopSettings,
        plan: &Plan,
    ) -> Result<Applied, ServicesError> {
        let mut applied = Applied::default();
        self.release_retired();
        self.apply_backends(ebpf, plan, &mut applied)?;

        let wanted: HashSet<ServiceKey> = plan
            .services
            .iter()
            .map(|s| service_key(s.vip, s.port))
            .collect();
        let removed: Vec<ServiceKey> = self
            .service_ids
            .keys()
            .filter(|k| !wanted.contains(k))
            .copied()
            .collect();
        for key in removed {
            services_map(ebpf)?
                .remove(&key)
                .map_err(map_err(names::SERVICES))?;
            if let Some(value) = self.service_ids.remove(&key) {
                for class in 0..GEO_CLASSES {
                    self.pointers
                        .remove(&(value.service_id * GEO_CLASSES + class));
                }
            }
        }

        let flags = if pop.affinity_ttl.is_zero() {
            0
        } else {
            SERVICE_AFFINITY
        };
        let max_services = edge_common::limits::MAX_SERVICES;
        let mut used_ids: BTreeSet<u32> = self.service_ids.values().map(|v| v.service_id).collect();
        // Services already serving first: when the tables run out, a newcomer is refused, not
        // a service with clients.
        let (serving, newcomers): (Vec<_>, Vec<_>) = plan
            .services
            .iter()
            .partition(|s| self.service_ids.contains_key(&service_key(s.vip, s.port)));
        for service in serving.into_iter().chain(newcomers) {
            let key = service_key(service.vip, service.port);
            let serving = self.service_ids.contains_key(&key);
            let service_id = match self.service_ids.get(&key) {
                Some(value) => value.service_id,
                None => match (0..max_services).find(|id| !used_ids.contains(id)) {
                    Some(id) => id,
                    None => {
                        applied.rejected.push(Rejected {
                            what: format!("service {}", service.id),
                            reason: format!("more than {max_services} services"),
                        });
                        continue;
                    }
                },
            };
            used_ids.insert(service_id);
            let default = service.sets.get(&0).cloned().unwrap_or_default();
            let members: BTreeSet<u32> = service
                .sets
                .values()
                .flatten()
                .filter_map(|m| self.backend_ids.get(&(m.addr, m.port)).copied())
                .collect();
            if let Some(before) = self.members.insert(service_id, members.clone()) {
                let left: BTreeSet<u32> = before.difference(&members).copied().collect();
                if !left.is_empty() {
                    let removed = drop_bindings(ebpf, service_id, &left)?;
                    debug!(
                        service_id,
                        backends = left.len(),
                        removed,
                        "bindings to departed backends dropped"
                    );
                }
            }
            let mut class_rings = BTreeMap::new();
            for class in 0..GEO_CLASSES {
                let set = service.sets.get(&(class as u16)).unwrap_or(&default);
                match self.ring_for(ebpf, set, &mut applied)? {
                    Some(ring) => {
                        class_rings.insert(class, ring);
                    }
                    None => {
                        applied.rejected.push(Rejected {
                            what: format!("service {}", service.id),
                            reason: if serving {
                                format!(
                                    "more than {} distinct tables; it keeps the tables it has",
                                    self.rings
                                )
                            } else {
                                format!("more than {} distinct tables", self.rings)
                            },
                        });
                        break;
                    }
                }
            }
            if class_rings.len() != GEO_CLASSES as usize {
                continue;
            }
            {
                let mut pointers = array::<u32>(ebpf, names::SERVICE_RINGS)?;
                for (class, ring) in class_rings {
                    let index = service_id * GEO_CLASSES + class;
                    if self.pointers.get(&index) != Some(&ring) {
                        pointers
                            .set(index, ring, 0)
                            .map_err(map_err(names::SERVICE_RINGS))?;
                        self.pointers.insert(index, ring);
                    }
                }
            }
            self.mark_port(ebpf, u16::from_be(key.port))?;
            let value = ServiceValue { service_id, flags };
            if self.service_ids.get(&key) != Some(&value) {
                services_map(ebpf)?
                    .insert(key, value, 0)
                    .map_err(map_err(names::SERVICES))?;
                self.service_ids.insert(key, value);
            }
            applied.services += 1;
        }
        self.retire_unused();
        applied.tables = self.ring_of.len();

        let config = PopConfig {
            overlay_addr: pop.overlay_addr.octets(),
            mss_clamp: pop.mss_clamp,
            port_min: pop.port_min,
            port_max: pop.port_max,
            overlay_l2_len: pop.overlay_l2_len,
            ring_size: self.table_size,
            public_ifindex: pop.public_ifindex,
            flags: POP_READY
                | if pop.snat_prefix.is_some() {
                    POP_SNAT96
                } else {
                    0
                },
            ns_per_jiffy: self.clock.ns_per_jiffy,
            affinity_ttl_ns: pop.affinity_ttl.as_nanos().min(u128::from(u64::MAX)) as u64,
            snat_prefix: pop.snat_prefix.map_or([0; 12], |p| {
                let o = p.network().octets();
                [
                    o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7], o[8], o[9], o[10], o[11],
                ]
            }),
            _pad3: [0; 4],
            clock_offset_ns: self.clock.offset_ns,
        };
        array::<PopConfig>(ebpf, names::POP_CONFIG)?
            .set(0, config, 0)
            .map_err(map_err(names::POP_CONFIG))?;
        for r in &applied.rejected {
            warn!(what = %r.what, reason = %r.reason, "rejected");
        }
        Ok(applied)
    }

    /// `mark_port`, once per port: the bits are never cleared, so one write is enough.
    fn mark_port(&mut self, ebpf: &mut Ebpf, port: u16) -> Result<(), ServicesError> {
        if !self.marked_ports.contains(&port) {
            mark_port(ebpf, port)?;
            self.marked_ports.insert(port);
        }
        Ok(())
    }

    fn apply_backends(
        &mut self,
        ebpf: &mut Ebpf,
        plan: &Plan,
        applied: &mut Applied,
    ) -> Result<(), ServicesError> {
        let wanted: HashMap<(Ipv6Addr, u16), bool> = plan
            .backends
            .iter()
            .map(|b| ((b.addr, b.port), b.eligible))
            .collect();
        let mut backends = array::<BackendValue>(ebpf, names::BACKENDS)?;
        let gone: Vec<_> = self
            .backend_ids
            .iter()
            .filter(|(k, _)| !wanted.contains_key(k))
            .map(|(k, id)| (*k, *id))
            .collect();
        for (key, id) in gone {
            // Flows already set up carry their backend's address and keep working.
            backends
                .set(id, BackendValue::default(), 0)
                .map_err(map_err(names::BACKENDS))?;
            self.backend_ids.remove(&key);
            self.backend_flags.remove(&id);
        }
        let mut used: BTreeSet<u32> = self.backend_ids.values().copied().collect();
        for (&(addr, port), &eligible) in &wanted {
            let id = match self.backend_ids.get(&(addr, port)) {
                Some(&id) => id,
                None => {
                    let Some(id) = (0..MAX_BACKENDS).find(|id| !used.contains(id)) else {
                        applied.rejected.push(Rejected {
                            what: format!("backend [{addr}]:{port}"),
                            reason: format!("more than {MAX_BACKENDS} backends"),
                        });
                        continue;
                    };
                    used.insert(id);
                    self.backend_ids.insert((addr, port), id);
                    id
                }
            };
            let flags = BACKEND_ACTIVE | if eligible { BACKEND_ELIGIBLE } else { 0 };
            if self.backend_flags.get(&id) != Some(&flags) {
                let value = BackendValue {
                    addr: addr.octets(),
                    port: port.to_be(),
                    _pad: 0,
                    flags,
                };
                backends
                    .set(id, value, 0)
                    .map_err(map_err(names::BACKENDS))?;
                self.backend_flags.insert(id, flags);
            }
        }
        applied.backends = self.backend_ids.len();
        Ok(())
    }

    /// The ring holding the table of `members`, building it if no ring has it yet.
    fn ring_for(
        &mut self,
        ebpf: &mut Ebpf,
        members: &[Member],
        applied: &mut Applied,
    ) -> Result<Option<u32>, ServicesError> {
        if let Some(&ring) = self.ring_of.get(members) {
            return Ok(Some(ring));
        }
        if members.len() as u64 * 100 > u64::from(self.table_size) {
            // Maglev's split is within about 1% of the weights only with 100 slots per member.
            warn!(
                members = members.len(),
                table_size = self.table_size,
                "a set has more members than the table has room for at 100 slots each; raise maglev.table_size"
            );
        }
        if self.free.is_empty() && self.pinned_tables.is_empty() {
            // No ring to take over nor to write: building the table would be for nothing.
            return Ok(None);
        }
        let table = self.table(members)?;
        if let Some(ring) = self.pinned_tables.remove(&table) {
            self.retiring.retain(|&(r, _)| r != ring);
            self.free.remove(&ring);
            debug!(
                ring,
                members = members.len(),
                "Maglev table taken over as pinned"
            );
            self.ring_of.insert(members.to_vec(), ring);
            return Ok(Some(ring));
        }
        let Some(ring) = self.free.pop_first() else {
            return Ok(None);
        };
        let mut rings = array::<u32>(ebpf, names::MAGLEV)?;
        let base = ring * self.table_size;
        for (slot, backend) in table.iter().enumerate() {
            rings
                .set(base + slot as u32, backend, 0)
                .map_err(map_err(names::MAGLEV))?;
        }
        debug!(ring, members = members.len(), "Maglev table written");
        self.ring_of.insert(members.to_vec(), ring);
        applied.tables_built += 1;
        Ok(Some(ring))
    }

    /// The table for `members` as backend ids (all `NO_BACKEND` for an empty set).
    fn table(&self, members: &[Member]) -> Result<Vec<u32>, ServicesError> {
        let ids: Vec<Option<u32>> = members
            .iter()
            .map(|m| self.backend_ids.get(&(m.addr, m.port)).copied())
            .collect();
        let candidates: Vec<maglev::Candidate<'_>> = members
            .iter()
            .zip(&ids)
            .map(|(m, id)| maglev::Candidate {
                key: &m.key,
                weight: if id.is_some() { m.weight } else { 0 },
            })
            .collect();
        if candidates.iter().all(|c| c.weight == 0) {
            return Ok(vec![NO_BACKEND; self.table_size as usize]);
        }
        let table = maglev::build(&candidates, self.table_size)?;
        Ok(table
            .iter()
            .map(|&i| ids[i as usize].unwrap_or(NO_BACKEND))
            .collect())
    }

    /// Rings no pointer uses any more start their grace period.
    fn retire_unused(&mut self) {
        let pointed: HashSet<u32> = self.pointers.values().copied().collect();
        let now = Instant::now();
        let unused: Vec<Vec<Member>> = self
            .ring_of
            .iter()
            .filter(|(_, ring)| !pointed.contains(ring))
            .map(|(members, _)| members.clone())
            .collect();
        for members in unused {
            if let Some(ring) = self.ring_of.remove(&members) {
                self.retiring.push((ring, now));
            }
        }
    }

    fn release_retired(&mut self) {
        let pointed: HashSet<u32> = self.pointers.values().copied().collect();
        let (ready, waiting): (Vec<_>, Vec<_>) = self
            .retiring
            .drain(..)
            .partition(|(ring, since)| since.elapsed() >= RING_GRACE && !pointed.contains(ring));
        self.retiring = waiting;
        let ready: BTreeSet<u32> = ready.into_iter().map(|(ring, _)| ring).collect();
        // Free rings get written: what they held is no longer known.
        self.pinned_tables.retain(|_, ring| !ready.contains(ring));
        self.free.extend(ready);
    }

    /// Backend ids by overlay address and port, as assigned.
    pub fn backend_ids(&self) -> BTreeMap<u32, (Ipv6Addr, u16)> {
        self.backend_ids.iter().map(|(k, id)| (*id, *k)).collect()
    }
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

/// Removes the client bindings of `service_id` to any of `backends`: a backend that left a
/// service must not keep receiving its clients through their bindings.
fn drop_bindings(
    ebpf: &mut Ebpf,
    service_id: u32,
    backends: &BTreeSet<u32>,
) -> Result<usize, ServicesError> {
    use edge_common::geo::{AffinityKey, AffinityValue};
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
