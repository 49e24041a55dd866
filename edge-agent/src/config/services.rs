//! Services configured in the file, for when state does not come from a database, and how they
//! become control-plane state.

use std::{
    net::{IpAddr, Ipv6Addr},
    str::FromStr,
};

use serde::{Deserialize, Serialize};

use super::AgentConfig;
use crate::{
    model::Backend, model::BackendAddr, model::CheckSpec, model::Country, model::Region,
    model::RejectedRow, model::Service, model::Snapshot,
};

/// A service: clients connect to `vip:port` (TCP).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    pub name: String,
    pub vip: IpAddr,
    pub port: u16,
    /// The health check of its backends; the default is `[health] default_check`.
    #[serde(default)]
    pub health_check: Option<CheckSpec>,
    #[serde(default)]
    pub backends: Vec<BackendConfig>,
}

/// A backend of a service, on the overlay.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    pub name: String,
    pub addr: Ipv6Addr,
    pub port: u16,
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Defaults to the POP's region.
    #[serde(default)]
    pub region: Option<Region>,
    /// Defaults to `ZZ` (ISO 3166's user-assigned code: no country).
    #[serde(default)]
    pub country: Option<Country>,
    #[serde(default = "default_soft_limit")]
    pub soft_limit: u32,
    #[serde(default = "default_hard_limit")]
    pub hard_limit: u32,
    /// Overrides the service's health check.
    #[serde(default)]
    pub health_check: Option<CheckSpec>,
}

fn default_weight() -> u32 {
    1
}

fn default_soft_limit() -> u32 {
    10_000
}

fn default_hard_limit() -> u32 {
    100_000
}

/// Weight bounds: 0 takes a backend out of new flows; above this is a typo.
pub const MAX_WEIGHT: u32 = 1000;

impl AgentConfig {
    /// The configured services as control-plane state. Invalid entries are left out, each
    /// with the reason.
    pub fn snapshot(&self) -> (Snapshot, Vec<RejectedRow>) {
        let mut snapshot = Snapshot::default();
        let mut rejected = Vec::new();
        let mut seen = std::collections::BTreeMap::new();
        let zz = Country::from_str("ZZ").unwrap_or_else(|_| unreachable!("a valid code"));
        for service in &self.services {
            let reject = |reason: String| RejectedRow {
                table: "services",
                key: service.name.clone(),
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
            snapshot.services.push(Service {
                id: service.name.clone(),
                vip: service.vip,
                port: service.port,
                check: service.health_check.clone(),
            });
            let mut names = std::collections::BTreeSet::new();
            for backend in &service.backends {
                let key = format!("{}/{}", service.name, backend.name);
                let reason = if backend.port == 0 {
                    Some("port 0".to_owned())
                } else if backend.weight > MAX_WEIGHT {
                    Some(format!("weight {} above {MAX_WEIGHT}", backend.weight))
                } else if backend.soft_limit > backend.hard_limit {
                    Some(format!(
                        "soft_limit {} above hard_limit {}",
                        backend.soft_limit, backend.hard_limit
                    ))
                } else if backend.addr.is_unspecified() || backend.addr.is_multicast() {
                    Some(format!("address {} is not a unicast address", backend.addr))
                } else if !names.insert(backend.name.as_str()) {
                    Some("duplicate name".to_owned())
                } else {
                    None
                };
                if let Some(reason) = reason {
                    rejected.push(RejectedRow {
                        table: "backends",
                        key,
                        reason,
                    });
                    continue;
                }
                snapshot.backends.push(Backend {
                    id: key,
                    service: service.name.clone(),
                    region: backend
                        .region
                        .clone()
                        .unwrap_or_else(|| self.region.clone()),
                    country: backend.country.unwrap_or(zz),
                    addr: BackendAddr::Ip(backend.addr),
                    port: backend.port,
                    weight: backend.weight,
                    soft_limit: backend.soft_limit,
                    hard_limit: backend.hard_limit,
                    draining: false,
                    enabled: true,
                    check: backend.health_check.clone(),
                    lease: None,
                });
            }
        }
        (snapshot, rejected)
    }
}
