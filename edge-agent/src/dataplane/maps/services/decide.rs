//! What the reconciler writes for a plan, decided without the kernel: the ids given to new
//! services and backends, the Maglev tables built, reused or taken over, the pointers flipped,
//! the rings retired and freed, and what is refused when ids or rings run out.
//!
//! The steps come in make-before-break order: a changed set's table is written into a free ring
//! before any pointer moves to it, a port is marked before a service on it is inserted, and a
//! ring is retired only once no pointer uses it (freed a grace period later, when no program run
//! can still be reading it).

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    net::Ipv6Addr,
    time::{Duration, Instant},
};

use edge_common::{
    geo::GEO_CLASSES,
    limits::{MAX_BACKENDS, MAX_SERVICES},
    service::{BACKEND_ACTIVE, BACKEND_ELIGIBLE, NO_BACKEND, SERVICE_AFFINITY},
    ServiceKey, ServiceValue,
};
use tracing::warn;

use super::ledger::{service_key, Ledger, Step};
use crate::{
    balancing::maglev,
    balancing::plan::{Member, Plan, ServicePlan},
};

/// How long a ring that nothing points at any more stays untouched.
pub const RING_GRACE: Duration = Duration::from_secs(2);

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

/// The steps that make maps holding what `ledger` says hold `plan` instead, and what they add
/// up to.
#[derive(Clone, Debug)]
pub struct Decision {
    pub steps: Vec<Step>,
    pub applied: Applied,
}

/// Decides how to make the maps `ledger` describes hold `plan`, at time `now` (which retired
/// rings are past their grace). `affinity` sets the services' binding flag. What cannot be
/// applied (too many services, backends or tables) is rejected with the reason; everything
/// else is decided.
pub fn decide(
    ledger: &Ledger,
    plan: &Plan,
    affinity: bool,
    now: Instant,
) -> Result<Decision, maglev::MaglevError> {
    let mut draft = Draft {
        next: ledger.clone(),
        steps: Vec::new(),
        applied: Applied::default(),
        now,
    };
    draft.release_retired();
    draft.backends(plan);
    draft.remove_services(plan);
    draft.services(plan, if affinity { SERVICE_AFFINITY } else { 0 })?;
    draft.retire_unused();
    draft.applied.tables = draft.next.tables();
    Ok(Decision {
        steps: draft.steps,
        applied: draft.applied,
    })
}

/// The decision so far, and the ledger as its steps leave it.
struct Draft {
    next: Ledger,
    steps: Vec<Step>,
    applied: Applied,
    now: Instant,
}

impl Draft {
    fn push(&mut self, step: Step) {
        self.next.record(&step);
        self.steps.push(step);
    }

    fn reject(&mut self, what: String, reason: String) {
        self.applied.rejected.push(Rejected { what, reason });
    }

    /// Rings retired for the grace period, and pointed at by nobody, become free.
    fn release_retired(&mut self) {
        let pointed: HashSet<u32> = self.next.pointers.values().copied().collect();
        let rings: BTreeSet<u32> = self
            .next
            .retiring
            .iter()
            .filter(|(ring, since)| {
                self.now.saturating_duration_since(*since) >= RING_GRACE && !pointed.contains(ring)
            })
            .map(|&(ring, _)| ring)
            .collect();
        if !rings.is_empty() {
            self.push(Step::Release { rings });
        }
    }

