//! What the agent says of itself: once a second, the status file (`edge-agent status`,
//! `wg show`) and the view `/metrics` renders, both assembled from what the other tasks last
//! published on their watch channels; and every `stats_log_secs` the counters' log line.
//!
//! The status is written half a second after the other tasks' ticks, so that what it says of
//! BGP and 6PN was read at most about a second and a half before (it used to be read in the
//! same loop that wrote it, a second before at most).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::{
    announce::{BgpReport, BgpRx},
    health::{HealthReport, HealthRx},
    inputs::StateRx,
    mesh::SixpnRx,
    status::{AgentStatus, BgpSession, BgpStatus, BgpVip, PopStatus, StateStatus},
    Drain,
};
use crate::{
    dataplane::{maps::counters, maps::flows, pins::PinDir},
    geo::GeoInForce,
    metrics::{AgentView, BackendView},
    model::{BackendAddr, HealthStatus},
    state::StateStore,
};

/// The channels the report is assembled from.
pub struct Sources {
    pub store: Option<Arc<dyn StateStore>>,
    pub state: StateRx,
    pub health: HealthRx,
    pub geo: watch::Receiver<GeoInForce>,
    pub bgp: Option<BgpRx>,
    pub sixpn: Option<SixpnRx>,
    /// Where DNS serves, when it does.
    pub dns: Option<Vec<SocketAddr>>,
}

pub struct Reporter {
    pins: PinDir,
    sources: Sources,
    view: watch::Sender<Arc<AgentView>>,
}

impl Reporter {
    pub fn new(pins: PinDir, sources: Sources, view: watch::Sender<Arc<AgentView>>) -> Self {
        Reporter {
            pins,
            sources,
            view,
        }
    }

    fn state_status(&self) -> StateStatus {
        match &self.sources.store {
            Some(source) => StateStatus {
                source: source.describe(),
                stale_secs: source.staleness().map(|d| d.as_secs_f64()),
                detail: Some(source.detail()),
            },
            None => StateStatus {
                source: "the config file's services".to_owned(),
                stale_secs: Some(0.0),
                detail: None,
            },
        }
    }

    fn bgp(&self) -> Option<Arc<BgpReport>> {
        self.sources.bgp.as_ref().and_then(|rx| rx.borrow().clone())
    }

    /// The status file as it is now.
    fn status(&self) -> AgentStatus {
        let input = self.sources.state.borrow().clone();
        let health = Arc::clone(&self.sources.health.borrow());
        let bgp = self.bgp().map(|report| BgpStatus {
            draining_since: crate::bgp::drain::since(&self.pins),
            sessions: report
                .sessions
                .iter()
                .filter_map(|s| match BgpSession::of(s) {
                    Ok(session) => Some(session),
                    Err(error) => {
                        debug!(%error, peer = %s.peer, "a BGP session the status cannot hold");
                        None
                    }
                })
                .collect(),
            vips: report.vips.iter().map(BgpVip::from).collect(),
            bfd_dropped: report
                .bfd_dropped
                .iter()
                .map(|(k, v)| ((*k).to_owned(), *v))
                .collect(),
        });
        AgentStatus {
            pid: std::process::id(),
            role: None,
            written_at: crate::model::unix_now(),
            pop: Some(PopStatus {
                state: self.state_status(),
                rejected_rows: input.as_ref().map_or(0, |i| i.rejected_rows),
                geo: self.sources.geo.borrow().clone(),
                state_read_secs_ago: input.as_ref().map(|i| i.read_at.elapsed().as_secs_f64()),
                health: health.checks.clone(),
                dns: self.sources.dns.clone(),
                bgp,
            }),
            sixpn: self
                .sources
                .sixpn
                .as_ref()
                .and_then(|rx| rx.borrow().as_deref().cloned()),
        }
    }

    /// What `/metrics` reports of the agent itself.
    fn view(&self) -> AgentView {
        let input = self.sources.state.borrow().clone();
        let health: Arc<HealthReport> = Arc::clone(&self.sources.health.borrow());
        let mut view = AgentView {
            state_source: self
                .sources
                .store
                .as_ref()
                .map_or_else(|| "config".to_owned(), |s| s.describe()),
            state_stale_seconds: match &self.sources.store {
                Some(source) => source.staleness().map(|d| d.as_secs_f64()),
                None => Some(0.0),
            },
            rejected_rows: input.as_ref().map_or(0, |i| i.rejected_rows),
            health_checks: health.checks.checks,
            health_transitions: health.checks.transitions,
            geo: self.sources.geo.borrow().clone(),
            start_time_seconds: self.view.borrow().start_time_seconds,
            ..AgentView::default()
        };
        if let Some(report) = self.bgp() {
            view.bgp_sessions.clone_from(&report.sessions);
            view.bgp_vips.clone_from(&report.vips);
            view.bgp_bfd_dropped.clone_from(&report.bfd_dropped);
        }
        let Some(input) = input else {
            return view;
        };
        let state = &input.snapshot;
        for s in &state.services {
            let key = crate::dataplane::maps::services::service_key(s.vip, s.port);
            view.services
                .insert(flows::endpoint(&key.addr, key.port), s.id.clone());
        }
        for backend in &state.backends {
            let addr = match &backend.addr {
                BackendAddr::Ip(ip) => format!("[{ip}]:{}", backend.port),
                BackendAddr::Name(n) => format!("{n}:{}", backend.port),
            };
            let t = health.backends.get(&backend.id);
            view.backends.insert(
                backend.id.clone(),
                BackendView {
                    service: backend.service.clone(),
                    addr,
                    status: crate::state::validate::status_str(
                        t.map_or(HealthStatus::Unknown, |t| t.status),
                    ),
                    rtt_seconds: t.and_then(|t| t.srtt_us).map(|us| f64::from(us) / 1e6),
                    checks: t.map_or(0, |t| t.checks),
                    failures: t.map_or(0, |t| t.failures),
                },
            );
        }
        view
    }

