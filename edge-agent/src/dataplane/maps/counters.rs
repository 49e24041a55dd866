//! Reading the per-CPU packet counters, from a loaded object or from the pinned map.

use std::{borrow::Borrow, fmt};

use aya::maps::{Map, MapData, MapError, PerCpuArray};
use edge_common::{
    names,
    stats::{action_name, stats_class},
    Counters, DropStats, STATS_ENTRIES,
};
use serde::Serialize;
use thiserror::Error;

use crate::dataplane::pins::PinDir;

#[derive(Debug, Error)]
pub enum CountersError {
    #[error("opening pinned map {path}: {source}; is the data plane loaded (`edge-agent run`)?")]
    Open { path: String, source: MapError },
    #[error("map {name} is not a per-CPU array of counters: {source}")]
    Shape {
        name: &'static str,
        source: MapError,
    },
    #[error("reading counter {index}: {source}")]
    Read { index: u32, source: MapError },
}

/// Packets and bytes of one (L3 class, L4 class, action), summed over CPUs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClassCounters {
    pub ip: &'static str,
    pub proto: &'static str,
    pub verdict: &'static str,
    pub packets: u64,
    pub bytes: u64,
}

/// A snapshot of every non-zero counter.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    pub classes: Vec<ClassCounters>,
}

impl Snapshot {
    pub fn total_packets(&self) -> u64 {
        self.classes.iter().map(|c| c.packets).sum()
    }

    /// Packets counted for one (ip, proto, verdict) class, 0 if none.
    pub fn packets(&self, ip: &str, proto: &str, verdict: &str) -> u64 {
        self.classes
            .iter()
            .find(|c| c.ip == ip && c.proto == proto && c.verdict == verdict)
            .map_or(0, |c| c.packets)
    }
}

/// Opens the pinned counter map under `pins`.
pub fn open_pinned(pins: &PinDir) -> Result<PerCpuArray<MapData, Counters>, CountersError> {
    let path = pins.map(names::STATS_MAP);
    let data = MapData::from_pin(&path).map_err(|source| CountersError::Open {
        path: path.display().to_string(),
        source,
    })?;
    PerCpuArray::try_from(Map::PerCpuArray(data)).map_err(|source| CountersError::Shape {
        name: names::STATS_MAP,
        source,
    })
}

/// Sums every slot over CPUs and keeps the non-zero ones.
pub fn snapshot<T: Borrow<MapData>>(
    map: &PerCpuArray<T, Counters>,
) -> Result<Snapshot, CountersError> {
    let mut classes = Vec::new();
    for index in 0..STATS_ENTRIES {
        let Counters { packets, bytes } = sum_per_cpu(map, index)?;
        if packets == 0 {
            continue;
        }
        if let Some((l3, l4, action)) = stats_class(index) {
            classes.push(ClassCounters {
                ip: l3.name(),
                proto: l4.name(),
                verdict: action_name(action),
                packets,
                bytes,
            });
        }
    }
    Ok(Snapshot { classes })
}

impl fmt::Display for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<10} {:<10} {:<9} {:>14} {:>16}",
            "IP", "PROTO", "VERDICT", "PACKETS", "BYTES"
        )?;
        if self.classes.is_empty() {
            writeln!(f, "(no packets counted yet)")?;
        }
        for c in &self.classes {
            writeln!(
                f,
                "{:<10} {:<10} {:<9} {:>14} {:>16}",
                c.ip, c.proto, c.verdict, c.packets, c.bytes
            )?;
        }
        Ok(())
    }
}

/// One service's counters, summed over CPUs.
#[derive(Clone, Debug, Serialize)]
pub struct ServiceRow {
    pub service_id: u32,
    pub vip: String,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub no_backend: u64,
}

/// One backend's counters, summed over CPUs.
#[derive(Clone, Debug, Serialize)]
pub struct BackendRow {
    pub backend_id: u32,
    pub addr: String,
    /// The slot holds a configured backend.
    pub active: bool,
    /// It may take new flows (enabled, healthy, under its hard limit, not draining).
    pub eligible: bool,
    /// Live connections in the flow table.
    pub active_flows: u64,
    pub packets_to: u64,
    pub bytes_to: u64,
    pub packets_from: u64,
    pub bytes_from: u64,
    pub new_flows: u64,
    pub resets_from: u64,
    /// Flows the backend answered with a SYN-ACK, and with a RST (refused).
    pub syn_acks: u64,
    pub refused: u64,
}

/// Everything `edge-agent status` shows about translation.
#[derive(Clone, Debug, Default, Serialize)]
pub struct NatReport {
    pub services: Vec<ServiceRow>,
    pub backends: Vec<BackendRow>,
    pub drops: DropStats,
    /// Flow table entries (both directions count) and its size.
    pub flow_entries: u64,
    pub flow_capacity: u32,
    /// Entries of connections whose handshake is not complete (`HALF_OPEN`).
    pub half_open_entries: u64,
}

