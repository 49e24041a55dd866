//! The sections no single part of the agent owns: where state comes from, the overlay, client
//! affinity and geo classification.

use std::{net::Ipv6Addr, path::PathBuf};

use serde::{Deserialize, Serialize};

use crate::state::corrosion::CorrosionConfig;

/// The control-plane state (`EDGEPROXY_DB_PATH`): a SQLite file in the schema of
/// `edge-agent/schema/edgeproxy.sql`, watched for changes. Without it, `services` is the state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StateConfig {
    /// Where the state comes from: the local file (`database`, the default) or Corrosion.
    pub source: StateKind,
    pub database: Option<PathBuf>,
    /// Corrosion's API, when `source = "corrosion"`.
    pub corrosion: CorrosionConfig,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StateKind {
    /// `database`, a local SQLite file (or, without it, the config's `services`).
    #[default]
    Sqlite,
    /// Corrosion's replicated SQLite, through its HTTP API.
    Corrosion,
}

/// Client -> backend bindings (v1: `EDGEPROXY_BINDING_TTL_SECS`,
/// `EDGEPROXY_BINDING_GC_INTERVAL_SECS`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AffinityConfig {
    /// How long an unused binding lasts (refreshed by every new connection); 0 turns affinity
    /// off.
    pub ttl_secs: u64,
    /// How often expired bindings are removed.
    pub gc_interval_secs: u64,
    /// Bindings kept (least recently used evicted).
    pub max_entries: u32,
}

impl Default for AffinityConfig {
    fn default() -> Self {
        AffinityConfig {
            ttl_secs: 600,
            gc_interval_secs: 60,
            max_entries: edge_common::limits::DEFAULT_AFFINITY,
        }
    }
}

/// Where client countries come from (`EDGEPROXY_GEOIP_PATH`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GeoConfig {
    /// A MaxMind-format `.mmdb` country database, or a `prefix,country` CSV.
    pub database: Option<PathBuf>,
    /// Countries whose region differs from the built-in table (`{ "MX" = "sa" }`).
    pub regions: std::collections::BTreeMap<String, String>,
}

/// The overlay interface and this POP's address on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OverlayConfig {
    /// Interface backends are reached through (WireGuard or, in labs, a veth). Without it the
    /// agent only counts packets.
    pub iface: Option<String>,
    /// This POP's overlay address: the source of translated flows.
    pub addr: Option<Ipv6Addr>,
    /// Overlay MTU; SYN and SYN-ACK MSS are clamped to `mtu - 60` (IPv6 and TCP headers).
    /// 1420 is WireGuard's default over a 1500-byte path.
    pub mtu: u16,
    /// Source ports allocated to translated flows, inclusive. Below Linux's default ephemeral
    /// range (32768-60999), so that the POP's own connections never collide with them.
    pub port_min: u16,
    pub port_max: u16,
    /// A /96 routed to this POP over the overlay. When set, IPv4 clients are translated to
    /// `<prefix>:<client IPv4>` with their own source port instead of this POP's address and an
    /// allocated port: no port pool to exhaust, no collisions with a backend's TIME_WAIT
    /// sockets, and backends see who the client is (RFC 6052-style embedding).
    pub snat_prefix: Option<ipnet::Ipv6Net>,
}

impl Default for OverlayConfig {
    fn default() -> Self {
        OverlayConfig {
            iface: None,
            addr: None,
            mtu: 1420,
            port_min: 10_000,
            port_max: 32_767,
            snat_prefix: None,
        }
    }
}
