//! `edge-agent maps`: every map the data plane pins, what it holds, and how to read it with
//! bpftool (their BTF names every field, so `bpftool map dump` prints them by name).

use serde::Serialize;

use crate::dataplane::pins::PinDir;
use edge_common::names;

/// One pinned map, described.
pub struct MapDoc {
    pub name: &'static str,
    pub kind: &'static str,
    pub key: &'static str,
    pub value: &'static str,
    pub holds: &'static str,
    /// Field names of the key or value struct, as BTF names them (empty for plain integers).
    pub fields: &'static [&'static str],
}

/// The fields of a flow-table entry `bpftool map dump` must name, in both tables.
const FLOW_FIELDS: &[&str] = &[
    "src",
    "dst",
    "sport",
    "dport",
    "new_src",
    "new_dst",
    "backend_id",
    "tcp_flags",
    "seq",
    "ack",
    "last_seen_ns",
];

pub const MAPS: &[MapDoc] = &[
    MapDoc {
        name: names::STATS_MAP,
        kind: "percpu_array",
        key: "u32 (ip, proto, verdict)",
        value: "Counters",
        holds: "every frame the XDP program saw, by class and verdict",
        fields: &["packets", "bytes"],
    },
    MapDoc {
        name: names::SERVICES,
        kind: "hash",
        key: "ServiceKey",
        value: "ServiceValue",
        holds: "services: (VIP, port, TCP) -> service id and flags",
        fields: &["addr", "port", "proto", "service_id", "flags"],
    },
    MapDoc {
        name: names::SERVICE_PORTS,
        kind: "array",
        key: "u32 port / 64",
        value: "u64 (bit port % 64)",
        holds: "every TCP port a service has used: other ports pass at the cost of one load",
        fields: &[],
    },
    MapDoc {
        name: names::BACKENDS,
        kind: "array",
        key: "u32 backend id",
        value: "BackendValue",
        holds: "backends: overlay address, port, eligibility flags",
        fields: &["addr", "port", "flags"],
    },
    MapDoc {
        name: names::MAGLEV,
        kind: "array",
        key: "u32 ring * size + slot",
        value: "u32 backend id",
        holds: "the Maglev tables (rings)",
        fields: &[],
    },
    MapDoc {
        name: names::SERVICE_RINGS,
        kind: "array",
        key: "u32 service id * 256 + country class",
        value: "u32 ring",
        holds: "which ring each service uses for each client country",
        fields: &[],
    },
    MapDoc {
        name: names::FLOWS,
        kind: "lru_hash",
        key: "FlowKey",
        value: "FlowValue",
        holds: "the flow table: both directions of every connection, rewrite and TCP state",
        fields: FLOW_FIELDS,
    },
    MapDoc {
        name: names::HALF_OPEN,
        kind: "lru_hash",
        key: "FlowKey",
        value: "FlowValue",
        holds: "connections whose client has not yet acknowledged the backend's SYN-ACK; \
                the ACK moves both halves to FLOWS",
        fields: FLOW_FIELDS,
    },
    MapDoc {
        name: names::AFFINITY,
        kind: "lru_hash",
        key: "AffinityKey",
        value: "AffinityValue",
        holds: "client affinity: (service, client) -> backend",
        fields: &["service_id", "client", "backend_id", "last_used_ns"],
    },
    MapDoc {
        name: names::GEO_V4,
        kind: "lpm_trie",
        key: "IPv4 prefix",
        value: "GeoValue",
        holds: "client country of IPv4 prefixes",
        fields: &["class", "country"],
    },
    MapDoc {
        name: names::GEO_V4_SLASH24,
        kind: "array",
        key: "u32 (IPv4 /24 number / 8)",
        value: "u64",
        holds: "country class of every IPv4 /24, a byte each (255: ask GEO_V4)",
        fields: &[],
    },
    MapDoc {
        name: names::GEO_V6,
        kind: "lpm_trie",
        key: "IPv6 prefix",
        value: "GeoValue",
        holds: "client country of IPv6 prefixes",
        fields: &["class", "country"],
    },
    MapDoc {
        name: names::GEO_V6_32,
        kind: "array",
        key: "u32 line (hash of the /32)",
        value: "[u64; 8] slots: /32 << 16 | 256 (used) | class",
        holds: "country class of IPv6 /32s (255: ask GEO_V6_48; none: GEO_V6)",
        fields: &[],
    },
    MapDoc {
        name: names::GEO_V6_48,
        kind: "array",
        key: "u32 line (hash of the /48)",
        value: "[u64; 8] slots: /48 << 16 | 256 (used) | class",
        holds: "country class of IPv6 /48s inside split /32s (255 or none: ask GEO_V6)",
        fields: &[],
    },
    MapDoc {
        name: names::POP_CONFIG,
        kind: "array",
        key: "u32 0",
        value: "PopConfig",
        holds: "this POP's settings: overlay address, MSS clamp, port range, flags",
        fields: &["overlay_addr", "mss_clamp", "port_min", "port_max", "flags"],
    },
    MapDoc {
        name: names::SERVICE_STATS,
        kind: "percpu_array",
        key: "u32 service id",
        value: "ServiceStats",
        holds: "per-service counters",
        fields: &["packets", "bytes", "new_flows", "no_backend"],
    },
    MapDoc {
        name: names::BACKEND_STATS,
        kind: "percpu_array",
        key: "u32 backend id",
        value: "BackendStats",
        holds: "per-backend counters (the passive health signals among them)",
        fields: &[
            "packets_to",
            "bytes_to",
            "new_flows",
            "resets_from",
            "syn_acks",
            "refused",
        ],
    },
    MapDoc {
        name: names::DROP_STATS,
        kind: "percpu_array",
        key: "u32 0",
        value: "DropStats",
        holds: "packets not translated, by reason",
        fields: &["no_backend", "port_exhausted", "flow_insert", "no_flow"],
    },
];

#[derive(Debug, Serialize)]
pub struct MapRow {
    pub name: &'static str,
    pub path: String,
    pub pinned: bool,
    pub kind: &'static str,
    pub key: &'static str,
    pub value: &'static str,
    pub max_entries: Option<u32>,
    pub holds: &'static str,
    pub dump: String,
}

pub fn rows(pins: &PinDir) -> Vec<MapRow> {
    MAPS.iter()
        .map(|m| {
            let path = pins.map(m.name);
            let info = aya::maps::MapData::from_pin(&path)
                .ok()
                .and_then(|d| d.info().ok());
            MapRow {
                name: m.name,
                path: path.display().to_string(),
                pinned: info.is_some(),
                kind: m.kind,
                key: m.key,
                value: m.value,
                max_entries: info.map(|i| i.max_entries()),
                holds: m.holds,
                dump: format!("bpftool map dump pinned {}", path.display()),
            }
        })
        .collect()
}

pub fn print_table(rows: &[MapRow]) {
    for r in rows {
        let size = r
            .max_entries
            .map_or_else(|| "not pinned".to_owned(), |n| format!("{n} entries"));
        println!("{} ({}, {size}): {}", r.name, r.kind, r.holds);
        println!("    key {}, value {}", r.key, r.value);
        println!("    {}", r.dump);
    }
}
