//! Typed writes read back, registrations reaped, health rows kept to live backends, and a file
//! that is v1, replaced or removed refused.

use std::net::Ipv6Addr;

use super::*;
use crate::{
    model::{BackendAddr, HealthStatus},
    state::testutil::TempDir,
};

mod malformed;

pub(crate) fn service(id: &str, vip: &str, port: u16) -> anyhow::Result<Service> {
    Ok(Service {
        id: id.to_owned(),
        vip: vip.parse()?,
        port,
        check: None,
    })
}

pub(crate) fn backend(id: &str, service: &str, addr: &str) -> anyhow::Result<Backend> {
    Ok(Backend {
        id: id.to_owned(),
        service: service.to_owned(),
        region: "sa".parse().map_err(anyhow::Error::msg)?,
        country: "BR".parse().map_err(anyhow::Error::msg)?,
        addr: match addr.parse::<Ipv6Addr>() {
            Ok(ip) => BackendAddr::Ip(ip),
            Err(_) => BackendAddr::Name(addr.to_owned()),
        },
        port: 8080,
        weight: 1,
        soft_limit: 100,
        hard_limit: 1000,
        draining: false,
        enabled: true,
        check: None,
        lease: None,
    })
}

#[test]
fn typed_writes_read_back() -> anyhow::Result<()> {
    let dir = TempDir::new("rw")?;
    let state = SqliteState::open(dir.path().join("sub/routing.db"))?;
    let web = service("web", "203.0.113.10", 80)?;
    let api = service("api", "2001:db8::10", 443)?;
    state.upsert_service(&web)?;
    state.upsert_service(&api)?;
    let b1 = backend("b1", "web", "fd10:0:1::2")?;
    let mut b2 = backend("b2", "web", "app.sa.backends.internal")?;
    b2.weight = 5;
    state.upsert_backend(&b1)?;
    state.upsert_backend(&b2)?;
    let pop = Pop {
        id: "pop-sa-1".to_owned(),
        region: "sa".parse().map_err(anyhow::Error::msg)?,
        overlay_addr: Some("fd10::1".parse()?),
        public_key: Some("yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=".to_owned()),
        endpoint: Some("198.51.100.1:51820".to_owned()),
        role: crate::model::HostRole::Pop,
        host_number: 1,
        overlay_ipv4: Some("10.50.1.1".parse()?),
    };
    state.upsert_pop(&pop)?;
    state.upsert_setting("sixpn.prefix", "fd5e:a1c0:7b3d::/48")?;
    let health = Health {
        pop_id: "pop-sa-1".to_owned(),
        backend_id: "b1".to_owned(),
        status: HealthStatus::Degraded,
        rtt_us: Some(1500),
        checked_at: 1_700_000_000,
        reason: String::new(),
    };
    state.upsert_health(&health)?;

    let (snap, rejected) = state.snapshot()?;
    assert!(rejected.is_empty(), "{rejected:#?}");
    assert_eq!(snap.services, vec![api, web]);
    assert_eq!(snap.backends, vec![b1.clone(), b2.clone()]);
    assert_eq!(snap.pops, vec![pop]);
    assert_eq!(
        snap.settings.get("sixpn.prefix").map(String::as_str),
        Some("fd5e:a1c0:7b3d::/48")
    );
    assert_eq!(snap.health, vec![health]);

    state.set_backend_enabled("b1", false)?;
    state.set_backend_draining("b2", true)?;
    state.set_backend_weight("b2", 0)?;
    let (snap, _) = state.snapshot()?;
    assert!(!snap.backends[0].enabled);
    assert!(snap.backends[1].draining);
    assert_eq!(snap.backends[1].weight, 0);

    state.delete_backend("b1")?;
    let (snap, rejected) = state.snapshot()?;
    assert!(
        rejected.is_empty(),
        "health rows go with their backend: {rejected:#?}"
    );
    assert_eq!(snap.backends.len(), 1);
    assert!(snap.health.is_empty());

    assert!(matches!(
        state.set_backend_weight("nope", 1),
        Err(StateError::NotFound { .. })
    ));
    assert!(matches!(
        state.delete_backend("b1"),
        Err(StateError::NotFound { .. })
    ));
    let mut bad = b2;
    bad.soft_limit = 2000;
    assert!(matches!(
        state.upsert_backend(&bad),
        Err(StateError::Invalid { .. })
    ));
    Ok(())
}

