//! Agent configuration: a TOML file, then `EDGEPROXY_*` environment overrides, then flags.
//!
//! The file's shape is [`AgentConfig`]. A section that one part of the agent reads is defined
//! by that part (`[flows]` by the flow table, `[maglev]` by the Maglev tables, `[health]` by the
//! checks...), so that those parts never reach up into the configuration; the ones that used to
//! be defined here are re-exported under their old paths. The sections no single part owns are
//! in `sections`, the configured services in `services`.

mod listeners;
mod load;
mod sections;
mod services;
#[cfg(test)]
mod tests;

use std::{path::PathBuf, str::FromStr};

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use self::{
    sections::{AffinityConfig, GeoConfig, OverlayConfig, StateConfig, StateKind},
    services::{BackendConfig, ServiceConfig, MAX_WEIGHT},
};
pub use crate::{
    balancing::maglev::MaglevConfig,
    dataplane::maps::flows::FlowConfig,
    dataplane::programs::{ForwardHook, XdpMode},
};
use crate::{
    dataplane::pins, dns::DnsConfig, health::HealthConfig, metrics::MetricsConfig, model::Region,
    register::RegisterConfig,
};

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("reading config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing config {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("config {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("environment variable {var}={value:?}: {reason}")]
    Env {
        var: &'static str,
        value: String,
        reason: String,
    },
}

/// The whole configuration file. Every field has a default, so an empty file is valid.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// Public interface the XDP program attaches to (`EDGEPROXY_IFACE`).
    pub iface: Option<String>,
    /// Root of the pinned objects on bpffs (`EDGEPROXY_BPFFS_ROOT`).
    pub bpffs_root: PathBuf,
    /// XDP attach mode (`EDGEPROXY_XDP_MODE`).
    pub xdp_mode: XdpMode,
    /// The hook of the client -> backend translation (`EDGEPROXY_FORWARD_HOOK`).
    pub forward_hook: ForwardHook,
    /// Seconds between counter summaries in the agent's log; 0 turns them off
    /// (`EDGEPROXY_STATS_LOG_SECS`).
    pub stats_log_secs: u64,
    /// Debug records from the kernel programs (new flows, refused SYNs, segments and replies
    /// without a flow) in the agent's log, target `edge_ebpf` (`--bpf-debug-log`). Off, the
    /// verifier removes the logging code; on, each record costs the packet that writes it.
    pub bpf_debug_log: bool,
    /// The overlay towards the backends.
    pub overlay: OverlayConfig,
    /// Flow table sizing and timeouts.
    pub flows: FlowConfig,
    /// Maglev table sizing.
    pub maglev: MaglevConfig,
    /// This POP's id: the key of the rows it writes (health, registrations).
    pub pop_id: String,
    /// This POP's region (`EDGEPROXY_REGION`; v1's default `sa`).
    pub region: Region,
    /// Client affinity.
    pub affinity: AffinityConfig,
    /// Geo classification of clients.
    pub geo: GeoConfig,
    /// Where the control-plane state lives.
    pub state: StateConfig,
    /// Active and passive health checks.
    pub health: HealthConfig,
    /// Authoritative DNS for `internal.`.
    pub dns: DnsConfig,
    /// The registration API.
    pub register: RegisterConfig,
    /// The Prometheus endpoint.
    pub metrics: MetricsConfig,
    /// The anycast BGP speaker (`[bgp]`): off without peers.
    pub bgp: crate::bgp::BgpConfig,
    /// This host in the 6PN WireGuard mesh (`[sixpn]`): off unless enabled.
    pub sixpn: crate::sixpn::node::SixpnConfig,
    /// Services and their backends, when state does not come from a database.
    pub services: Vec<ServiceConfig>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            iface: None,
            bpffs_root: PathBuf::from(pins::DEFAULT_ROOT),
            xdp_mode: XdpMode::Auto,
            forward_hook: ForwardHook::Auto,
            stats_log_secs: 10,
            bpf_debug_log: false,
            overlay: OverlayConfig::default(),
            flows: FlowConfig::default(),
            maglev: MaglevConfig::default(),
            pop_id: default_pop_id(),
            region: Region::from_str("sa").unwrap_or_else(|_| unreachable!("a valid region id")),
            affinity: AffinityConfig::default(),
            geo: GeoConfig::default(),
            state: StateConfig::default(),
            health: HealthConfig::default(),
            dns: DnsConfig::default(),
            register: RegisterConfig::default(),
            metrics: MetricsConfig::default(),
            bgp: crate::bgp::BgpConfig::default(),
            sixpn: crate::sixpn::node::SixpnConfig::default(),
            services: Vec::new(),
        }
    }
}

fn default_pop_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "pop".to_owned())
}
