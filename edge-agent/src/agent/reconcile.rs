//! The one owner of the kernel maps (as Cilium has one writer of its LB maps): the reconcile
//! task holds the data plane, the services `Reconciler`, the geo tries and the flow sweeper,
//! and is the only code that writes any of them. Everything else reaches the maps by sending
//! it inputs: the state and health views (one report from the health task), geo databases
//! (from the geo loader), and time (its own sweep, binding and lease ticks).
//!
//! Each input is turned into a plan by the planner (`balancing::plan`), and a plan is written
//! only when it differs from the last one written. The decisions - whether an input calls for
//! a new plan, whether a plan is to be written, what a geo reload does and in which steps -
//! are functions of the old and new inputs, tested here without a kernel; the methods only
//! apply them.

use std::{collections::BTreeSet, path::Path, sync::Arc, time::Duration};

use anyhow::{bail, Context as _};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::{
    announce::Servable,
    health::{Endpoints, HealthReport, HealthRx},
    inputs::GeoLoad,
    settings::ZoneSettings,
    sweeper::Sweeper,
    Drain,
};
use crate::{
    balancing::plan::{self, GeoClasses, Inputs, Plan},
    config::AgentConfig,
    dataplane::maps::{geo, services::PopSettings, services::Reconciler},
    dataplane::programs::DataPlane,
    dns::Zone,
    geo::{GeoDb, GeoInForce, GeoRefusal, GeoSource, RegionTable},
    model::{Country, Region, Snapshot},
};

/// Whether a new health report calls for a new plan: a state read again (or for the first
/// time), or a re-plan the health task asked for. The counts it refreshes every second do not.
pub fn report_needs_plan(last: &HealthReport, new: &HealthReport) -> bool {
    let same_state = match (&last.state, &new.state) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    };
    !same_state || last.replans != new.replans
}

/// Whether `new` is to be written: an unchanged plan writes nothing (and a restarted agent with
/// the same state writes no table).
pub fn plan_changed(written: Option<&Plan>, new: &Plan) -> bool {
    written != Some(new)
}

/// Registered backends' leases run out with time alone: while the state has any, the plan is
/// recomputed every second.
pub fn has_leases(state: &Snapshot) -> bool {
    state.backends.iter().any(|x| x.lease.is_some())
}

/// What a geo reload does.
#[derive(Debug)]
pub enum GeoStep {
    /// No database configured and none written: nothing to do.
    Nothing,
    /// No database configured any more: the tries are emptied.
    Clear,
    /// Switch to this database.
    Load(GeoDb),
    /// The file could not be read: what is in force stays, and the refusal is reported.
    Refuse(String),
    /// The file could not be read at a first start, with nothing pinned to fall back on:
    /// serving would send every client to the default region.
    Fail(String),
}

/// The step for a reload of `path` that read `loaded`, with the tries holding anything
/// (`written_empty` false) or not, at start or later.
pub fn geo_step(
    path: Option<&Path>,
    loaded: Option<Result<GeoDb, String>>,
    written_empty: bool,
    starting: bool,
) -> GeoStep {
    match (path, loaded) {
        (None, _) if written_empty => GeoStep::Nothing,
        (None, _) => GeoStep::Clear,
        (Some(_), Some(Ok(db))) => GeoStep::Load(db),
        (Some(_), Some(Err(error))) if starting && written_empty => GeoStep::Fail(error),
        (Some(_), Some(Err(error))) => GeoStep::Refuse(error),
        (Some(_), None) => GeoStep::Nothing,
    }
}

/// The classes of a switch to a database of `countries`, made before it is broken: the kept
/// countries keep their classes, new ones get classes no table was filed under, and, when that
/// widens the classes (`widened`), tables for both sets are written before the tries change;
/// the old countries' tables go only with the plan made from `next` after the tries are
/// written.
#[derive(Debug, PartialEq, Eq)]
pub struct GeoSwitch {
    /// The union of the old and new classes, when it differs from the old: planned first.
    pub widened: Option<GeoClasses>,
    /// The classes the tries are written with, planned last.
    pub next: GeoClasses,
    /// Classes that had to change country (more countries than classes): for those the switch
    /// is not atomic.
    pub reused: usize,
}

