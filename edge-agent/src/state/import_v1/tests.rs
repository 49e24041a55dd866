//! A v1 file of the real schema and of its first, country-less one, imported with and without
//! an IPv4 mapping; options and files that are not v1 refused.

use super::*;
use crate::{model::HealthStatus, state::testutil::TempDir};

/// v1's table, as its `routing.sql` created it.
pub(crate) const V1_SCHEMA: &str = "CREATE TABLE backends (
    id TEXT PRIMARY KEY, app TEXT, region TEXT, country TEXT, wg_ip TEXT, port INTEGER,
    healthy INTEGER, weight INTEGER, soft_limit INTEGER, hard_limit INTEGER,
    deleted INTEGER DEFAULT 0);";

const V1_ROWS: &str = "INSERT INTO backends VALUES
    ('sa-node-1', 'myapp', 'sa', 'BR', '10.50.1.1', 8080, 1, 2, 50, 100, 0),
    ('sa-node-2', 'myapp', 'sa', 'br', '10.50.1.2', 8080, 0, 1, 50, 100, 0),
    ('us-node-1', 'myapp', 'us', 'US', '10.50.2.1', 8080, 1, 300, NULL, NULL, 0),
    ('eu-node-1', 'other', 'eu', 'DE', 'fd10:3::1', 9000, 1, 1, 100, 200, NULL),
    ('ap-node-1', 'myapp', 'ap', 'JP', '10.50.4.1', 8080, 1, 1, 50, 100, 1),
    ('bad-port', 'myapp', 'sa', 'BR', '10.50.1.9', 0, 1, 1, 50, 100, 0),
    ('no-vip', 'orphan', 'sa', 'BR', '10.50.1.10', 8080, 1, 1, 50, 100, 0),
    ('bad-limits', 'myapp', 'eu', 'FR', '10.50.3.3', 8080, 1, 1, 500, 100, 0),
    ('no-country', 'myapp', 'us', NULL, '10.50.2.9', 8080, 1, 1, 50, 100, 0),
    ('twin', 'myapp', 'sa', 'BR', '10.50.1.1', 8080, 1, 1, 50, 100, 0);";

fn v1_db(dir: &TempDir) -> anyhow::Result<PathBuf> {
    let path = dir.path().join("v1-routing.db");
    let conn = Connection::open(&path)?;
    conn.execute_batch(V1_SCHEMA)?;
    conn.execute_batch(V1_ROWS)?;
    Ok(path)
}

fn options(ipv4: Ipv4Overlay) -> anyhow::Result<ImportOptions> {
    Ok(ImportOptions {
        pop_id: "pop-sa-1".to_owned(),
        vips: parse_vips(["myapp=203.0.113.10:80", "other=[2001:db8::10]:443"])
            .map_err(anyhow::Error::msg)?,
        ipv4,
    })
}

fn skipped_reason<'a>(report: &'a ImportReport, id: &str) -> &'a str {
    report
        .skipped
        .iter()
        .find(|s| s.id == id)
        .map_or("", |s| s.reason.as_str())
}

#[test]
fn v1_round_trip_with_a_96_prefix() -> anyhow::Result<()> {
    let dir = TempDir::new("import")?;
    let v1 = v1_db(&dir)?;
    let before = std::fs::read(&v1)?;
    let state = SqliteState::open(dir.path().join("routing.db"))?;
    let opts = options(Ipv4Overlay::Prefix96("fdab:cdef:1234:ffff::/96".parse()?))?;
    let report = import_v1(&v1, &state, &opts)?;
    assert_eq!(std::fs::read(&v1)?, before, "the v1 file is only read");

    let ids: Vec<&str> = report.imported.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["eu-node-1", "sa-node-1", "sa-node-2", "us-node-1"]);
    assert_eq!(report.services, ["myapp", "other"]);
    for (id, expected) in [
        ("ap-node-1", "soft-deleted"),
        ("bad-port", "port 0"),
        ("no-vip", "no VIP given for app \"orphan\""),
        ("bad-limits", "soft_limit 500 is above hard_limit 100"),
        ("no-country", "no country"),
        ("twin", "same address and port as sa-node-1"),
    ] {
        let reason = skipped_reason(&report, id);
        assert!(
            reason.contains(expected),
            "{id}: {reason:?} should mention {expected:?}"
        );
    }
    assert_eq!(report.skipped.len(), 6, "{:#?}", report.skipped);
    let us = report.imported.iter().find(|r| r.id == "us-node-1");
    let notes = us.map(|r| r.notes.join("; ")).unwrap_or_default();
    assert!(
        notes.contains("soft_limit was NULL: v2 default 100"),
        "{notes}"
    );
    assert!(notes.contains("v1 read it as 44"), "{notes}");

    let (snap, rejected) = state.snapshot()?;
    assert!(rejected.is_empty(), "{rejected:#?}");
    assert_eq!(snap.services.len(), 2);
    let b = |id: &str| snap.backends.iter().find(|b| b.id == id);
    let sa1 = b("sa-node-1").ok_or_else(|| anyhow::anyhow!("sa-node-1 missing"))?;
    assert_eq!(sa1.service, "myapp");
    assert_eq!(
        sa1.addr,
        BackendAddr::Ip("fdab:cdef:1234:ffff::a32:101".parse()?)
    );
    assert_eq!(
        (sa1.port, sa1.weight, sa1.soft_limit, sa1.hard_limit),
        (8080, 2, 50, 100)
    );
    assert_eq!(sa1.country.code(), "BR");
    let sa2 = b("sa-node-2").ok_or_else(|| anyhow::anyhow!("sa-node-2 missing"))?;
    assert_eq!(
        sa2.country.code(),
        "BR",
        "v1's lower-case country is normalized"
    );
    let us1 = b("us-node-1").ok_or_else(|| anyhow::anyhow!("us-node-1 missing"))?;
    assert_eq!(
        (us1.weight, us1.soft_limit, us1.hard_limit),
        (300, 100, 1000)
    );
    let eu1 = b("eu-node-1").ok_or_else(|| anyhow::anyhow!("eu-node-1 missing"))?;
    assert_eq!(eu1.addr, BackendAddr::Ip("fd10:3::1".parse()?));
    let status = |id: &str| {
        snap.health
            .iter()
            .find(|h| h.backend_id == id)
            .map(|h| h.status)
    };
    assert_eq!(status("sa-node-1"), Some(HealthStatus::Up));
    assert_eq!(status("sa-node-2"), Some(HealthStatus::Down));
    assert!(snap.health.iter().all(|h| h.pop_id == "pop-sa-1"));

    // Importing again changes nothing.
    let again = import_v1(&v1, &state, &opts)?;
    assert_eq!(again, report);
    assert_eq!(state.snapshot()?.0, snap);
    Ok(())
}

