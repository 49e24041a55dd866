//! Which prefixes this POP announces, and with what: computed from whether it can serve each
//! VIP, damped so that a flapping backend does not flap the route, and shaped by a drain.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    time::{Duration, Instant},
};

use ipnet::IpNet;

use super::wire::{RouteAttrs, GRACEFUL_SHUTDOWN};

/// Prefix -> attributes: what every session should have announced.
pub type Rib = BTreeMap<IpNet, RouteAttrs>;

/// What the agent knows that decides the routes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inputs {
    /// VIPs with at least one eligible backend in some service.
    pub servable: BTreeSet<IpAddr>,
    /// Whether the XDP program is attached: without it nothing here can serve.
    pub attached: bool,
    /// How long an operator has been draining this POP.
    pub draining_for: Option<Duration>,
    pub shutting_down: bool,
}

/// Why a VIP is or is not announced, for `edge-agent status`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct VipState {
    pub vip: IpAddr,
    pub prefix: IpNet,
    pub announced: bool,
    pub reason: &'static str,
}

pub struct Announcer {
    base: RouteAttrs,
    drain_prepend: u8,
    drain_delay: Duration,
    hold_down: Duration,
    aggregates: Vec<IpNet>,
    /// When each VIP was last withdrawn because it could not be served.
    withdrawn_at: HashMap<IpAddr, Instant>,
    /// When each withdrawn VIP became servable again.
    servable_since: HashMap<IpAddr, Instant>,
}

impl Announcer {
    pub fn new(config: &super::BgpConfig) -> Result<Self, String> {
        Ok(Announcer {
            base: RouteAttrs {
                communities: config.communities()?,
                med: config.med,
                prepend: config.prepend,
            },
            drain_prepend: config.drain_prepend,
            drain_delay: Duration::from_secs(config.drain_delay_secs),
            hold_down: Duration::from_millis(config.hold_down_ms),
            aggregates: config.aggregates.clone(),
            withdrawn_at: HashMap::new(),
            servable_since: HashMap::new(),
        })
    }

    /// The prefix a VIP is announced as.
    pub fn prefix_of(&self, vip: IpAddr) -> IpNet {
        self.aggregates
            .iter()
            .find(|a| a.contains(&vip))
            .copied()
            .unwrap_or_else(|| IpNet::from(vip))
    }

    /// The routes for `inputs` at `now`, and each known VIP's state. `vips` are every VIP of
    /// the POP's services, servable or not.
    pub fn routes(
        &mut self,
        vips: &BTreeSet<IpAddr>,
        inputs: &Inputs,
        now: Instant,
    ) -> (Rib, Vec<VipState>) {
        let drain_elapsed = inputs.draining_for;
        let mut attrs = self.base.clone();
        if drain_elapsed.is_some() {
            attrs.communities.push(GRACEFUL_SHUTDOWN);
            attrs.prepend = attrs.prepend.saturating_add(self.drain_prepend);
        }
        let mut rib = Rib::new();
        let mut states = Vec::new();
        for &vip in vips {
            let servable = inputs.servable.contains(&vip) && inputs.attached;
            let reason = if inputs.shutting_down {
                "the agent is stopping"
            } else if !inputs.attached {
                "the data plane is not attached"
            } else if !servable {
                "no eligible backend"
            } else if drain_elapsed.is_some_and(|e| e >= self.drain_delay) {
                "drained"
            } else if !self.held_down_passed(vip, now) {
                "hold-down after a withdraw"
            } else if drain_elapsed.is_some() {
                "draining (graceful shutdown community)"
            } else {
                "servable"
            };
            if !servable && !inputs.shutting_down {
                self.withdrawn_at.entry(vip).or_insert(now);
                self.servable_since.remove(&vip);
            }
            let announced = matches!(
                reason,
                "servable" | "draining (graceful shutdown community)"
            );
            let prefix = self.prefix_of(vip);
            if announced {
                rib.insert(prefix, attrs.clone());
            }
            states.push(VipState {
                vip,
                prefix,
                announced,
                reason,
            });
        }
        (rib, states)
    }

