//! Rows that conflict, rows that arrive in any order, and leases: what a whole snapshot keeps
//! and the reasons it gives for what it rejects.

use super::*;
use crate::state::validate::backends::tests::backend_cells;

#[test]
fn hostile_values_stay_on_one_short_line() {
    let long = format!("evil\nINFO forged line {}", "x".repeat(10_000));
    let mut builder = SnapshotBuilder::new();
    builder.backend(&backend_cells(&[(0, Cell::Text(&long))]));
    for column in [2, 3, 4, 11] {
        builder.backend(&backend_cells(&[(column, Cell::Text(&long))]));
    }
    let (_, rejected) = builder.finish();
    assert_eq!(rejected.len(), 5, "{rejected:#?}");
    for r in &rejected {
        assert!(!r.key.contains('\n') && !r.reason.contains('\n'), "{r:?}");
        assert!(r.key.len() < 200 && r.reason.len() < 300, "{r:?}");
    }
}

#[test]
fn cross_row_rules() {
    let mut b = SnapshotBuilder::new();
    // Backends and health first: the order of arrival does not matter.
    b.backend(&backend_cells(&[]));
    b.backend(&backend_cells(&[(0, Cell::Text("b2"))]));
    b.backend(&backend_cells(&[
        (0, Cell::Text("b3")),
        (1, Cell::Text("nope")),
    ]));
    b.backend(&backend_cells(&[
        (0, Cell::Text("b4")),
        (1, Cell::Text("web2")),
    ]));
    b.health(&[
        Cell::Text("p"),
        Cell::Text("b1"),
        Cell::Text("up"),
        Cell::Null,
        Cell::Int(0),
        Cell::Text(""),
    ]);
    b.health(&[
        Cell::Text("p"),
        Cell::Text("b3"),
        Cell::Text("up"),
        Cell::Null,
        Cell::Int(0),
        Cell::Text(""),
    ]);
    b.health(&[
        Cell::Text("p"),
        Cell::Text("gone"),
        Cell::Text("up"),
        Cell::Null,
        Cell::Int(0),
        Cell::Text(""),
    ]);
    b.service(&[
        Cell::Text("web"),
        Cell::Text("192.0.2.1"),
        Cell::Int(80),
        Cell::Text("tcp"),
        Cell::Text(""),
        Cell::Int(0),
    ]);
    // Neither age nor a previous snapshot tells: the lower id wins a contested VIP,
    // whichever row came first.
    b.service(&[
        Cell::Text("web2"),
        Cell::Text("192.0.2.1"),
        Cell::Int(80),
        Cell::Text("tcp"),
        Cell::Text(""),
        Cell::Int(0),
    ]);
    b.service(&[
        Cell::Text("udp"),
        Cell::Text("192.0.2.2"),
        Cell::Int(53),
        Cell::Text("udp"),
        Cell::Text(""),
        Cell::Int(0),
    ]);
    let (snap, rejected) = b.finish();
    let ids: Vec<&str> = snap.backends.iter().map(|b| b.id.as_str()).collect();
    assert_eq!(ids, ["b1"]);
    assert_eq!(snap.services.len(), 1);
    assert_eq!(snap.health.len(), 1);
    let reason = |table: &str, key: &str| {
        rejected
            .iter()
            .find(|r| r.table == table && r.key == key)
            .map(|r| r.reason.clone())
            .unwrap_or_default()
    };
    assert!(reason("services", "web2").contains("is also service web"));
    assert!(reason("services", "udp").contains("tcp only"));
    assert!(reason("backends", "b2").contains("same address and port as backend b1"));
    assert!(reason("backends", "b3").contains("unknown service"));
    assert!(reason("backends", "b4").contains("service \"web2\" is rejected"));
    assert!(reason("health", "p/b3").contains("backend \"b3\" is rejected"));
    assert!(reason("health", "p/gone").contains("unknown backend"));
    assert_eq!(rejected.len(), 7, "{rejected:#?}");
}

const NOW: i64 = 1_700_000_000;

fn service_cells<'a>(id: &'a str, vip: &'a str, created: i64) -> [Cell<'a>; 6] {
    [
        Cell::Text(id),
        Cell::Text(vip),
        Cell::Int(80),
        Cell::Text("tcp"),
        Cell::Text(""),
        Cell::Int(created),
    ]
}

