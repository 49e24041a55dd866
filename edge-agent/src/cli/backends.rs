//! `edge-agent backends`: every backend of the state, joined with what the kernel holds for it
//! (eligibility, live flows) and its share of each Maglev table its services use.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv6Addr,
};

use anyhow::Context as _;
use aya::maps::{Array, HashMap, Map, MapData};
use edge_common::{
    geo::GEO_CLASSES, names, service::BACKEND_ELIGIBLE, BackendValue, PopConfig, ServiceKey,
    ServiceValue,
};
use serde::Serialize;

use crate::{
    config::AgentConfig, config::StateKind, dataplane::maps::services::service_key,
    dataplane::pins::PinDir, model::BackendAddr, model::HealthStatus, model::Snapshot,
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
    /// This POP's health view: status, smoothed check RTT, when it was last written (Unix
    /// seconds; 0 if never), and why (the last failure or the rule that degrades it).
    pub health: String,
    pub rtt_ms: Option<f64>,
    pub checked_at: i64,
    pub health_reason: String,
    /// The check this POP runs on it.
    pub check: String,
    /// Whether the kernel lets it take new flows.
    pub eligible: bool,
    pub active_flows: u64,
    /// Share of each table of its service, by the countries that use the table.
    pub shares: BTreeMap<String, f64>,
}

/// A Maglev table: the client countries that use it, and each backend id's share of it.
type Table = (String, BTreeMap<u32, f64>);

/// The state the running agent last read (from the file it keeps beside its status), or with
/// no agent running, what one would read with `config`.
pub fn state_of(config: &AgentConfig, pins: &PinDir) -> anyhow::Result<Snapshot> {
    let path = pins.agent_state_file();
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("reading the agent's state from {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => match (&config.state.source, &config.state.database) {
            (StateKind::Corrosion, _) => anyhow::bail!(
                "no agent is running on {} and the state is in Corrosion: start the agent, or query Corrosion",
                pins.root().display()
            ),
            (_, Some(path)) => Ok(SqliteState::open(path)?.snapshot()?.0),
            (_, None) => Ok(config.snapshot().0),
        },
        Err(e) => Err(anyhow::anyhow!("reading {}: {e}", path.display())),
    }
}

pub fn backends(config: &AgentConfig, pins: &PinDir) -> anyhow::Result<Vec<BackendReport>> {
    let state = state_of(config, pins)?;
    // The classes the kernel's tries hold, not a file's: the file on disk may not be the one
    // loaded.
    let classes = crate::dataplane::maps::geo::pinned_classes(pins)?;
    let class_name = |class: u16| match class {
        0 => "unknown".to_owned(),
        c => classes
            .country_of(c)
            .map_or_else(|| format!("class {c}"), |c| c.to_string()),
    };

    let kernel_backends: Array<MapData, BackendValue> =
        Array::try_from(Map::Array(pins.open_map(names::BACKENDS)?))?;
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
    let flows: HashMap<MapData, edge_common::FlowKey, edge_common::FlowValue> =
        HashMap::try_from(Map::LruHashMap(pins.open_map(names::FLOWS)?))?;
    let (sweep, _) = crate::dataplane::maps::flows::sweep(
        &flows,
        crate::dataplane::maps::flows::Table::Established,
        &config.flows,
        crate::dataplane::maps::flows::monotonic_ns(),
        crate::dataplane::maps::flows::Sweep::Count,
    )?;

    // Each service's distinct tables, the classes pointing at them, and their backend counts.
    let services: HashMap<MapData, ServiceKey, ServiceValue> =
        HashMap::try_from(Map::HashMap(pins.open_map(names::SERVICES)?))?;
    let pointers: Array<MapData, u32> =
        Array::try_from(Map::Array(pins.open_map(names::SERVICE_RINGS)?))?;
    let rings: Array<MapData, u32> = Array::try_from(Map::Array(pins.open_map(names::MAGLEV)?))?;
    let pop: Array<MapData, PopConfig> =
        Array::try_from(Map::Array(pins.open_map(names::POP_CONFIG)?))?;
    let ring_size = pop.get(&0, 0)?.ring_size;
    let mut tables: BTreeMap<String, Vec<Table>> = BTreeMap::new();
    for service in &state.services {
        let Ok(value) = services.get(&service_key(service.vip, service.port), 0) else {
            continue;
        };
        let mut by_ring: BTreeMap<u32, BTreeSet<u16>> = BTreeMap::new();
        for (class, _) in classes.iter() {
            let ring = pointers.get(&(value.service_id * GEO_CLASSES + u32::from(class)), 0)?;
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
        let row = state
            .health
            .iter()
            .find(|h| h.pop_id == config.pop_id && h.backend_id == b.id);
        let health = row.map_or(HealthStatus::Unknown, |h| h.status);
        let check = config.health.check_of(b, &state);
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
            health: crate::state::validate::status_str(health).to_owned(),
            rtt_ms: row.and_then(|h| h.rtt_us).map(|us| f64::from(us) / 1000.0),
            checked_at: row.map_or(0, |h| h.checked_at),
            health_reason: row.map(|h| h.reason.clone()).unwrap_or_default(),
            check: crate::health::CheckSpec::column(Some(&check)),
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
    let now = crate::model::unix_now();
    let line =
        |cells: [&str; 14]| {
            println!(
            "{:<16} {:<10} {:<6} {:<3} {:<40} {:>6} {:>6} {:>8} {:<8} {:<8} {:>8} {:>8} {:>7}  {}",
            cells[0], cells[1], cells[2], cells[3], cells[4], cells[5], cells[6], cells[7],
            cells[8], cells[9], cells[10], cells[11], cells[12], cells[13]
        );
        };
    line([
        "BACKEND",
        "SERVICE",
        "REGION",
        "CC",
        "ADDRESS",
        "WEIGHT",
        "SOFT",
        "HARD",
        "STATE",
        "HEALTH",
        "RTT MS",
        "CHECKED",
        "FLOWS",
        "SHARE OF TABLE (by client countries)",
    ]);
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
        let rtt = r
            .rtt_ms
            .map_or_else(|| "-".to_owned(), |ms| format!("{ms:.2}"));
        let checked = match r.checked_at {
            0 => "never".to_owned(),
            at => format!("{}s ago", (now - at).max(0)),
        };
        let shares = if shares.is_empty() {
            "-".to_owned()
        } else {
            shares.join("; ")
        };
        line([
            &r.id,
            &r.service,
            &r.region,
            &r.country,
            &r.address,
            &r.weight.to_string(),
            &r.soft_limit.to_string(),
            &r.hard_limit.to_string(),
            state,
            &r.health,
            &rtt,
            &checked,
            &r.active_flows.to_string(),
            &shares,
        ]);
    }
    // Why a backend is not up, and how it is checked: one line each, under the table.
    let notes: Vec<&BackendReport> = rows
        .iter()
        .filter(|r| !r.health_reason.is_empty())
        .collect();
    if !notes.is_empty() {
        println!();
        for r in notes {
            println!(
                "{} ({}, checked by {}): {}",
                r.id, r.health, r.check, r.health_reason
            );
        }
    }
}
