//! This POP's health view of the backends as a task: it owns the trackers and the checker,
//! follows the state, reads the passive signals, writes this POP's health rows, and hands the
//! reconcile task a report.
//!
//! The report carries the state it was synced to beside the views, so that a plan never
//! weighs a state against views that have not seen it yet: a new backend's tracker is seeded
//! from this POP's rows, and a backend the previous agent saw down must not get flows in the
//! moment between the state read and the sync.
//!
//! A report is published for a new state, when a status changed weight (at once), when an RTT
//! moved a weight (at the next second's tick), and every second for the counts; the reconcile
//! task re-plans only for the first three (`HealthReport::replans`).

use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv6Addr,
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use aya::maps::{Map, MapData, PerCpuArray};
use edge_common::{names, BackendStats};
use tokio::sync::{mpsc::UnboundedReceiver, watch};
use tracing::warn;

use super::{inputs::backends_at, inputs::StateInput, inputs::StateRx, settings::ZoneSettings};
use super::{status::ChecksStatus, Drain};
use crate::{
    balancing::plan::HealthView,
    dataplane::{maps::counters, pins::PinDir},
    health::{checker::CheckResult, monitor::Monitor, passive::Sample, writer::Writer},
    model::HealthStatus,
    state::StateStore,
};

/// Kernel backend id -> its overlay endpoint, as the reconcile task last wrote them.
pub type Endpoints = Arc<BTreeMap<u32, (Ipv6Addr, u16)>>;

/// What the health task publishes.
#[derive(Debug, Default)]
pub struct HealthReport {
    /// The state the views follow; `None` before the first read.
    pub state: Option<Arc<StateInput>>,
    /// What the balancer weighs, by backend id.
    pub views: HashMap<String, HealthView>,
    /// Bumped each time the views changed enough to need a new plan.
    pub replans: u64,
    pub checks: ChecksStatus,
    /// Each backend's checks, for `/metrics`.
    pub backends: HashMap<String, BackendChecks>,
}

/// One backend's checks as `/metrics` shows them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendChecks {
    pub status: HealthStatus,
    pub srtt_us: Option<u32>,
    pub checks: u64,
    pub failures: u64,
}

pub type HealthRx = watch::Receiver<Arc<HealthReport>>;

pub struct HealthStage {
    monitor: Monitor,
    zone: ZoneSettings,
    store: Option<Arc<dyn StateStore>>,
    /// Writes this POP's rows (started inside the runtime at the first write, when there is a
    /// store).
    writer: Option<Writer>,
    state: Option<Arc<StateInput>>,
    /// Rows about backends the state no longer has, removed at the next write.
    orphans: Vec<(String, String)>,
    replans: u64,
    pins: PinDir,
    /// The per-backend counters the passive signals come from, opened at the first reading.
    stats: Option<PerCpuArray<MapData, BackendStats>>,
    tx: watch::Sender<Arc<HealthReport>>,
}

impl HealthStage {
    pub fn new(
        config: &crate::config::AgentConfig,
        store: Option<Arc<dyn StateStore>>,
        pins: PinDir,
    ) -> Self {
        HealthStage {
            monitor: Monitor::new(config.health.clone(), config.pop_id.clone()),
            zone: ZoneSettings::new(config),
            store,
            writer: None,
            state: None,
            orphans: Vec::new(),
            replans: 0,
            pins,
            stats: None,
            tx: watch::channel(Arc::default()).0,
        }
    }

    pub fn subscribe(&self) -> HealthRx {
        self.tx.subscribe()
    }

    /// The report as last published.
    pub fn report(&self) -> Arc<HealthReport> {
        Arc::clone(&self.tx.borrow())
    }

    /// Follows a new state: trackers for its backends, and the checks to run (`.internal`
    /// names resolved through the zone of this state and the current views).
    pub fn on_state(&mut self, input: Arc<StateInput>) {
        let zone = self.zone.build(&input.snapshot, &self.monitor.views());
        self.monitor
            .sync(&input.snapshot, &|name| zone.resolve(name));
        self.orphans.clone_from(&input.orphan_health);
        self.state = Some(input);
        self.publish();
    }

    /// Starts the checks (inside the runtime); `None` when they are off.
    pub fn start_checks(&mut self) -> Option<UnboundedReceiver<CheckResult>> {
        self.monitor.start()
    }

