//! The `internal.` zone, computed from control-plane state: which names exist and what they
//! answer. Pure: the server swaps the result in whenever state or health changes.
//!
//! | name | records |
//! |---|---|
//! | `<region>.pops.internal` | AAAA of every POP and host of the region (`pops` rows) |
//! | `<host>.hosts.internal` | AAAA of one POP or host |
//! | `<region>.backends.internal` | AAAA of the region's backends in the pool |
//! | `<backend>.instances.internal` | AAAA of one backend |
//! | `<app>.<region>.services.internal` | AAAA, and SRV (port, weight) of the app's backends in the region |
//! | `<app>.services.internal` | AAAA nearest region first, and SRV whose priority is the region's rank |
//! | `regions.<app>.services.internal` | TXT: the app's regions, nearest first |
//! | `instances.<app>.services.internal` | TXT: one string per backend: id, region, address |
//!
//! Names are ids made DNS labels (lower case; other characters than letters, digits and `-`
//! become `-`). "Nearest" is this POP's region, then regions by the lowest smoothed
//! health-check RTT of their backends, then by name. A backend is named only while in the pool
//! (enabled, not draining, weighted, lease alive) and not down in this POP's view.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::Ipv6Addr,
    str::FromStr,
};

use hickory_proto::rr::{
    rdata::{AAAA, NS, SOA, SRV, TXT},
    Name, RData, Record,
};

use crate::{
    balancing::plan::HealthView, model::BackendAddr, model::HealthStatus, model::Region,
    model::Snapshot,
};

/// The zone's apex.
pub const ORIGIN: &str = "internal.";

/// What the zone needs beyond state.
pub struct ZoneInputs<'a> {
    pub pop_region: &'a Region,
    pub health: &'a HashMap<String, HealthView>,
    pub now_unix: i64,
    /// This host's overlay address: the name server's.
    pub ns_addr: Option<Ipv6Addr>,
    pub ttl: u32,
    pub serial: u32,
}

/// An id as a DNS label, or `None` if nothing usable is left ([`crate::model::dns_label`]).
pub fn label(id: &str) -> Option<String> {
    crate::model::dns_label(id)
}

fn name(s: &str) -> Option<Name> {
    Name::from_str(s).ok()
}

/// The records of every name, and a resolver for `.internal` backend addresses.
#[derive(Debug, Default)]
pub struct Zone {
    /// (name, type) in insertion order per name, which is the order answers list them.
    pub records: Vec<Record>,
}

impl Zone {
    /// The first AAAA of `fqdn` (with or without the trailing dot).
    pub fn resolve(&self, fqdn: &str) -> Option<Ipv6Addr> {
        let wanted = name(&format!("{}.", fqdn.trim_end_matches('.')))?;
        self.records.iter().find_map(|r| match &r.data {
            RData::AAAA(AAAA(ip)) if r.name.eq_case(&wanted) || r.name == wanted => Some(*ip),
            _ => None,
        })
    }
}

struct Builder {
    ttl: u32,
    records: Vec<Record>,
    /// (name, address) pairs already added, so that a name lists an address once.
    seen: BTreeSet<(String, Ipv6Addr)>,
}

impl Builder {
    fn add(&mut self, owner: &str, data: RData) {
        if let Some(n) = name(owner) {
            self.records.push(Record::from_rdata(n, self.ttl, data));
        }
    }

    fn aaaa(&mut self, owner: &str, ip: Ipv6Addr) {
        if self.seen.insert((owner.to_owned(), ip)) {
            self.add(owner, RData::AAAA(AAAA(ip)));
        }
    }
}

/// Host addresses from `pops` rows, by name: what `.internal` backend addresses resolve to.
fn host_names(state: &Snapshot) -> HashMap<String, Ipv6Addr> {
    state
        .pops
        .iter()
        .filter_map(|p| {
            Some((
                format!("{}.hosts.internal.", label(&p.id)?),
                p.overlay_addr?,
            ))
        })
        .collect()
}