    /// Backends that left are cleared; new ones get the lowest free id; a changed eligibility
    /// is rewritten.
    fn backends(&mut self, plan: &Plan) {
        let wanted: BTreeMap<(Ipv6Addr, u16), bool> = plan
            .backends
            .iter()
            .map(|b| ((b.addr, b.port), b.eligible))
            .collect();
        let mut gone: Vec<((Ipv6Addr, u16), u32)> = self
            .next
            .backend_ids
            .iter()
            .filter(|(k, _)| !wanted.contains_key(k))
            .map(|(k, id)| (*k, *id))
            .collect();
        gone.sort_unstable_by_key(|&(_, id)| id);
        for ((addr, port), id) in gone {
            // Flows already set up carry their backend's address and keep working.
            self.push(Step::ClearBackend { id, addr, port });
        }
        let mut used: BTreeSet<u32> = self.next.backend_ids.values().copied().collect();
        for (&(addr, port), &eligible) in &wanted {
            let id = match self.next.backend_ids.get(&(addr, port)) {
                Some(&id) => id,
                None => {
                    let Some(id) = (0..MAX_BACKENDS).find(|id| !used.contains(id)) else {
                        self.reject(
                            format!("backend [{addr}]:{port}"),
                            format!("more than {MAX_BACKENDS} backends"),
                        );
                        continue;
                    };
                    used.insert(id);
                    id
                }
            };
            let flags = BACKEND_ACTIVE | if eligible { BACKEND_ELIGIBLE } else { 0 };
            if self.next.backend_flags.get(&id) != Some(&flags) {
                self.push(Step::WriteBackend {
                    id,
                    addr,
                    port,
                    flags,
                });
            }
        }
        self.applied.backends = self.next.backend_ids.len();
    }

    /// Services no longer planned leave `SERVICES` first: their clients stop being translated
    /// before their ids or rings can go to anyone else.
    fn remove_services(&mut self, plan: &Plan) {
        let wanted: HashSet<ServiceKey> = plan
            .services
            .iter()
            .map(|s| service_key(s.vip, s.port))
            .collect();
        let mut removed: Vec<ServiceKey> = self
            .next
            .service_ids
            .keys()
            .filter(|k| !wanted.contains(k))
            .copied()
            .collect();
        removed.sort_unstable_by_key(|k| (k.addr, k.port));
        for key in removed {
            self.push(Step::RemoveService { key });
        }
    }

    fn services(&mut self, plan: &Plan, flags: u32) -> Result<(), maglev::MaglevError> {
        let mut used_ids: BTreeSet<u32> = self
            .next
            .service_ids
            .values()
            .map(|v| v.service_id)
            .collect();
        // Services already serving first: when the tables run out, a newcomer is refused, not
        // a service with clients.
        let (serving, newcomers): (Vec<&ServicePlan>, Vec<&ServicePlan>) =
            plan.services.iter().partition(|s| {
                self.next
                    .service_ids
                    .contains_key(&service_key(s.vip, s.port))
            });
        for service in serving.into_iter().chain(newcomers) {
            let key = service_key(service.vip, service.port);
            let serving = self.next.service_ids.get(&key).map(|v| v.service_id);
            let service_id = match serving {
                Some(id) => id,
                None => match (0..MAX_SERVICES).find(|id| !used_ids.contains(id)) {
                    Some(id) => id,
                    None => {
                        self.reject(
                            format!("service {}", service.id),
                            format!("more than {MAX_SERVICES} services"),
                        );
                        continue;
                    }
                },
            };
            used_ids.insert(service_id);
            self.members(service_id, service);
            let Some(class_rings) = self.class_rings(service, serving.is_some())? else {
                continue;
            };
            for (class, ring) in class_rings {
                let index = service_id * GEO_CLASSES + class;
                if self.next.pointers.get(&index) != Some(&ring) {
                    self.push(Step::Point { index, ring });
                }
            }
            if !self.next.marked_ports.contains(&service.port) {
                self.push(Step::MarkPort { port: service.port });
            }
            let value = ServiceValue { service_id, flags };
            if self.next.service_ids.get(&key) != Some(&value) {
                self.push(Step::WriteService { key, value });
            }
            self.applied.services += 1;
        }
        Ok(())
    }