#[test]
fn ipv4_rows_are_skipped_without_a_mapping() -> anyhow::Result<()> {
    let dir = TempDir::new("import-reject")?;
    let v1 = v1_db(&dir)?;
    let state = SqliteState::open(dir.path().join("routing.db"))?;
    let report = import_v1(&v1, &state, &options(Ipv4Overlay::Reject)?)?;
    let ids: Vec<&str> = report.imported.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["eu-node-1"]);
    assert!(skipped_reason(&report, "sa-node-1").contains("IPv6 overlay address"));

    let custom = Ipv4Overlay::Map(Box::new(|v4: Ipv4Addr| {
        let [_, _, host, instance] = v4.octets();
        Some(Ipv6Addr::new(
            0xfd10,
            0,
            0,
            u16::from(host),
            0,
            0,
            0,
            u16::from(instance),
        ))
    }));
    let (_, report) = plan_v1(&v1, &options(custom)?)?;
    let sa1 = report.imported.iter().find(|r| r.id == "sa-node-1");
    assert_eq!(sa1.map(|r| r.address.as_str()), Some("fd10:0:0:1::1"));
    Ok(())
}

#[test]
fn bad_options_and_non_v1_files_are_refused() -> anyhow::Result<()> {
    let dir = TempDir::new("import-bad")?;
    let v1 = v1_db(&dir)?;
    let wide = options(Ipv4Overlay::Prefix96("fdab::/64".parse()?))?;
    assert!(matches!(
        plan_v1(&v1, &wide),
        Err(StateError::Invalid { .. })
    ));
    let mut same = options(Ipv4Overlay::Reject)?;
    same.vips
        .insert("third".to_owned(), "203.0.113.10:80".parse()?);
    assert!(matches!(
        plan_v1(&v1, &same),
        Err(StateError::Invalid { .. })
    ));
    let v2 = dir.path().join("v2.db");
    drop(SqliteState::open(&v2)?);
    assert!(matches!(
        plan_v1(&v2, &options(Ipv4Overlay::Reject)?),
        Err(StateError::V1Schema { .. })
    ));
    assert!(plan_v1(
        &dir.path().join("missing.db"),
        &options(Ipv4Overlay::Reject)?
    )
    .is_err());
    Ok(())
}

#[test]
fn first_v1_schema_without_country() -> anyhow::Result<()> {
    let dir = TempDir::new("import-old")?;
    let path = dir.path().join("old.db");
    let conn = Connection::open(&path)?;
    conn.execute_batch(
        "CREATE TABLE backends (id TEXT PRIMARY KEY, app TEXT, region TEXT, wg_ip TEXT, \
         port INTEGER, healthy INTEGER, weight INTEGER, soft_limit INTEGER, \
         hard_limit INTEGER, deleted INTEGER DEFAULT 0);
         INSERT INTO backends VALUES ('sa-node-1', 'myapp', 'sa', 'fd10::1', 8080, 1, 1, 100, 200, 0);",
    )?;
    let (_, report) = plan_v1(&path, &options(Ipv4Overlay::Reject)?)?;
    assert!(report.imported.is_empty());
    assert!(skipped_reason(&report, "sa-node-1").contains("no country"));
    Ok(())
}
