//! This POP's health view of every backend: the trackers fed by the checker and the passive
//! signals, what the balancer reads of them, and the health rows the agent writes back.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    time::{Duration, Instant},
};

use tokio::sync::mpsc::UnboundedReceiver;
use tracing::{info, warn};

use super::{
    checker::{CheckResult, Checker},
    passive::{Passive, Sample},
    probe::Target,
    spec::{HealthConfig, Timing},
    tracker::{Outcome, Tracker},
};
use crate::{
    balancing::plan::HealthView, model::BackendAddr, model::Health, model::HealthStatus,
    model::Snapshot,
};

pub struct Monitor {
    config: HealthConfig,
    pop_id: String,
    trackers: HashMap<String, Tracker>,
    targets: Vec<(Target, Timing)>,
    checker: Option<Checker>,
    passive: Passive,
    /// Rows to write: backends whose status or reason changed since the last write.
    changed: HashSet<String>,
    /// A status changed: the plan must be recomputed now.
    pub replan_now: bool,
    /// An RTT moved enough to change a weight: recompute at the next tick.
    pub replan_soon: bool,
    pub transitions: u64,
    /// Checks finished since start.
    pub checks: u64,
}

impl Monitor {
    pub fn new(config: HealthConfig, pop_id: String) -> Self {
        Monitor {
            config,
            pop_id,
            trackers: HashMap::new(),
            targets: Vec::new(),
            checker: None,
            passive: Passive::default(),
            changed: HashSet::new(),
            replan_now: false,
            replan_soon: false,
            transitions: 0,
            checks: 0,
        }
    }

    pub fn config(&self) -> &HealthConfig {
        &self.config
    }

    /// Follows a new state: trackers for new backends (seeded from this POP's rows, so that a
    /// restarted agent does not forget a backend is down), none for removed ones, and the
    /// checks to run. `resolve` turns `.internal` names into addresses.
    pub fn sync(&mut self, state: &Snapshot, resolve: &dyn Fn(&str) -> Option<std::net::Ipv6Addr>) {
        let rows: HashMap<&str, &Health> = state
            .health
            .iter()
            .filter(|h| h.pop_id == self.pop_id)
            .map(|h| (h.backend_id.as_str(), h))
            .collect();
        self.trackers
            .retain(|id, _| state.backends.iter().any(|b| &b.id == id));
        let mut targets = Vec::new();
        for b in &state.backends {
            self.trackers.entry(b.id.clone()).or_insert_with(|| {
                let row = rows.get(b.id.as_str());
                let mut t = Tracker::new(
                    row.map_or(HealthStatus::Unknown, |h| h.status),
                    row.and_then(|h| h.rtt_us),
                );
                if let Some(row) = row {
                    t.reason.clone_from(&row.reason);
                }
                t
            });
            if !b.enabled {
                continue;
            }
            let addr = match &b.addr {
                BackendAddr::Ip(ip) => Some(*ip),
                BackendAddr::Name(name) => resolve(name),
            };
            let Some(addr) = addr else { continue };
            let spec = self.config.check_of(b, state);
            let timing = self.config.timing(&spec);
            targets.push((
                Target {
                    backend_id: b.id.clone(),
                    addr: SocketAddr::new(addr.into(), spec.port.unwrap_or(b.port)),
                    spec,
                },
                timing,
            ));
        }
        targets.sort_by(|a, b| a.0.backend_id.cmp(&b.0.backend_id));
        self.targets = targets;
        if let Some(checker) = &mut self.checker {
            checker.set_targets(self.targets.clone());
        }
    }

    /// Starts checking (inside the runtime); results arrive on the returned channel.
    pub fn start(&mut self) -> Option<UnboundedReceiver<CheckResult>> {
        if !self.config.enabled {
            return None;
        }
        let (mut checker, results) = Checker::new(
            self.config.concurrency,
            self.config.jitter_percent,
            self.config.commands.clone(),
        );
        checker.set_targets(self.targets.clone());
        info!(backends = checker.len(), profile = ?self.config.profile, "health checks started");
        self.checker = Some(checker);
        Some(results)
    }