    fn write(&self) {
        let status = self.status();
        self.view.send_replace(Arc::new(self.view()));
        let path = self.pins.agent_status_file();
        if let Err(error) = status.write_to(&path) {
            debug!(%error, path = %path.display(), "writing the agent status");
        }
    }

    /// Writes now, then every second until the drain. With BGP, each of the announcer's
    /// reports (once a second) is written as it comes, so that sessions and BFD in the file are
    /// never older than a second; the tick only covers a silent announcer.
    pub async fn run(self, mut drain: Drain) {
        self.write();
        let second = Duration::from_secs(1);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + second / 2, second);
        let mut bgp = self.sources.bgp.clone();
        loop {
            let bgp_changed = async {
                match bgp.as_mut() {
                    Some(rx) => rx.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = drain.signaled() => break,
                _ = tick.tick() => self.write(),
                true = bgp_changed => {
                    self.write();
                    tick.reset();
                }
            }
        }
    }
}

/// Logs the packet total and the health checks' figures every `every`, until the drain.
pub async fn log_stats(pins: PinDir, every: Duration, health: Option<HealthRx>, mut drain: Drain) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            () = drain.signaled() => break,
            _ = tick.tick() => {
                match counters::open_pinned(&pins).and_then(|map| counters::snapshot(&map)) {
                    Ok(snapshot) => {
                        let checks = health
                            .as_ref()
                            .map(|rx| rx.borrow().checks.clone())
                            .unwrap_or_default();
                        info!(
                            packets = snapshot.total_packets(),
                            health_checks = checks.checks,
                            backends_checked = checks.checking,
                            health_transitions = checks.transitions,
                            "counters"
                        );
                    }
                    Err(error) => warn!(%error, "reading counters"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, time::Instant};

    use super::*;
    use crate::{
        agent::{
            fixtures::{backend, service, TestResult},
            health::BackendChecks,
            inputs::StateInput,
            status::ChecksStatus,
        },
        model::Snapshot,
    };

    /// A reporter over channels holding what the tasks would have published.
    fn reporter() -> Result<Reporter, Box<dyn std::error::Error>> {
        let state = Arc::new(StateInput {
            snapshot: Arc::new(Snapshot {
                services: vec![service("web", "192.0.2.10")?],
                backends: vec![backend("be1", 1)?, backend("be2", 2)?],
                ..Snapshot::default()
            }),
            read_at: Instant::now(),
            rejected_rows: 2,
            draining_since: HashMap::new(),
            orphan_health: Vec::new(),
        });
        let health = HealthReport {
            state: Some(Arc::clone(&state)),
            checks: ChecksStatus {
                checking: 2,
                checks: 17,
                transitions: 1,
            },
            backends: HashMap::from([(
                "be1".to_owned(),
                BackendChecks {
                    status: HealthStatus::Down,
                    srtt_us: Some(1500),
                    checks: 9,
                    failures: 3,
                },
            )]),
            ..HealthReport::default()
        };
        let sources = Sources {
            store: None,
            state: watch::channel(Some(state)).1,
            health: watch::channel(Arc::new(health)).1,
            geo: watch::channel(GeoInForce::default()).1,
            bgp: None,
            sixpn: None,
            dns: Some(vec!["[fd00::53]:53".parse()?]),
        };
        let view = watch::channel(Arc::new(AgentView {
            start_time_seconds: 1234.0,
            ..AgentView::default()
        }))
        .0;
        Ok(Reporter::new(PinDir::new("/nonexistent"), sources, view))
    }

    #[test]
    fn the_status_says_what_the_tasks_last_published() -> TestResult {
        let status = reporter()?.status();
        assert_eq!(status.pid, std::process::id());
        assert_eq!(status.role, None);
        let pop = status.pop.ok_or("a POP's status")?;
        assert_eq!(pop.state.source, "the config file's services");
        assert_eq!(pop.state.stale_secs, Some(0.0));
        assert_eq!(pop.rejected_rows, 2);
        assert_eq!(pop.health.checks, 17);
        assert!(pop.state_read_secs_ago.is_some_and(|s| s < 60.0));
        assert_eq!(pop.dns.map(|d| d.len()), Some(1));
        assert_eq!(pop.bgp, None);
        assert_eq!(status.sixpn, None);
        Ok(())
    }

    #[test]
    fn the_metrics_view_joins_the_state_to_the_health_checks() -> TestResult {
        let view = reporter()?.view();
        assert_eq!(view.start_time_seconds, 1234.0, "kept across refreshes");
        assert_eq!(view.state_source, "config");
        assert_eq!((view.health_checks, view.rejected_rows), (17, 2));
        let be1 = view.backends.get("be1").ok_or("be1")?;
        assert_eq!(
            (be1.status, be1.checks, be1.failures, be1.addr.as_str()),
            ("down", 9, 3, "[fd00::1]:8080")
        );
        assert_eq!(be1.rtt_seconds, Some(0.0015));
        let be2 = view.backends.get("be2").ok_or("be2")?;
        assert_eq!((be2.status, be2.checks), ("unknown", 0), "never checked");
        assert_eq!(view.services.values().collect::<Vec<_>>(), ["web"]);
        Ok(())
    }
}