pub fn build(state: &Snapshot, inputs: &ZoneInputs<'_>) -> Zone {
    let mut b = Builder {
        ttl: inputs.ttl,
        records: Vec::new(),
        seen: BTreeSet::new(),
    };
    let (Some(ns), Some(mail)) = (name("ns.internal."), name("hostmaster.internal.")) else {
        return Zone::default();
    };
    // Negative answers are cached for the SOA minimum: as short as positive ones.
    b.add(
        ORIGIN,
        RData::SOA(SOA::new(
            ns.clone(),
            mail,
            inputs.serial,
            60,
            30,
            3600,
            inputs.ttl,
        )),
    );
    b.add(ORIGIN, RData::NS(NS(ns)));
    if let Some(ip) = inputs.ns_addr {
        b.aaaa("ns.internal.", ip);
    }

    for p in &state.pops {
        let (Some(ip), Some(host)) = (p.overlay_addr, label(&p.id)) else {
            continue;
        };
        b.aaaa(&format!("{}.pops.internal.", p.region), ip);
        b.aaaa(&format!("{host}.hosts.internal."), ip);
    }
    let hosts = host_names(state);

    // One owner per label: the validator already rejects the second of two ids that make one
    // label, and this holds for state that did not pass through it (the config's services).
    // The first in state order keeps the name; never two backends (or apps) behind one.
    let mut apps: HashMap<String, &str> = HashMap::new();
    for s in &state.services {
        if let Some(app) = label(&s.id) {
            apps.entry(app).or_insert(&s.id);
        }
    }
    let mut instances: HashMap<String, &str> = HashMap::new();

    // Backends in the pool and not down here, with their address.
    let mut members = Vec::new();
    for be in &state.backends {
        let down = inputs
            .health
            .get(&be.id)
            .is_some_and(|h| h.status == HealthStatus::Down);
        if !be.in_pool(inputs.now_unix) || down {
            continue;
        }
        let ip = match &be.addr {
            BackendAddr::Ip(ip) => Some(*ip),
            BackendAddr::Name(n) => hosts.get(&format!("{}.", n.trim_end_matches('.'))).copied(),
        };
        let (Some(ip), Some(id), Some(app)) = (ip, label(&be.id), label(&be.service)) else {
            continue;
        };
        if apps.get(&app).is_some_and(|owner| *owner != be.service)
            || *instances.entry(id.clone()).or_insert(&be.id) != be.id
        {
            continue;
        }
        members.push((be, ip, id, app));
    }

    // Regions ranked per app: this POP's first, then by the lowest RTT measured to them.
    let mut best_rtt: BTreeMap<(&str, &str), u32> = BTreeMap::new();
    for (be, _, _, app) in &members {
        let rtt = inputs
            .health
            .get(&be.id)
            .and_then(|h| h.srtt_us)
            .unwrap_or(u32::MAX);
        let e = best_rtt
            .entry((app.as_str(), be.region.as_str()))
            .or_insert(u32::MAX);
        *e = (*e).min(rtt);
    }
    let mut ranks: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (app, region) in best_rtt.keys() {
        ranks.entry(app).or_default().push(region);
    }
    for (app, regions) in &mut ranks {
        regions.sort_by_key(|r| {
            (
                *r != inputs.pop_region.as_str(),
                best_rtt.get(&(*app, *r)).copied().unwrap_or(u32::MAX),
                r.to_string(),
            )
        });
    }
    let rank = |app: &str, region: &str| {
        ranks
            .get(app)
            .and_then(|rs| rs.iter().position(|r| *r == region))
            .unwrap_or(0) as u16
    };

    let mut ordered = members.clone();
    ordered
        .sort_by_key(|(be, _, id, app)| (app.clone(), rank(app, be.region.as_str()), id.clone()));
    for (be, ip, id, app) in &ordered {
        let region = be.region.as_str();
        let instance = format!("{id}.instances.internal.");
        b.aaaa(&instance, *ip);
        b.aaaa(&format!("{region}.backends.internal."), *ip);
        let regional = format!("{app}.{region}.services.internal.");
        b.aaaa(&regional, *ip);
        let weight = u16::try_from(be.weight).unwrap_or(u16::MAX);
        if let Some(target) = name(&instance) {
            b.add(
                &regional,
                RData::SRV(SRV::new(0, weight, be.port, target.clone())),
            );
            b.add(
                &format!("{app}.services.internal."),
                RData::SRV(SRV::new(rank(app, region), weight, be.port, target)),
            );
        }
        b.aaaa(&format!("{app}.services.internal."), *ip);
    }
    for (app, regions) in &ranks {
        // A TXT string holds at most 255 bytes: one string per region or instance.
        let regions: Vec<String> = regions.iter().map(|r| r.to_string()).collect();
        b.add(
            &format!("regions.{app}.services.internal."),
            RData::TXT(TXT::new(vec![regions.join(",")])),
        );
        let instances: Vec<String> = ordered
            .iter()
            .filter(|(_, _, _, a)| a == app)
            .map(|(be, ip, _, _)| {
                let s = format!("{} {} [{ip}]:{}", be.id, be.region, be.port);
                s.chars().take(255).collect()
            })
            .collect();
        b.add(
            &format!("instances.{app}.services.internal."),
            RData::TXT(TXT::new(instances)),
        );
    }
    Zone { records: b.records }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Backend, Lease, Pop, Service};

    fn backend(id: &str, region: &str, last: u16) -> Backend {
        Backend {
            id: id.into(),
            service: "web".into(),
            region: region.parse().unwrap_or_else(|e: String| panic!("{e}")),
            country: "BR".parse().unwrap_or_else(|e: String| panic!("{e}")),
            addr: BackendAddr::Ip(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, last)),
            port: 8080,
            weight: 1,
            soft_limit: 10,
            hard_limit: 20,
            draining: false,
            enabled: true,
            check: None,
            lease: None,
        }
    }

    fn texts(zone: &Zone, owner: &str) -> Vec<String> {
        zone.records
            .iter()
            .filter(|r| r.name.to_ascii() == owner)
            .map(|r| r.data.to_string())
            .collect()
    }

    fn state() -> Snapshot {
        let mut far = backend("be3", "us", 3);
        far.addr = BackendAddr::Name("host9.hosts.internal".into());
        Snapshot {
            services: vec![Service {
                id: "web".into(),
                vip: "198.18.0.10".parse().unwrap_or_else(|e| panic!("{e}")),
                port: 80,
                check: None,
            }],
            backends: vec![backend("be1", "sa", 1), backend("Be_2", "sa", 2), far],
            pops: vec![Pop {
                id: "host9".into(),
                region: "us".parse().unwrap_or_else(|e: String| panic!("{e}")),
                overlay_addr: Some(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 9)),
                public_key: None,
                endpoint: None,
                role: crate::model::HostRole::Host,
                host_number: 9,
                overlay_ipv4: None,
            }],
            health: Vec::new(),
            settings: Default::default(),
            leases: Default::default(),
        }
    }

    fn zone(state: &Snapshot, health: &HashMap<String, HealthView>, now: i64) -> Zone {
        build(
            state,
            &ZoneInputs {
                pop_region: &"us".parse().unwrap_or_else(|e: String| panic!("{e}")),
                health,
                now_unix: now,
                ns_addr: None,
                ttl: 5,
                serial: 1,
            },
        )
    }

    #[test]
    fn names_answer_from_state() {
        let s = state();
        let z = zone(&s, &HashMap::new(), 0);
        assert_eq!(texts(&z, "sa.backends.internal."), ["fd00::2", "fd00::1"]);
        assert_eq!(texts(&z, "be-2.instances.internal."), ["fd00::2"]);
        assert_eq!(
            texts(&z, "us.backends.internal."),
            ["fd00::9"],
            "a .internal backend address resolves to its host"
        );
        assert_eq!(texts(&z, "us.pops.internal."), ["fd00::9"]);
        assert_eq!(
            texts(&z, "web.sa.services.internal."),
            [
                "fd00::2",
                "0 1 8080 be-2.instances.internal.",
                "fd00::1",
                "0 1 8080 be1.instances.internal."
            ]
        );
        let all = texts(&z, "web.services.internal.");
        assert_eq!(
            all.iter().filter(|r| !r.contains(' ')).collect::<Vec<_>>(),
            ["fd00::9", "fd00::2", "fd00::1"],
            "this POP's region (us) first"
        );
        assert!(
            all.contains(&"1 1 8080 be1.instances.internal.".to_owned()),
            "{all:?}"
        );
        assert_eq!(texts(&z, "regions.web.services.internal."), ["us,sa"]);
        assert_eq!(
            z.resolve("be1.instances.internal"),
            Some(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1))
        );
        assert_eq!(z.resolve("nobody.instances.internal"), None);
    }

    #[test]
    fn nearest_follows_measured_rtt_and_the_pool() {
        let mut s = state();
        s.backends[2].addr = BackendAddr::Ip(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 3));
        s.backends.push(Backend {
            service: "web".into(),
            ..backend("be4", "eu", 4)
        });
        let view = |rtt| HealthView {
            status: HealthStatus::Up,
            srtt_us: Some(rtt),
        };
        let health: HashMap<String, HealthView> = [
            ("be1".to_owned(), view(90_000)),
            ("be4".to_owned(), view(20_000)),
        ]
        .into();
        let z = zone(&s, &health, 0);
        assert_eq!(texts(&z, "regions.web.services.internal."), ["us,eu,sa"]);

        // Down here, draining, or a lease run out: gone from every name.
        let mut health = health;
        health.insert(
            "be1".into(),
            HealthView {
                status: HealthStatus::Down,
                srtt_us: None,
            },
        );
        s.backends[1].lease = Some(Lease {
            renewed_at: 0,
            interval_secs: 1,
            pop: String::new(),
        });
        s.backends[3].draining = true;
        let z = zone(&s, &health, 10);
        assert!(texts(&z, "sa.backends.internal.").is_empty());
        assert!(texts(&z, "eu.backends.internal.").is_empty());
        assert_eq!(texts(&z, "regions.web.services.internal."), ["us"]);
    }

    #[test]
    fn one_label_is_one_backend_and_one_app() {
        let mut s = state();
        // Ids that differ only in case, and an app whose id differs from web's only in case.
        s.backends.push(backend("BE1", "sa", 99));
        s.services.push(Service {
            id: "WEB".into(),
            vip: "198.18.0.11".parse().unwrap_or_else(|e| panic!("{e}")),
            port: 80,
            check: None,
        });
        let mut other_app = backend("be9", "sa", 98);
        other_app.service = "WEB".into();
        s.backends.push(other_app);
        let z = zone(&s, &HashMap::new(), 0);
        let be1 = texts(&z, "be1.instances.internal.");
        assert_eq!(
            be1.len(),
            1,
            "be1 and BE1 share one name, which must answer one backend's address: {be1:?}"
        );
        assert!(
            !texts(&z, "sa.backends.internal.").contains(&"fd00::63".to_owned()),
            "the second id with label be1 is left out of every name"
        );
        assert!(
            texts(&z, "be9.instances.internal.").is_empty(),
            "a backend of WEB, whose label web belongs to service web, is not named"
        );
    }

    #[test]
    fn labels() {
        assert_eq!(label("web/be1").as_deref(), Some("web-be1"));
        assert_eq!(label("__").as_deref(), None);
        assert_eq!(label(&"x".repeat(100)).map(|l| l.len()), Some(63));
    }
}