pub fn geo_switch(current: &GeoClasses, countries: &BTreeSet<Country>) -> GeoSwitch {
    let (next, reused) = current.successor_counting(countries);
    let both = current.union(&next);
    GeoSwitch {
        widened: (both != *current).then_some(both),
        next,
        reused,
    }
}

/// The geo tries and the classes the tables are filed under.
struct GeoTables {
    classes: GeoClasses,
    regions: RegionTable,
    written: geo::Written,
    /// The country database the tries hold, for status and metrics.
    in_force: GeoInForce,
}

/// Where the reconcile task's results go.
struct Outputs {
    /// The `internal.` zone of the last plan, for the DNS task.
    zone: watch::Sender<Arc<Zone>>,
    /// What can be served, for the BGP task.
    servable: watch::Sender<Arc<Servable>>,
    /// Kernel backend ids, for the passive health signals.
    endpoints: watch::Sender<Endpoints>,
    geo: watch::Sender<GeoInForce>,
}

pub struct Reconcile {
    dataplane: DataPlane,
    pop: PopSettings,
    reconciler: Reconciler,
    geo: GeoTables,
    sweeper: Sweeper,
    pop_id: String,
    pop_region: Region,
    zone: ZoneSettings,
    sweep_every: Duration,
    bindings_every: Duration,
    /// The health report last planned from, and the state it carries.
    report: Arc<HealthReport>,
    /// The plan last written, so that an unchanged one is not written again.
    last_plan: Option<Plan>,
    out: Outputs,
}

impl Reconcile {
    /// Takes over the data plane with what a previous agent left pinned: its classes are the
    /// ones the pinned tables are filed under, and its tables are taken over where they are
    /// the ones this agent would build.
    pub fn new(
        mut dataplane: DataPlane,
        pop: PopSettings,
        config: &AgentConfig,
    ) -> anyhow::Result<Self> {
        let (written, classes) =
            geo::adopt(&mut dataplane.ebpf).context("reading the pinned geo tries")?;
        let in_force = GeoInForce::pinned(written.len(), classes.len(), crate::model::unix_now());
        let reconciler = Reconciler::recover(&mut dataplane.ebpf, config.maglev.table_size)?;
        let endpoints = Arc::new(reconciler.backend_ids());
        Ok(Reconcile {
            sweeper: Sweeper::new(
                &config.flows,
                Duration::from_secs(config.affinity.ttl_secs),
                &pop,
            ),
            dataplane,
            pop,
            reconciler,
            geo: GeoTables {
                classes,
                regions: super::settings::region_table(config)?,
                written,
                in_force: in_force.clone(),
            },
            pop_id: config.pop_id.clone(),
            pop_region: config.region.clone(),
            zone: ZoneSettings::new(config),
            sweep_every: Duration::from_secs(config.flows.sweep_interval_secs.max(1)),
            bindings_every: Duration::from_secs(config.affinity.gc_interval_secs.max(1)),
            report: Arc::default(),
            last_plan: None,
            out: Outputs {
                zone: watch::channel(Arc::default()).0,
                servable: watch::channel(Arc::default()).0,
                endpoints: watch::channel(endpoints).0,
                geo: watch::channel(in_force).0,
            },
        })
    }

    pub fn zones(&self) -> watch::Receiver<Arc<Zone>> {
        self.out.zone.subscribe()
    }

    pub fn servable(&self) -> watch::Receiver<Arc<Servable>> {
        self.out.servable.subscribe()
    }

    pub fn endpoints(&self) -> watch::Receiver<Endpoints> {
        self.out.endpoints.subscribe()
    }

    pub fn geo(&self) -> watch::Receiver<GeoInForce> {
        self.out.geo.subscribe()
    }

    /// Takes `report` as the inputs of the next plan, without planning.
    pub fn set_report(&mut self, report: Arc<HealthReport>) {
        self.report = report;
    }

    fn on_report(&mut self, report: Arc<HealthReport>) {
        let replan = report_needs_plan(&self.report, &report);
        self.report = report;
        if replan {
            self.apply();
        }
    }

