//! The reconciler's decisions, checked on the ledger alone: what a plan change writes, in what
//! order, and who is refused when rings run out. (`tests/tables.rs` checks the same against
//! real maps.)

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, Ipv6Addr},
    time::{Duration, Instant},
};

use edge_common::{geo::GEO_CLASSES, ServiceKey};

use super::{
    decide::{decide, Decision, RING_GRACE},
    ledger::{service_key, Ledger, Step},
};
use crate::balancing::plan::{BackendPlan, Member, Plan, ServicePlan};

type Error = Box<dyn std::error::Error>;
type TestResult = Result<(), Error>;

const TABLE_SIZE: u32 = 251;

fn vip() -> IpAddr {
    [198, 18, 0, 10].into()
}

fn addr(n: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0xee, 1, n, 0, 0, 0, 2)
}

/// Services `(name, port, backends)` on one VIP, every class on the same set.
fn plan(services: &[(&str, u16, &[u16])]) -> Plan {
    let member = |n: u16| Member {
        addr: addr(n),
        port: 8080,
        key: format!("b{n}"),
        weight: 10,
    };
    let mut backends: Vec<BackendPlan> = Vec::new();
    for &n in services.iter().flat_map(|(_, _, ns)| ns.iter()) {
        if !backends.iter().any(|b| b.addr == addr(n)) {
            backends.push(BackendPlan {
                addr: addr(n),
                port: 8080,
                eligible: true,
            });
        }
    }
    Plan {
        services: services
            .iter()
            .map(|(id, port, ns)| ServicePlan {
                id: (*id).into(),
                vip: vip(),
                port: *port,
                sets: BTreeMap::from([(0, ns.iter().map(|&n| member(n)).collect())]),
            })
            .collect(),
        backends,
    }
}

/// Decides `plan` at `now` and records every step, as `Reconciler::apply` does once the maps
/// have taken them.
fn apply(ledger: &mut Ledger, plan: &Plan, now: Instant) -> Result<Decision, Error> {
    let decision = decide(ledger, plan, true, now)?;
    for step in &decision.steps {
        ledger.record(step);
    }
    Ok(decision)
}

fn key(port: u16) -> ServiceKey {
    service_key(vip(), port)
}

/// The ring class 0 of the service on `port` points at.
fn ring(ledger: &Ledger, port: u16) -> Result<u32, Error> {
    let id = ledger
        .service_ids
        .get(&key(port))
        .ok_or("no such service")?;
    let ring = ledger.pointers.get(&(id.service_id * GEO_CLASSES));
    Ok(*ring.ok_or("no pointer")?)
}

fn tables_written(steps: &[Step]) -> Vec<u32> {
    steps
        .iter()
        .filter_map(|s| match s {
            Step::WriteTable { ring, .. } => Some(*ring),
            _ => None,
        })
        .collect()
}

fn position(steps: &[Step], found: impl Fn(&Step) -> bool) -> Option<usize> {
    steps.iter().position(found)
}

/// `steps` in a line: a class's pointer is one of 256, and a table a few hundred slots.
fn brief(steps: &[Step]) -> String {
    let mut out: Vec<(String, usize)> = Vec::new();
    for step in steps {
        let text = match step {
            Step::Release { rings } => format!("release {rings:?}"),
            Step::ClearBackend { id, .. } => format!("clear backend {id}"),
            Step::WriteBackend { id, .. } => format!("write backend {id}"),
            Step::RemoveService { key } => format!("remove :{}", u16::from_be(key.port)),
            Step::Members {
                service_id,
                departed,
                ..
            } => format!("members of {service_id}, departed {departed:?}"),
            Step::TakeOver { ring, .. } => format!("take over ring {ring}"),
            Step::WriteTable { ring, .. } => format!("write table {ring}"),
            Step::Point { ring, .. } => format!("point at {ring}"),
            Step::MarkPort { port } => format!("mark :{port}"),
            Step::WriteService { key, .. } => format!("write :{}", u16::from_be(key.port)),
            Step::Retire { ring, .. } => format!("retire ring {ring}"),
        };
        match out.last_mut() {
            Some((last, n)) if *last == text => *n += 1,
            _ => out.push((text, 1)),
        }
    }
    let parts: Vec<String> = out
        .into_iter()
        .map(|(text, n)| if n > 1 { format!("{text} x{n}") } else { text })
        .collect();
    format!("[{}]", parts.join(", "))
}

