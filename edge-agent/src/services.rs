//! Writes the desired services and backends into the kernel maps: stable ids, Maglev tables
//! swapped in atomically, and this POP's settings.
//!
//! Ids survive agent restarts because they are read back from the pinned maps: a backend is
//! known by its overlay address and port, a service by its VIP and port. A Maglev table is swapped
//! by writing the service's spare ring and then flipping `ServiceValue::ring`, one map update, so
//! a SYN never sees a half-written table.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::{IpAddr, Ipv6Addr},
};

use aya::{
    maps::{Array, HashMap as BpfHashMap, MapData, MapError},
    Ebpf,
};
use edge_common::{
    ipv4_mapped,
    limits::MAX_BACKENDS,
    names,
    pop::POP_READY,
    service::{BACKEND_ACTIVE, NO_BACKEND},
    BackendValue, PopConfig, ServiceKey, ServiceValue, IPPROTO_TCP,
};
use thiserror::Error;
use tracing::{info, warn};

use crate::{
    config::{BackendConfig, ServiceConfig},
    maglev,
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
    /// Services whose Maglev table was rebuilt and swapped.
    pub tables_swapped: usize,
    pub rejected: Vec<Rejected>,
}

/// The agent's view of what it wrote, rebuilt from the maps at start.
pub struct Reconciler {
    table_size: u32,
    max_services: u32,
    service_ids: HashMap<ServiceKey, ServiceValue>,
    backend_ids: HashMap<(Ipv6Addr, u16), u32>,
    /// The (backend id, weight, key) list each service's current table was built from.
    built: HashMap<ServiceKey, Vec<(u32, u32, String)>>,
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
    /// Reads the ids an earlier agent assigned from the (pinned) maps.
    pub fn recover(
        ebpf: &mut Ebpf,
        table_size: u32,
        max_services: u32,
    ) -> Result<Self, ServicesError> {
        let mut service_ids = HashMap::new();
        for entry in services_map(ebpf)?.iter() {
            let (key, value) = entry.map_err(map_err(names::SERVICES))?;
            service_ids.insert(key, value);
        }
        let mut backend_ids = HashMap::new();
        let backends = array::<BackendValue>(ebpf, names::BACKENDS)?;
        for id in 0..MAX_BACKENDS {
            let value = backends.get(&id, 0).map_err(map_err(names::BACKENDS))?;
            if value.flags & BACKEND_ACTIVE != 0 {
                backend_ids.insert((Ipv6Addr::from(value.addr), u16::from_be(value.port)), id);
            }
        }
        if !service_ids.is_empty() || !backend_ids.is_empty() {
            info!(
                services = service_ids.len(),
                backends = backend_ids.len(),
                "recovered service and backend ids from the pinned maps"
            );
        }
        Ok(Reconciler {
            table_size,
            max_services,
            service_ids,
            backend_ids,
            built: HashMap::new(),
        })
    }

    /// Makes the maps match `services`. Invalid entries are rejected one by one, with the
    /// reason; everything valid is applied.
    pub fn apply(
        &mut self,
        ebpf: &mut Ebpf,
        pop: &PopSettings,
        services: &[ServiceConfig],
    ) -> Result<Applied, ServicesError> {
        let mut applied = Applied::default();
        let valid = validate(services, &mut applied.rejected);

        // Backends: keep the ids of those still wanted, give new ones the lowest free ids.
        let wanted: BTreeSet<(Ipv6Addr, u16)> = valid
            .iter()
            .flat_map(|(_, backends)| backends.iter().map(|b| (b.addr, b.port)))
            .collect();
        let mut backends = array::<BackendValue>(ebpf, names::BACKENDS)?;
        let gone: Vec<_> = self
            .backend_ids
            .iter()
            .filter(|(k, _)| !wanted.contains(k))
            .map(|(k, id)| (*k, *id))
            .collect();
        for (key, id) in gone {
            // Flows already set up carry their backend's address and keep working.
            backends
                .set(id, BackendValue::default(), 0)
                .map_err(map_err(names::BACKENDS))?;
            self.backend_ids.remove(&key);
        }
        let mut used: BTreeSet<u32> = self.backend_ids.values().copied().collect();
        for &(addr, port) in &wanted {
            if self.backend_ids.contains_key(&(addr, port)) {
                continue;
            }
            let Some(id) = (0..MAX_BACKENDS).find(|id| !used.contains(id)) else {
                applied.rejected.push(Rejected {
                    what: format!("backend [{addr}]:{port}"),
                    reason: format!("more than {MAX_BACKENDS} backends"),
                });
                continue;
            };
            used.insert(id);
            self.backend_ids.insert((addr, port), id);
            let value = BackendValue {
                addr: addr.octets(),
                port: port.to_be(),
                _pad: 0,
                flags: BACKEND_ACTIVE,
            };
            backends
                .set(id, value, 0)
                .map_err(map_err(names::BACKENDS))?;
        }
        applied.backends = self.backend_ids.len();

        // Services: ids, tables, then the one-word flip.
        let wanted_keys: HashSet<ServiceKey> = valid
            .iter()
            .map(|(s, _)| service_key(s.vip, s.port))
            .collect();
        let removed: Vec<ServiceKey> = self
            .service_ids
            .keys()
            .filter(|k| !wanted_keys.contains(k))
            .copied()
            .collect();
        {
            let mut map = services_map(ebpf)?;
            for key in &removed {
                map.remove(key).map_err(map_err(names::SERVICES))?;
            }
        }
        for key in removed {
            self.service_ids.remove(&key);
            self.built.remove(&key);
        }
        let mut used_ids: BTreeSet<u32> = self.service_ids.values().map(|v| v.service_id).collect();
        for (service, backends) in &valid {
            let key = service_key(service.vip, service.port);
            let members: Vec<(u32, u32, String)> = backends
                .iter()
                .filter_map(|b| {
                    let id = *self.backend_ids.get(&(b.addr, b.port))?;
                    Some((id, b.weight, b.name.clone()))
                })
                .collect();
            let current = self.service_ids.get(&key).copied();
            if current.is_some() && self.built.get(&key) == Some(&members) {
                applied.services += 1;
                continue;
            }
            let service_id = match current {
                Some(value) => value.service_id,
                None => match (0..self.max_services).find(|id| !used_ids.contains(id)) {
                    Some(id) => id,
                    None => {
                        applied.rejected.push(Rejected {
                            what: format!("service {}", service.name),
                            reason: format!("more than {} services", self.max_services),
                        });
                        continue;
                    }
                },
            };
            used_ids.insert(service_id);
            let (ring_a, ring_b) = (2 * service_id, 2 * service_id + 1);
            let ring = match current {
                Some(value) if value.ring == ring_a => ring_b,
                _ => ring_a,
            };
            let table = self.table(&members)?;
            {
                let mut rings = array::<u32>(ebpf, names::MAGLEV)?;
                let base = ring * self.table_size;
                for (slot, backend) in table.iter().enumerate() {
                    rings
                        .set(base + slot as u32, backend, 0)
                        .map_err(map_err(names::MAGLEV))?;
                }
            }
            let value = ServiceValue {
                service_id,
                ring,
                flags: 0,
                _pad: 0,
            };
            services_map(ebpf)?
                .insert(key, value, 0)
                .map_err(map_err(names::SERVICES))?;
            self.service_ids.insert(key, value);
            self.built.insert(key, members);
            applied.services += 1;
            applied.tables_swapped += 1;
        }

        let config = PopConfig {
            overlay_addr: pop.overlay_addr.octets(),
            mss_clamp: pop.mss_clamp,
            port_min: pop.port_min,
            port_max: pop.port_max,
            overlay_l2_len: pop.overlay_l2_len,
            ring_size: self.table_size,
            public_ifindex: pop.public_ifindex,
            flags: POP_READY,
            _pad2: 0,
        };
        array::<PopConfig>(ebpf, names::POP_CONFIG)?
            .set(0, config, 0)
            .map_err(map_err(names::POP_CONFIG))?;
        for r in &applied.rejected {
            warn!(what = %r.what, reason = %r.reason, "rejected");
        }
        Ok(applied)
    }

