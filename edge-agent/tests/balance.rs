//! Load-aware balancing through the real data plane (`BPF_PROG_TEST_RUN`): the agent's plan
//! (weights, soft and hard limits, draining) written by its reconciler, then thousands of SYNs
//! run through the XDP program and counted per backend from the output frames.

mod support;

use std::{collections::HashMap, net::Ipv6Addr, time::Duration};

use aya::{
    maps::{HashMap as BpfHashMap, MapData},
    Ebpf,
};
use edge_agent::{
    balancing::plan, balancing::plan::GeoClasses, balancing::plan::Inputs,
    dataplane::maps::services::PopSettings, dataplane::maps::services::Reconciler,
    dataplane::programs::MapSizes, model::Backend, model::BackendAddr, model::Region,
    model::Service, model::Snapshot, testing::lab_pop,
};
use edge_common::{names, FlowKey, FlowValue};
use support::{Error, TestResult};

const TABLE_SIZE: u32 = 4099;
const VIP: [u8; 4] = [198, 18, 0, 10];

fn backend(id: &str, last: u16, weight: u32) -> Result<Backend, Error> {
    Ok(Backend {
        id: id.into(),
        service: "web".into(),
        region: "eu".parse()?,
        country: "DE".parse()?,
        addr: BackendAddr::Ip(Ipv6Addr::new(0xfd00, 0xee, 0, 0, 0, 0, 0, last)),
        port: 8080,
        weight,
        soft_limit: 100,
        hard_limit: 200,
        draining: false,
        enabled: true,
        check: None,
        lease: None,
    })
}

struct Lb {
    ebpf: Ebpf,
    reconciler: Reconciler,
    affinity_ttl: Duration,
}

impl Lb {
    fn new() -> Result<Self, Error> {
        Self::with_affinity(Duration::ZERO)
    }

    fn with_affinity(ttl: Duration) -> Result<Self, Error> {
        let sizes = MapSizes {
            flows: 1 << 16,
            half_open: 1 << 16,
            maglev: 64 * TABLE_SIZE,
            affinity: 1024,
        };
        let (ebpf, reconciler) = support::serving(sizes, TABLE_SIZE)?;
        Ok(Lb {
            ebpf,
            reconciler,
            affinity_ttl: ttl,
        })
    }

    /// Plans `backends` with `active` live connections and writes the plan.
    fn apply(&mut self, backends: Vec<Backend>, active: &[(&str, u64)]) -> TestResult {
        let state = Snapshot {
            services: vec![
                Service {
                    id: "web".into(),
                    vip: VIP.into(),
                    port: 80,
                    check: None,
                },
                Service {
                    id: "other".into(),
                    vip: VIP.into(),
                    port: 81,
                    check: None,
                },
            ],
            backends,
            ..Snapshot::default()
        };
        let region: Region = "eu".parse()?;
        let active: HashMap<String, u64> = active.iter().map(|(k, v)| ((*k).into(), *v)).collect();
        let inputs = Inputs {
            pop_id: "pop",
            pop_region: &region,
            region_of: &|_| "eu".parse().unwrap_or_else(|_| unreachable!()),
            unknown_region: &region,
            classes: &GeoClasses::default(),
            active: &active,
            health: &HashMap::new(),
            now_unix: 0,
        };
        let plan = plan::plan(&state, &inputs, &|_| None);
        let pop = PopSettings {
            affinity_ttl: self.affinity_ttl,
            ..lab_pop()
        };
        self.reconciler.apply(&mut self.ebpf, &pop, &plan)?;
        Ok(())
    }

    /// Runs `n` SYNs from distinct clients and counts them per backend (last address group).
    fn spread(&mut self, n: u32, salt: u8) -> Result<HashMap<u16, u32>, Error> {
        let mut counts = HashMap::new();
        for i in 0..n {
            let client = [10, salt, (i >> 8) as u8, i as u8];
            let backend = self.syn(client, 40000 + (i % 1000) as u16)?;
            *counts.entry(backend).or_default() += 1;
        }
        Ok(counts)
    }