    /// Computes the plan from the current state, health, classes and load, and writes it if
    /// it changed; the zone and what can be served go out either way.
    pub fn apply(&mut self) {
        let report = Arc::clone(&self.report);
        let Some(input) = &report.state else {
            // Nothing read yet: the maps keep what they hold (a previous agent's plan).
            return;
        };
        let state = &input.snapshot;
        let zone = self.zone.build(state, &report.views);
        let unknown: Region = self.geo.regions.default_region();
        let regions = &self.geo.regions;
        let region_of = |c: Country| regions.region_of(c);
        let inputs = Inputs {
            pop_id: &self.pop_id,
            pop_region: &self.pop_region,
            region_of: &region_of,
            unknown_region: &unknown,
            classes: &self.geo.classes,
            active: self.sweeper.active(),
            health: &report.views,
            now_unix: crate::model::unix_now(),
        };
        let plan = plan::plan(state, &inputs, &|name| zone.resolve(name));
        self.out.zone.send_replace(Arc::new(zone));
        if plan_changed(self.last_plan.as_ref(), &plan) {
            match self
                .reconciler
                .apply(&mut self.dataplane.ebpf, &self.pop, &plan)
            {
                Ok(applied) => {
                    self.last_plan = Some(plan);
                    info!(
                        services = applied.services,
                        backends = applied.backends,
                        tables = applied.tables,
                        tables_built = applied.tables_built,
                        rejected = applied.rejected.len(),
                        "state applied"
                    );
                    let ids = self.reconciler.backend_ids();
                    self.out.endpoints.send_if_modified(|e| {
                        let changed = **e != ids;
                        if changed {
                            *e = Arc::new(ids);
                        }
                        changed
                    });
                }
                Err(error) => {
                    warn!(%error, "applying state failed; the maps keep the last good state")
                }
            }
        }
        let servable = Servable::of(state, self.last_plan.as_ref());
        self.out.servable.send_if_modified(|s| {
            let changed = **s != servable;
            if changed {
                *s = Arc::new(servable);
            }
            changed
        });
    }

    /// Loads a geo database into the kernel tries (none configured: empties them), switching
    /// as [`geo_switch`] says. A database that cannot be read leaves the classification in
    /// force: the previous file's, or at start the one a previous agent left pinned; at a first
    /// start (nothing pinned) it is an error.
    pub fn reload_geo(&mut self, starting: bool, load: GeoLoad) -> anyhow::Result<()> {
        let GeoLoad { path, db, started } = load;
        let step = geo_step(path.as_deref(), db, self.geo.written.is_empty(), starting);
        let db = match step {
            GeoStep::Nothing => return Ok(()),
            GeoStep::Clear => {
                GeoDb::from_entries(Vec::new()).context("an empty country database")?
            }
            GeoStep::Load(db) => db,
            GeoStep::Fail(error) => bail!("{error}; no classification is pinned to fall back on"),
            GeoStep::Refuse(error) => {
                self.refuse(path.as_deref(), error);
                return Ok(());
            }
        };
        let switch = geo_switch(&self.geo.classes, &db.countries());
        if switch.reused > 0 {
            warn!(
                reused = switch.reused,
                "more countries than classes: some classes change country, and clients of those countries may be steered by the other's tables while the tries are rewritten"
            );
        }
        if let Some(widened) = switch.widened {
            self.geo.classes = widened;
            self.apply();
        }
        let next = switch.next;
        if let Err(error) = geo::write(&mut self.dataplane.ebpf, &db, &next, &mut self.geo.written)
        {
            // Partly written: the union's tables stay, so every class still has its table.
            warn!(%error, "writing the geo tries failed");
            return Ok(());
        }
        self.geo.in_force = match &path {
            Some(path) => GeoInForce::loaded(path, &db, next.len(), crate::model::unix_now()),
            None => GeoInForce::default(),
        };
        self.out.geo.send_replace(self.geo.in_force.clone());
        info!(
            path = %path.as_ref().map_or("(none)".into(), |p| p.display().to_string()),
            prefixes = self.geo.written.len(),
            countries = next.len(),
            ms = started.elapsed().as_millis() as u64,
            "geo database loaded"
        );
        self.geo.classes = next;
        self.apply();
        Ok(())
    }

