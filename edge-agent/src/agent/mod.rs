//! The running agent: the data plane loaded and attached, then tasks joined by channels, in the
//! style of linkerd2-proxy's `App::spawn`. Each task owns one part and publishes what the others
//! need on a `tokio::sync::watch` channel (or sends it by `mpsc` where every message counts);
//! one drain signal ends them all. `main.rs` only parses the command line.
//!
//! | task (file) | owns | in | out |
//! |---|---|---|---|
//! | state (`inputs`) | the state source, rejected rows, drain start times | source changes, config reloads | latest good read (`StateRx`), bare snapshot |
//! | geo loader (`inputs`) | reading the geo file | config reloads | `GeoLoad` (mpsc) |
//! | health (`health`) | trackers, checker, health rows | `StateRx`, check results, kernel ids | state + views + counts (`HealthRx`) |
//! | reconcile (`reconcile`, `sweeper`) | every kernel map: services, backends, tables, geo tries, flow tables | `HealthRx`, `GeoLoad`, sweep/binding/lease ticks | zone, servable VIPs, kernel ids, geo in force |
//! | announce (`announce`) | the BGP speaker | servable VIPs, tick | sessions and routes (`BgpRx`) |
//! | DNS (`servers`) | the `internal.` server | zone | - |
//! | mesh (`mesh`) | the 6PN node | `StateRx`, tick | `SixpnRx` |
//! | report (`report`) | the status file, the metrics view | all of the above | `AgentView` |
//! | metrics, registration API, reaper (`servers`) | their listeners | `AgentView`, snapshot | - |
//!
//! Only the reconcile task writes kernel maps, as in Cilium only one reconciler writes the LB
//! maps: plans, geo switches and flow sweeps never interleave. Without an overlay the data plane
//! only counts: no task writes its maps, and only BGP, metrics and the counters' log run.
//!
//! SIGTERM and SIGINT raise the drain; SIGHUP re-reads the configuration (its services and geo
//! database) and hands it to the state and geo tasks.

mod announce;
#[cfg(test)]
mod fixtures;
mod health;
pub mod host;
mod inputs;
mod mesh;
mod reconcile;
mod report;
mod servers;
mod settings;
pub mod status;
mod sweeper;

use std::{path::PathBuf, sync::Arc, time::Duration, time::Instant};

use anyhow::{bail, Context as _};
use tokio::{sync::watch, task::JoinSet};
use tracing::{info, warn};

pub use self::settings::{open_source, pop_settings, static_plan};
use self::{
    announce::{Announcer, Servable},
    health::HealthStage,
    inputs::{GeoLoad, StateReader},
    mesh::Mesh,
    reconcile::Reconcile,
    report::{Reporter, Sources},
    servers::Dns,
    settings::load_config,
};
use crate::{
    balancing::maglev,
    config::AgentConfig,
    dataplane::{
        pins::PinDir, programs, programs::Attach, programs::DataPlane, programs::MapSizes,
    },
    geo::GeoDb,
    listen::budget::Budget,
    metrics::AgentView,
    sixpn::node::Node,
    state::StateStore,
};

/// The one drain signal: raised when SIGTERM or SIGINT arrives; every task watches it and ends.
/// A `watch<bool>` rather than tokio-util's `CancellationToken`: the tasks are already joined
/// by watch channels, and it takes no other crate.
#[derive(Clone)]
pub struct Drain(watch::Receiver<bool>);

impl Drain {
    fn new() -> (watch::Sender<bool>, Drain) {
        let (tx, rx) = watch::channel(false);
        (tx, Drain(rx))
    }

    /// Returns once the drain is raised (or can no longer be: nothing is left to run for).
    pub async fn signaled(&mut self) {
        let _ = self.0.wait_for(|drained| *drained).await;
    }
}

/// The agent, started: its data plane attached and its first plan written, the tasks not yet
/// running.
pub struct Agent {
    /// Made in `start`: the Corrosion source starts its subscriptions on it.
    runtime: tokio::runtime::Runtime,
    config: AgentConfig,
    config_path: Option<PathBuf>,
    pins: PinDir,
    /// The data plane was adopted and forwarded all along (BGP's graceful restart says so).
    forwarding_kept: bool,
    plane: Plane,
}

enum Plane {
    /// No overlay: the data plane only counts, and nothing writes its maps.
    Counting(Box<(DataPlane, Option<Node>)>),
    Balancing(Box<Pipeline>),
}

/// The parts of a balancing POP, before they become tasks.
struct Pipeline {
    /// The state database or Corrosion; `None`: the config's services.
    source: Option<Arc<dyn StateStore>>,
    inputs: StateReader,
    health: HealthStage,
    reconcile: Reconcile,
    mesh: Option<Mesh>,
}

