//! The running agent: state in, plan computed, maps written; the flow table swept; signals
//! handled. `main.rs` only parses the command line.

pub mod host;
pub mod status;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{bail, Context as _};
use edge_common::{names, FlowKey, FlowValue};
use tracing::{debug, info, warn};

use crate::{
    balancing::maglev, balancing::plan, balancing::plan::GeoClasses, balancing::plan::Inputs,
    config::AgentConfig, config::StateKind, dataplane::maps::counters, dataplane::maps::flows,
    dataplane::maps::geo, dataplane::maps::services::PopSettings,
    dataplane::maps::services::Reconciler, dataplane::netdev, dataplane::pins::PinDir,
    dataplane::programs, dataplane::programs::Attach, dataplane::programs::DataPlane,
    dataplane::programs::MapSizes, dns, dns::DnsServer, dns::Zone, geo::GeoDb, geo::GeoInForce,
    geo::GeoRefusal, geo::GeoSource, geo::RegionTable, health::checker::CheckResult,
    health::monitor::Monitor, health::passive::Sample, listen::budget::Budget, model::Country,
    model::Region, model::Snapshot, state::corrosion::CorrosionState, state::SqliteState,
    state::StateSource as _, state::StateStore,
};

/// Everything the agent holds while it runs.
pub struct Agent {
    /// Taken by `run`.
    runtime: Option<tokio::runtime::Runtime>,
    /// What the agent publishes for `/metrics`, refreshed every second.
    metrics_view: tokio::sync::watch::Sender<Arc<crate::metrics::AgentView>>,
    config: AgentConfig,
    config_path: Option<PathBuf>,
    pins: PinDir,
    dataplane: DataPlane,
    /// `None` when no overlay is configured: the data plane then only counts.
    balancing: Option<Balancing>,
    /// The anycast BGP speaker, when peers are configured (started with the runtime).
    bgp: Option<crate::bgp::Speaker>,
    /// This POP in the 6PN mesh, when `[sixpn]` is enabled.
    sixpn: Option<crate::sixpn::node::Node>,
}

struct Balancing {
    pop: PopSettings,
    reconciler: Reconciler,
    classes: GeoClasses,
    regions: RegionTable,
    geo_written: geo::Written,
    /// The country database the tries hold, for status and metrics.
    geo: GeoInForce,
    /// Live connections per backend id, from the last sweep.
    active: HashMap<String, u64>,
    state: Snapshot,
    /// The SQLite state, when configured; else the config's `services`.
    source: Option<Arc<dyn StateStore>>,
    /// When the state was last read successfully (for `edge-agent status`).
    state_read_at: Option<std::time::Instant>,
    /// Rows rejected since start, all sources together.
    rejected_rows: u64,
    /// When each draining backend (by id) was first seen draining.
    draining_since: HashMap<String, std::time::Instant>,
    /// The raw socket drain-timeout RSTs go out through, opened at the first one needed
    /// (`Err`: it could not be, logged once; connections are then ended without telling the
    /// backends).
    resetter: Option<Result<crate::dataplane::backend_reset::Resetter, ()>>,
    /// The rejections of the last read: each is logged once, not on every reload.
    rejected_seen: std::collections::HashSet<(&'static str, String, String)>,
    /// This POP's health view of the backends, and the checks that keep it.
    health: Monitor,
    /// The plan last written, so that an unchanged one is not written again.
    last_plan: Option<plan::Plan>,
    /// The `internal.` zone's server (started with the runtime), its serial, and the records it
    /// serves.
    dns: Option<DnsServer>,
    dns_serial: u32,
    zone_published: Vec<hickory_proto::rr::Record>,
    /// Writes this POP's health rows (started with the runtime, when there is a store).
    health_writer: Option<crate::health::writer::Writer>,
    /// This POP's health rows about backends the state no longer has, to remove.
    orphan_health: Vec<(String, String)>,
    /// The state as last read, for the registration API.
    snapshot_tx: tokio::sync::watch::Sender<Arc<Snapshot>>,
}

impl Balancing {
    /// The `internal.` zone for the current state and health: what DNS serves and what
    /// `.internal` backend addresses resolve to.
    fn zone(&self, config: &AgentConfig, health: &HashMap<String, plan::HealthView>) -> Zone {
        dns::zone::build(
            &self.state,
            &dns::zone::ZoneInputs {
                pop_region: &config.region,
                health,
                now_unix: crate::model::unix_now(),
                ns_addr: config.overlay.addr,
                ttl: config.dns.ttl_secs,
                serial: self.dns_serial,
            },
        )
    }

