//! Reading the per-CPU packet counters, from a loaded object or from the pinned map.

use std::{borrow::Borrow, fmt};

use aya::maps::{Map, MapData, MapError, PerCpuArray};
use edge_common::{
    names,
    stats::{action_name, stats_class},
    Counters, STATS_ENTRIES,
};
use serde::Serialize;
use thiserror::Error;

use crate::bpffs::PinDir;

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
        let per_cpu = map
            .get(&index, 0)
            .map_err(|source| CountersError::Read { index, source })?;
        let (packets, bytes) = per_cpu
            .iter()
            .fold((0u64, 0u64), |(p, b), c| (p + c.packets, b + c.bytes));
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
