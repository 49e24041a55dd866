//! Who may take a service's new flows, per client country: v1's rules, computed by the agent.
//!
//! v1 scored each backend `tier * 100 + (conns / soft_limit) / weight` and took the lowest:
//! tier 0 is the client's country, 1 the client's region, 2 the POP's region, 3 anywhere. Here
//! the lowest non-empty tier becomes the eligible set of a country class (the kernel cannot
//! score per packet), and the load term becomes each member's Maglev weight: `weight` scaled by
//! the headroom left under `soft_limit`, in tenths so that tables are rebuilt only when a
//! backend's load moves by a tenth of its soft limit. Backends at `hard_limit`, unhealthy,
//! draining, disabled or of weight 0 are not eligible at all.
//!
//! Health weighs in too (see `health`): a degraded backend keeps a quarter of its share, and
//! inside each eligible set a backend's share halves for every doubling of its smoothed RTT over
//! the fastest member's (down to an eighth), so a slow backend loses flows before any check
//! fails. RTTs are compared with 2 ms added to each, so that the jitter of a busy host
//! changes nothing.

use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv6Addr,
};

use crate::model::{Backend, BackendAddr, Country, HealthStatus, Region, Snapshot};

pub use crate::geo::GeoClasses;

/// One member of an eligible set: a backend and its Maglev weight.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Member {
    pub addr: Ipv6Addr,
    pub port: u16,
    /// The key Maglev hashes: the backend's id, stable across changes.
    pub key: String,
    pub weight: u32,
}

/// A service's plan: the eligible set for every country class.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePlan {
    pub id: String,
    pub vip: std::net::IpAddr,
    pub port: u16,
    /// By class; classes not listed use class 0's set.
    pub sets: BTreeMap<u16, Vec<Member>>,
}

/// Every backend's overlay endpoint and whether it may take new flows (for bindings).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendPlan {
    pub addr: Ipv6Addr,
    pub port: u16,
    pub eligible: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub services: Vec<ServicePlan>,
    pub backends: Vec<BackendPlan>,
}

/// What the planner needs to know beyond the state.
pub struct Inputs<'a> {
    pub pop_id: &'a str,
    pub pop_region: &'a Region,
    pub region_of: &'a dyn Fn(Country) -> Region,
    /// The region of clients whose country is unknown (v1: `us`).
    pub unknown_region: &'a Region,
    pub classes: &'a GeoClasses,
    /// Live connections per backend id (from the flow table).
    pub active: &'a HashMap<String, u64>,
    /// This POP's view of each backend's health, by id; missing means unknown (eligible).
    pub health: &'a HashMap<String, HealthView>,
    /// Unix seconds: registrations whose lease ran out by then are out of the pool.
    pub now_unix: i64,
}

/// What the balancer uses of a backend's health.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthView {
    pub status: HealthStatus,
    /// Smoothed RTT of its checks, microseconds.
    pub srtt_us: Option<u32>,
}

/// This POP's health rows of `state`, for when no checker runs (CLI, tests, start-up).
pub fn health_rows(state: &Snapshot, pop_id: &str) -> HashMap<String, HealthView> {
    state
        .health
        .iter()
        .filter(|h| h.pop_id == pop_id)
        .map(|h| {
            (
                h.backend_id.clone(),
                HealthView {
                    status: h.status,
                    srtt_us: h.rtt_us,
                },
            )
        })
        .collect()
}

/// Share multiplier of a healthy backend; a degraded one gets 1, a quarter.
const HEALTHY: u32 = 4;
/// Share multiplier of the fastest backend of a set; each doubling of RTT halves it.
const FASTEST: u32 = 8;

/// Added to both RTTs before comparing them: differences of a millisecond or two are noise (a
/// busy host's scheduling), not a reason to move flows.
const RTT_FLOOR_US: u64 = 2000;