fn refused(decision: &Decision) -> Vec<&str> {
    let rejected = &decision.applied.rejected;
    rejected.iter().map(|r| r.what.as_str()).collect()
}

#[test]
fn the_same_plan_again_writes_nothing() -> TestResult {
    let mut ledger = Ledger::new(TABLE_SIZE, 8);
    let now = Instant::now();
    let plan = plan(&[("web", 80, &[1, 2]), ("api", 81, &[3])]);
    let first = apply(&mut ledger, &plan, now)?;
    assert_eq!(
        tables_written(&first.steps).len(),
        2,
        "{}",
        brief(&first.steps)
    );
    let again = apply(&mut ledger, &plan, now + Duration::from_secs(1))?;
    assert!(
        again.steps.is_empty(),
        "expected no step, saw {}",
        brief(&again.steps)
    );
    let applied = &again.applied;
    assert_eq!(
        (applied.services, applied.backends, applied.tables),
        (2, 3, 2)
    );
    assert_eq!(applied.tables_built, 0);
    Ok(())
}

#[test]
fn a_backend_added_rebuilds_one_table_before_its_pointers_move() -> TestResult {
    let mut ledger = Ledger::new(TABLE_SIZE, 8);
    let now = Instant::now();
    apply(
        &mut ledger,
        &plan(&[("web", 80, &[1, 2]), ("api", 81, &[3])]),
        now,
    )?;
    let (old_web, api) = (ring(&ledger, 80)?, ring(&ledger, 81)?);

    let changed = apply(
        &mut ledger,
        &plan(&[("web", 80, &[1, 2, 5]), ("api", 81, &[3])]),
        now,
    )?;
    let steps = &changed.steps;
    let written = tables_written(steps);
    assert_eq!(
        written.len(),
        1,
        "expected one table built, saw {}",
        brief(steps)
    );
    assert_eq!(changed.applied.tables_built, 1);
    let new_web = ring(&ledger, 80)?;
    assert_eq!(written, [new_web]);
    assert!(new_web != old_web && new_web != api);
    assert_eq!(ring(&ledger, 81)?, api, "api's table stays");

    // Make before break: the table, then every class's pointer, then the old ring retired.
    let table = position(steps, |s| matches!(s, Step::WriteTable { .. }));
    let points: Vec<usize> = (0..steps.len())
        .filter(|&i| matches!(steps[i], Step::Point { ring, .. } if ring == new_web))
        .collect();
    let retired = position(
        steps,
        |s| matches!(s, Step::Retire { ring, since } if *ring == old_web && *since == now),
    );
    assert_eq!(points.len(), GEO_CLASSES as usize, "{}", brief(steps));
    let (Some(table), Some(retired)) = (table, retired) else {
        return Err(format!(
            "expected a table written and a ring retired: {}",
            brief(steps)
        )
        .into());
    };
    assert!(
        points.iter().all(|&p| table < p && p < retired),
        "{}",
        brief(steps)
    );
    assert!(
        steps
            .iter()
            .any(|s| matches!(s, Step::WriteBackend { addr: a, .. } if *a == addr(5))),
        "expected the new backend written: {}",
        brief(steps)
    );
    assert!(
        !steps.iter().any(|s| matches!(s, Step::WriteService { .. })),
        "the services' entries stay as they are: {}",
        brief(steps)
    );
    Ok(())
}

