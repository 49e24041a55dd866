//! Agent configuration: a TOML file, then `EDGEPROXY_*` environment overrides, then flags.

use std::{
    net::{IpAddr, Ipv6Addr},
    path::{Path, PathBuf},
    str::FromStr,
};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::{
    dataplane::pins, dns::DnsConfig, health::CheckSpec, health::HealthConfig,
    metrics::MetricsConfig, model::Backend, model::BackendAddr, model::Country, model::Region,
    model::RejectedRow, model::Service, model::Snapshot, register::RegisterConfig,
    state::corrosion::CorrosionConfig,
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

/// Which hook runs the client -> backend translation on the public interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ForwardHook {
    /// TC on veth (XDP there copies every packet out of its skb first, and the TC program
    /// forwards to the overlay itself), XDP on every other device.
    #[default]
    Auto,
    /// XDP (`xdp_mode` says how); the kernel routes the translated packets.
    Xdp,
    /// TC ingress; the program forwards the translated packets with `bpf_fib_lookup`.
    Tc,
}

impl FromStr for ForwardHook {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(ForwardHook::Auto),
            "xdp" => Ok(ForwardHook::Xdp),
            "tc" => Ok(ForwardHook::Tc),
            other => Err(format!("unknown forward hook {other:?} (auto, xdp, tc)")),
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

/// Flow table size and how long idle flows live, per TCP state the agent derives from the
/// flags seen in both directions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FlowConfig {
    /// Entries in the flow table of established connections (each takes two). Evicts least
    /// recently used, but only a completed handshake makes an entry, so spoofed SYNs never do.
    pub max_entries: u32,
    /// Entries in the table of half-open connections (each takes two): the SYNs whose client has
    /// not yet acknowledged the backend's SYN-ACK. A SYN flood cycles through it alone.
    pub half_open_max_entries: u32,
    /// A half-open connection (SYN seen, handshake not completed).
    pub syn_timeout_secs: u64,
    /// Both directions seen, no FIN or RST.
    pub established_timeout_secs: u64,
    /// A FIN seen in one direction.
    pub fin_timeout_secs: u64,
    /// RST seen, or FIN in both directions: kept briefly for the last ACKs and retransmits.
    pub closed_timeout_secs: u64,
    /// How often the sweeper walks the table.
    pub sweep_interval_secs: u64,
    /// How long a draining backend's connections may go on; 0 lets them end by themselves.
    pub drain_timeout_secs: u64,
}

impl Default for FlowConfig {
    fn default() -> Self {
        FlowConfig {
            max_entries: edge_common::limits::DEFAULT_FLOWS,
            half_open_max_entries: edge_common::limits::DEFAULT_HALF_OPEN,
            syn_timeout_secs: 30,
            established_timeout_secs: 3600,
            fin_timeout_secs: 30,
            closed_timeout_secs: 10,
            sweep_interval_secs: 5,
            drain_timeout_secs: 0,
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

fn default_pop_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "pop".to_owned())
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
        if let Some(hook) = env("EDGEPROXY_FORWARD_HOOK") {
            config.forward_hook = hook.parse().map_err(|reason| ConfigError::Env {
                var: "EDGEPROXY_FORWARD_HOOK",
                value: hook.clone(),
                reason,
            })?;
        }
        if let Some(region) = env("EDGEPROXY_REGION") {
            config.region = region.parse().map_err(|reason| ConfigError::Env {
                var: "EDGEPROXY_REGION",
                value: region.clone(),
                reason,
            })?;
        }
        if let Some(path) = env("EDGEPROXY_DB_PATH") {
            config.state.database = Some(path.into());
        }
        if let Some(path) = env("EDGEPROXY_GEOIP_PATH") {
            config.geo.database = Some(path.into());
        }
        for (var, field) in [
            ("EDGEPROXY_BINDING_TTL_SECS", &mut config.affinity.ttl_secs),
            (
                "EDGEPROXY_BINDING_GC_INTERVAL_SECS",
                &mut config.affinity.gc_interval_secs,
            ),
        ] {
            if let Some(secs) = env(var) {
                *field = secs.parse().map_err(|e| ConfigError::Env {
                    var,
                    value: secs.clone(),
                    reason: format!("{e}"),
                })?;
            }
        }
        if let Some(secs) = env("EDGEPROXY_STATS_LOG_SECS") {
            config.stats_log_secs = secs.parse().map_err(|e| ConfigError::Env {
                var: "EDGEPROXY_STATS_LOG_SECS",
                value: secs.clone(),
                reason: format!("{e}"),
            })?;
        }
        if let Some(token) = env("EDGEPROXY_REGISTER_TOKEN") {
            config.register.token = Some(token);
        }
        config
            .health
            .validate()
            .and_then(|()| config.register.validate())
            .and_then(|()| config.metrics.limits.validate("metrics.limits"))
            .and_then(|()| config.dns.tcp_limits.validate("dns.tcp_limits"))
            .and_then(|()| config.bgp.validate())
            .map_err(|reason| ConfigError::Invalid {
                path: path.map_or_else(|| PathBuf::from("(defaults)"), Path::to_path_buf),
                reason,
            })?;
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

        std::fs::write(
            &file,
            "iface = \"eth1\"\nxdp_mode = \"skb\"\nforward_hook = \"tc\"\nbpf_debug_log = true\n",
        )?;
        let config = AgentConfig::load(Some(&file), |var| {
            (var == "EDGEPROXY_BPFFS_ROOT").then(|| "/sys/fs/bpf/other".to_owned())
        })?;
        assert_eq!(config.iface.as_deref(), Some("eth1"));
        assert_eq!(config.xdp_mode, XdpMode::Skb);
        assert_eq!(config.forward_hook, ForwardHook::Tc);
        assert!(config.bpf_debug_log);
        assert_eq!(config.bpffs_root, PathBuf::from("/sys/fs/bpf/other"));
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }

    #[test]
    fn bad_input_is_a_clear_error() -> Result<(), Box<dyn std::error::Error>> {
        let dir = std::env::temp_dir().join(format!("edge-config-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let file = dir.join("agent.toml");
        std::fs::write(&file, "[health]\nconcurrency = 0\n")?;
        let err = AgentConfig::load(Some(&file), no_env)
            .err()
            .map(|e| e.to_string());
        assert!(
            err.as_deref().is_some_and(|e| e.contains("concurrency")),
            "{err:?}"
        );
        std::fs::write(&file, "[health.default_check]\ntype = \"smtp\"\n")?;
        let err = AgentConfig::load(Some(&file), no_env)
            .err()
            .map(|e| e.to_string());
        assert!(
            err.as_deref().is_some_and(|e| e.contains("smtp")),
            "{err:?}"
        );
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