/// The RTT multiplier of a backend with smoothed RTT `srtt` in a set whose fastest has `best`.
pub fn rtt_factor(srtt_us: Option<u32>, best_us: Option<u32>) -> u32 {
    let (Some(srtt), Some(best)) = (srtt_us, best_us) else {
        return FASTEST;
    };
    let ratio = (u64::from(srtt) + RTT_FLOOR_US) / (u64::from(best) + RTT_FLOOR_US);
    // floor(log2(ratio)), capped so that the factor stays at least 1.
    let doublings = (63 - ratio.max(1).leading_zeros()).min(FASTEST.trailing_zeros());
    FASTEST >> doublings
}

/// Maglev weight of an eligible backend: weight times headroom in tenths, at least 1.
pub fn effective_weight(backend: &Backend, active: u64) -> u32 {
    let soft = u64::from(backend.soft_limit.max(1));
    let headroom_tenths = 10u64.saturating_sub(active * 10 / soft).max(1);
    (u64::from(backend.weight) * headroom_tenths).min(u64::from(u32::MAX)) as u32
}

/// Resolves a backend's address: an overlay address, or a `.internal` name resolved by
/// `resolve` (the agent's own view of state). Unresolvable names make the backend ineligible.
pub type Resolver<'a> = &'a dyn Fn(&str) -> Option<Ipv6Addr>;