    /// Keeps the classification in force after a file could not be read, and says so.
    fn refuse(&mut self, path: Option<&Path>, error: String) {
        let path = path.map_or_else(String::new, |p| p.display().to_string());
        let geo = &mut self.geo.in_force;
        let kept = match (&geo.source, &geo.path) {
            (GeoSource::File, Some(old)) => format!("{old}, loaded earlier"),
            _ => "the classification the previous agent left pinned".to_owned(),
        };
        warn!(
            path = %path,
            %error,
            networks = geo.networks,
            countries = geo.countries,
            "geo database refused; {kept} stays in force"
        );
        geo.refused = Some(GeoRefusal {
            path,
            error,
            at: crate::model::unix_now(),
        });
        self.out.geo.send_replace(geo.clone());
    }

    /// Expires idle flows and refreshes the live connection counts the plan weighs.
    fn sweep(&mut self) {
        let endpoints = self.reconciler.backend_ids();
        let input = self.report.state.as_deref();
        match self.sweeper.sweep(&self.dataplane.ebpf, &endpoints, input) {
            Ok(true) => self.apply(),
            Ok(false) => {}
            Err(error) => warn!(error = %format!("{error:#}"), "sweeping the flow table"),
        }
    }

    /// Plans on every health report that calls for it, geo database and tick until the drain;
    /// gives itself back then, so that the data plane's handles live as long as the agent.
    pub async fn run(
        mut self,
        mut health: HealthRx,
        mut geo_loads: mpsc::Receiver<GeoLoad>,
        mut drain: Drain,
    ) -> Self {
        let mut sweep = tokio::time::interval(self.sweep_every);
        let mut bindings = tokio::time::interval(self.bindings_every);
        let mut leases = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                () = drain.signaled() => break,
                Ok(()) = health.changed() => {
                    let report = Arc::clone(&health.borrow_and_update());
                    self.on_report(report);
                }
                Some(load) = geo_loads.recv() => {
                    if let Err(error) = self.reload_geo(false, load) {
                        warn!(error = %format!("{error:#}"), "reloading the geo database");
                    }
                }
                _ = sweep.tick() => self.sweep(),
                _ = bindings.tick() => {
                    if let Err(error) = self.sweeper.expire_bindings(&mut self.dataplane.ebpf) {
                        warn!(error = %format!("{error:#}"), "sweeping client bindings");
                    }
                }
                _ = leases.tick() => {
                    if self.report.state.as_ref().is_some_and(|s| has_leases(&s.snapshot)) {
                        self.apply();
                    }
                }
            }
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::{
        agent::{
            fixtures::{backend, TestResult},
            inputs::StateInput,
        },
        model::Lease,
    };

    fn input(state: Snapshot) -> Arc<StateInput> {
        Arc::new(StateInput {
            snapshot: Arc::new(state),
            read_at: Instant::now(),
            rejected_rows: 0,
            draining_since: Default::default(),
            orphan_health: Vec::new(),
        })
    }

    fn country(c: &str) -> Result<Country, String> {
        c.parse()
    }

    #[test]
    fn a_new_state_or_an_asked_replan_calls_for_a_plan_and_fresh_counts_do_not() {
        let read = input(Snapshot::default());
        let last = HealthReport {
            state: Some(Arc::clone(&read)),
            replans: 3,
            ..HealthReport::default()
        };
        let counts_only = HealthReport {
            state: Some(Arc::clone(&read)),
            replans: 3,
            checks: crate::agent::status::ChecksStatus {
                checks: 99,
                ..Default::default()
            },
            ..HealthReport::default()
        };
        assert!(!report_needs_plan(&last, &counts_only));
        let replan = HealthReport {
            state: Some(Arc::clone(&read)),
            replans: 4,
            ..HealthReport::default()
        };
        assert!(report_needs_plan(&last, &replan));
        // Read again, even with the same content: the read may have changed what time alone
        // does not show (leases renewed), and SIGHUP asks for a plan.
        let reread = HealthReport {
            state: Some(input(Snapshot::default())),
            replans: 3,
            ..HealthReport::default()
        };
        assert!(report_needs_plan(&last, &reread));
        assert!(
            report_needs_plan(&HealthReport::default(), &last),
            "the first read"
        );
        assert!(!report_needs_plan(
            &HealthReport::default(),
            &HealthReport::default()
        ));
    }

