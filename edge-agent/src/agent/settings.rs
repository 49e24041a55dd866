//! What the agent derives from its configuration before anything runs: this POP's settings for
//! the kernel, the country -> region table, the state source, and the `internal.` zone's
//! parameters. Kept out of the tasks so that a bad configuration fails at start, with the
//! field it names, and so that the CLI, the host role and the tests derive them the same way.

use std::{collections::HashMap, path::Path, sync::Arc, time::Duration};

use anyhow::{bail, Context as _};
use tracing::info;

use crate::{
    balancing::plan,
    balancing::plan::GeoClasses,
    balancing::plan::HealthView,
    balancing::plan::Inputs,
    config::AgentConfig,
    config::StateKind,
    dataplane::maps::services::PopSettings,
    dataplane::netdev,
    dns::Zone,
    geo::RegionTable,
    model::{Country, Region, Snapshot},
    state::corrosion::CorrosionState,
    state::SqliteState,
    state::StateSource as _,
    state::StateStore,
};

/// The built-in country -> region table with the configured overrides.
pub fn region_table(config: &AgentConfig) -> anyhow::Result<RegionTable> {
    let mut overrides = Vec::new();
    for (country, region) in &config.geo.regions {
        let country: Country = country
            .parse()
            .map_err(|e: String| anyhow::anyhow!("geo.regions: {e}"))?;
        let region: Region = region
            .parse()
            .map_err(|e: String| anyhow::anyhow!("geo.regions.{country}: {e}"))?;
        overrides.push((country, region));
    }
    Ok(RegionTable::builtin().with_overrides(overrides))
}

/// This POP's settings for the kernel, from the config and the interfaces.
pub fn pop_settings(
    config: &AgentConfig,
    public_iface: &str,
) -> anyhow::Result<Option<PopSettings>> {
    let Some(overlay_iface) = config.overlay.iface.as_deref() else {
        return Ok(None);
    };
    let Some(overlay_addr) = config.overlay.addr else {
        bail!("overlay.iface is set but overlay.addr (this POP's overlay address) is not");
    };
    if config.overlay.mtu < 1280 {
        bail!(
            "overlay.mtu {} is below IPv6's minimum of 1280",
            config.overlay.mtu
        );
    }
    if config.overlay.port_min == 0 || config.overlay.port_min > config.overlay.port_max {
        bail!(
            "overlay port range {}-{} is empty or starts at 0",
            config.overlay.port_min,
            config.overlay.port_max
        );
    }
    if let Some(prefix) = config.overlay.snat_prefix {
        if prefix.prefix_len() != 96 {
            bail!("overlay.snat_prefix {prefix} must be a /96 (the client's IPv4 address fills the last 32 bits)");
        }
    }
    let public_ifindex = netdev::ifindex(public_iface)
        .with_context(|| format!("interface {public_iface} does not exist"))?;
    Ok(Some(PopSettings {
        overlay_addr,
        // IPv6 (40) and TCP (20) headers inside the overlay MTU.
        mss_clamp: config.overlay.mtu - 60,
        port_min: config.overlay.port_min,
        port_max: config.overlay.port_max,
        public_ifindex,
        overlay_l2_len: netdev::l2_header_len(overlay_iface),
        affinity_ttl: Duration::from_secs(config.affinity.ttl_secs),
        snat_prefix: config.overlay.snat_prefix,
    }))
}

/// The configured state source: Corrosion, the local file, or none (the config's services).
pub fn open_source(
    config: &AgentConfig,
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<Option<Arc<dyn StateStore>>> {
    Ok(match (config.state.source, &config.state.database) {
        (StateKind::Corrosion, _) => {
            let _inside = runtime.enter();
            let source = CorrosionState::start(&config.state.corrosion)
                .context("starting the Corrosion source")?;
            info!(source = %source.describe(), "state from Corrosion");
            Some(Arc::new(source))
        }
        (StateKind::Sqlite, Some(path)) => {
            Some(Arc::new(SqliteState::open(path).with_context(|| {
                format!("opening the state database {}", path.display())
            })?))
        }
        (StateKind::Sqlite, None) => None,
    })
}

pub fn load_config(path: Option<&Path>) -> anyhow::Result<AgentConfig> {
    AgentConfig::load(path, |var| std::env::var(var).ok()).context("loading configuration")
}

/// The plan for a configuration's services with no geo database and no load: what the packet
/// tests and benchmarks load.
pub fn static_plan(config: &AgentConfig) -> plan::Plan {
    let (state, _) = config.snapshot();
    let region = config.region.clone();
    let region_of = |_: Country| region.clone();
    let inputs = Inputs {
        pop_id: &config.pop_id,
        pop_region: &config.region,
        region_of: &region_of,
        unknown_region: &config.region,
        classes: &GeoClasses::default(),
        active: &HashMap::new(),
        health: &plan::health_rows(&state, &config.pop_id),
        now_unix: crate::model::unix_now(),
    };
    plan::plan(&state, &inputs, &|_| None)
}

/// What the `internal.` zone is built from beside the state and health: it is what DNS serves,
/// and what `.internal` backend addresses resolve to for the checks and the plan.
#[derive(Clone, Debug)]
pub struct ZoneSettings {
    pub pop_region: Region,
    /// This POP's overlay address: the name server's.
    pub ns_addr: Option<std::net::Ipv6Addr>,
    pub ttl: u32,
}

impl ZoneSettings {
    pub fn new(config: &AgentConfig) -> Self {
        ZoneSettings {
            pop_region: config.region.clone(),
            ns_addr: config.overlay.addr,
            ttl: config.dns.ttl_secs,
        }
    }

    /// The zone for `state` and this POP's health view of it. Its SOA serial is 0: the DNS
    /// task stamps its own when it serves a zone that changed.
    pub fn build(&self, state: &Snapshot, health: &HashMap<String, HealthView>) -> Zone {
        crate::dns::zone::build(
            state,
            &crate::dns::zone::ZoneInputs {
                pop_region: &self.pop_region,
                health,
                now_unix: crate::model::unix_now(),
                ns_addr: self.ns_addr,
                ttl: self.ttl,
                serial: 0,
            },
        )
    }
}
