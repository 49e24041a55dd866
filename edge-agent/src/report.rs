//! `edge-agent backends`: every backend of the state, joined with what the kernel holds for it
//! (eligibility, live flows) and its share of each Maglev table its services use.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv6Addr,
};

use aya::maps::{Array, HashMap, Map, MapData};
use edge_common::{
    geo::GEO_CLASSES, names, service::BACKEND_ELIGIBLE, BackendValue, PopConfig, ServiceKey,
    ServiceValue,
};
use serde::Serialize;

use crate::{
    balancer::GeoClasses,
    bpffs::PinDir,
    config::AgentConfig,
    geo::GeoDb,
    model::{BackendAddr, HealthStatus, Snapshot},
    services::service_key,
    state::SqliteState,
};

/// One backend as `edge-agent backends` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct BackendReport {
    pub id: String,
    pub service: String,
    pub region: String,
    pub country: String,
    pub address: String,
    pub weight: u32,
    pub soft_limit: u32,
    pub hard_limit: u32,
    pub enabled: bool,
    pub draining: bool,
    /// This POP's health view.
    pub health: String,
    /// Whether the kernel lets it take new flows.
    pub eligible: bool,
    pub active_flows: u64,
    /// Share of each table of its service, by the countries that use the table.
    pub shares: BTreeMap<String, f64>,
}

/// A Maglev table: the client countries that use it, and each backend id's share of it.
type Table = (String, BTreeMap<u32, f64>);

fn open(pins: &PinDir, name: &'static str) -> anyhow::Result<MapData> {
    let path = pins.map(name);
    MapData::from_pin(&path)
        .map_err(|e| anyhow::anyhow!("opening {}: {e}; is the data plane loaded?", path.display()))
}

/// The state the agent would read with `config`.
pub fn state_of(config: &AgentConfig) -> anyhow::Result<Snapshot> {
    Ok(match &config.state.database {
        Some(path) => SqliteState::open(path)?.snapshot()?.0,
        None => config.snapshot().0,
    })
}

