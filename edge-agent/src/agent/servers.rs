//! The agent's servers, started before it says it is ready: `/metrics`, the registration API and
//! the reaper of its expired leases, and the `internal.` DNS zone. Each is a task of its own
//! fed by watch channels (the metrics view, the state snapshot, the zone); none of them writes
//! a kernel map.

use std::{net::SocketAddr, sync::Arc};

use hickory_proto::rr::{RData, Record};
use tokio::sync::watch;
use tracing::{info, warn};

use super::Drain;
use crate::{
    config::AgentConfig,
    dataplane::pins::PinDir,
    dns::{DnsServer, Zone},
    listen::budget::Budget,
    metrics::AgentView,
    model::Snapshot,
    register::api::{ApiState, ThisPop},
    state::StateStore,
};

/// Serves `/metrics` where configured.
pub async fn start_metrics(
    config: &AgentConfig,
    pins: &PinDir,
    budget: &Budget,
    view: watch::Receiver<Arc<AgentView>>,
) {
    let Some(addr) = config.metrics.listen else {
        return;
    };
    let app = crate::metrics::router(pins.clone(), view);
    let limits = &config.metrics.limits;
    let limits = limits.with_cap(budget.cap(limits.max_connections));
    match crate::listen::http::start("metrics", addr, limits, app).await {
        Ok(addr) => info!(%addr, "metrics at /metrics"),
        Err(error) => warn!(%addr, %error, "metrics endpoint: cannot listen"),
    }
}

/// This POP as the registration API and the lease reaper know it.
fn this_pop(config: &AgentConfig) -> ThisPop {
    ThisPop::new(
        &config.pop_id,
        config.overlay.addr,
        config.overlay.snat_prefix,
    )
}

/// Starts the registration API where configured; it needs the state database.
pub async fn start_register_api(
    config: &AgentConfig,
    store: Option<Arc<dyn StateStore>>,
    snapshot: watch::Receiver<Arc<Snapshot>>,
    budget: &Budget,
) {
    let register = &config.register;
    if register.listen.is_empty() {
        return;
    }
    let (Some(store), Ok(Some(token))) = (store, register.token()) else {
        warn!("register.listen is set, but the API needs state.database and a token: it is off");
        return;
    };
    let api = Arc::new(ApiState {
        token,
        store,
        snapshot,
        default_heartbeat_secs: register.heartbeat_secs,
        pop: this_pop(config),
    });
    let limits = register
        .limits
        .with_cap(budget.cap(register.limits.max_connections));
    for &addr in &register.listen {
        let app = crate::register::api::router(Arc::clone(&api));
        match crate::listen::http::start("register", addr, limits, app).await {
            Ok(addr) => info!(%addr, "registration API listening"),
            Err(error) => warn!(%addr, %error, "registration API: cannot listen"),
        }
    }
}

/// Deletes registrations whose lease ran out (every agent with a state store: the lease's
/// POP at once, the others late, see `register::reaper`).
pub fn start_reaper(
    config: &AgentConfig,
    store: Option<Arc<dyn StateStore>>,
    snapshot: watch::Receiver<Arc<Snapshot>>,
) {
    if let Some(store) = store {
        let pop = ThisPop::lease_id(&config.pop_id);
        if pop.is_empty() {
            warn!(pop_id = %config.pop_id, "pop_id is not a valid id: registrations accepted here are deleted late, by any POP");
        }
        crate::register::reaper::spawn(store, snapshot, &pop);
    }
}

/// Whether `zone` says something else than the records served. The SOA carries the serial:
/// everything else is compared.
pub fn zone_changed(served: &[Record], zone: &Zone) -> bool {
    !(zone.records.len() == served.len()
        && zone.records.iter().zip(served).skip(1).all(|(a, b)| a == b))
}

