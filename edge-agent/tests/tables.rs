//! The reconciler's table decisions against the real maps: what a restarted agent writes for
//! the plan the pinned maps already hold (nothing), and who gets the last rings when they run
//! out (the services already serving, never a newcomer in their place).

mod support;

use std::{collections::BTreeMap, net::Ipv6Addr};

use aya::{maps::Array, Ebpf};
use edge_agent::{
    balancing::plan::BackendPlan, balancing::plan::Member, balancing::plan::Plan,
    balancing::plan::ServicePlan, dataplane::maps::services::Reconciler,
    dataplane::programs::MapSizes, testing::lab_pop,
};
use edge_common::{geo::GEO_CLASSES, names, service::NO_BACKEND};
use support::{Error, TestResult};

const TABLE_SIZE: u32 = 251;

fn load(rings: u32) -> Result<Ebpf, Error> {
    let sizes = MapSizes {
        flows: 1024,
        half_open: 1024,
        maglev: rings * TABLE_SIZE,
        affinity: 64,
    };
    support::maps(sizes)
}

fn addr(n: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0xee, 1, n, 0, 0, 0, 2)
}

fn member(n: u16, weight: u32) -> Member {
    Member {
        addr: addr(n),
        port: 8080,
        key: format!("b{n}"),
        weight,
    }
}

/// Services `(name, port, members)` on one VIP, every class on the same set.
fn plan(services: &[(&str, u16, Vec<Member>)]) -> Plan {
    let mut backends: Vec<BackendPlan> = Vec::new();
    for m in services.iter().flat_map(|(_, _, ms)| ms) {
        if !backends.iter().any(|b| b.addr == m.addr) {
            backends.push(BackendPlan {
                addr: m.addr,
                port: m.port,
                eligible: true,
            });
        }
    }
    Plan {
        services: services
            .iter()
            .map(|(id, port, members)| ServicePlan {
                id: (*id).into(),
                vip: [198, 18, 0, 10].into(),
                port: *port,
                sets: BTreeMap::from([(0, members.clone())]),
            })
            .collect(),
        backends,
    }
}

/// The backend ids class 0 of service `service_id` reaches.
fn table_of(ebpf: &Ebpf, service_id: u32) -> Result<Vec<u32>, Error> {
    let pointers: Array<_, u32> = Array::try_from(ebpf.map(names::SERVICE_RINGS).ok_or("rings")?)?;
    let ring = pointers.get(&(service_id * GEO_CLASSES), 0)?;
    let tables: Array<_, u32> = Array::try_from(ebpf.map(names::MAGLEV).ok_or("maglev")?)?;
    let mut ids: Vec<u32> = (0..TABLE_SIZE)
        .map(|slot| tables.get(&(ring * TABLE_SIZE + slot), 0))
        .collect::<Result<_, _>>()?;
    ids.retain(|&id| id != NO_BACKEND);
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

#[test]
fn a_restarted_reconciler_takes_over_the_pinned_tables_and_builds_none() -> TestResult {
    let mut ebpf = load(16)?;
    let plan = plan(&[
        ("web", 80, vec![member(1, 10), member(2, 10)]),
        ("api", 81, vec![member(2, 10), member(3, 30)]),
        ("ssh", 22, vec![member(4, 10)]),
    ]);
    let mut first = Reconciler::recover(&mut ebpf, TABLE_SIZE)?;
    let applied = first.apply(&mut ebpf, &lab_pop(), &plan)?;
    assert_eq!((applied.tables_built, applied.tables), (3, 3));
    // The next agent: the same maps, a reconciler rebuilt from them.
    let mut second = Reconciler::recover(&mut ebpf, TABLE_SIZE)?;
    let applied = second.apply(&mut ebpf, &lab_pop(), &plan)?;
    assert_eq!(applied.tables_built, 0, "every table is already there");
    assert_eq!(applied.tables, 3);
    assert!(applied.rejected.is_empty(), "{:?}", applied.rejected);
    // A changed set still gets its table.
    let changed = self::plan(&[
        ("web", 80, vec![member(1, 10), member(2, 10), member(5, 10)]),
        ("api", 81, vec![member(2, 10), member(3, 30)]),
        ("ssh", 22, vec![member(4, 10)]),
    ]);
    let applied = second.apply(&mut ebpf, &lab_pop(), &changed)?;
    assert_eq!(applied.tables_built, 1);
    Ok(())
}

/// Four rings, two services serving. A plan where one of them changes and three newcomers
/// arrive (listed first): the serving services get what they need, and the newcomers that do not
/// fit are the ones refused.
#[test]
fn when_rings_run_out_newcomers_are_refused_not_serving_services() -> TestResult {
    let mut ebpf = load(4)?;
    let mut reconciler = Reconciler::recover(&mut ebpf, TABLE_SIZE)?;
    let before = plan(&[
        ("web", 80, vec![member(1, 10)]),
        ("api", 81, vec![member(2, 10)]),
    ]);
    let applied = reconciler.apply(&mut ebpf, &lab_pop(), &before)?;
    assert!(applied.rejected.is_empty());
    let after = plan(&[
        ("new1", 90, vec![member(5, 10)]),
        ("new2", 91, vec![member(6, 10)]),
        ("new3", 92, vec![member(7, 10)]),
        ("web", 80, vec![member(1, 10), member(3, 10)]),
        ("api", 81, vec![member(2, 10)]),
    ]);
    let applied = reconciler.apply(&mut ebpf, &lab_pop(), &after)?;
    let refused: Vec<&str> = applied.rejected.iter().map(|r| r.what.as_str()).collect();
    assert_eq!(
        refused,
        ["service new2", "service new3"],
        "{:?}",
        applied.rejected
    );
    // web (service id 0) has its new set; new1 got the last ring.
    let ids = reconciler.backend_ids();
    let id_of = |n: u16| {
        ids.iter()
            .find(|(_, (a, _))| *a == addr(n))
            .map(|(id, _)| *id)
    };
    let web = table_of(&ebpf, 0)?;
    assert_eq!(web, [id_of(1).ok_or("b1")?, id_of(3).ok_or("b3")?]);
    assert_eq!(applied.services, 3);
    Ok(())
}
