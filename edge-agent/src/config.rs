//! Agent configuration: a TOML file, then `EDGEPROXY_*` environment overrides, then flags.

use std::{
    net::{IpAddr, Ipv6Addr},
    path::{Path, PathBuf},
    str::FromStr,
};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::bpffs;

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
    #[error("environment variable {var}={value:?}: {reason}")]
    Env {
        var: &'static str,
        value: String,
        reason: String,
    },
}

/// How the XDP program is attached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Native (driver) mode, falling back to generic mode with a warning.
    #[default]
    Auto,
    /// Native mode only.
    Driver,
    /// Generic (skb) mode: works on any interface, slower.
    Skb,
}

impl FromStr for XdpMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(XdpMode::Auto),
            "driver" | "native" => Ok(XdpMode::Driver),
            "skb" | "generic" => Ok(XdpMode::Skb),
            other => Err(format!("unknown XDP mode {other:?} (auto, driver, skb)")),
        }
    }
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
    /// Seconds between counter summaries in the agent's log; 0 turns them off
    /// (`EDGEPROXY_STATS_LOG_SECS`).
    pub stats_log_secs: u64,
    /// The overlay towards the backends.
    pub overlay: OverlayConfig,
    /// Flow table sizing and timeouts.
    pub flows: FlowConfig,
    /// Maglev table sizing.
    pub maglev: MaglevConfig,
    /// Services and their backends (the SQLite state source replaces this list later).
    pub services: Vec<ServiceConfig>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            iface: None,
            bpffs_root: PathBuf::from(bpffs::DEFAULT_ROOT),
            xdp_mode: XdpMode::Auto,
            stats_log_secs: 10,
            overlay: OverlayConfig::default(),
            flows: FlowConfig::default(),
            maglev: MaglevConfig::default(),
            services: Vec::new(),
        }
    }
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
}

impl Default for OverlayConfig {
    fn default() -> Self {
        OverlayConfig {
            iface: None,
            addr: None,
            mtu: 1420,
            port_min: 10_000,
            port_max: 32_767,
        }
    }
}

/// Flow table size and how long idle flows live, per TCP state the agent derives from the
/// flags seen in both directions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FlowConfig {
    /// Entries in the flow table (each connection takes two). Evicts least recently used.
    pub max_entries: u32,
    /// SYN seen, no SYN-ACK yet.
    pub syn_timeout_secs: u64,
    /// Both directions seen, no FIN or RST.
    pub established_timeout_secs: u64,
    /// A FIN seen in one direction.
    pub fin_timeout_secs: u64,
    /// RST seen, or FIN in both directions: kept briefly for the last ACKs and retransmits.
    pub closed_timeout_secs: u64,
    /// How often the sweeper walks the table.
    pub sweep_interval_secs: u64,
}

impl Default for FlowConfig {
    fn default() -> Self {
        FlowConfig {
            max_entries: edge_common::limits::DEFAULT_FLOWS,
            syn_timeout_secs: 30,
            established_timeout_secs: 3600,
            fin_timeout_secs: 30,
            closed_timeout_secs: 10,
            sweep_interval_secs: 5,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MaglevConfig {
    /// Slots per table; must be prime. At least 100 per backend keeps the split within about
    /// 1% of the weights (Maglev paper, section 5.3).
    pub table_size: u32,
    /// Services the kernel tables are sized for (each has two tables, for atomic swaps).
    pub max_services: u32,
}

impl Default for MaglevConfig {
    fn default() -> Self {
        MaglevConfig {
            table_size: 4099,
            max_services: 256,
        }
    }
}

/// A service: clients connect to `vip:port` (TCP).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    pub name: String,
    pub vip: IpAddr,
    pub port: u16,
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
}

fn default_weight() -> u32 {
    1
}

impl AgentConfig {
    /// Reads `path` if given (a missing or invalid file is an error), then applies the
    /// environment `env` (a function so that tests need not touch the process environment).
    pub fn load(
        path: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut config = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.into(),
                    source,
                })?;
                toml::from_str(&text).map_err(|source| ConfigError::Parse {
                    path: path.into(),
                    source: Box::new(source),
                })?
            }
            None => AgentConfig::default(),
        };
        if let Some(iface) = env("EDGEPROXY_IFACE") {
            config.iface = Some(iface);
        }
        if let Some(root) = env("EDGEPROXY_BPFFS_ROOT") {
            config.bpffs_root = root.into();
        }
        if let Some(mode) = env("EDGEPROXY_XDP_MODE") {
            config.xdp_mode = mode.parse().map_err(|reason| ConfigError::Env {
                var: "EDGEPROXY_XDP_MODE",
                value: mode.clone(),
                reason,
            })?;
        }
        if let Some(secs) = env("EDGEPROXY_STATS_LOG_SECS") {
            config.stats_log_secs = secs.parse().map_err(|e| ConfigError::Env {
                var: "EDGEPROXY_STATS_LOG_SECS",
                value: secs.clone(),
                reason: format!("{e}"),
            })?;
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn empty_file_gives_defaults_and_env_overrides() -> Result<(), Box<dyn std::error::Error>> {
        let dir = std::env::temp_dir().join(format!("edge-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let file = dir.join("agent.toml");
        std::fs::write(&file, "")?;
        assert_eq!(
            AgentConfig::load(Some(&file), no_env)?,
            AgentConfig::default()
        );

        std::fs::write(&file, "iface = \"eth1\"\nxdp_mode = \"skb\"\n")?;
        let config = AgentConfig::load(Some(&file), |var| {
            (var == "EDGEPROXY_BPFFS_ROOT").then(|| "/sys/fs/bpf/other".to_owned())
        })?;
        assert_eq!(config.iface.as_deref(), Some("eth1"));
        assert_eq!(config.xdp_mode, XdpMode::Skb);
        assert_eq!(config.bpffs_root, PathBuf::from("/sys/fs/bpf/other"));
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }

    #[test]
    fn bad_input_is_a_clear_error() -> Result<(), Box<dyn std::error::Error>> {
        let dir = std::env::temp_dir().join(format!("edge-config-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let file = dir.join("agent.toml");
        std::fs::write(&file, "ifface = \"eth1\"\n")?;
        let err = AgentConfig::load(Some(&file), no_env)
            .err()
            .map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("unknown field `ifface`")),
            "expected an unknown-field error, got {err:?}"
        );
        let missing = AgentConfig::load(Some(&dir.join("missing.toml")), no_env);
        assert!(
            matches!(missing, Err(ConfigError::Read { .. })),
            "{missing:?}"
        );
        let bad_env = AgentConfig::load(None, |var| {
            (var == "EDGEPROXY_XDP_MODE").then(|| "turbo".to_owned())
        });
        assert!(
            matches!(bad_env, Err(ConfigError::Env { .. })),
            "{bad_env:?}"
        );
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