#[test]
fn expired_registrations_give_the_operators_row_back_and_are_deleted() -> anyhow::Result<()> {
    let dir = TempDir::new("owners")?;
    let path = dir.path().join("routing.db");
    let state = SqliteState::open(&path)?;
    state.upsert_service(&service("web", "203.0.113.10", 80)?)?;
    state.upsert_backend(&backend("web-op", "web", "fd10::2")?)?;
    // Registrations as an older agent left them on the operator's address and port: no
    // created_at, no lease_pop, long run out; and one whose heartbeat lands just before
    // its delete.
    let conn = Connection::open(&path)?;
    for (id, addr) in [
        ("..", "fd10::2"),
        ("E4B1", "fd10::2"),
        ("renewed", "fd10::3"),
    ] {
        conn.execute(
            "INSERT INTO backends (id, service_id, region, country, address, port, \
             heartbeat_at, heartbeat_secs) VALUES (?1, 'web', 'sa', 'BR', ?2, 8080, 1000, 10)",
            [id, addr],
        )?;
    }
    let (snap, rejected) = state.snapshot()?;
    let ids: Vec<&str> = snap.backends.iter().map(|b| b.id.as_str()).collect();
    assert_eq!(ids, ["renewed", "web-op"], "{rejected:#?}");
    let reason = |id: &str| {
        rejected
            .iter()
            .find(|r| r.key == id)
            .map_or_else(String::new, |r| r.reason.clone())
    };
    assert!(reason("..").contains("not an id"), "{rejected:#?}");
    assert!(
        reason("E4B1").contains("backend web-op")
            && reason("E4B1").contains("an operator's row wins"),
        "{rejected:#?}"
    );

    let due = crate::register::reaper::due(&snap, "pop-a", unix_now());
    let due_ids: Vec<&str> = due.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(
        due_ids,
        ["..", "E4B1", "renewed"],
        "rejected rows are reaped too"
    );
    conn.execute(
        "UPDATE backends SET heartbeat_at = ?1 WHERE id = 'renewed'",
        [unix_now()],
    )?;
    for (id, renewed_at) in &due {
        state.execute(&write::delete_expired(id, *renewed_at))?;
    }
    let (snap, rejected) = state.snapshot()?;
    assert!(rejected.is_empty(), "{rejected:#?}");
    let ids: Vec<&str> = snap.backends.iter().map(|b| b.id.as_str()).collect();
    assert_eq!(
        ids,
        ["renewed", "web-op"],
        "a heartbeat in between keeps its row"
    );
    assert_eq!(snap.leases.keys().collect::<Vec<_>>(), ["renewed"]);
    Ok(())
}

/// A health row written after its backend was deleted (the writer had not learned of the
/// delete) is not written; one that got in before the delete replicated is removed by
/// `forget_orphan_health`, which leaves rows of live backends alone.
#[test]
fn health_rows_never_outlive_their_backend() -> anyhow::Result<()> {
    let dir = TempDir::new("orphans")?;
    let path = dir.path().join("routing.db");
    let state = SqliteState::open(&path)?;
    state.upsert_service(&service("web", "203.0.113.10", 80)?)?;
    state.upsert_backend(&backend("b1", "web", "fd10::2")?)?;
    let row = |backend: &str| Health {
        pop_id: "pop-a".into(),
        backend_id: backend.into(),
        status: crate::model::HealthStatus::Up,
        rtt_us: Some(100),
        checked_at: 1_700_000_000,
        reason: String::new(),
    };
    state.upsert_health(&row("b1"))?;
    state.upsert_health(&row("gone"))?;
    let conn = Connection::open(&path)?;
    let rows = |conn: &Connection| -> anyhow::Result<Vec<String>> {
        let mut stmt = conn.prepare("SELECT backend_id FROM health ORDER BY backend_id")?;
        let ids = stmt
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(ids)
    };
    assert_eq!(
        rows(&conn)?,
        ["b1"],
        "no row for a backend that is not there"
    );
    // As if written on another node before the delete reached it.
    conn.execute(
        "INSERT INTO health (pop_id, backend_id, status, rtt_us, checked_at, reason) \
         VALUES ('pop-a', 'gone', 'up', 1, 1, '')",
        [],
    )?;
    state.execute(&[
        write::forget_orphan_health("pop-a", "gone"),
        write::forget_orphan_health("pop-a", "b1"),
    ])?;
    assert_eq!(rows(&conn)?, ["b1"], "the orphan goes, the live row stays");
    Ok(())
}

#[test]
fn upsert_keeps_metadata_and_reopen_keeps_rows() -> anyhow::Result<()> {
    let dir = TempDir::new("meta")?;
    let path = dir.path().join("routing.db");
    let state = SqliteState::open(&path)?;
    state.upsert_service(&service("web", "203.0.113.10", 80)?)?;
    state.upsert_backend(&backend("b1", "web", "fd10::2")?)?;
    let other = Connection::open(&path)?;
    other.execute(
        "UPDATE backends SET metadata = '{\"version\":\"1.2\"}' WHERE id = 'b1'",
        [],
    )?;
    state.upsert_backend(&backend("b1", "web", "fd10::3")?)?;
    let metadata: String =
        other.query_row("SELECT metadata FROM backends WHERE id = 'b1'", [], |r| {
            r.get(0)
        })?;
    assert_eq!(metadata, "{\"version\":\"1.2\"}");
    drop(state);
    let state = SqliteState::open(&path)?;
    assert_eq!(state.snapshot()?.0.backends.len(), 1);
    Ok(())
}

#[test]
fn a_v1_file_is_refused_untouched() -> anyhow::Result<()> {
    let dir = TempDir::new("open-v1")?;
    let path = dir.path().join("routing.db");
    let conn = Connection::open(&path)?;
    conn.execute_batch(crate::state::import_v1::tests::V1_SCHEMA)?;
    drop(conn);
    let before = std::fs::read(&path)?;
    assert!(matches!(
        SqliteState::open(&path),
        Err(StateError::V1Database { .. })
    ));
    assert_eq!(std::fs::read(&path)?, before);
    Ok(())
}

#[test]
fn replaced_or_removed_file_is_refused() -> anyhow::Result<()> {
    let dir = TempDir::new("replace")?;
    let path = dir.path().join("routing.db");
    let state = SqliteState::open(&path)?;
    state.upsert_service(&service("old", "203.0.113.10", 80)?)?;
    {
        let next = SqliteState::open(dir.path().join("next.db"))?;
        next.upsert_service(&service("new", "203.0.113.11", 80)?)?;
    }
    std::fs::rename(dir.path().join("next.db"), &path)?;
    assert!(matches!(state.snapshot(), Err(StateError::Replaced { .. })));
    assert!(matches!(
        state.set_backend_enabled("x", true),
        Err(StateError::Replaced { .. })
    ));
    std::fs::remove_file(&path)?;
    assert!(matches!(state.snapshot(), Err(StateError::Replaced { .. })));
    Ok(())
}