pub fn plan(state: &Snapshot, inputs: &Inputs<'_>, resolve: Resolver<'_>) -> Plan {
    let health = inputs.health;
    let mut plan = Plan::default();
    let mut eligible_of: HashMap<&str, Option<Member>> = HashMap::new();
    for b in &state.backends {
        let addr = match &b.addr {
            BackendAddr::Ip(ip) => Some(*ip),
            BackendAddr::Name(name) => resolve(name),
        };
        let Some(addr) = addr else {
            eligible_of.insert(&b.id, None);
            continue;
        };
        let active = inputs.active.get(&b.id).copied().unwrap_or(0);
        let status = health
            .get(&b.id)
            .map_or(HealthStatus::Unknown, |h| h.status);
        let healthy = status != HealthStatus::Down;
        let eligible = b.in_pool(inputs.now_unix) && healthy && active < u64::from(b.hard_limit);
        plan.backends.push(BackendPlan {
            addr,
            port: b.port,
            eligible,
        });
        let member = eligible.then(|| Member {
            addr,
            port: b.port,
            key: b.id.clone(),
            weight: effective_weight(b, active)
                * if status == HealthStatus::Degraded {
                    1
                } else {
                    HEALTHY
                },
        });
        eligible_of.insert(&b.id, member);
    }
    for service in &state.services {
        let backends: Vec<(&Backend, &Member)> = state
            .backends
            .iter()
            .filter(|b| b.service == service.id)
            .filter_map(|b| Some((b, eligible_of.get(b.id.as_str())?.as_ref()?)))
            .collect();
        let mut sets = BTreeMap::new();
        for (class, country) in inputs.classes.iter() {
            let region = country.map_or_else(|| inputs.unknown_region.clone(), inputs.region_of);
            let tiers: [&dyn Fn(&Backend) -> bool; 4] = [
                &|b| Some(b.country) == country,
                &|b| b.region == region,
                &|b| &b.region == inputs.pop_region,
                &|_| true,
            ];
            let mut set: Vec<Member> = tiers
                .iter()
                .map(|tier| {
                    backends
                        .iter()
                        .filter(|(b, _)| tier(b))
                        .map(|(_, m)| (*m).clone())
                        .collect::<Vec<_>>()
                })
                .find(|set| !set.is_empty())
                .unwrap_or_default();
            let srtt = |m: &Member| health.get(&m.key).and_then(|h| h.srtt_us);
            let best = set.iter().filter_map(srtt).min();
            for m in &mut set {
                m.weight = m.weight.saturating_mul(rtt_factor(srtt(m), best));
            }
            sets.insert(class, set);
        }
        plan.services.push(ServicePlan {
            id: service.id.clone(),
            vip: service.vip,
            port: service.port,
            sets,
        });
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Health, Service};

    fn backend(id: &str, region: &str, country: &str, last: u16) -> Backend {
        Backend {
            id: id.into(),
            service: "web".into(),
            region: region.parse().unwrap_or_else(|e| panic!("{e}")),
            country: country.parse().unwrap_or_else(|e| panic!("{e}")),
            addr: BackendAddr::Ip(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, last)),
            port: 8080,
            weight: 1,
            soft_limit: 100,
            hard_limit: 200,
            draining: false,
            enabled: true,
            check: None,
            lease: None,
        }
    }

    fn country(c: &str) -> Country {
        c.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    fn region(r: &str) -> Region {
        r.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    fn state(backends: Vec<Backend>) -> Snapshot {
        Snapshot {
            services: vec![Service {
                id: "web".into(),
                vip: "198.18.0.10".parse().unwrap_or_else(|e| panic!("{e}")),
                port: 80,
                check: None,
            }],
            backends,
            ..Snapshot::default()
        }
    }

    fn region_of(c: Country) -> Region {
        match c.code() {
            "BR" | "AR" => region("sa"),
            "DE" | "FR" => region("eu"),
            "JP" => region("ap"),
            _ => region("us"),
        }
    }

    /// The backend ids of the set for `country` (or unknown) under `state`.
    fn set_for(
        state: &Snapshot,
        active: &HashMap<String, u64>,
        client: Option<&str>,
    ) -> Vec<String> {
        let classes = GeoClasses::new(["BR", "AR", "DE", "FR", "JP", "US"].map(country));
        let inputs = Inputs {
            pop_id: "pop1",
            pop_region: &region("eu"),
            region_of: &region_of,
            unknown_region: &region("us"),
            classes: &classes,
            active,
            health: &health_rows(state, "pop1"),
            now_unix: 0,
        };
        let plan = plan(state, &inputs, &|_| None);
        let class = client
            .and_then(|c| classes.class_of(country(c)))
            .unwrap_or(0);
        plan.services[0].sets[&class]
            .iter()
            .map(|m| m.key.clone())
            .collect()
    }

    #[test]
    fn tiers_follow_v1() {
        let all = vec![
            backend("br", "sa", "BR", 1),
            backend("de", "eu", "DE", 2),
            backend("us", "us", "US", 3),
        ];
        let none = HashMap::new();
        let s = state(all.clone());
        assert_eq!(set_for(&s, &none, Some("BR")), ["br"], "same country");
        assert_eq!(set_for(&s, &none, Some("AR")), ["br"], "same region");
        assert_eq!(set_for(&s, &none, Some("FR")), ["de"], "same region");
        assert_eq!(
            set_for(&s, &none, Some("JP")),
            ["de"],
            "no ap backend: the POP's region"
        );
        assert_eq!(
            set_for(&s, &none, None),
            ["us"],
            "unknown country: region us"
        );

        let mut no_br = all.clone();
        no_br[0].enabled = false;
        assert_eq!(
            set_for(&state(no_br), &none, Some("BR")),
            ["de"],
            "region empty: POP region"
        );

        let only_us = vec![backend("us", "us", "US", 3)];
        assert_eq!(
            set_for(&state(only_us), &none, Some("JP")),
            ["us"],
            "anywhere"
        );
    }

    #[test]
    fn ineligible_backends_leave_the_sets() {
        let mut a = backend("br1", "sa", "BR", 1);
        let b = backend("br2", "sa", "BR", 2);
        let none = HashMap::new();
        a.draining = true;
        assert_eq!(
            set_for(&state(vec![a.clone(), b.clone()]), &none, Some("BR")),
            ["br2"]
        );
        a.draining = false;
        a.weight = 0;
        assert_eq!(
            set_for(&state(vec![a.clone(), b.clone()]), &none, Some("BR")),
            ["br2"]
        );
        a.weight = 1;
        let full: HashMap<String, u64> = [("br1".to_owned(), 200)].into();
        assert_eq!(
            set_for(&state(vec![a.clone(), b.clone()]), &full, Some("BR")),
            ["br2"],
            "at hard limit"
        );
        let mut down = state(vec![a, b]);
        down.health.push(Health {
            pop_id: "pop1".into(),
            backend_id: "br1".into(),
            status: HealthStatus::Down,
            rtt_us: None,
            checked_at: 0,
            reason: String::new(),
        });
        assert_eq!(
            set_for(&down, &none, Some("BR")),
            ["br2"],
            "down in this POP's view"
        );
    }

    fn weights(state: &Snapshot, client: &str) -> Vec<(String, u32)> {
        let classes = GeoClasses::new([country(client)]);
        let inputs = Inputs {
            pop_id: "pop1",
            pop_region: &region("eu"),
            region_of: &region_of,
            unknown_region: &region("us"),
            classes: &classes,
            active: &HashMap::new(),
            health: &health_rows(state, "pop1"),
            now_unix: 0,
        };
        let plan = plan(state, &inputs, &|_| None);
        plan.services[0].sets[&1]
            .iter()
            .map(|m| (m.key.clone(), m.weight))
            .collect()
    }

    fn health(id: &str, status: HealthStatus, rtt_us: Option<u32>) -> Health {
        Health {
            pop_id: "pop1".into(),
            backend_id: id.into(),
            status,
            rtt_us,
            checked_at: 0,
            reason: String::new(),
        }
    }

    #[test]
    fn slow_and_degraded_backends_lose_share_before_they_fail() {
        let mut s = state(vec![
            backend("fast", "sa", "BR", 1),
            backend("slow", "sa", "BR", 2),
            backend("far", "eu", "DE", 3),
        ]);
        assert_eq!(
            weights(&s, "BR"),
            [("fast".into(), 320), ("slow".into(), 320)],
            "no RTT known: equal"
        );
        s.health = vec![
            health("fast", HealthStatus::Up, Some(300)),
            health("slow", HealthStatus::Up, Some(40_000)),
            // Another tier's RTT does not count against this one's.
            health("far", HealthStatus::Up, Some(100)),
        ];
        assert_eq!(
            weights(&s, "BR"),
            [("fast".into(), 320), ("slow".into(), 40)],
            "40 ms against 0.3 ms: an eighth"
        );
        s.health[1] = health("slow", HealthStatus::Up, Some(600));
        assert_eq!(
            weights(&s, "BR"),
            [("fast".into(), 320), ("slow".into(), 320)],
            "sub-millisecond differences are noise"
        );
        s.health[1] = health("slow", HealthStatus::Degraded, Some(600));
        assert_eq!(
            weights(&s, "BR"),
            [("fast".into(), 320), ("slow".into(), 80)],
            "degraded: a quarter"
        );
    }

    #[test]
    fn rtt_factor_halves_per_doubling() {
        assert_eq!(rtt_factor(None, Some(10)), 8);
        assert_eq!(rtt_factor(Some(0), Some(0)), 8);
        assert_eq!(rtt_factor(Some(1999), Some(0)), 8, "under twice as slow");
        assert_eq!(rtt_factor(Some(2000), Some(0)), 4, "4 ms against 2 ms");
        assert_eq!(rtt_factor(Some(6000), Some(0)), 2);
        assert_eq!(rtt_factor(Some(14_000), Some(0)), 1);
        assert_eq!(rtt_factor(Some(u32::MAX), Some(0)), 1);
    }

    #[test]
    fn load_lowers_the_weight_in_tenths() {
        let b = backend("x", "sa", "BR", 1);
        assert_eq!(effective_weight(&b, 0), 10);
        assert_eq!(
            effective_weight(&b, 9),
            10,
            "under a tenth of the soft limit: no change"
        );
        assert_eq!(effective_weight(&b, 50), 5);
        assert_eq!(
            effective_weight(&b, 100),
            1,
            "at the soft limit: minimal share"
        );
        assert_eq!(effective_weight(&b, 150), 1);
    }
}