/// What must outlive the tasks until the agent returns: the data plane's handles.
struct Held {
    _dataplane: Option<DataPlane>,
    _sixpn: Option<Node>,
    _reconcile: Option<Box<Reconcile>>,
}

/// How a task ended.
enum Ended {
    Done,
    /// The reconcile task gives the data plane back.
    Reconcile(Box<Reconcile>),
}

/// The running tasks, supervised: a task's panic ends the agent, as it did when the agent was
/// one loop (and systemd restarts it), rather than leaving it up without that part.
#[derive(Default)]
struct Running {
    tasks: JoinSet<Ended>,
    /// The data plane when no task owns it (counting only), with the 6PN node.
    counting: Option<(DataPlane, Option<Node>)>,
}

impl Running {
    fn spawn(&mut self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(async move {
            task.await;
            Ended::Done
        });
    }

    /// Returns the first panic of a task (never, while none panics).
    async fn panicked(&mut self) -> Box<dyn std::any::Any + Send> {
        loop {
            match self.tasks.join_next().await {
                Some(Err(error)) if error.is_panic() => return error.into_panic(),
                Some(_) => {}
                None => std::future::pending().await,
            }
        }
    }

    /// Waits for every task to end after the drain: the BGP task withdraws the routes (or
    /// leaves them to graceful restart) first.
    async fn stop(mut self) -> Held {
        let mut reconcile = None;
        while let Some(ended) = self.tasks.join_next().await {
            if let Ok(Ended::Reconcile(r)) = ended {
                reconcile = Some(r);
            }
        }
        let (dataplane, sixpn) = self.counting.unzip();
        Held {
            _dataplane: dataplane,
            _sixpn: sixpn.flatten(),
            _reconcile: reconcile,
        }
    }
}

/// This POP's 6PN device, when `[sixpn]` is enabled.
fn start_sixpn(config: &AgentConfig) -> anyhow::Result<Option<Node>> {
    if !config.sixpn.enabled {
        return Ok(None);
    }
    let id = config
        .sixpn
        .id
        .clone()
        .unwrap_or_else(|| config.pop_id.clone());
    let node = Node::start(
        &config.sixpn,
        &id,
        &config.region,
        crate::model::HostRole::Pop,
    )
    .context("starting the 6PN device")?;
    Ok(Some(node))
}

/// The configured geo database, read before the data plane: with nothing pinned to fall back
/// on, a database that cannot be read is a configuration error.
fn preload_geo(config: &AgentConfig, pins: &PinDir, reset: bool) -> anyhow::Result<Option<GeoDb>> {
    let Some(path) = &config.geo.database else {
        return Ok(None);
    };
    match GeoDb::load(path) {
        Ok(db) => Ok(Some(db)),
        Err(error) if reset || !pins.map(edge_common::names::GEO_V4).exists() => {
            // The error names the file.
            bail!("{error}; no classification is pinned to fall back on");
        }
        Err(_) => Ok(None),
    }
}