    /// Whether a servable VIP has been servable for the hold-down since it was last withdrawn.
    fn held_down_passed(&mut self, vip: IpAddr, now: Instant) -> bool {
        if !self.withdrawn_at.contains_key(&vip) {
            return true;
        }
        let since = *self.servable_since.entry(vip).or_insert(now);
        if now.duration_since(since) >= self.hold_down {
            self.withdrawn_at.remove(&vip);
            self.servable_since.remove(&vip);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bgp::BgpConfig;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn vip(s: &str) -> IpAddr {
        s.parse()
            .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
    }

    #[test]
    fn a_withdrawn_vip_returns_only_after_the_hold_down() -> TestResult {
        let config = BgpConfig {
            hold_down_ms: 2_000,
            communities: vec!["65001:10".into()],
            ..BgpConfig::default()
        };
        let mut a = Announcer::new(&config)?;
        let vips: BTreeSet<IpAddr> = [vip("203.0.113.10"), vip("2001:db8::10")].into();
        let mut inputs = Inputs {
            servable: vips.clone(),
            attached: true,
            ..Inputs::default()
        };
        let t0 = Instant::now();
        let (rib, _) = a.routes(&vips, &inputs, t0);
        assert_eq!(rib.len(), 2);
        assert_eq!(
            rib[&"203.0.113.10/32".parse::<IpNet>()?].communities,
            vec![(65001, 10)]
        );
        inputs.servable.remove(&vip("203.0.113.10"));
        let (rib, states) = a.routes(&vips, &inputs, t0 + Duration::from_millis(10));
        assert_eq!(rib.len(), 1, "withdrawn at once");
        assert_eq!(states[0].reason, "no eligible backend");
        inputs.servable.insert(vip("203.0.113.10"));
        let (rib, states) = a.routes(&vips, &inputs, t0 + Duration::from_millis(20));
        assert_eq!(rib.len(), 1, "held down");
        assert!(states
            .iter()
            .any(|s| s.reason == "hold-down after a withdraw"));
        let (rib, _) = a.routes(&vips, &inputs, t0 + Duration::from_millis(2_030));
        assert_eq!(rib.len(), 2, "back after the hold-down");
        Ok(())
    }

    #[test]
    fn drain_marks_then_withdraws_and_detach_or_stop_withdraw() -> TestResult {
        let config = BgpConfig {
            drain_delay_secs: 10,
            drain_prepend: 2,
            aggregates: vec!["203.0.113.0/24".parse()?],
            ..BgpConfig::default()
        };
        let mut a = Announcer::new(&config)?;
        let vips: BTreeSet<IpAddr> = [vip("203.0.113.10"), vip("203.0.113.11")].into();
        let mut inputs = Inputs {
            servable: vips.clone(),
            attached: true,
            draining_for: Some(Duration::from_secs(5)),
            shutting_down: false,
        };
        let now = Instant::now();
        let (rib, _) = a.routes(&vips, &inputs, now);
        assert_eq!(rib.len(), 1, "one aggregate for both VIPs");
        let attrs = &rib[&"203.0.113.0/24".parse::<IpNet>()?];
        assert_eq!(attrs.communities, vec![GRACEFUL_SHUTDOWN]);
        assert_eq!(attrs.prepend, 2);
        inputs.draining_for = Some(Duration::from_secs(10));
        assert!(
            a.routes(&vips, &inputs, now).0.is_empty(),
            "withdrawn after the delay"
        );
        inputs.draining_for = None;
        assert_eq!(
            a.routes(&vips, &inputs, now).0.len(),
            1,
            "undrain is immediate"
        );
        inputs.attached = false;
        let (rib, states) = a.routes(&vips, &inputs, now);
        assert!(rib.is_empty());
        assert_eq!(states[0].reason, "the data plane is not attached");
        inputs.attached = true;
        inputs.shutting_down = true;
        assert!(a.routes(&vips, &inputs, now).0.is_empty());
        Ok(())
    }
}
