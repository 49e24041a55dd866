//! The anycast BGP speaker as a task: it owns the speaker, tells it what this POP can serve,
//! and at the drain either withdraws the routes or leaves them to the routers' graceful
//! restart.
//!
//! What can be served comes from the reconcile task (the VIPs of the state, and those with an
//! eligible backend in the plan last written); whether the data plane is attached and whether
//! an operator drain has run its course are read here every second, since they change without
//! a plan changing (and drains and hold-downs run out with time alone).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
    time::Duration,
};

use tokio::sync::watch;
use tracing::{info, warn};

use super::Drain;
use crate::{
    balancing::plan::Plan,
    bgp::{routes::VipState, session::PeerStatus, BgpConfig, Speaker},
    dataplane::{netdev, pins::PinDir},
    model::Snapshot,
};

/// What this POP can serve, as the reconcile task last planned it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Servable {
    /// Every VIP of the state: each has a route, announced or withdrawn.
    pub vips: BTreeSet<IpAddr>,
    /// VIPs with at least one eligible backend in some service of the plan.
    pub servable: BTreeSet<IpAddr>,
}

impl Servable {
    /// From the state and the plan last written (none yet: nothing is servable).
    pub fn of(state: &Snapshot, written: Option<&Plan>) -> Self {
        Servable {
            vips: state.services.iter().map(|s| s.vip).collect(),
            servable: written
                .into_iter()
                .flat_map(|plan| &plan.services)
                .filter(|s| s.sets.values().any(|set| !set.is_empty()))
                .map(|s| s.vip)
                .collect(),
        }
    }
}

/// The speaker's sessions and routes, for the status file and `/metrics`.
#[derive(Debug, Default)]
pub struct BgpReport {
    pub sessions: Vec<PeerStatus>,
    pub vips: Vec<VipState>,
    pub bfd_dropped: BTreeMap<&'static str, u64>,
}

pub type BgpRx = watch::Receiver<Option<Arc<BgpReport>>>;

/// Starts the speaker where peers are configured; `forwarding_kept`: the data plane was adopted
/// and forwarded all along (the Forwarding State bit of graceful restart).
pub async fn start(config: &BgpConfig, forwarding_kept: bool) -> Option<Speaker> {
    match Speaker::start_after(config, forwarding_kept).await {
        Ok(speaker) => speaker,
        Err(error) => {
            warn!(%error, "BGP is off");
            None
        }
    }
}

/// Whether a stopping agent leaves its routes to the routers' graceful restart rather than
/// withdrawing them: when graceful restart is configured and no operator drain is in force.
pub fn leave_to_graceful_restart(restart_secs: u16, draining: bool) -> bool {
    restart_secs > 0 && !draining
}

pub struct Announcer {
    speaker: Speaker,
    config: BgpConfig,
    /// The interface the data plane is attached to.
    iface: Option<String>,
    pins: PinDir,
    servable: watch::Receiver<Arc<Servable>>,
    tx: watch::Sender<Option<Arc<BgpReport>>>,
}

impl Announcer {
    pub fn new(
        speaker: Speaker,
        config: &BgpConfig,
        iface: Option<String>,
        pins: PinDir,
        servable: watch::Receiver<Arc<Servable>>,
    ) -> Self {
        let mut announcer = Announcer {
            speaker,
            config: config.clone(),
            iface,
            pins,
            servable,
            tx: watch::channel(None).0,
        };
        announcer.announce();
        announcer
    }

    pub fn subscribe(&self) -> BgpRx {
        self.tx.subscribe()
    }

    /// Tells the speaker what this POP can serve now: a VIP is announced while a service on it
    /// has an eligible backend, the data plane is attached, and no drain has run its course.
    fn announce(&mut self) {
        let servable = Arc::clone(&self.servable.borrow_and_update());
        // What `edge-agent status` reports as attached, whichever hook it is in.
        let attached = self.iface.as_deref().is_some_and(|iface| {
            self.pins
                .attached_ifaces()
                .iter()
                .any(|(on, _)| on == iface)
                && netdev::ifindex(iface).is_some()
        });
        let inputs = crate::bgp::routes::Inputs {
            servable: servable.servable.clone(),
            attached,
            draining_for: crate::bgp::drain::draining_for(&self.pins),
            shutting_down: false,
        };
        self.speaker.update(&servable.vips, &inputs);
        let (sessions, vips) = self.speaker.status();
        self.tx.send_replace(Some(Arc::new(BgpReport {
            sessions,
            vips,
            bfd_dropped: self.speaker.bfd_dropped(),
        })));
    }

    /// Announces on every change of what can be served and every second, until the drain;
    /// then stops the speaker.
    pub async fn run(mut self, mut drain: Drain) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                () = drain.signaled() => break,
                Ok(()) = self.servable.changed() => self.announce(),
                _ = tick.tick() => self.announce(),
            }
        }
        let draining = crate::bgp::drain::since(&self.pins).is_some();
        let restart_secs = self.config.graceful_restart_secs;
        if leave_to_graceful_restart(restart_secs, draining) {
            // The data plane stays and forwards: a stop is taken for a restart, as
            // `systemctl restart` and upgrades do, and the routers keep the routes for the
            // restart time. `edge-agent drain` first takes the POP out.
            info!(
                restart_secs,
                "leaving the routes to the routers' graceful restart: an agent started within the restart time takes them over; `edge-agent drain` before stopping withdraws them"
            );
            self.speaker.leave_to_graceful_restart();
        } else {
            // Withdraw first: routers move new clients to another POP while this one still
            // serves the connections already here.
            self.speaker.shutdown(Duration::from_secs(3)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        agent::fixtures::{service, TestResult},
        balancing::plan::{Member, ServicePlan},
    };

    #[test]
    fn a_vip_is_servable_once_a_written_plan_has_a_backend_for_it() -> TestResult {
        let state = Snapshot {
            services: vec![service("web", "192.0.2.10")?, service("api", "192.0.2.11")?],
            ..Snapshot::default()
        };
        let none = Servable::of(&state, None);
        assert_eq!(none.vips.len(), 2);
        assert!(none.servable.is_empty(), "nothing written yet");
        let plan = Plan {
            services: vec![
                ServicePlan {
                    id: "web".to_owned(),
                    vip: "192.0.2.10".parse()?,
                    port: 80,
                    sets: BTreeMap::from([(
                        0,
                        vec![Member {
                            addr: "fd00::1".parse()?,
                            port: 8080,
                            key: "be1".to_owned(),
                            weight: 1,
                        }],
                    )]),
                },
                ServicePlan {
                    id: "api".to_owned(),
                    vip: "192.0.2.11".parse()?,
                    port: 80,
                    sets: BTreeMap::from([(0, Vec::new())]),
                },
            ],
            backends: Vec::new(),
        };
        let written = Servable::of(&state, Some(&plan));
        assert_eq!(
            written.servable,
            BTreeSet::from(["192.0.2.10".parse::<IpAddr>()?])
        );
        assert_eq!(written.vips, none.vips);
        Ok(())
    }

    #[test]
    fn a_stop_is_a_restart_unless_drained_or_not_configured() {
        assert!(leave_to_graceful_restart(120, false));
        assert!(!leave_to_graceful_restart(120, true), "an operator drain");
        assert!(!leave_to_graceful_restart(0, false), "not configured");
    }
}