    /// Records one check; logs and counts a transition.
    pub fn record(&mut self, result: CheckResult) {
        self.checks += 1;
        let Some(tracker) = self.trackers.get_mut(&result.backend_id) else {
            return;
        };
        let reason_before = tracker.reason.clone();
        if let Some(t) = tracker.record(
            &result.outcome,
            &result.timing,
            &self.config.degrade,
            result.at,
        ) {
            self.transitions += 1;
            let (from, to) = (status_name(t.from), status_name(t.to));
            if t.to == HealthStatus::Down {
                warn!(backend = %result.backend_id, from = %from, to = %to, reason = %t.reason, "backend health changed");
            } else {
                info!(backend = %result.backend_id, from = %from, to = %to, reason = %t.reason, "backend health changed");
            }
            // Unknown and up weigh the same: only a change of weight needs a new plan.
            if weight_class(t.from) != weight_class(t.to) {
                self.replan_now = true;
            }
            self.changed.insert(result.backend_id.clone());
        } else {
            // A failure short of `fall` moves nothing, but an operator (and a lab) needs to
            // see what failed and why, as HAProxy's `log-health-checks` shows.
            if matches!(result.outcome, Outcome::Fail { .. })
                && tracker.status != HealthStatus::Down
            {
                info!(backend = %result.backend_id, reason = %tracker.reason, "health check failed");
            }
            if tracker.reason != reason_before {
                self.changed.insert(result.backend_id.clone());
            }
        }
        if tracker.reweigh() {
            self.replan_soon = true;
        }
    }

    /// Feeds a reading of the per-backend counters (by kernel id, with the state backends at
    /// each kernel id); suspect backends are checked at once.
    pub fn observe(
        &mut self,
        samples: &HashMap<u32, Sample>,
        backends_of: &dyn Fn(u32) -> Vec<String>,
        now: Instant,
    ) {
        if !self.config.passive.enabled {
            return;
        }
        let deadline = Duration::from_millis(self.config.passive.syn_deadline_ms);
        for (kernel_id, signal) in self.passive.observe(samples, deadline, now) {
            for id in backends_of(kernel_id) {
                let Some(tracker) = self.trackers.get_mut(&id) else {
                    continue;
                };
                if tracker.status == HealthStatus::Down || tracker.suspect {
                    continue;
                }
                info!(backend = %id, signal = %signal, "backend suspect (passive); checking it now");
                tracker.suspect(&signal.to_string());
                self.changed.insert(id.clone());
                if let Some(checker) = &self.checker {
                    checker.check_now(&id);
                }
            }
        }
    }

    /// What the balancer weighs.
    pub fn views(&self) -> HashMap<String, HealthView> {
        self.trackers
            .iter()
            .map(|(id, t)| {
                (
                    id.clone(),
                    HealthView {
                        status: t.status,
                        srtt_us: t.weighed_rtt_us,
                    },
                )
            })
            .collect()
    }

    /// Rows to write: the changed ones, or all that were checked when `all`.
    pub fn rows(&mut self, all: bool, now_unix: i64) -> Vec<Health> {
        let changed = std::mem::take(&mut self.changed);
        let mut rows: Vec<Health> = self
            .trackers
            .iter()
            .filter(|(id, t)| changed.contains(*id) || (all && t.checks > 0))
            .map(|(id, t)| Health {
                pop_id: self.pop_id.clone(),
                backend_id: id.clone(),
                status: t.status,
                rtt_us: t.srtt_us,
                checked_at: now_unix,
                reason: t
                    .reason
                    .chars()
                    .take(crate::state::validate::MAX_REASON)
                    .collect(),
            })
            .collect();
        rows.sort_by(|a, b| a.backend_id.cmp(&b.backend_id));
        rows
    }

    /// Every backend's tracker, by id.
    pub fn trackers(&self) -> impl Iterator<Item = (&String, &Tracker)> {
        self.trackers.iter()
    }

    /// Some backend's status or reason changed since the last [`Monitor::rows`].
    pub fn has_changes(&self) -> bool {
        !self.changed.is_empty()
    }

    pub fn checking(&self) -> usize {
        self.checker.as_ref().map_or(0, Checker::len)
    }
}

/// How the balancer treats a status: out, a quarter share, full share.
fn weight_class(status: HealthStatus) -> u8 {
    match status {
        HealthStatus::Down => 0,
        HealthStatus::Degraded => 1,
        HealthStatus::Unknown | HealthStatus::Up => 2,
    }
}

pub fn status_name(status: HealthStatus) -> &'static str {
    crate::state::validate::status_str(status)
}