/// A registration's cells: a lease of 10 s renewed at `renewed`, accepted by pop-a.
fn registration<'a>(id: &'a str, addr: &'a str, renewed: i64, created: i64) -> Vec<Cell<'a>> {
    backend_cells(&[
        (0, Cell::Text(id)),
        (4, Cell::Text(addr)),
        (13, Cell::Int(renewed)),
        (14, Cell::Int(10)),
        (15, Cell::Int(created)),
        (16, Cell::Text("pop-a")),
    ])
}

fn reason_of(rejected: &[RejectedRow], table: &str, key: &str) -> String {
    rejected
        .iter()
        .find(|r| r.table == table && r.key == key)
        .map(|r| r.reason.clone())
        .unwrap_or_else(|| panic!("expected {table} {key:?} rejected, got {rejected:#?}"))
}

fn ids(snap: &Snapshot) -> Vec<&str> {
    snap.backends.iter().map(|b| b.id.as_str()).collect()
}

#[test]
fn registrations_never_displace_an_operators_backend() {
    // The case: registrations whose ids sort first (and which are older, and held
    // the endpoint before) on the address and port of an operator's row.
    let mut previous = Snapshot::default();
    let mut b = SnapshotBuilder::new().at(NOW);
    b.service(&service_cells("web", "192.0.2.1", 0));
    b.backend(&backend_cells(&[
        (0, Cell::Text("web-op")),
        (15, Cell::Int(NOW)),
    ]));
    b.backend(&registration("E4B1", "fd10:0:1::2", NOW, 5));
    b.backend(&registration("00", "fd10:0:1::2", NOW, 1));
    let (snap, rejected) = b.finish();
    assert_eq!(ids(&snap), ["web-op"], "{rejected:#?}");
    for loser in ["E4B1", "00"] {
        let reason = reason_of(&rejected, "backends", loser);
        assert!(
            reason.contains("backend web-op")
                && reason.contains("an operator's row wins over a live registration"),
            "{loser}: expected a reason naming web-op and why, got {reason:?}"
        );
    }
    // Even when the registration held the endpoint in the previous snapshot.
    previous.backends = snap.backends.clone();
    previous.backends[0].id = "E4B1".into();
    previous.backends[0].lease = snap.leases.get("E4B1").cloned();
    let held = Incumbents::of(&previous);
    let mut b = SnapshotBuilder::with_incumbents(&held).at(NOW);
    b.service(&service_cells("web", "192.0.2.1", 0));
    b.backend(&registration("E4B1", "fd10:0:1::2", NOW, 5));
    b.backend(&backend_cells(&[(0, Cell::Text("web-op"))]));
    let (snap, _) = b.finish();
    assert_eq!(
        ids(&snap),
        ["web-op"],
        "the operator's row wins over an incumbent"
    );
}

#[test]
fn a_new_service_row_does_not_take_a_live_services_vip() {
    // Ages known: the older keeps it, whatever the ids.
    let mut b = SnapshotBuilder::new().at(NOW);
    b.service(&service_cells("web", "192.0.2.1", 1000));
    b.service(&service_cells("0-takeover", "192.0.2.1", 2000));
    let (snap, rejected) = b.finish();
    assert_eq!(snap.services.len(), 1);
    assert_eq!(snap.services[0].id, "web", "{rejected:#?}");
    let reason = reason_of(&rejected, "services", "0-takeover");
    assert!(
        reason.contains("is also service web") && reason.contains("it is older"),
        "{reason:?}"
    );

    // A row typed in without created_at on a live service, and services from before the
    // column: the one live in the previous snapshot keeps it.
    let (live, _) = {
        let mut b = SnapshotBuilder::new().at(NOW);
        b.service(&service_cells("web", "192.0.2.1", 1000));
        b.finish()
    };
    for web_created in [1000, 0] {
        let held = Incumbents::of(&live);
        let mut b = SnapshotBuilder::with_incumbents(&held).at(NOW);
        b.service(&service_cells("0-takeover", "192.0.2.1", 0));
        b.service(&service_cells("web", "192.0.2.1", web_created));
        let (snap, rejected) = b.finish();
        assert_eq!(
            snap.services
                .iter()
                .map(|s| s.id.as_str())
                .collect::<Vec<_>>(),
            ["web"],
            "web created_at {web_created}: {rejected:#?}"
        );
        let reason = reason_of(&rejected, "services", "0-takeover");
        assert!(reason.contains("held it before"), "{reason:?}");
    }
}