    /// Hands `zone` to the DNS server if its records changed. The swap runs on the runtime,
    /// after anything queued before it.
    fn publish(&mut self, zone: &Zone) {
        let Some(server) = &self.dns else {
            return;
        };
        // The SOA carries the serial: compare everything else.
        let same = zone.records.len() == self.zone_published.len()
            && zone
                .records
                .iter()
                .zip(&self.zone_published)
                .skip(1)
                .all(|(a, b)| a == b);
        if same {
            return;
        }
        self.dns_serial = self.dns_serial.wrapping_add(1);
        let records = DnsServer::records(zone, self.dns_serial);
        let handle = server.handle();
        tokio::spawn(async move {
            *handle.records_mut().await = records;
        });
        self.zone_published.clone_from(&zone.records);
    }
}

/// The built-in country -> region table with the configured overrides.
fn region_table(config: &AgentConfig) -> anyhow::Result<RegionTable> {
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

fn load_config(path: Option<&Path>) -> anyhow::Result<AgentConfig> {
    AgentConfig::load(path, |var| std::env::var(var).ok()).context("loading configuration")
}

impl Agent {
    /// Loads and attaches the data plane and applies the configured state.
    pub fn start(
        config: AgentConfig,
        config_path: Option<PathBuf>,
        pins: PinDir,
        reset: bool,
    ) -> anyhow::Result<Self> {
        let Some(iface) = config.iface.clone() else {
            bail!("no interface to attach to: pass --iface, set EDGEPROXY_IFACE, or `iface` in the config");
        };
        if !maglev::is_prime(config.maglev.table_size) {
            bail!(
                "maglev.table_size {} is not prime (next prime: {})",
                config.maglev.table_size,
                maglev::next_prime(config.maglev.table_size)
            );
        }
        // First: the overlay the data plane forwards into may be this 6PN device.
        let sixpn = if config.sixpn.enabled {
            let id = config
                .sixpn
                .id
                .clone()
                .unwrap_or_else(|| config.pop_id.clone());
            Some(
                crate::sixpn::node::Node::start(
                    &config.sixpn,
                    &id,
                    &config.region,
                    crate::model::HostRole::Pop,
                )
                .context("starting the 6PN device")?,
            )
        } else {
            None
        };
        // Before the data plane: with nothing pinned to fall back on, a database that cannot
        // be read is a configuration error.
        let geo_db = match &config.geo.database {
            Some(path) => match GeoDb::load(path) {
                Ok(db) => Some(db),
                Err(error) if reset || !pins.map(edge_common::names::GEO_V4).exists() => {
                    // The error names the file.
                    bail!("{error}; no classification is pinned to fall back on");
                }
                Err(_) => None,
            },
            None => None,
        };
        let pop = pop_settings(&config, &iface)?;
        // Made here, not in `run`: the Corrosion source starts its subscriptions on it.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        let sizes = MapSizes {
            flows: config.flows.max_entries,
            half_open: config.flows.half_open_max_entries,
            maglev: 2 * config.maglev.max_services * config.maglev.table_size,
            affinity: config.affinity.max_entries.max(1),
        };
        let attach = Attach {
            public_iface: &iface,
            overlay_iface: config.overlay.iface.as_deref(),
            xdp_mode: config.xdp_mode,
            forward_hook: config.forward_hook,
            reset,
            sizes,
            debug_log: config.bpf_debug_log,
        };
        let mut dataplane = programs::start(&pins, &attach)
            .with_context(|| format!("starting the data plane on {iface}"))?;
        if config.bpf_debug_log {
            let _inside = runtime.enter();
            crate::dataplane::log::start(&mut dataplane.ebpf);
        }
        info!(iface, hook = dataplane.hook.name(), forward = ?dataplane.forward, reply = ?dataplane.reply, root = %pins.root().display(), "data plane running");
        if crate::dataplane::pins::hidden_from_host(pins.root()) {
            warn!(root = %pins.root().display(), "the pins are on a bpffs the host does not see (as under `ip netns exec`, which gives the agent a private /sys where it mounts a bpffs of its own): `edge-agent status`, `flows` and `backends` on the host cannot find them, and the data plane goes with this mount namespace instead of staying for the next agent; start the agent with `nsenter --net=/run/netns/<namespace> edge-agent run ...` instead");
        }
        let balancing = match pop {
            Some(pop) => {
                // What a previous agent left: its classes are the ones the pinned tables are
                // filed under.
                let (geo_written, classes) =
                    geo::adopt(&mut dataplane.ebpf).context("reading the pinned geo tries")?;
                let geo =
                    GeoInForce::pinned(geo_written.len(), classes.len(), crate::model::unix_now());
                Some(Balancing {
                    reconciler: Reconciler::recover(&mut dataplane.ebpf, config.maglev.table_size)?,
                    pop,
                    classes,
                    regions: region_table(&config)?,
                    geo_written,
                    geo,
                    active: HashMap::new(),
                    state: Snapshot::default(),
                    source: open_source(&config, &runtime)?,
                    state_read_at: None,
                    rejected_rows: 0,
                    rejected_seen: std::collections::HashSet::new(),
                    draining_since: HashMap::new(),
                    resetter: None,
                    health: Monitor::new(config.health.clone(), config.pop_id.clone()),
                    last_plan: None,
                    dns: None,
                    health_writer: None,
                    orphan_health: Vec::new(),
                    dns_serial: 0,
                    zone_published: Vec::new(),
                    snapshot_tx: tokio::sync::watch::channel(Arc::new(Snapshot::default())).0,
                })
            }
            None => {
                if !config.services.is_empty() {
                    warn!("services are configured but no overlay: counting only, nothing is translated");
                }
                None
            }
        };
        let mut agent = Agent {
            runtime: Some(runtime),
            metrics_view: tokio::sync::watch::channel(Arc::default()).0,
            config,
            config_path,
            pins,
            dataplane,
            balancing,
            bgp: None,
            sixpn,
        };
        // The state first, then the geo database, and one plan from both: a plan made from
        // either alone would take the pinned tables away from what the kernel serves.
        agent.read_state();
        agent.reload_geo(true, geo_db)?;
        agent.apply();
        Ok(agent)
    }

    /// Loads the configured geo database into the kernel tries (none configured: empties them).
    ///
    /// A database that cannot be read leaves the classification in force: the previous file's,
    /// or at start the one a previous agent left pinned; at a first start (nothing pinned) it
    /// is an error, since serving would send every client to the default region.
    ///
    /// The switch is made before it is broken: the kept countries keep their classes, the new
    /// ones get classes no table was filed under, and tables for both sets are in the kernel
    /// before the tries change; the old countries' tables go only after.
    fn reload_geo(&mut self, starting: bool, loaded: Option<GeoDb>) -> anyhow::Result<()> {
        let Some(b) = self.balancing.as_mut() else {
            return Ok(());
        };
        let started = std::time::Instant::now();
        let path = self.config.geo.database.clone();
        let db = match &path {
            None if b.geo_written.is_empty() => return Ok(()),
            None => GeoDb::from_entries(Vec::new()).context("an empty country database")?,
            Some(path) => match loaded.map_or_else(|| GeoDb::load(path), Ok) {
                Ok(db) => db,
                Err(error) => {
                    if starting && b.geo_written.is_empty() {
                        bail!("{error}; no classification is pinned to fall back on");
                    }
                    b.geo.refused = Some(GeoRefusal {
                        path: path.display().to_string(),
                        error: error.to_string(),
                        at: crate::model::unix_now(),
                    });
                    let kept = match (&b.geo.source, &b.geo.path) {
                        (GeoSource::File, Some(old)) => format!("{old}, loaded earlier"),
                        _ => "the classification the previous agent left pinned".to_owned(),
                    };
                    warn!(
                        path = %path.display(),
                        %error,
                        networks = b.geo.networks,
                        countries = b.geo.countries,
                        "geo database refused; {kept} stays in force"
                    );
                    return Ok(());
                }
            },
        };
        let (next, reused) = b.classes.successor_counting(&db.countries());
        if reused > 0 {
            warn!(
                reused,
                "more countries than classes: some classes change country, and clients of those countries may be steered by the other's tables while the tries are rewritten"
            );
        }
        let both = b.classes.union(&next);
        if both != b.classes {
            b.classes = both;
            self.apply();
        }
        let Some(b) = self.balancing.as_mut() else {
            return Ok(());
        };
        if let Err(error) = geo::write(&mut self.dataplane.ebpf, &db, &next, &mut b.geo_written) {
            // Partly written: the union's tables stay, so every class still has its table.
            warn!(%error, "writing the geo tries failed");
            return Ok(());
        }
        b.geo = match &path {
            Some(path) => GeoInForce::loaded(path, &db, next.len(), crate::model::unix_now()),
            None => GeoInForce::default(),
        };
        info!(
            path = %path.as_ref().map_or("(none)".into(), |p| p.display().to_string()),
            prefixes = b.geo_written.len(),
            countries = next.len(),
            ms = started.elapsed().as_millis() as u64,
            "geo database loaded"
        );
        b.classes = next;
        self.apply();
        Ok(())
    }

    /// Reads the state again and applies it; on failure the maps keep the last good state.
    fn reload_state(&mut self) {
        if self.read_state() {
            self.apply();
        }
    }

    /// Reads the state; false when it could not be (the last good one stays).
    fn read_state(&mut self) -> bool {
        let Some(b) = self.balancing.as_mut() else {
            return false;
        };
        let (state, rejected) = match &b.source {
            Some(source) => match source.snapshot() {
                Ok(snapshot) => snapshot,
                Err(error) => {
                    warn!(source = %source.describe(), %error, "reading the state failed; the maps keep the last good state");
                    return false;
                }
            },
            None => self.config.snapshot(),
        };
        let ours = format!("{}/", self.config.pop_id);
        b.orphan_health = rejected
            .iter()
            .filter(|r| r.table == "health" && r.reason.starts_with("unknown backend"))
            .filter_map(|r| r.key.strip_prefix(&ours))
            .map(|backend| (self.config.pop_id.clone(), backend.to_owned()))
            .collect();
        let now: std::collections::HashSet<_> = rejected
            .into_iter()
            .map(|r| (r.table, r.key, r.reason))
            .collect();
        for (table, key, reason) in now.difference(&b.rejected_seen) {
            warn!(table, key = %key, reason = %reason, "row rejected");
            b.rejected_rows += 1;
        }
        b.rejected_seen = now;
        let started = std::time::Instant::now();
        b.draining_since
            .retain(|id, _| state.backends.iter().any(|x| &x.id == id && x.draining));
        for backend in state.backends.iter().filter(|x| x.draining) {
            b.draining_since
                .entry(backend.id.clone())
                .or_insert(started);
        }
        if let (Some(node), Some(store)) = (self.sixpn.as_mut(), b.source.as_ref()) {
            crate::agent::host::apply(&**store, node, &state);
        }
        b.state = state;
        b.state_read_at = Some(std::time::Instant::now());
        let health = b.health.views();
        let zone = b.zone(&self.config, &health);
        b.health.sync(&b.state, &|name| zone.resolve(name));
        b.snapshot_tx.send_replace(Arc::new(b.state.clone()));
        match serde_json::to_vec(&b.state) {
            Ok(doc) => {
                let path = self.pins.agent_state_file();
                if let Err(error) = crate::dataplane::pins::write_atomically(&path, &doc) {
                    debug!(%error, path = %path.display(), "writing the state for the CLI");
                }
            }
            Err(error) => debug!(%error, "encoding the state for the CLI"),
        }
        true
    }

    /// Computes the plan from the current state and load, and writes it.
    fn apply(&mut self) {
        let Some(b) = self.balancing.as_ref() else {
            return;
        };
        let health = b.health.views();
        let zone = b.zone(&self.config, &health);
        self.apply_with(&health, &zone);
    }

    /// Tells the BGP speaker what this POP can serve now: a VIP is announced while a service on
    /// it has an eligible backend, the data plane is attached, and no drain has run its course.
    fn announce(&mut self, shutting_down: bool) {
        let Some(speaker) = self.bgp.as_mut() else {
            return;
        };
        let mut vips = std::collections::BTreeSet::new();
        let mut servable = std::collections::BTreeSet::new();
        if let Some(b) = self.balancing.as_ref() {
            vips.extend(b.state.services.iter().map(|s| s.vip));
            if let Some(plan) = &b.last_plan {
                servable.extend(
                    plan.services
                        .iter()
                        .filter(|s| s.sets.values().any(|set| !set.is_empty()))
                        .map(|s| s.vip),
                );
            }
        }
        // What `edge-agent status` reports as attached, whichever hook it is in.
        let attached = self.config.iface.as_deref().is_some_and(|iface| {
            self.pins
                .attached_ifaces()
                .iter()
                .any(|(on, _)| on == iface)
                && netdev::ifindex(iface).is_some()
        });
        let inputs = crate::bgp::routes::Inputs {
            servable,
            attached,
            draining_for: crate::bgp::drain::draining_for(&self.pins),
            shutting_down,
        };
        speaker.update(&vips, &inputs);
    }

    /// Reconciles the 6PN peers against the state already read: keepalives start once a peer
    /// has answered, which no state change announces.
    fn refresh_sixpn(&mut self) {
        if let (Some(node), Some(b)) = (self.sixpn.as_mut(), self.balancing.as_ref()) {
            if let Err(error) = node.reconcile(&b.state) {
                warn!(%error, "6PN: reconciling the mesh");
            }
        }
    }

    /// Starts the BGP speaker where peers are configured.
    async fn start_bgp(&mut self) {
        let forwarding_kept = self.dataplane.forward == programs::Attachment::Adopted;
        match crate::bgp::Speaker::start_after(&self.config.bgp, forwarding_kept).await {
            Ok(speaker) => self.bgp = speaker,
            Err(error) => warn!(%error, "BGP is off"),
        }
        self.announce(false);
    }

    /// [`Agent::apply`] with this POP's health view and the zone already computed.
    fn apply_with(&mut self, health: &HashMap<String, plan::HealthView>, zone: &Zone) {
        let Some(b) = self.balancing.as_mut() else {
            return;
        };
        if b.state_read_at.is_none() {
            // Nothing read yet: the maps keep what they hold (a previous agent's plan).
            return;
        }
        b.publish(zone);
        let unknown: Region = b.regions.default_region();
        let regions = &b.regions;
        let region_of = |c: Country| regions.region_of(c);
        let inputs = Inputs {
            pop_id: &self.config.pop_id,
            pop_region: &self.config.region,
            region_of: &region_of,
            unknown_region: &unknown,
            classes: &b.classes,
            active: &b.active,
            health,
            now_unix: crate::model::unix_now(),
        };
        let plan = plan::plan(&b.state, &inputs, &|name| zone.resolve(name));
        if b.last_plan.as_ref() == Some(&plan) {
            self.announce(false);
            return;
        }
        match b.reconciler.apply(&mut self.dataplane.ebpf, &b.pop, &plan) {
            Ok(applied) => {
                b.last_plan = Some(plan);
                info!(
                    services = applied.services,
                    backends = applied.backends,
                    tables = applied.tables,
                    tables_built = applied.tables_built,
                    rejected = applied.rejected.len(),
                    "state applied"
                );
            }
            Err(error) => warn!(%error, "applying state failed; the maps keep the last good state"),
        }
        self.announce(false);
    }

    /// Expires idle flows and refreshes the live connection counts the plan weighs.
    fn sweep(&mut self) -> anyhow::Result<()> {
        let Some(b) = self.balancing.as_mut() else {
            return Ok(());
        };
        let now = flows::monotonic_ns();
        let ebpf = &self.dataplane.ebpf;
        let open = |name| -> anyhow::Result<aya::maps::HashMap<_, FlowKey, FlowValue>> {
            let map = ebpf
                .map(name)
                .with_context(|| format!("{name} map missing"))?;
            Ok(aya::maps::HashMap::try_from(map)?)
        };
        let (half_open, table) = (open(names::HALF_OPEN)?, open(names::FLOWS)?);
        let expire =
            |map, table| flows::sweep(map, table, &self.config.flows, now, flows::Sweep::Expire);
        let (half_report, _) = expire(&half_open, flows::Table::HalfOpen)?;
        let (report, _) = expire(&table, flows::Table::Established)?;
        let drain_timeout = Duration::from_secs(self.config.flows.drain_timeout_secs);
        if !drain_timeout.is_zero() {
            let over: std::collections::HashSet<u32> = b
                .reconciler
                .backend_ids()
                .into_iter()
                .filter(|(_, endpoint)| {
                    state_backends_at(&b.state, *endpoint).any(|x| {
                        b.draining_since
                            .get(&x.id)
                            .is_some_and(|since| since.elapsed() >= drain_timeout)
                    })
                })
                .map(|(id, _)| id)
                .collect();
            if !over.is_empty() {
                end_drained(b, &table, &half_open, &over)?;
            }
        }
        debug!(
            entries = report.entries,
            connections = report.connections,
            expired = report.expired,
            half_open = half_report.entries,
            half_open_expired = half_report.expired,
            "flow tables swept"
        );
        let by_endpoint = b.reconciler.backend_ids();
        let mut active: HashMap<String, u64> = HashMap::new();
        for (id, count) in &report.active_per_backend {
            let Some(&(addr, port)) = by_endpoint.get(id) else {
                continue;
            };
            for backend in state_backends_at(&b.state, (addr, port)) {
                *active.entry(backend.id.clone()).or_default() += count;
            }
        }
        // Tables only change when a backend's load crosses a tenth of its soft limit, or its
        // hard limit; recompute only then.
        let step = |id: &str, n: u64| {
            b.state.backends.iter().find(|x| x.id == id).map(|x| {
                (
                    n * 10 / u64::from(x.soft_limit.max(1)),
                    n >= u64::from(x.hard_limit),
                )
            })
        };
        let changed = active.len() != b.active.len()
            || active
                .iter()
                .any(|(id, n)| step(id, *n) != b.active.get(id).and_then(|o| step(id, *o)));
        b.active = active;
        if changed {
            self.apply();
        }
        Ok(())
    }

    /// Records a finished check and any others already waiting; a status change reaches the
    /// kernel at once, in one plan for the whole batch.
    fn on_checks(
        &mut self,
        first: CheckResult,
        more: &mut tokio::sync::mpsc::UnboundedReceiver<CheckResult>,
    ) {
        let Some(b) = self.balancing.as_mut() else {
            return;
        };
        b.health.record(first);
        while let Ok(result) = more.try_recv() {
            b.health.record(result);
        }
        let changed = b.health.has_changes();
        if std::mem::take(&mut b.health.replan_now) {
            b.health.replan_soon = false;
            self.apply();
        }
        if changed {
            self.write_health(false);
        }
    }

    /// Reads the per-backend counters for the passive signals.
    fn observe_backends(&mut self) -> anyhow::Result<()> {
        let Some(b) = self.balancing.as_mut() else {
            return Ok(());
        };
        let map = self
            .dataplane
            .ebpf
            .map(names::BACKEND_STATS)
            .context("BACKEND_STATS map missing")?;
        let stats: aya::maps::PerCpuArray<_, edge_common::BackendStats> =
            aya::maps::PerCpuArray::try_from(map)?;
        let endpoints = b.reconciler.backend_ids();
        let mut samples = HashMap::new();
        for &id in endpoints.keys() {
            let s = counters::sum_per_cpu(&stats, id)?;
            samples.insert(
                id,
                Sample {
                    new_flows: s.new_flows,
                    syn_acks: s.syn_acks,
                    refused: s.refused,
                },
            );
        }
        let state = &b.state;
        let backends_of = |id: u32| -> Vec<String> {
            endpoints
                .get(&id)
                .map(|&endpoint| {
                    state_backends_at(state, endpoint)
                        .map(|x| x.id.clone())
                        .collect()
                })
                .unwrap_or_default()
        };
        b.health
            .observe(&samples, &backends_of, std::time::Instant::now());
        Ok(())
    }

    /// Writes this POP's health rows: the changed ones, or all of them when `all`. Without a
    /// state database the view stays in memory (and in the kernel's eligibility).
    fn write_health(&mut self, all: bool) {
        let Some(b) = self.balancing.as_mut() else {
            return;
        };
        let rows = b.health.rows(all, crate::model::unix_now());
        if b.health_writer.is_none() {
            b.health_writer = b.source.clone().map(crate::health::writer::Writer::start);
        }
        if let Some(writer) = &b.health_writer {
            writer.send(rows);
            writer.forget(std::mem::take(&mut b.orphan_health));
        }
    }

    /// Writes what only the running agent knows (state source and staleness, health checks,
    /// DNS) where `edge-agent status` finds it.
    fn write_status(&self) {
        let Some(b) = self.balancing.as_ref() else {
            return;
        };
        let state = match &b.source {
            Some(source) => status::StateStatus {
                source: source.describe(),
                stale_secs: source.staleness().map(|d| d.as_secs_f64()),
                detail: Some(source.detail()),
            },
            None => status::StateStatus {
                source: "the config file's services".to_owned(),
                stale_secs: Some(0.0),
                detail: None,
            },
        };
        let doc = status::AgentStatus {
            pid: std::process::id(),
            role: None,
            written_at: crate::model::unix_now(),
            pop: Some(status::PopStatus {
                state,
                rejected_rows: b.rejected_rows,
                geo: b.geo.clone(),
                state_read_secs_ago: b.state_read_at.map(|t| t.elapsed().as_secs_f64()),
                health: status::ChecksStatus {
                    checking: b.health.checking(),
                    checks: b.health.checks,
                    transitions: b.health.transitions,
                },
                dns: b.dns.as_ref().map(|d| d.local.clone()),
                bgp: self.bgp.as_ref().map(|speaker| {
                    let (sessions, vips) = speaker.status();
                    status::BgpStatus {
                        draining_since: crate::bgp::drain::since(&self.pins),
                        sessions: sessions
                            .iter()
                            .filter_map(|s| status::BgpSession::of(s).ok())
                            .collect(),
                        vips: vips.iter().map(status::BgpVip::from).collect(),
                        bfd_dropped: speaker
                            .bfd_dropped()
                            .into_iter()
                            .map(|(k, v)| (k.to_owned(), v))
                            .collect(),
                    }
                }),
            }),
            sixpn: self.sixpn.as_ref().map(crate::sixpn::node::Node::status),
        };
        self.publish_metrics(b);
        let path = self.pins.agent_status_file();
        if let Err(error) = doc.write_to(&path) {
            debug!(%error, path = %path.display(), "writing the agent status");
        }
    }

    /// Refreshes what `/metrics` reports of the agent itself.
    fn publish_metrics(&self, b: &Balancing) {
        let mut view = crate::metrics::AgentView {
            state_source: b
                .source
                .as_ref()
                .map_or_else(|| "config".to_owned(), |s| s.describe()),
            state_stale_seconds: match &b.source {
                Some(source) => source.staleness().map(|d| d.as_secs_f64()),
                None => Some(0.0),
            },
            rejected_rows: b.rejected_rows,
            health_checks: b.health.checks,
            health_transitions: b.health.transitions,
            geo: b.geo.clone(),
            ..crate::metrics::AgentView::default()
        };
        if let Some(speaker) = &self.bgp {
            (view.bgp_sessions, view.bgp_vips) = speaker.status();
            view.bgp_bfd_dropped = speaker.bfd_dropped();
        }
        for s in &b.state.services {
            let key = crate::dataplane::maps::services::service_key(s.vip, s.port);
            view.services
                .insert(flows::endpoint(&key.addr, key.port), s.id.clone());
        }
        let trackers: HashMap<&String, &crate::health::tracker::Tracker> =
            b.health.trackers().collect();
        for backend in &b.state.backends {
            let addr = match &backend.addr {
                crate::model::BackendAddr::Ip(ip) => format!("[{ip}]:{}", backend.port),
                crate::model::BackendAddr::Name(n) => format!("{n}:{}", backend.port),
            };
            let t = trackers.get(&backend.id);
            view.backends.insert(
                backend.id.clone(),
                crate::metrics::BackendView {
                    service: backend.service.clone(),
                    addr,
                    status: crate::state::validate::status_str(
                        t.map_or(crate::model::HealthStatus::Unknown, |t| t.status),
                    ),
                    rtt_seconds: t.and_then(|t| t.srtt_us).map(|us| f64::from(us) / 1e6),
                    checks: t.map_or(0, |t| t.checks),
                    failures: t.map_or(0, |t| t.failures),
                },
            );
        }
        view.start_time_seconds = self.metrics_view.borrow().start_time_seconds;
        self.metrics_view.send_replace(Arc::new(view));
    }

    /// Serves `/metrics` where configured.
    async fn start_metrics(&self, budget: &Budget) {
        let Some(addr) = self.config.metrics.listen else {
            return;
        };
        self.metrics_view
            .send_replace(Arc::new(crate::metrics::AgentView {
                start_time_seconds: crate::model::unix_now() as f64,
                ..crate::metrics::AgentView::default()
            }));
        let app = crate::metrics::router(self.pins.clone(), self.metrics_view.subscribe());
        let limits = &self.config.metrics.limits;
        let limits = limits.with_cap(budget.cap(limits.max_connections));
        match crate::listen::http::start("metrics", addr, limits, app).await {
            Ok(addr) => info!(%addr, "metrics at /metrics"),
            Err(error) => warn!(%addr, %error, "metrics endpoint: cannot listen"),
        }
    }

    /// Serves `internal.` on the configured addresses it can bind (one that fails is logged and
    /// left out: the rest keeps serving).
    async fn start_dns(&mut self, budget: &Budget) {
        let Some(b) = self.balancing.as_mut() else {
            return;
        };
        if !self.config.dns.enabled {
            return;
        }
        let listen = self.config.dns.addresses(self.config.overlay.addr);
        let limits = &self.config.dns.tcp_limits;
        let tcp = limits.with_cap(budget.cap(limits.max_connections));
        match DnsServer::start(&listen, tcp).await {
            Ok((server, failed)) => {
                for error in failed {
                    warn!(%error, "DNS: an address is left out");
                }
                info!(listen = ?server.local, "DNS serving internal.");
                b.dns = Some(server);
                b.zone_published.clear();
                self.apply();
            }
            Err(error) => warn!(%error, "DNS is off"),
        }
    }

    /// Starts the registration API where configured; it needs the state database.
    async fn start_register_api(&mut self, budget: &Budget) {
        let Some(b) = self.balancing.as_ref() else {
            return;
        };
        let config = &self.config.register;
        if config.listen.is_empty() {
            return;
        }
        let (Some(store), Ok(Some(token))) = (b.source.clone(), config.token()) else {
            warn!(
                "register.listen is set, but the API needs state.database and a token: it is off"
            );
            return;
        };
        let api = Arc::new(crate::register::api::ApiState {
            token,
            store,
            snapshot: b.snapshot_tx.subscribe(),
            default_heartbeat_secs: config.heartbeat_secs,
            pop: self.this_pop(),
        });
        let limits = config
            .limits
            .with_cap(budget.cap(config.limits.max_connections));
        for &addr in &config.listen {
            let app = crate::register::api::router(Arc::clone(&api));
            match crate::listen::http::start("register", addr, limits, app).await {
                Ok(addr) => info!(%addr, "registration API listening"),
                Err(error) => warn!(%addr, %error, "registration API: cannot listen"),
            }
        }
    }

    /// This POP as the registration API and the lease reaper know it.
    fn this_pop(&self) -> crate::register::api::ThisPop {
        crate::register::api::ThisPop::new(
            &self.config.pop_id,
            self.config.overlay.addr,
            self.config.overlay.snat_prefix,
        )
    }

    /// Deletes registrations whose lease ran out (every agent with a state store: the lease's
    /// POP at once, the others late, see `register::reaper`).
    fn start_reaper(&self) {
        let Some(b) = self.balancing.as_ref() else {
            return;
        };
        if let Some(store) = b.source.clone() {
            let pop = crate::register::api::ThisPop::lease_id(&self.config.pop_id);
            if pop.is_empty() {
                warn!(pop_id = %self.config.pop_id, "pop_id is not a valid id: registrations accepted here are deleted late, by any POP");
            }
            crate::register::reaper::spawn(store, b.snapshot_tx.subscribe(), &pop);
        }
    }

    /// Drops client bindings past their TTL.
    fn expire_bindings(&mut self) -> anyhow::Result<()> {
        let ttl = Duration::from_secs(self.config.affinity.ttl_secs);
        if self.balancing.is_none() || ttl.is_zero() {
            return Ok(());
        }
        let map = self
            .dataplane
            .ebpf
            .map_mut(names::AFFINITY)
            .context("AFFINITY map missing")?;
        let bindings = aya::maps::HashMap::try_from(map)?;
        let expired = flows::expire_bindings(&bindings, ttl, flows::monotonic_ns())?;
        debug!(expired, "client bindings swept");
        Ok(())
    }

    /// Runs until SIGINT or SIGTERM; SIGHUP re-reads the configuration.
    pub fn run(mut self) -> anyhow::Result<()> {
        let runtime = self.runtime.take().context("the agent's runtime is gone")?;
        // An agent that is gone has no status, however it ends; a killed one's file ages, and
        // `status` says so.
        let _status = self.pins.status_file_guard();
        runtime.block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
            let mut sighup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
            let mut sweep = tokio::time::interval(Duration::from_secs(self.config.flows.sweep_interval_secs.max(1)));
            let mut stats_log = tokio::time::interval(Duration::from_secs(self.config.stats_log_secs.max(1)));
            let mut binding_gc =
                tokio::time::interval(Duration::from_secs(self.config.affinity.gc_interval_secs.max(1)));
            let mut changes = match self.balancing.as_ref().and_then(|b| b.source.as_ref()) {
                Some(source) => Some(source.changes().context("watching the state")?),
                None => None,
            };
            // The listeners' connection caps, within the open-files limit.
            let budget = Budget::plan(&self.config);
            // What bursts on them freed goes back to the kernel.
            let _trimmer = crate::process::memory::spawn_trimmer(Duration::from_secs(10));
            self.start_dns(&budget).await;
            self.start_metrics(&budget).await;
            self.start_register_api(&budget).await;
            self.start_reaper();
            self.start_bgp().await;
            let mut checks = self.balancing.as_mut().and_then(|b| b.health.start());
            let health = self.config.health.clone();
            let mut passive = tokio::time::interval(Duration::from_millis(health.passive.interval_ms.max(10)));
            passive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut health_rows = tokio::time::interval(Duration::from_secs(health.write_interval_secs.max(1)));
            let mut replan = tokio::time::interval(Duration::from_secs(1));
            println!("edge-agent ready");
            // systemd's Type=notify readiness (a no-op without NOTIFY_SOCKET).
            if let Err(error) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
                warn!(%error, "telling systemd we are ready");
            }
            loop {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => break,
                    _ = sigterm.recv() => break,
                    () = async {
                        match changes.as_mut() {
                            Some(changes) => changes.changed().await,
                            None => std::future::pending().await,
                        }
                    } => self.reload_state(),
                    _ = sighup.recv() => match load_config(self.config_path.as_deref()) {
                        Ok(new) => {
                            self.config.services = new.services;
                            self.config.geo = new.geo;
                            self.read_state();
                            if let Err(error) = self.reload_geo(false, None) {
                                warn!(error = %format!("{error:#}"), "reloading the geo database");
                            }
                            self.apply();
                        }
                        Err(error) => warn!(error = %format!("{error:#}"), "reloading config failed; keeping the current one"),
                    },
                    _ = sweep.tick() => {
                        if let Err(error) = self.sweep() {
                            warn!(error = %format!("{error:#}"), "sweeping the flow table");
                        }
                    }
                    Some(result) = async {
                        match checks.as_mut() {
                            Some(rx) => rx.recv().await,
                            None => std::future::pending().await,
                        }
                    } => {
                        if let Some(rx) = checks.as_mut() {
                            self.on_checks(result, rx);
                        }
                    }
                    _ = passive.tick(), if checks.is_some() && health.passive.enabled => {
                        if let Err(error) = self.observe_backends() {
                            warn!(error = %format!("{error:#}"), "reading backend counters");
                        }
                    }
                    _ = replan.tick() => {
                        // Drains and hold-downs run out with time alone.
                        self.announce(false);
                        self.refresh_sixpn();
                        self.write_status();
                        // Leases run out with time alone: registered backends need a look
                        // every second.
                        if self.balancing.as_mut().is_some_and(|b| {
                            std::mem::take(&mut b.health.replan_soon)
                                || b.state.backends.iter().any(|x| x.lease.is_some())
                        }) {
                            self.apply();
                        }
                    }
                    _ = health_rows.tick() => self.write_health(true),
                    _ = binding_gc.tick() => {
                        if let Err(error) = self.expire_bindings() {
                            warn!(error = %format!("{error:#}"), "sweeping client bindings");
                        }
                    }
                    _ = stats_log.tick(), if self.config.stats_log_secs > 0 => {
                        match counters::open_pinned(&self.pins).and_then(|map| counters::snapshot(&map)) {
                            Ok(snapshot) => {
                                let (checks, checking, transitions) = self
                                    .balancing
                                    .as_ref()
                                    .map_or((0, 0, 0), |b| (b.health.checks, b.health.checking(), b.health.transitions));
                                info!(packets = snapshot.total_packets(), health_checks = checks, backends_checked = checking, health_transitions = transitions, "counters");
                            }
                            Err(error) => warn!(%error, "reading counters"),
                        }
                    }
                }
            }
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
            if let Some(speaker) = self.bgp.take() {
                let draining = crate::bgp::drain::since(&self.pins).is_some();
                if self.config.bgp.graceful_restart_secs > 0 && !draining {
                    // The data plane stays and forwards: a stop is taken for a restart, as
                    // `systemctl restart` and upgrades do, and the routers keep the routes
                    // for the restart time. `edge-agent drain` first takes the POP out.
                    info!(
                        restart_secs = self.config.bgp.graceful_restart_secs,
                        "leaving the routes to the routers' graceful restart: an agent started within the restart time takes them over; `edge-agent drain` before stopping withdraws them"
                    );
                    speaker.leave_to_graceful_restart();
                } else {
                    // Withdraw first: routers move new clients to another POP while this one
                    // still serves the connections already here.
                    speaker.shutdown(Duration::from_secs(3)).await;
                }
            }
            anyhow::Ok(())
        })?;
        info!("agent stopping; the data plane stays attached (`edge-agent detach` removes it)");
        Ok(())
    }
}