#[test]
fn a_removed_service_leaves_first_and_its_ring_is_freed_after_the_grace() -> TestResult {
    let mut ledger = Ledger::new(TABLE_SIZE, 3);
    let now = Instant::now();
    apply(
        &mut ledger,
        &plan(&[("web", 80, &[1]), ("api", 81, &[2])]),
        now,
    )?;
    let (web, api) = (ring(&ledger, 80)?, ring(&ledger, 81)?);

    // api goes while web changes: api's entry is deleted first, web's table is written and
    // pointed at, and only then are the rings nothing points at retired.
    let removed = apply(&mut ledger, &plan(&[("web", 80, &[1, 3])]), now)?;
    let steps = &removed.steps;
    let removal = position(steps, |s| *s == Step::RemoveService { key: key(81) });
    let table = position(steps, |s| matches!(s, Step::WriteTable { .. }));
    assert!(
        removal.is_some() && removal < table,
        "expected api removed before web's table is written: {}",
        brief(steps)
    );
    let last_point = steps
        .iter()
        .rposition(|s| matches!(s, Step::Point { .. }))
        .ok_or("no pointer moved")?;
    let retired: Vec<(usize, u32)> = (0..steps.len())
        .filter_map(|i| match steps[i] {
            Step::Retire { ring, .. } => Some((i, ring)),
            _ => None,
        })
        .collect();
    assert_eq!(
        retired.iter().map(|&(_, r)| r).collect::<BTreeSet<_>>(),
        BTreeSet::from([web, api])
    );
    assert!(
        retired.iter().all(|&(i, _)| i > last_point),
        "{}",
        brief(steps)
    );
    assert_eq!(removed.applied.services, 1);

    // Within the grace the retired rings stay untouched; a newcomer finds none free.
    let soon = apply(
        &mut ledger,
        &plan(&[("web", 80, &[1, 3]), ("ssh", 22, &[4])]),
        now + RING_GRACE / 2,
    )?;
    assert_eq!(refused(&soon), ["service ssh"], "{}", brief(&soon.steps));
    assert!(tables_written(&soon.steps).is_empty());

    // Past it they are free again, and the newcomer gets one.
    let later = apply(
        &mut ledger,
        &plan(&[("web", 80, &[1, 3]), ("ssh", 22, &[4])]),
        now + RING_GRACE,
    )?;
    assert_eq!(
        later.steps.first(),
        Some(&Step::Release {
            rings: BTreeSet::from([web, api])
        }),
        "{}",
        brief(&later.steps)
    );
    assert!(refused(&later).is_empty(), "{:?}", later.applied.rejected);
    let ssh = ring(&ledger, 22)?;
    assert!(ssh == web || ssh == api, "ssh got ring {ssh}");
    Ok(())
}

#[test]
fn when_rings_run_out_a_newcomer_is_refused_and_a_serving_service_kept() -> TestResult {
    let mut ledger = Ledger::new(TABLE_SIZE, 2);
    let now = Instant::now();
    apply(
        &mut ledger,
        &plan(&[("web", 80, &[1]), ("api", 81, &[2])]),
        now,
    )?;
    let (web, api) = (ring(&ledger, 80)?, ring(&ledger, 81)?);

    // Both rings are in use: web's new set and the newcomer (listed first) have none.
    let full = apply(
        &mut ledger,
        &plan(&[("new", 90, &[5]), ("web", 80, &[1, 3]), ("api", 81, &[2])]),
        now,
    )?;
    assert_eq!(refused(&full), ["service web", "service new"]);
    let reasons: Vec<&str> = full
        .applied
        .rejected
        .iter()
        .map(|r| r.reason.as_str())
        .collect();
    assert!(
        reasons
            .first()
            .is_some_and(|r| r.contains("keeps the tables")),
        "{reasons:?}"
    );
    assert!(
        !full.steps.iter().any(|s| matches!(
            s,
            Step::WriteTable { .. } | Step::Point { .. } | Step::WriteService { .. }
        )),
        "expected no table, pointer or service written, saw {}",
        brief(&full.steps)
    );
    assert_eq!((ring(&ledger, 80)?, ring(&ledger, 81)?), (web, api));
    assert!(!ledger.service_ids.contains_key(&key(90)));
    assert_eq!(full.applied.services, 1);
    Ok(())
}