pub fn backends(config: &AgentConfig, pins: &PinDir) -> anyhow::Result<Vec<BackendReport>> {
    let state = state_of(config)?;
    let classes = match &config.geo.database {
        Some(path) => GeoClasses::new(GeoDb::load(path)?.countries()),
        None => GeoClasses::default(),
    };
    let class_name = |class: u32| match class {
        0 => "unknown".to_owned(),
        c => classes
            .countries
            .get(c as usize - 1)
            .map_or_else(|| format!("class {c}"), |c| c.to_string()),
    };

    let kernel_backends: Array<MapData, BackendValue> =
        Array::try_from(Map::Array(open(pins, names::BACKENDS)?))?;
    let mut id_of: BTreeMap<(Ipv6Addr, u16), (u32, bool)> = BTreeMap::new();
    for id in 0..kernel_backends.len() {
        let b = kernel_backends.get(&id, 0)?;
        if b.flags != 0 {
            id_of.insert(
                (Ipv6Addr::from(b.addr), u16::from_be(b.port)),
                (id, b.flags & BACKEND_ELIGIBLE != 0),
            );
        }
    }
    let mut flows: HashMap<MapData, edge_common::FlowKey, edge_common::FlowValue> =
        HashMap::try_from(Map::LruHashMap(open(pins, names::FLOWS)?))?;
    let (sweep, _) = crate::flows::sweep(
        &mut flows,
        &config.flows,
        crate::flows::monotonic_ns(),
        false,
    )?;

    // Each service's distinct tables, the classes pointing at them, and their backend counts.
    let services: HashMap<MapData, ServiceKey, ServiceValue> =
        HashMap::try_from(Map::HashMap(open(pins, names::SERVICES)?))?;
    let pointers: Array<MapData, u32> =
        Array::try_from(Map::Array(open(pins, names::SERVICE_RINGS)?))?;
    let rings: Array<MapData, u32> = Array::try_from(Map::Array(open(pins, names::MAGLEV)?))?;
    let pop: Array<MapData, PopConfig> =
        Array::try_from(Map::Array(open(pins, names::POP_CONFIG)?))?;
    let ring_size = pop.get(&0, 0)?.ring_size;
    let mut tables: BTreeMap<String, Vec<Table>> = BTreeMap::new();
    for service in &state.services {
        let Ok(value) = services.get(&service_key(service.vip, service.port), 0) else {
            continue;
        };
        let mut by_ring: BTreeMap<u32, BTreeSet<u32>> = BTreeMap::new();
        let used: BTreeSet<u32> = (0..=classes.countries.len() as u32).collect();
        for class in used {
            let ring = pointers.get(&(value.service_id * GEO_CLASSES + class), 0)?;
            by_ring.entry(ring).or_default().insert(class);
        }
        for (ring, users) in by_ring {
            let mut slots: BTreeMap<u32, u32> = BTreeMap::new();
            for slot in 0..ring_size {
                let backend = rings.get(&(ring * ring_size + slot), 0)?;
                *slots.entry(backend).or_default() += 1;
            }
            let counts = slots
                .into_iter()
                .map(|(id, n)| (id, f64::from(n) / f64::from(ring_size.max(1))))
                .collect();
            let label = users
                .iter()
                .map(|c| class_name(*c))
                .collect::<Vec<_>>()
                .join(",");
            tables
                .entry(service.id.clone())
                .or_default()
                .push((label, counts));
        }
    }

    let mut report = Vec::new();
    for b in &state.backends {
        let address = match &b.addr {
            BackendAddr::Ip(ip) => format!("[{ip}]:{}", b.port),
            BackendAddr::Name(name) => format!("{name}:{}", b.port),
        };
        let kernel = match &b.addr {
            BackendAddr::Ip(ip) => id_of.get(&(*ip, b.port)).copied(),
            BackendAddr::Name(_) => None,
        };
        let health = state
            .health
            .iter()
            .find(|h| h.pop_id == config.pop_id && h.backend_id == b.id)
            .map_or(HealthStatus::Unknown, |h| h.status);
        let mut shares = BTreeMap::new();
        if let Some((id, _)) = kernel {
            for (label, counts) in tables.get(&b.service).into_iter().flatten() {
                shares.insert(label.clone(), counts.get(&id).copied().unwrap_or(0.0));
            }
        }
        report.push(BackendReport {
            id: b.id.clone(),
            service: b.service.clone(),
            region: b.region.to_string(),
            country: b.country.to_string(),
            address,
            weight: b.weight,
            soft_limit: b.soft_limit,
            hard_limit: b.hard_limit,
            enabled: b.enabled,
            draining: b.draining,
            health: format!("{health:?}").to_lowercase(),
            eligible: kernel.is_some_and(|(_, e)| e),
            active_flows: kernel
                .and_then(|(id, _)| sweep.active_per_backend.get(&id).copied())
                .unwrap_or(0),
            shares,
        });
    }
    Ok(report)
}

pub fn print_table(rows: &[BackendReport]) {
    println!(
        "{:<16} {:<10} {:<6} {:<3} {:<40} {:>6} {:>6} {:>8} {:<8} {:<8} {:>7}  SHARE OF TABLE (by client countries)",
        "BACKEND", "SERVICE", "REGION", "CC", "ADDRESS", "WEIGHT", "SOFT", "HARD", "STATE", "HEALTH", "FLOWS"
    );
    for r in rows {
        let state = match (r.enabled, r.draining, r.eligible) {
            (false, _, _) => "disabled",
            (true, true, _) => "draining",
            (true, false, true) => "eligible",
            (true, false, false) => "held",
        };
        let shares: Vec<String> = r
            .shares
            .iter()
            .filter(|(_, s)| **s > 0.0)
            .map(|(who, s)| format!("{who}: {:.0}%", s * 100.0))
            .collect();
        println!(
            "{:<16} {:<10} {:<6} {:<3} {:<40} {:>6} {:>6} {:>8} {:<8} {:<8} {:>7}  {}",
            r.id,
            r.service,
            r.region,
            r.country,
            r.address,
            r.weight,
            r.soft_limit,
            r.hard_limit,
            state,
            r.health,
            r.active_flows,
            if shares.is_empty() {
                "-".to_owned()
            } else {
                shares.join("; ")
            }
        );
    }
}
