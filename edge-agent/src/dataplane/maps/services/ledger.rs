//! The reconciler's account of what the service maps hold, and the steps that change it.
//!
//! Each [`Step`] is one map write (or one change of bookkeeping that goes with none), and
//! [`Ledger::record`] is the only place the account changes: the decision replays its steps on
//! a copy as it makes them, and the writer records each step on the real ledger once the kernel
//! has taken it. So after a write fails half way, the ledger still says what the maps hold.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    net::{IpAddr, Ipv6Addr},
    sync::Arc,
    time::Instant,
};

use edge_common::{
    geo::GEO_CLASSES, ipv4_mapped, service::BACKEND_ACTIVE, BackendValue, ServiceKey, ServiceValue,
    IPPROTO_TCP,
};

use crate::balancing::plan::Member;

/// The `SERVICES` key of a service reached at `vip:port`.
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

/// One change to the maps or to the ledger, in the order the decision makes them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Rings past their grace period may be written again (what they held is forgotten).
    Release { rings: BTreeSet<u32> },
    /// `BACKENDS[id]` emptied: the backend left the plan.
    ClearBackend { id: u32, addr: Ipv6Addr, port: u16 },
    /// `BACKENDS[id]` written with the backend's endpoint and `flags`.
    WriteBackend {
        id: u32,
        addr: Ipv6Addr,
        port: u16,
        flags: u32,
    },
    /// The service's `SERVICES` entry deleted; its rings are retired once nothing points at
    /// them.
    RemoveService { key: ServiceKey },
    /// The backends a service's tables hold now; the clients bound to the `departed` ones are
    /// unbound.
    Members {
        service_id: u32,
        members: BTreeSet<u32>,
        departed: BTreeSet<u32>,
    },
    /// A pinned ring already holds the table of `members`: it is used as it is.
    TakeOver { ring: u32, members: Vec<Member> },
    /// The table of `members` written into a free ring (nothing points at it yet).
    WriteTable {
        ring: u32,
        members: Vec<Member>,
        table: Vec<u32>,
    },
    /// `SERVICE_RINGS[index]` (a service's class) flipped to `ring` in one update.
    Point { index: u32, ring: u32 },
    /// The port's bit set in `SERVICE_PORTS`, before any service on it is inserted.
    MarkPort { port: u16 },
    /// The service's `SERVICES` entry written.
    WriteService {
        key: ServiceKey,
        value: ServiceValue,
    },
    /// A ring nothing points at any more starts its grace period.
    Retire { ring: u32, since: Instant },
}

/// What the reconciler knows the maps hold, rebuilt from them at start.
#[derive(Clone, Debug)]
pub struct Ledger {
    pub(super) table_size: u32,
    pub(super) rings: u32,
    pub(super) service_ids: HashMap<ServiceKey, ServiceValue>,
    pub(super) backend_ids: HashMap<(Ipv6Addr, u16), u32>,
    pub(super) backend_flags: HashMap<u32, u32>,
    /// Ring per distinct member list.
    pub(super) ring_of: HashMap<Vec<Member>, u32>,
    /// `SERVICE_RINGS` as last written.
    pub(super) pointers: HashMap<u32, u32>,
    pub(super) retiring: Vec<(u32, Instant)>,
    pub(super) free: BTreeSet<u32>,
    /// What the rings a previous agent left in use hold, by content: a table this agent would
    /// build that one already holds is taken over as it is, so that a restart writes nothing.
    /// A ring leaves here when it is taken over or freed. (Shared so that the decision's copy
    /// of the ledger does not copy whole tables.)
    pub(super) pinned_tables: HashMap<Arc<[u32]>, u32>,
    /// Backend ids each service's tables hold, to drop bindings to backends that left it.
    pub(super) members: HashMap<u32, BTreeSet<u32>>,
    /// Ports set in `SERVICE_PORTS` by this reconciler (bits are never cleared).
    pub(super) marked_ports: HashSet<u16>,
}