fn open_map(pins: &PinDir, name: &'static str) -> Result<Map, CountersError> {
    let path = pins.map(name);
    let data = MapData::from_pin(&path).map_err(|source| CountersError::Open {
        path: path.display().to_string(),
        source,
    })?;
    let shape = |source| CountersError::Shape { name, source };
    let info = data.info().map_err(shape)?;
    Ok(match info.map_type() {
        Ok(aya::maps::MapType::PerCpuArray) => Map::PerCpuArray(data),
        Ok(aya::maps::MapType::Array) => Map::Array(data),
        Ok(aya::maps::MapType::Hash) => Map::HashMap(data),
        Ok(aya::maps::MapType::LruHash) => Map::LruHashMap(data),
        _ => Map::Unsupported(data),
    })
}

/// A per-CPU counter struct whose CPUs' copies add up field by field.
pub trait Accumulate: aya::Pod + Default {
    fn add(&mut self, other: &Self);
}

impl Accumulate for Counters {
    fn add(&mut self, o: &Self) {
        self.packets += o.packets;
        self.bytes += o.bytes;
    }
}

impl Accumulate for edge_common::ServiceStats {
    fn add(&mut self, o: &Self) {
        self.packets += o.packets;
        self.bytes += o.bytes;
        self.new_flows += o.new_flows;
        self.no_backend += o.no_backend;
    }
}

impl Accumulate for edge_common::BackendStats {
    fn add(&mut self, o: &Self) {
        self.packets_to += o.packets_to;
        self.bytes_to += o.bytes_to;
        self.packets_from += o.packets_from;
        self.bytes_from += o.bytes_from;
        self.new_flows += o.new_flows;
        self.resets_from += o.resets_from;
        self.syn_acks += o.syn_acks;
        self.refused += o.refused;
    }
}

impl Accumulate for DropStats {
    fn add(&mut self, o: &Self) {
        self.no_backend += o.no_backend;
        self.port_exhausted += o.port_exhausted;
        self.flow_insert += o.flow_insert;
        self.unsupported += o.unsupported;
        self.resize_failed += o.resize_failed;
        self.no_flow += o.no_flow;
        self.redirect_failed += o.redirect_failed;
        self.out_of_window += o.out_of_window;
        self.recovered += o.recovered;
        self.displaced += o.displaced;
        self.recovery_missed += o.recovery_missed;
        self.icmp_to_backend += o.icmp_to_backend;
        self.icmp_to_client += o.icmp_to_client;
        self.icmp_no_flow += o.icmp_no_flow;
        self.icmp_bad_quote += o.icmp_bad_quote;
        self.icmp_out_of_window += o.icmp_out_of_window;
        self.icmp_rate_limited += o.icmp_rate_limited;
        self.icmp_untranslatable += o.icmp_untranslatable;
    }
}

/// Slot `index` of a per-CPU array, summed over CPUs.
pub fn sum_per_cpu<T: Borrow<MapData>, V: Accumulate>(
    map: &PerCpuArray<T, V>,
    index: u32,
) -> Result<V, CountersError> {
    let values = map
        .get(&index, 0)
        .map_err(|source| CountersError::Read { index, source })?;
    let mut total = V::default();
    for v in values.iter() {
        total.add(v);
    }
    Ok(total)
}