/// The state's backends at an overlay endpoint (several services may share one).
fn state_backends_at(
    state: &Snapshot,
    (addr, port): (std::net::Ipv6Addr, u16),
) -> impl Iterator<Item = &crate::model::Backend> {
    state
        .backends
        .iter()
        .filter(move |b| b.port == port && b.addr == crate::model::BackendAddr::Ip(addr))
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

/// Ends the connections to backends whose drain timeout has run out, in both flow tables: each
/// backend that still has a connection gets a RST for it first (`crate::dataplane::backend_reset`), then
/// the reverse halves go, the forward ones are marked ended, and the clients' next packets meet
/// the POP's kernel's RST. One log line per sweep.
fn end_drained<T: std::borrow::Borrow<aya::maps::MapData>>(
    b: &mut Balancing,
    table: &aya::maps::HashMap<T, FlowKey, FlowValue>,
    half_open: &aya::maps::HashMap<T, FlowKey, FlowValue>,
    over: &std::collections::HashSet<u32>,
) -> anyhow::Result<()> {
    use crate::{dataplane::backend_reset::Resetter, dataplane::backend_reset::MAX_PER_SWEEP};
    let established = flows::backend_flows_to_end(table, over, MAX_PER_SWEEP, true)?;
    let half = flows::backend_flows_to_end(
        half_open,
        over,
        MAX_PER_SWEEP.saturating_sub(established.resets.len()),
        false,
    )?;
    let entries = established.keys.len() + established.ended.len() + half.keys.len();
    if entries == 0 && established.deferred + half.deferred == 0 {
        return Ok(());
    }
    // Only from this POP's own sources: the entries are the kernel's, the packets the agent's.
    let (overlay, snat) = (b.pop.overlay_addr, b.pop.snat_prefix);
    let ours = |r: &&crate::dataplane::backend_reset::BackendReset| {
        r.src == overlay || snat.is_some_and(|p| p.contains(&r.src))
    };
    let resets: Vec<_> = established
        .resets
        .iter()
        .chain(&half.resets)
        .filter(ours)
        .copied()
        .collect();
    let foreign = established.resets.len() + half.resets.len() - resets.len();
    let resetter = b.resetter.get_or_insert_with(|| {
        Resetter::open().map_err(|error| {
            warn!(%error, "drain timeout: backends will not be sent RSTs");
        })
    });
    let sent = match resetter {
        Ok(r) if !resets.is_empty() => r.send(&resets),
        _ => crate::dataplane::backend_reset::Sent {
            failed: resets.len() as u64,
            ..Default::default()
        },
    };
    let (ended_keys, ended): (Vec<FlowKey>, Vec<FlowValue>) =
        established.ended.iter().copied().unzip();
    crate::dataplane::batch::update(aya::maps::IterableMap::map(table), &ended_keys, &ended)?;
    crate::dataplane::batch::delete(aya::maps::IterableMap::map(table), &established.keys)?;
    crate::dataplane::batch::delete(aya::maps::IterableMap::map(half_open), &half.keys)?;
    info!(
        entries,
        resets_sent = sent.sent,
        resets_failed = sent.failed,
        resets_foreign_source = foreign,
        deferred = established.deferred + half.deferred,
        error = sent.error.as_deref().unwrap_or(""),
        "drain timeout: connections to drained backends ended, backends sent RSTs"
    );
    Ok(())
}