    #[test]
    fn only_a_plan_that_differs_from_the_one_written_is_written() -> TestResult {
        let plan = Plan::default();
        assert!(plan_changed(None, &plan), "nothing written yet");
        assert!(!plan_changed(Some(&plan), &plan.clone()));
        let mut other = Plan::default();
        other.services.push(plan::ServicePlan {
            id: "web".to_owned(),
            vip: "192.0.2.10".parse()?,
            port: 80,
            sets: Default::default(),
        });
        assert!(plan_changed(Some(&plan), &other));
        Ok(())
    }

    #[test]
    fn leases_make_the_plan_follow_the_clock() -> TestResult {
        let mut state = Snapshot {
            backends: vec![backend("be1", 1)?],
            ..Snapshot::default()
        };
        assert!(!has_leases(&state));
        state.backends[0].lease = Some(Lease {
            renewed_at: 0,
            interval_secs: 10,
            pop: String::new(),
        });
        assert!(has_leases(&state));
        Ok(())
    }

    #[test]
    fn a_geo_reload_loads_clears_refuses_or_fails_by_what_is_pinned() -> TestResult {
        let path = Some(Path::new("/etc/edgeproxy/geo.mmdb"));
        let db = || GeoDb::from_entries(Vec::new()).map_err(|e| e.to_string());
        let err = || Some(Err("no such file".to_owned()));
        assert!(matches!(geo_step(None, None, true, true), GeoStep::Nothing));
        assert!(matches!(geo_step(None, None, false, false), GeoStep::Clear));
        assert!(matches!(
            geo_step(path, Some(db()), true, true),
            GeoStep::Load(_)
        ));
        assert!(matches!(
            geo_step(path, err(), true, true),
            GeoStep::Fail(_)
        ));
        // Something pinned (or loaded earlier), or a reload later: what is in force stays.
        assert!(matches!(
            geo_step(path, err(), false, true),
            GeoStep::Refuse(_)
        ));
        assert!(matches!(
            geo_step(path, err(), true, false),
            GeoStep::Refuse(_)
        ));
        Ok(())
    }

    #[test]
    fn a_geo_switch_with_new_countries_is_made_before_it_is_broken() -> TestResult {
        let current = GeoClasses::new([country("BR")?, country("AR")?]);
        let switch = geo_switch(&current, &BTreeSet::from([country("BR")?, country("CL")?]));
        // BR keeps its class; CL gets one AR's tables were never filed under.
        assert_eq!(
            switch.next.class_of(country("BR")?),
            current.class_of(country("BR")?)
        );
        let cl = switch.next.class_of(country("CL")?);
        assert!(cl.is_some() && cl != current.class_of(country("AR")?));
        // Both sets are planned before the tries change.
        let widened = switch.widened.ok_or("new countries widen the classes")?;
        for c in ["BR", "AR", "CL"] {
            assert!(widened.class_of(country(c)?).is_some(), "{c}");
        }
        assert_eq!(switch.reused, 0);
        Ok(())
    }

    #[test]
    fn a_geo_switch_to_fewer_countries_writes_the_tries_first() -> TestResult {
        let current = GeoClasses::new([country("BR")?, country("AR")?]);
        let switch = geo_switch(&current, &BTreeSet::from([country("BR")?]));
        assert_eq!(
            switch.widened, None,
            "the tables in the kernel already cover it"
        );
        assert_eq!(switch.next.len(), 1);
        let same = geo_switch(&current, &BTreeSet::from([country("AR")?, country("BR")?]));
        assert_eq!(same.widened, None);
        assert_eq!(same.next, current);
        Ok(())
    }
}