/// As `tests/tables.rs` does against the maps: four rings, two serving, one of them changing
/// and three newcomers listed first. The serving services get what they need.
#[test]
fn the_last_rings_go_to_serving_services_before_newcomers() -> TestResult {
    let mut ledger = Ledger::new(TABLE_SIZE, 4);
    let now = Instant::now();
    apply(
        &mut ledger,
        &plan(&[("web", 80, &[1]), ("api", 81, &[2])]),
        now,
    )?;
    let after = apply(
        &mut ledger,
        &plan(&[
            ("new1", 90, &[5]),
            ("new2", 91, &[6]),
            ("new3", 92, &[7]),
            ("web", 80, &[1, 3]),
            ("api", 81, &[2]),
        ]),
        now,
    )?;
    assert_eq!(refused(&after), ["service new2", "service new3"]);
    assert_eq!(after.applied.services, 3);
    assert_eq!(after.applied.tables_built, 2);
    let rings: BTreeSet<u32> = [80, 81, 90]
        .into_iter()
        .map(|port| ring(&ledger, port))
        .collect::<Result<_, _>>()?;
    assert_eq!(
        rings.len(),
        3,
        "expected three distinct rings, saw {rings:?}"
    );
    Ok(())
}

#[test]
fn a_restarted_ledger_takes_over_the_pinned_tables_and_builds_none() -> TestResult {
    let mut first = Ledger::new(TABLE_SIZE, 8);
    let now = Instant::now();
    let plan = plan(&[
        ("web", 80, &[1, 2]),
        ("api", 81, &[2, 3]),
        ("ssh", 22, &[4]),
    ]);
    let written = apply(&mut first, &plan, now)?;
    // What the maps hold after the first agent, as the next one reads them.
    let mut backends = Vec::new();
    let mut tables = HashMap::new();
    for step in &written.steps {
        match step {
            Step::WriteBackend {
                id,
                addr,
                port,
                flags,
            } => backends.push((
                *id,
                edge_common::BackendValue {
                    addr: addr.octets(),
                    port: port.to_be(),
                    _pad: 0,
                    flags: *flags,
                },
            )),
            Step::WriteTable { ring, table, .. } => {
                tables.insert(table.clone(), *ring);
            }
            _ => {}
        }
    }
    let mut second = Ledger::recovered(
        TABLE_SIZE,
        8,
        first.service_ids.clone(),
        backends,
        first.pointers.clone(),
        tables,
        now,
    );
    let again = apply(&mut second, &plan, now)?;
    assert_eq!(again.applied.tables_built, 0, "{}", brief(&again.steps));
    assert_eq!(again.applied.tables, 3);
    assert!(
        again.steps.iter().all(|s| matches!(
            s,
            Step::TakeOver { .. } | Step::Members { .. } | Step::MarkPort { .. }
        )),
        "expected only take-overs and bookkeeping, saw {}",
        brief(&again.steps)
    );
    assert_eq!(second.backend_ids, first.backend_ids);
    assert_eq!(second.pointers, first.pointers);
    Ok(())
}

#[test]
fn a_departed_backend_is_cleared_and_its_clients_unbound() -> TestResult {
    let mut ledger = Ledger::new(TABLE_SIZE, 8);
    let now = Instant::now();
    apply(&mut ledger, &plan(&[("web", 80, &[1, 2])]), now)?;
    let gone = *ledger
        .backend_ids
        .get(&(addr(2), 8080))
        .ok_or("backend 2 has no id")?;
    let left = apply(&mut ledger, &plan(&[("web", 80, &[1])]), now)?;
    let steps = &left.steps;
    assert_eq!(
        steps.first(),
        Some(&Step::ClearBackend {
            id: gone,
            addr: addr(2),
            port: 8080
        }),
        "{}",
        brief(steps)
    );
    assert!(
        steps.iter().any(|s| matches!(
            s,
            Step::Members { departed, .. } if *departed == BTreeSet::from([gone])
        )),
        "expected bindings to backend {gone} dropped: {}",
        brief(steps)
    );
    assert_eq!(left.applied.backends, 1);
    Ok(())
}

#[test]
fn services_with_the_same_set_share_one_table() -> TestResult {
    let mut ledger = Ledger::new(TABLE_SIZE, 8);
    let applied = apply(
        &mut ledger,
        &plan(&[("web", 80, &[1, 2]), ("alt", 8080, &[1, 2])]),
        Instant::now(),
    )?;
    assert_eq!(tables_written(&applied.steps).len(), 1);
    assert_eq!(applied.applied.tables, 1);
    assert_eq!(ring(&ledger, 80)?, ring(&ledger, 8080)?);
    Ok(())
}