impl Ledger {
    /// Empty maps of `rings` Maglev tables of `table_size` slots: every ring free.
    #[cfg(test)]
    pub fn new(table_size: u32, rings: u32) -> Self {
        Ledger::recovered(
            table_size,
            rings,
            HashMap::new(),
            std::iter::empty(),
            HashMap::new(),
            HashMap::new(),
            Instant::now(),
        )
    }

    /// The ledger of maps an earlier agent wrote: its services, the `BACKENDS` slots, its
    /// `SERVICE_RINGS` pointers and what the rings they point at hold. Those rings are kept
    /// out of reuse (retiring since `now`) until this agent's own tables have replaced them.
    pub fn recovered(
        table_size: u32,
        rings: u32,
        service_ids: HashMap<ServiceKey, ServiceValue>,
        backends: impl IntoIterator<Item = (u32, BackendValue)>,
        pointers: HashMap<u32, u32>,
        pinned_tables: HashMap<Vec<u32>, u32>,
        now: Instant,
    ) -> Self {
        let mut backend_ids = HashMap::new();
        let mut backend_flags = HashMap::new();
        for (id, value) in backends {
            if value.flags & BACKEND_ACTIVE != 0 {
                backend_ids.insert((Ipv6Addr::from(value.addr), u16::from_be(value.port)), id);
                backend_flags.insert(id, value.flags);
            }
        }
        let in_use: BTreeSet<u32> = pointers.values().copied().collect();
        Ledger {
            table_size,
            rings,
            service_ids,
            backend_ids,
            backend_flags,
            ring_of: HashMap::new(),
            pointers,
            retiring: in_use.iter().map(|&ring| (ring, now)).collect(),
            free: (0..rings).filter(|r| !in_use.contains(r)).collect(),
            pinned_tables: pinned_tables
                .into_iter()
                .map(|(table, ring)| (Arc::from(table), ring))
                .collect(),
            members: HashMap::new(),
            marked_ports: HashSet::new(),
        }
    }

    /// The ledger once `step` is done.
    pub fn record(&mut self, step: &Step) {
        match step {
            Step::Release { rings } => {
                self.retiring.retain(|(ring, _)| !rings.contains(ring));
                // Free rings get written: what they held is no longer known.
                self.pinned_tables.retain(|_, ring| !rings.contains(ring));
                self.free.extend(rings);
            }
            Step::ClearBackend { id, addr, port } => {
                self.backend_ids.remove(&(*addr, *port));
                self.backend_flags.remove(id);
            }
            Step::WriteBackend {
                id,
                addr,
                port,
                flags,
            } => {
                self.backend_ids.insert((*addr, *port), *id);
                self.backend_flags.insert(*id, *flags);
            }
            Step::RemoveService { key } => {
                if let Some(value) = self.service_ids.remove(key) {
                    for class in 0..GEO_CLASSES {
                        self.pointers
                            .remove(&(value.service_id * GEO_CLASSES + class));
                    }
                }
            }
            Step::Members {
                service_id,
                members,
                ..
            } => {
                self.members.insert(*service_id, members.clone());
            }
            Step::TakeOver { ring, members } => {
                self.pinned_tables.retain(|_, r| r != ring);
                self.retiring.retain(|(r, _)| r != ring);
                self.free.remove(ring);
                self.ring_of.insert(members.clone(), *ring);
            }
            Step::WriteTable { ring, members, .. } => {
                self.free.remove(ring);
                self.ring_of.insert(members.clone(), *ring);
            }
            Step::Point { index, ring } => {
                self.pointers.insert(*index, *ring);
            }
            Step::MarkPort { port } => {
                self.marked_ports.insert(*port);
            }
            Step::WriteService { key, value } => {
                self.service_ids.insert(*key, *value);
            }
            Step::Retire { ring, since } => {
                self.ring_of.retain(|_, r| r != ring);
                self.retiring.push((*ring, *since));
            }
        }
    }

    /// Backend ids by overlay address and port, as assigned.
    pub fn backend_ids(&self) -> impl Iterator<Item = (u32, (Ipv6Addr, u16))> + '_ {
        self.backend_ids.iter().map(|(k, id)| (*id, *k))
    }

    /// Distinct tables in use.
    pub fn tables(&self) -> usize {
        self.ring_of.len()
    }
}