/// Reads services, backends, drops and the flow table's occupancy from the pinned maps.
pub fn nat_report(pins: &PinDir) -> Result<NatReport, CountersError> {
    use aya::maps::{Array, HashMap};
    use edge_common::{
        service::{BACKEND_ACTIVE, BACKEND_ELIGIBLE},
        BackendStats, BackendValue, ServiceKey, ServiceStats, ServiceValue,
    };
    let shape = |name| move |source| CountersError::Shape { name, source };
    let services: HashMap<MapData, ServiceKey, ServiceValue> =
        HashMap::try_from(open_map(pins, names::SERVICES)?).map_err(shape(names::SERVICES))?;
    let service_stats: PerCpuArray<MapData, ServiceStats> =
        PerCpuArray::try_from(open_map(pins, names::SERVICE_STATS)?)
            .map_err(shape(names::SERVICE_STATS))?;
    let mut report = NatReport::default();
    let flows_map = open_map(pins, names::FLOWS)?;
    if let Map::LruHashMap(data) = &flows_map {
        report.flow_capacity = data.info().map(|i| i.max_entries()).unwrap_or(0);
    }
    let flows: HashMap<MapData, edge_common::FlowKey, edge_common::FlowValue> =
        HashMap::try_from(flows_map).map_err(shape(names::FLOWS))?;
    let config = crate::dataplane::maps::flows::FlowConfig::default();
    let now = crate::dataplane::maps::flows::monotonic_ns();
    let (sweep, _) = crate::dataplane::maps::flows::sweep(
        &flows,
        crate::dataplane::maps::flows::Table::Established,
        &config,
        now,
        crate::dataplane::maps::flows::Sweep::Count,
    )
    .map_err(|source| CountersError::Read { index: 0, source })?;
    report.flow_entries = sweep.entries;
    let half_open: HashMap<MapData, edge_common::FlowKey, edge_common::FlowValue> =
        HashMap::try_from(open_map(pins, names::HALF_OPEN)?).map_err(shape(names::HALF_OPEN))?;
    let (half_open, _) = crate::dataplane::maps::flows::sweep(
        &half_open,
        crate::dataplane::maps::flows::Table::HalfOpen,
        &config,
        now,
        crate::dataplane::maps::flows::Sweep::Count,
    )
    .map_err(|source| CountersError::Read { index: 0, source })?;
    report.half_open_entries = half_open.entries;
    for entry in services.iter() {
        let Ok((key, value)) = entry else { continue };
        let s = sum_per_cpu(&service_stats, value.service_id)?;
        report.services.push(ServiceRow {
            service_id: value.service_id,
            vip: crate::dataplane::maps::flows::endpoint(&key.addr, key.port),
            packets: s.packets,
            bytes: s.bytes,
            new_flows: s.new_flows,
            no_backend: s.no_backend,
        });
    }
    report.services.sort_by_key(|s| s.service_id);

    let backends: Array<MapData, BackendValue> =
        Array::try_from(open_map(pins, names::BACKENDS)?).map_err(shape(names::BACKENDS))?;
    let backend_stats: PerCpuArray<MapData, BackendStats> =
        PerCpuArray::try_from(open_map(pins, names::BACKEND_STATS)?)
            .map_err(shape(names::BACKEND_STATS))?;
    for id in 0..backends.len() {
        let value = backends
            .get(&id, 0)
            .map_err(|source| CountersError::Read { index: id, source })?;
        let b = sum_per_cpu(&backend_stats, id)?;
        let active = value.flags & BACKEND_ACTIVE != 0;
        let eligible = value.flags & BACKEND_ELIGIBLE != 0;
        let active_flows = sweep.active_per_backend.get(&id).copied().unwrap_or(0);
        // Slots never used have neither a backend nor traffic.
        if !active && b.packets_to == 0 && b.packets_from == 0 {
            continue;
        }
        report.backends.push(BackendRow {
            backend_id: id,
            addr: crate::dataplane::maps::flows::endpoint(&value.addr, value.port),
            active,
            eligible,
            active_flows,
            packets_to: b.packets_to,
            bytes_to: b.bytes_to,
            packets_from: b.packets_from,
            bytes_from: b.bytes_from,
            new_flows: b.new_flows,
            resets_from: b.resets_from,
            syn_acks: b.syn_acks,
            refused: b.refused,
        });
    }
    let drops: PerCpuArray<MapData, DropStats> =
        PerCpuArray::try_from(open_map(pins, names::DROP_STATS)?)
            .map_err(shape(names::DROP_STATS))?;
    report.drops = sum_per_cpu(&drops, 0)?;
    Ok(report)
}

impl fmt::Display for NatReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<4} {:<44} {:>12} {:>14} {:>10} {:>10}",
            "SVC", "VIP", "PACKETS", "BYTES", "NEW FLOWS", "NO BACKEND"
        )?;
        for s in &self.services {
            writeln!(
                f,
                "{:<4} {:<44} {:>12} {:>14} {:>10} {:>10}",
                s.service_id, s.vip, s.packets, s.bytes, s.new_flows, s.no_backend
            )?;
        }
        writeln!(
            f,
            "\n{:<4} {:<44} {:>8} {:>8} {:>12} {:>12} {:>10} {:>7}",
            "BE",
            "OVERLAY ADDRESS",
            "ELIGIBLE",
            "FLOWS",
            "PKTS TO",
            "PKTS FROM",
            "NEW FLOWS",
            "RESETS"
        )?;
        for b in &self.backends {
            let eligible = match (b.active, b.eligible) {
                (false, _) => "removed",
                (true, true) => "yes",
                (true, false) => "no",
            };
            writeln!(
                f,
                "{:<4} {:<44} {:>8} {:>8} {:>12} {:>12} {:>10} {:>7}",
                b.backend_id,
                b.addr,
                eligible,
                b.active_flows,
                b.packets_to,
                b.packets_from,
                b.new_flows,
                b.resets_from
            )?;
        }
        writeln!(
            f,
            "\nflow table: {} of {} entries; half-open: {} entries",
            self.flow_entries, self.flow_capacity, self.half_open_entries
        )?;
        let d = &self.drops;
        writeln!(
            f,
            "\ndrops: no_backend {} port_exhausted {} flow_insert {} unsupported {} resize_failed {} redirect_failed {}; no_flow (passed to the kernel) {}; out_of_window FIN/RST (forwarded, not recorded) {}; recovered flows {}; half-open flows displaced {}; recoveries onto another port {}",
            d.no_backend, d.port_exhausted, d.flow_insert, d.unsupported, d.resize_failed, d.redirect_failed, d.no_flow, d.out_of_window, d.recovered, d.displaced, d.recovery_missed
        )?;
        writeln!(
            f,
            "icmp errors: to backends {} to clients {}; no flow (passed to the kernel) {}; refused: bad quote {} out of window {} rate limited {} untranslatable {}",
            d.icmp_to_backend, d.icmp_to_client, d.icmp_no_flow, d.icmp_bad_quote, d.icmp_out_of_window, d.icmp_rate_limited, d.icmp_untranslatable
        )
    }
}
