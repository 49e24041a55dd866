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
//!
//! What to write is decided without the kernel (`decide`, over the `ledger` of what the maps
//! hold); `kernel` reads and writes the maps.

mod decide;
mod kernel;
mod ledger;
#[cfg(test)]
mod tests;

use std::{collections::BTreeMap, net::Ipv6Addr, time::Duration, time::Instant};

use aya::{maps::MapError, Ebpf};
use thiserror::Error;
use tracing::{info, warn};

use self::{decide::decide, ledger::Ledger};
pub use self::{
    decide::{Applied, Rejected},
    kernel::mark_port,
    ledger::service_key,
};
use crate::{
    balancing::maglev, balancing::plan::Plan, dataplane::clock, dataplane::clock::KernelClock,
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

/// The agent's view of what it wrote, rebuilt from the maps at start.
pub struct Reconciler {
    ledger: Ledger,
    /// How the kernel programs read the time (written into `PopConfig`).
    clock: KernelClock,
}

impl Reconciler {
    /// Reads the ids an earlier agent assigned from the (pinned) maps; the rings it used are
    /// kept out of reuse until this agent's own tables have replaced them.
    pub fn recover(ebpf: &mut Ebpf, table_size: u32) -> Result<Self, ServicesError> {
        let pinned = kernel::read_pinned(ebpf, table_size)?;
        let clock = clock::calibrate(ebpf)?;
        let ledger = Ledger::recovered(
            table_size,
            pinned.rings,
            pinned.services,
            pinned.backends,
            pinned.pointers,
            pinned.tables,
            Instant::now(),
        );
        if !ledger.service_ids.is_empty() {
            info!(
                services = ledger.service_ids.len(),
                backends = ledger.backend_ids.len(),
                rings_in_use = ledger.retiring.len(),
                "recovered ids from the pinned maps"
            );
        }
        Ok(Reconciler { ledger, clock })
    }

    /// Makes the maps match `plan`. What cannot be applied (too many services, backends or
    /// tables) is rejected with the reason; everything else is applied.
    pub fn apply(
        &mut self,
        ebpf: &mut Ebpf,
        pop: &PopSettings,
        plan: &Plan,
    ) -> Result<Applied, ServicesError> {
        let affinity = !pop.affinity_ttl.is_zero();
        let decision = decide(&self.ledger, plan, affinity, Instant::now())?;
        for step in &decision.steps {
            kernel::write(ebpf, step, self.ledger.table_size)?;
            self.ledger.record(step);
        }
        kernel::write_pop(ebpf, pop, self.ledger.table_size, &self.clock)?;
        for r in &decision.applied.rejected {
            warn!(what = %r.what, reason = %r.reason, "rejected");
        }
        Ok(decision.applied)
    }

    /// Backend ids by overlay address and port, as assigned.
    pub fn backend_ids(&self) -> BTreeMap<u32, (Ipv6Addr, u16)> {
        self.ledger.backend_ids().collect()
    }
}