    /// Runs one SYN and returns the backend it went to (last address group).
    fn syn(&mut self, client: [u8; 4], port: u16) -> Result<u16, Error> {
        let out = support::xdp(&mut self.ebpf, &support::syn4_from(client, VIP, port)?)?;
        let Some(backend) = support::ipv6_destination(&out)? else {
            return Err(format!(
                "SYN from port {port} not translated: verdict {}",
                out.retval
            )
            .into());
        };
        Ok(backend.segments()[7])
    }

    /// The flows the SYNs made: half-open ones (these tests send no handshake ACKs).
    fn flows(&mut self) -> Result<Vec<(FlowKey, FlowValue)>, Error> {
        support::flow_entries(&self.ebpf, names::HALF_OPEN)
    }
}

fn share(counts: &HashMap<u16, u32>, backend: u16, n: u32) -> f64 {
    f64::from(counts.get(&backend).copied().unwrap_or(0)) / f64::from(n)
}

#[test]
fn ten_thousand_flows_split_by_weight_within_five_percent() -> TestResult {
    let mut lb = Lb::new()?;
    lb.apply(
        vec![
            backend("a", 1, 1)?,
            backend("b", 2, 2)?,
            backend("c", 3, 3)?,
        ],
        &[],
    )?;
    let n = 10_000;
    let counts = lb.spread(n, 1)?;
    for (last, weight) in [(1u16, 1.0), (2, 2.0), (3, 3.0)] {
        let want = weight / 6.0;
        let got = share(&counts, last, n);
        assert!(
            (got - want).abs() <= 0.05 * want,
            "backend {last}: {got:.4} of new flows, weight says {want:.4} (counts {counts:?})"
        );
    }
    Ok(())
}

#[test]
fn hard_limit_excludes_and_soft_limit_shrinks_the_share() -> TestResult {
    let mut lb = Lb::new()?;
    let backends =
        || -> Result<Vec<Backend>, Error> { Ok(vec![backend("a", 1, 1)?, backend("b", 2, 1)?]) };
    lb.apply(backends()?, &[("a", 200)])?;
    let counts = lb.spread(2000, 2)?;
    assert_eq!(
        counts.get(&1),
        None,
        "a at its hard limit gets no new flow: {counts:?}"
    );

    lb.apply(backends()?, &[("a", 0), ("b", 0)])?;
    let even = share(&lb.spread(4000, 3)?, 1, 4000);
    lb.apply(backends()?, &[("a", 80), ("b", 0)])?;
    let loaded = share(&lb.spread(4000, 4)?, 1, 4000);
    assert!(
        (even - 0.5).abs() < 0.05 && loaded < 0.25,
        "a filling toward its soft limit (80 of 100) must lose new flows: {even:.3} -> {loaded:.3}"
    );
    Ok(())
}

#[test]
fn draining_takes_no_new_flows_but_keeps_its_established_ones() -> TestResult {
    let mut lb = Lb::new()?;
    lb.apply(vec![backend("a", 1, 1)?, backend("b", 2, 1)?], &[])?;
    let before = lb.spread(500, 5)?;
    assert!(
        before.contains_key(&1),
        "a takes flows before draining: {before:?}"
    );
    let mut drained = backend("a", 1, 1)?;
    drained.draining = true;
    lb.apply(vec![drained, backend("b", 2, 1)?], &[])?;
    let after = lb.spread(500, 6)?;
    assert_eq!(after.get(&1), None, "draining: no new flow to a: {after:?}");
    let kept = lb
        .flows()?
        .iter()
        .filter(|(_, v)| v.flags & edge_common::flow::FLOW_REVERSE == 0 && v.new_dst[15] == 1)
        .count();
    assert_eq!(
        kept, before[&1] as usize,
        "a's established flows stay in the table, translated as before"
    );
    Ok(())
}