/// Loads, attaches and pins the data plane (or adopts the pinned one).
fn attach(
    config: &AgentConfig,
    pins: &PinDir,
    iface: &str,
    reset: bool,
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<DataPlane> {
    let sizes = MapSizes {
        flows: config.flows.max_entries,
        half_open: config.flows.half_open_max_entries,
        maglev: 2 * config.maglev.max_services * config.maglev.table_size,
        affinity: config.affinity.max_entries.max(1),
    };
    let attach = Attach {
        public_iface: iface,
        overlay_iface: config.overlay.iface.as_deref(),
        xdp_mode: config.xdp_mode,
        forward_hook: config.forward_hook,
        reset,
        sizes,
        debug_log: config.bpf_debug_log,
    };
    let mut dataplane = programs::start(pins, &attach)
        .with_context(|| format!("starting the data plane on {iface}"))?;
    if config.bpf_debug_log {
        let _inside = runtime.enter();
        crate::dataplane::log::start(&mut dataplane.ebpf);
    }
    info!(iface, hook = dataplane.hook.name(), forward = ?dataplane.forward, reply = ?dataplane.reply, root = %pins.root().display(), "data plane running");
    if crate::dataplane::pins::hidden_from_host(pins.root()) {
        warn!(root = %pins.root().display(), "the pins are on a bpffs the host does not see (as under `ip netns exec`, which gives the agent a private /sys where it mounts a bpffs of its own): `edge-agent status`, `flows` and `backends` on the host cannot find them, and the data plane goes with this mount namespace instead of staying for the next agent; start the agent with `nsenter --net=/run/netns/<namespace> edge-agent run ...` instead");
    }
    Ok(dataplane)
}

impl Pipeline {
    /// The parts of a balancing POP, and its first plan: the state first, then the geo
    /// database, and one plan from both (a plan made from either alone would take the pinned
    /// tables away from what the kernel serves).
    fn start(
        config: &AgentConfig,
        pins: &PinDir,
        runtime: &tokio::runtime::Runtime,
        reconcile: Reconcile,
        sixpn: Option<Node>,
        geo_db: Option<GeoDb>,
    ) -> anyhow::Result<Self> {
        let mut reconcile = reconcile;
        let source = open_source(config, runtime)?;
        let mut inputs = StateReader::new(config, source.clone(), pins.clone());
        let mut health = HealthStage::new(config, source.clone(), pins.clone());
        let mut mesh = sixpn.map(|node| Mesh::new(node, source.clone()));
        if inputs.read() {
            if let Some(input) = inputs.latest() {
                if let Some(mesh) = mesh.as_mut() {
                    mesh.on_state(Arc::clone(&input.snapshot));
                }
                health.on_state(input);
            }
        }
        reconcile.set_report(health.report());
        let started = Instant::now();
        let path = config.geo.database.clone();
        let db = match (&path, geo_db) {
            (None, _) => None,
            (Some(_), Some(db)) => Some(Ok(db)),
            (Some(path), None) => Some(GeoDb::load(path).map_err(|e| e.to_string())),
        };
        reconcile.reload_geo(true, GeoLoad { path, db, started })?;
        reconcile.apply();
        Ok(Pipeline {
            source,
            inputs,
            health,
            reconcile,
            mesh,
        })
    }
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
        let sixpn = start_sixpn(&config)?;
        let geo_db = preload_geo(&config, &pins, reset)?;
        let pop = pop_settings(&config, &iface)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        let dataplane = attach(&config, &pins, &iface, reset, &runtime)?;
        let forwarding_kept = dataplane.forward == programs::Attachment::Adopted;
        let plane = match pop {
            Some(pop) => {
                let reconcile = Reconcile::new(dataplane, pop, &config)?;
                Plane::Balancing(Box::new(Pipeline::start(
                    &config, &pins, &runtime, reconcile, sixpn, geo_db,
                )?))
            }
            None => {
                if !config.services.is_empty() {
                    warn!("services are configured but no overlay: counting only, nothing is translated");
                }
                Plane::Counting(Box::new((dataplane, sixpn)))
            }
        };
        Ok(Agent {
            runtime,
            config,
            config_path,
            pins,
            forwarding_kept,
            plane,
        })
    }

    /// Starts the servers and the tasks, says it is ready, and runs until SIGINT or SIGTERM;
    /// SIGHUP re-reads the configuration.
    pub fn run(self) -> anyhow::Result<()> {
        let Agent {
            runtime,
            config,
            config_path,
            pins,
            forwarding_kept,
            plane,
        } = self;
        // An agent that is gone has no status, however it ends; a killed one's file ages, and
        // `status` says so.
        let _status = pins.status_file_guard();
        let _held = runtime.block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            let mut sigterm =
                signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
            let mut sighup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
            let (drain_tx, drain) = Drain::new();
            let (reload_tx, reloads) = watch::channel(Arc::new(config.clone()));
            // What bursts on the listeners freed goes back to the kernel.
            let _trimmer = crate::process::memory::spawn_trimmer(Duration::from_secs(10));
            let start = Start {
                config: &config,
                pins: &pins,
                // The listeners' connection caps, within the open-files limit.
                budget: Budget::plan(config.listener_demand()),
                forwarding_kept,
                reloads,
                drain,
                view: watch::channel(Arc::new(AgentView {
                    start_time_seconds: crate::model::unix_now() as f64,
                    ..AgentView::default()
                }))
                .0,
            };
            let mut running = match plane {
                Plane::Counting(held) => start.counting(*held).await,
                Plane::Balancing(pipeline) => start.balancing(*pipeline).await?,
            };
            println!("edge-agent ready");
            // systemd's Type=notify readiness (a no-op without NOTIFY_SOCKET).
            if let Err(error) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
                warn!(%error, "telling systemd we are ready");
            }
            loop {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => break,
                    _ = sigterm.recv() => break,
                    _ = sighup.recv() => match load_config(config_path.as_deref()) {
                        Ok(new) => {
                            reload_tx.send_replace(Arc::new(new));
                        }
                        Err(error) => warn!(error = %format!("{error:#}"), "reloading config failed; keeping the current one"),
                    },
                    panic = running.panicked() => std::panic::resume_unwind(panic),
                }
            }
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
            drain_tx.send_replace(true);
            anyhow::Ok(running.stop().await)
        })?;
        info!("agent stopping; the data plane stays attached (`edge-agent detach` removes it)");
        Ok(())
    }
}