    /// Records a finished check and any others already waiting; a status change reaches the
    /// plan at once, in one report for the whole batch.
    fn on_checks(&mut self, first: CheckResult, more: &mut UnboundedReceiver<CheckResult>) {
        self.monitor.record(first);
        while let Ok(result) = more.try_recv() {
            self.monitor.record(result);
        }
        let changed = self.monitor.has_changes();
        if std::mem::take(&mut self.monitor.replan_now) {
            self.monitor.replan_soon = false;
            self.replans += 1;
            self.publish();
        }
        if changed {
            self.write_rows(false);
        }
    }

    /// The second's tick: an RTT that moved a weight is planned now.
    fn tick(&mut self) {
        if std::mem::take(&mut self.monitor.replan_soon) {
            self.replans += 1;
        }
        self.publish();
    }

    /// Reads the per-backend counters for the passive signals.
    fn observe(&mut self, endpoints: &Endpoints) -> anyhow::Result<()> {
        let Some(state) = self.state.clone() else {
            return Ok(());
        };
        if self.stats.is_none() {
            let data = self.pins.open_map(names::BACKEND_STATS)?;
            self.stats = Some(
                PerCpuArray::try_from(Map::PerCpuArray(data))
                    .context("BACKEND_STATS is not the per-CPU array it should be")?,
            );
        }
        let Some(stats) = &self.stats else {
            return Ok(());
        };
        let mut samples = HashMap::new();
        for &id in endpoints.keys() {
            let s = counters::sum_per_cpu(stats, id)?;
            samples.insert(
                id,
                Sample {
                    new_flows: s.new_flows,
                    syn_acks: s.syn_acks,
                    refused: s.refused,
                },
            );
        }
        let backends_of = |id: u32| -> Vec<String> {
            endpoints
                .get(&id)
                .map(|&endpoint| {
                    backends_at(&state.snapshot, endpoint)
                        .map(|x| x.id.clone())
                        .collect()
                })
                .unwrap_or_default()
        };
        self.monitor
            .observe(&samples, &backends_of, std::time::Instant::now());
        Ok(())
    }

    /// Writes this POP's health rows: the changed ones, or all of them when `all`. Without a
    /// state database the view stays in memory (and in the kernel's eligibility).
    fn write_rows(&mut self, all: bool) {
        let rows = self.monitor.rows(all, crate::model::unix_now());
        if self.writer.is_none() {
            self.writer = self.store.clone().map(Writer::start);
        }
        if let Some(writer) = &self.writer {
            writer.send(rows);
            writer.forget(std::mem::take(&mut self.orphans));
        }
    }

    fn publish(&self) {
        let backends = self
            .monitor
            .trackers()
            .map(|(id, t)| {
                let checks = BackendChecks {
                    status: t.status,
                    srtt_us: t.srtt_us,
                    checks: t.checks,
                    failures: t.failures,
                };
                (id.clone(), checks)
            })
            .collect();
        self.tx.send_replace(Arc::new(HealthReport {
            state: self.state.clone(),
            views: self.monitor.views(),
            replans: self.replans,
            checks: ChecksStatus {
                checking: self.monitor.checking(),
                checks: self.monitor.checks,
                transitions: self.monitor.transitions,
            },
            backends,
        }));
    }

    /// Runs until the drain: new states, check results, passive readings, the second's tick
    /// and the periodic write of every row.
    pub async fn run(
        mut self,
        mut checks: Option<UnboundedReceiver<CheckResult>>,
        mut states: StateRx,
        endpoints: watch::Receiver<Endpoints>,
        mut drain: Drain,
    ) {
        let config = self.monitor.config().clone();
        let passive_on = checks.is_some() && config.passive.enabled;
        let mut passive =
            tokio::time::interval(Duration::from_millis(config.passive.interval_ms.max(10)));
        passive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut rows =
            tokio::time::interval(Duration::from_secs(config.write_interval_secs.max(1)));
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                () = drain.signaled() => break,
                Ok(()) = states.changed() => {
                    let input = states.borrow_and_update().clone();
                    if let Some(input) = input {
                        self.on_state(input);
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
                _ = passive.tick(), if passive_on => {
                    let endpoints = Arc::clone(&endpoints.borrow());
                    if let Err(error) = self.observe(&endpoints) {
                        warn!(error = %format!("{error:#}"), "reading backend counters");
                    }
                }
                _ = tick.tick() => self.tick(),
                _ = rows.tick() => self.write_rows(true),
            }
        }
    }
}