    /// The ring contents (backend ids) for one service's members.
    fn table(&self, members: &[(u32, u32, String)]) -> Result<Vec<u32>, ServicesError> {
        if members.iter().all(|(_, weight, _)| *weight == 0) {
            return Ok(vec![NO_BACKEND; self.table_size as usize]);
        }
        let candidates: Vec<maglev::Candidate<'_>> = members
            .iter()
            .map(|(_, weight, key)| maglev::Candidate {
                key,
                weight: *weight,
            })
            .collect();
        let table = maglev::build(&candidates, self.table_size)?;
        Ok(table.iter().map(|&i| members[i as usize].0).collect())
    }

    /// Backend ids by overlay address and port, as assigned.
    pub fn backend_ids(&self) -> BTreeMap<u32, (Ipv6Addr, u16)> {
        self.backend_ids.iter().map(|(k, id)| (*id, *k)).collect()
    }
}

/// Weight bounds: 0 takes a backend out of new flows; the upper bound keeps Maglev's credit
/// arithmetic far from overflow and catches typos.
pub const MAX_WEIGHT: u32 = 1_000_000;

/// The services and backends that can be applied; every other one goes to `rejected`.
fn validate<'a>(
    services: &'a [ServiceConfig],
    rejected: &mut Vec<Rejected>,
) -> Vec<(&'a ServiceConfig, Vec<&'a BackendConfig>)> {
    let mut seen = BTreeMap::new();
    let mut valid = Vec::new();
    for service in services {
        let what = format!("service {}", service.name);
        let reject = |reason: String| Rejected {
            what: what.clone(),
            reason,
        };
        if service.port == 0 {
            rejected.push(reject("port 0".into()));
            continue;
        }
        if service.vip.is_unspecified() || service.vip.is_multicast() {
            rejected.push(reject(format!(
                "VIP {} is not a unicast address",
                service.vip
            )));
            continue;
        }
        if let Some(first) = seen.insert((service.vip, service.port), &service.name) {
            rejected.push(reject(format!(
                "{}:{} is already service {first}",
                service.vip, service.port
            )));
            continue;
        }
        let mut names = BTreeSet::new();
        let mut backends = Vec::new();
        for backend in &service.backends {
            let what = format!("backend {} of service {}", backend.name, service.name);
            let reason = if backend.port == 0 {
                Some("port 0".to_owned())
            } else if backend.weight > MAX_WEIGHT {
                Some(format!("weight {} above {MAX_WEIGHT}", backend.weight))
            } else if backend.addr.is_unspecified() || backend.addr.is_multicast() {
                Some(format!("address {} is not a unicast address", backend.addr))
            } else if !names.insert(backend.name.as_str()) {
                Some("duplicate name".to_owned())
            } else {
                None
            };
            match reason {
                Some(reason) => rejected.push(Rejected { what, reason }),
                None => backends.push(backend),
            }
        }
        valid.push((service, backends));
    }
    valid
}