    /// Records the backends `service`'s sets hold; those that left it lose their bindings.
    fn members(&mut self, service_id: u32, service: &ServicePlan) {
        let members: BTreeSet<u32> = service
            .sets
            .values()
            .flatten()
            .filter_map(|m| self.next.backend_ids.get(&(m.addr, m.port)).copied())
            .collect();
        let before = self.next.members.get(&service_id);
        if before == Some(&members) {
            return;
        }
        let departed = before.map_or_else(BTreeSet::new, |before| {
            before.difference(&members).copied().collect()
        });
        self.push(Step::Members {
            service_id,
            members,
            departed,
        });
    }

    /// The ring of each country class of `service`, or `None` (and the service refused) if one
    /// has no ring: a serving service then keeps the tables it has.
    fn class_rings(
        &mut self,
        service: &ServicePlan,
        serving: bool,
    ) -> Result<Option<BTreeMap<u32, u32>>, maglev::MaglevError> {
        let default = service.sets.get(&0).cloned().unwrap_or_default();
        let mut class_rings = BTreeMap::new();
        for class in 0..GEO_CLASSES {
            let set = service.sets.get(&(class as u16)).unwrap_or(&default);
            let Some(ring) = self.ring_for(set)? else {
                let rings = self.next.rings;
                self.reject(
                    format!("service {}", service.id),
                    if serving {
                        format!("more than {rings} distinct tables; it keeps the tables it has")
                    } else {
                        format!("more than {rings} distinct tables")
                    },
                );
                return Ok(None);
            };
            class_rings.insert(class, ring);
        }
        Ok(Some(class_rings))
    }

    /// The ring holding the table of `members`, building it if no ring has it yet.
    fn ring_for(&mut self, members: &[Member]) -> Result<Option<u32>, maglev::MaglevError> {
        if let Some(&ring) = self.next.ring_of.get(members) {
            return Ok(Some(ring));
        }
        let table_size = self.next.table_size;
        if members.len() as u64 * 100 > u64::from(table_size) {
            // Maglev's split is within about 1% of the weights only with 100 slots per member.
            warn!(
                members = members.len(),
                table_size,
                "a set has more members than the table has room for at 100 slots each; raise maglev.table_size"
            );
        }
        if self.next.free.is_empty() && self.next.pinned_tables.is_empty() {
            // No ring to take over nor to write: building the table would be for nothing.
            return Ok(None);
        }
        let table = table(&self.next, members)?;
        if let Some(&ring) = self.next.pinned_tables.get(table.as_slice()) {
            self.push(Step::TakeOver {
                ring,
                members: members.to_vec(),
            });
            return Ok(Some(ring));
        }
        let Some(&ring) = self.next.free.first() else {
            return Ok(None);
        };
        self.push(Step::WriteTable {
            ring,
            members: members.to_vec(),
            table,
        });
        self.applied.tables_built += 1;
        Ok(Some(ring))
    }

    /// Rings no pointer uses any more start their grace period.
    fn retire_unused(&mut self) {
        let pointed: HashSet<u32> = self.next.pointers.values().copied().collect();
        let mut unused: Vec<u32> = self
            .next
            .ring_of
            .values()
            .filter(|ring| !pointed.contains(ring))
            .copied()
            .collect();
        unused.sort_unstable();
        for ring in unused {
            self.push(Step::Retire {
                ring,
                since: self.now,
            });
        }
    }
}

/// The table for `members` as backend ids (all `NO_BACKEND` for an empty set).
fn table(ledger: &Ledger, members: &[Member]) -> Result<Vec<u32>, maglev::MaglevError> {
    let ids: Vec<Option<u32>> = members
        .iter()
        .map(|m| ledger.backend_ids.get(&(m.addr, m.port)).copied())
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
        return Ok(vec![NO_BACKEND; ledger.table_size as usize]);
    }
    let table = maglev::build(&candidates, ledger.table_size)?;
    Ok(table
        .iter()
        .map(|&i| ids[i as usize].unwrap_or(NO_BACKEND))
        .collect())
}