/// What starting the tasks needs.
struct Start<'a> {
    config: &'a AgentConfig,
    pins: &'a PinDir,
    budget: Budget,
    forwarding_kept: bool,
    reloads: watch::Receiver<Arc<AgentConfig>>,
    drain: Drain,
    /// What `/metrics` reports of the agent itself.
    view: watch::Sender<Arc<AgentView>>,
}

impl Start<'_> {
    /// The BGP task, when peers are configured.
    async fn announce(&self, servable: watch::Receiver<Arc<Servable>>) -> Option<Announcer> {
        let speaker = announce::start(&self.config.bgp, self.forwarding_kept).await?;
        let iface = self.config.iface.clone();
        Some(Announcer::new(
            speaker,
            &self.config.bgp,
            iface,
            self.pins.clone(),
            servable,
        ))
    }

    fn log_stats(&self, running: &mut Running, health: Option<health::HealthRx>) {
        if self.config.stats_log_secs > 0 {
            let every = Duration::from_secs(self.config.stats_log_secs.max(1));
            running.spawn(report::log_stats(
                self.pins.clone(),
                every,
                health,
                self.drain.clone(),
            ));
        }
    }

    /// Without an overlay: BGP, `/metrics` and the counters' log.
    async fn counting(self, held: (DataPlane, Option<Node>)) -> Running {
        servers::start_metrics(self.config, self.pins, &self.budget, self.view.subscribe()).await;
        // Nothing is ever servable (the channel's sender is gone at once).
        let (_, servable) = watch::channel(Arc::<Servable>::default());
        let announce = self.announce(servable).await;
        let mut running = Running {
            counting: Some(held),
            ..Running::default()
        };
        self.log_stats(&mut running, None);
        if let Some(announce) = announce {
            running.spawn(announce.run(self.drain.clone()));
        }
        running
    }

    /// A balancing POP: the servers first (ready means serving), then every task.
    async fn balancing(self, pipeline: Pipeline) -> anyhow::Result<Running> {
        let Pipeline {
            source,
            inputs,
            mut health,
            reconcile,
            mesh,
        } = pipeline;
        let changes = inputs.changes()?;
        let dns = match Dns::start(self.config, &self.budget).await {
            Some(mut dns) => {
                let zone = Arc::clone(&reconcile.zones().borrow());
                dns.publish(&zone).await;
                Some(dns)
            }
            None => None,
        };
        servers::start_metrics(self.config, self.pins, &self.budget, self.view.subscribe()).await;
        servers::start_register_api(
            self.config,
            source.clone(),
            inputs.snapshots(),
            &self.budget,
        )
        .await;
        servers::start_reaper(self.config, source.clone(), inputs.snapshots());
        let announcer = self.announce(reconcile.servable()).await;
        let checks = health.start_checks();

        let drain = &self.drain;
        let mut running = Running::default();
        let (geo_tx, geo_rx) = tokio::sync::mpsc::channel(1);
        let sources = Sources {
            store: source,
            state: inputs.subscribe(),
            health: health.subscribe(),
            geo: reconcile.geo(),
            bgp: announcer.as_ref().map(Announcer::subscribe),
            sixpn: mesh.as_ref().map(Mesh::subscribe),
            dns: dns.as_ref().map(Dns::local),
        };
        if let Some(dns) = dns {
            running.spawn(dns.run(reconcile.zones(), drain.clone()));
        }
        if let Some(mesh) = mesh {
            running.spawn(mesh.run(inputs.subscribe(), drain.clone()));
        }
        if let Some(announcer) = announcer {
            running.spawn(announcer.run(drain.clone()));
        }
        self.log_stats(&mut running, Some(health.subscribe()));
        running.spawn(inputs::load_geo(
            self.reloads.clone(),
            geo_tx,
            drain.clone(),
        ));
        let states = inputs.subscribe();
        running.spawn(inputs.run(changes, self.reloads.clone(), drain.clone()));
        let health_rx = health.subscribe();
        running.spawn(health.run(checks, states, reconcile.endpoints(), drain.clone()));
        let reporter = Reporter::new(self.pins.clone(), sources, self.view.clone());
        running.spawn(reporter.run(drain.clone()));
        let drain = drain.clone();
        running.tasks.spawn(async move {
            Ended::Reconcile(Box::new(reconcile.run(health_rx, geo_rx, drain).await))
        });
        Ok(running)
    }
}