#[test]
fn bindings_hold_within_their_ttl_and_expire_after_it() -> TestResult {
    let client = [10, 9, 9, 9];
    let two =
        || -> Result<Vec<Backend>, Error> { Ok(vec![backend("a", 1, 1)?, backend("b", 2, 1)?]) };
    // Without affinity, find ports the table sends to each backend.
    let mut plain = Lb::new()?;
    plain.apply(two()?, &[])?;
    let mut to_a = Vec::new();
    let mut to_b = Vec::new();
    for port in 41000..41200 {
        match plain.syn(client, port)? {
            1 => to_a.push(port),
            _ => to_b.push(port),
        }
    }
    assert!(
        !to_a.is_empty() && to_b.len() >= 2,
        "both backends in the table: {to_a:?} {to_b:?}"
    );

    let ttl = Duration::from_millis(300);
    let mut lb = Lb::with_affinity(ttl)?;
    lb.apply(two()?, &[])?;
    assert_eq!(
        lb.syn(client, to_a[0])?,
        1,
        "first connection binds the client to a"
    );
    assert_eq!(
        lb.syn(client, to_b[0])?,
        1,
        "within the TTL the binding wins over the table's pick (b)"
    );
    std::thread::sleep(ttl + Duration::from_millis(100));
    assert_eq!(
        lb.syn(client, to_b[1])?,
        2,
        "after the TTL the client is picked (and bound) anew"
    );
    assert_eq!(lb.syn(client, to_a[0] + 1000)?, 2, "the new binding holds");
    Ok(())
}

#[test]
fn a_backend_leaving_the_service_takes_its_bindings_along() -> TestResult {
    let client = [10, 8, 8, 8];
    let mut lb = Lb::with_affinity(Duration::from_secs(600))?;
    lb.apply(vec![backend("a", 1, 1)?], &[])?;
    assert_eq!(lb.syn(client, 42000)?, 1, "bound to a, the only backend");
    // a now serves only another service: still eligible, but no longer web's.
    let mut moved = backend("a", 1, 1)?;
    moved.service = "other".into();
    lb.apply(vec![moved, backend("b", 2, 1)?], &[])?;
    assert_eq!(
        lb.syn(client, 42001)?,
        2,
        "the binding to a is gone; the client goes to b"
    );
    Ok(())
}

#[test]
fn a_drain_timeout_ends_the_drained_backends_flows() -> TestResult {
    let mut lb = Lb::new()?;
    lb.apply(vec![backend("a", 1, 1)?, backend("b", 2, 1)?], &[])?;
    let counts = lb.spread(200, 7)?;
    let to_a = u64::from(counts.get(&1).copied().unwrap_or(0));
    assert!(to_a > 0, "some flows to a: {counts:?}");
    let a_id = lb
        .flows()?
        .iter()
        .find(|(_, v)| v.new_dst[15] == 1 && v.flags & edge_common::flow::FLOW_REVERSE == 0)
        .map(|(_, v)| v.backend_id)
        .ok_or("no flow to a")?;
    let flows = support::flow_table(&mut lb.ebpf, names::HALF_OPEN)?;
    let removed = edge_agent::dataplane::maps::flows::remove_backend_flows(&flows, &[a_id].into())?;
    assert_eq!(
        removed,
        2 * to_a,
        "both directions of every connection to a"
    );
    assert!(
        lb.flows()?.iter().all(|(_, v)| v.backend_id != a_id),
        "no flow to a is left"
    );
    Ok(())
}

#[test]
fn expired_bindings_are_swept() -> TestResult {
    let mut lb = Lb::with_affinity(Duration::from_secs(600))?;
    lb.apply(vec![backend("a", 1, 1)?, backend("b", 2, 1)?], &[])?;
    lb.spread(50, 8)?;
    let map = lb.ebpf.map_mut(names::AFFINITY).ok_or("no AFFINITY")?;
    let bindings: BpfHashMap<
        &mut MapData,
        edge_common::geo::AffinityKey,
        edge_common::geo::AffinityValue,
    > = BpfHashMap::try_from(map)?;
    let now = edge_agent::dataplane::maps::flows::monotonic_ns();
    let ttl = Duration::from_secs(600);
    assert_eq!(
        edge_agent::dataplane::maps::flows::expire_bindings(&bindings, ttl, now)?,
        0,
        "all fresh"
    );
    let later = now + 601 * 1_000_000_000;
    assert_eq!(
        edge_agent::dataplane::maps::flows::expire_bindings(&bindings, ttl, later)?,
        50,
        "all past the TTL"
    );
    assert_eq!(bindings.keys().count(), 0);
    Ok(())
}