/// `zone` with `serial` in its SOA.
fn stamped(zone: &Zone, serial: u32) -> Zone {
    let mut zone = Zone {
        records: zone.records.clone(),
    };
    for record in &mut zone.records {
        if let RData::SOA(soa) = &mut record.data {
            soa.serial = serial;
        }
    }
    zone
}

/// The `internal.` zone's server: it serves each zone the reconcile task plans that differs
/// from the one served, under a new serial.
pub struct Dns {
    server: DnsServer,
    serial: u32,
    served: Vec<Record>,
}

impl Dns {
    /// Serves `internal.` on the configured addresses it can bind (one that fails is logged and
    /// left out: the rest keeps serving); `None` when DNS is off.
    pub async fn start(config: &AgentConfig, budget: &Budget) -> Option<Dns> {
        if !config.dns.enabled {
            return None;
        }
        let listen = config.dns.addresses(config.overlay.addr);
        let limits = &config.dns.tcp_limits;
        let tcp = limits.with_cap(budget.cap(limits.max_connections));
        match DnsServer::start(&listen, tcp).await {
            Ok((server, failed)) => {
                for error in failed {
                    warn!(%error, "DNS: an address is left out");
                }
                info!(listen = ?server.local, "DNS serving internal.");
                Some(Dns {
                    server,
                    serial: 0,
                    served: Vec::new(),
                })
            }
            Err(error) => {
                warn!(%error, "DNS is off");
                None
            }
        }
    }

    /// Where it serves, for the status file.
    pub fn local(&self) -> Vec<SocketAddr> {
        self.server.local.clone()
    }

    /// Serves `zone` if its records changed. The SOA keeps the serial the zone had while it
    /// was compared; the record sets get the next one.
    pub async fn publish(&mut self, zone: &Zone) {
        if !zone_changed(&self.served, zone) {
            return;
        }
        let stamped = stamped(zone, self.serial);
        self.serial = self.serial.wrapping_add(1);
        let records = DnsServer::records(&stamped, self.serial);
        *self.server.handle().records_mut().await = records;
        self.served.clone_from(&zone.records);
    }

    /// Serves the zone in force now, then each new one until the drain.
    pub async fn run(mut self, mut zones: watch::Receiver<Arc<Zone>>, mut drain: Drain) {
        loop {
            let zone = Arc::clone(&zones.borrow_and_update());
            self.publish(&zone).await;
            tokio::select! {
                () = drain.signaled() => break,
                changed = zones.changed() => if changed.is_err() { break },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::{
        agent::fixtures::{backend, service, TestResult},
        agent::settings::ZoneSettings,
    };

    fn zone(backends: usize) -> Result<Zone, Box<dyn std::error::Error>> {
        let state = Snapshot {
            services: vec![service("web", "192.0.2.10")?],
            backends: (1..=backends)
                .map(|n| backend(&format!("be{n}"), n as u16))
                .collect::<Result<_, _>>()?,
            ..Snapshot::default()
        };
        let settings = ZoneSettings {
            pop_region: "sa".parse::<crate::model::Region>()?,
            ns_addr: None,
            ttl: 5,
        };
        Ok(settings.build(&state, &HashMap::new()))
    }

    #[test]
    fn a_zone_is_served_again_only_when_a_record_other_than_the_soa_changed() -> TestResult {
        let one = zone(1)?;
        assert!(zone_changed(&[], &one), "nothing served yet");
        // The same zone under another serial: not served again.
        assert!(!zone_changed(&stamped(&one, 7).records, &one));
        assert!(zone_changed(&one.records, &zone(2)?));
        Ok(())
    }

    #[test]
    fn the_soa_carries_the_serial_it_is_stamped_with() -> TestResult {
        let z = stamped(&zone(1)?, 41);
        let serials: Vec<u32> = z
            .records
            .iter()
            .filter_map(|r| match &r.data {
                RData::SOA(soa) => Some(soa.serial),
                _ => None,
            })
            .collect();
        assert_eq!(serials, [41]);
        Ok(())
    }
}