#[test]
fn ids_that_differ_in_case_are_one_name_never_two_backends() {
    let mut b = SnapshotBuilder::new().at(NOW);
    b.service(&service_cells("web", "192.0.2.1", 0));
    b.service(&service_cells("WEB", "192.0.2.2", 5));
    b.backend(&registration("e4b1", "fd10:0:1::2", NOW, 10));
    b.backend(&registration("E4b1", "fd10:0:1::3", NOW, 20));
    b.backend(&registration("e4_b1", "fd10:0:1::4", NOW, 30));
    b.backend(&registration("E4-B1", "fd10:0:1::5", NOW, 40));
    let (snap, rejected) = b.finish();
    assert_eq!(ids(&snap), ["e4_b1", "e4b1"], "{rejected:#?}");
    for (twin, name, winner) in [("E4b1", "e4b1", "e4b1"), ("E4-B1", "e4-b1", "e4_b1")] {
        let reason = reason_of(&rejected, "backends", twin);
        assert!(
            reason.contains(&format!(
                "{name}.instances.internal is also backend {winner}'s"
            )) && reason.contains("it is older"),
            "{twin}: {reason:?}"
        );
    }
    let reason = reason_of(&rejected, "services", "WEB");
    assert!(
        reason.contains("web.services.internal is also service web's"),
        "{reason:?}"
    );
}

#[test]
fn a_lease_that_ran_out_holds_nothing_and_is_listed_for_deletion() {
    let mut b = SnapshotBuilder::new().at(NOW);
    b.service(&service_cells("web", "192.0.2.1", 0));
    // Older, but its lease ran out (renewed 31 s ago, 10 s interval).
    b.backend(&registration("aaa", "fd10:0:1::2", NOW - 31, 1));
    b.backend(&registration("zzz", "fd10:0:1::2", NOW, 100));
    // A registration that no longer parses still has a lease to run out.
    b.backend(&backend_cells(&[
        (0, Cell::Text("broken")),
        (4, Cell::Text("not an address")),
        (13, Cell::Int(NOW - 100)),
        (14, Cell::Int(10)),
        (16, Cell::Text("pop-b")),
    ]));
    let (snap, rejected) = b.finish();
    assert_eq!(ids(&snap), ["zzz"], "{rejected:#?}");
    let reason = reason_of(&rejected, "backends", "aaa");
    assert!(
        reason.contains("a live registration wins over a registration whose lease ran out"),
        "{reason:?}"
    );
    let leases: Vec<(&str, i64, &str)> = snap
        .leases
        .iter()
        .map(|(id, l)| (id.as_str(), l.renewed_at, l.pop.as_str()))
        .collect();
    assert_eq!(
        leases,
        [
            ("aaa", NOW - 31, "pop-a"),
            ("broken", NOW - 100, "pop-b"),
            ("zzz", NOW, "pop-a")
        ],
        "every registration's lease, rejected rows' too"
    );
}

#[test]
fn a_backend_at_a_pops_own_address_is_rejected() {
    let pop = |id, role, addr| {
        [
            Cell::Text(id),
            Cell::Text("sa"),
            Cell::Text(addr),
            Cell::Null,
            Cell::Null,
            Cell::Text(role),
            Cell::Int(1),
            Cell::Null,
        ]
    };
    let mut b = SnapshotBuilder::new().at(NOW);
    b.service(&service_cells("web", "192.0.2.1", 0));
    b.pop(&pop("pop-1", "pop", "fd10::1"));
    b.pop(&pop("host-1", "host", "fd10::9"));
    b.backend(&backend_cells(&[
        (0, Cell::Text("at-pop")),
        (4, Cell::Text("fd10::1")),
    ]));
    b.backend(&backend_cells(&[
        (0, Cell::Text("named-pop")),
        (4, Cell::Text("pop-1.hosts.internal")),
    ]));
    b.backend(&backend_cells(&[
        (0, Cell::Text("on-host")),
        (4, Cell::Text("host-1.hosts.internal")),
    ]));
    let (snap, rejected) = b.finish();
    assert_eq!(ids(&snap), ["on-host"], "{rejected:#?}");
    for id in ["at-pop", "named-pop"] {
        let reason = reason_of(&rejected, "backends", id);
        assert!(reason.contains("POP pop-1's own"), "{id}: {reason:?}");
    }
}
