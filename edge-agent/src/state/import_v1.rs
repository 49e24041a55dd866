//! Imports a v1 `routing.db` into v2 rows.
//!
//! v1 kept one table, `backends (id, app, region, country, wg_ip, port, healthy, weight,
//! soft_limit, hard_limit, deleted)`. `app` becomes the service id (its VIP comes from the
//! caller: v1 had none, it listened on one address for everything), soft-deleted rows are
//! skipped as v1 skipped them (`deleted IS NULL OR deleted = 0` is live), and `healthy` becomes
//! the health row of one POP.
//!
//! v1's `wg_ip` is an address on its IPv4 overlay (10.50.0.0/16). The v2 data plane forwards
//! only to IPv6 overlay (6PN) addresses, so an IPv4 `wg_ip` is not imported as it is: widening
//! [`crate::model::BackendAddr`] to IPv4 would carry IPv4 into the reconciler and the kernel
//! maps just as v2 retires it. Such a row is skipped with that reason, unless the caller says
//! how to derive the IPv6 address ([`Ipv4Overlay`]): a `/96` prefix with the IPv4 address in
//! its low 32 bits (RFC 6052's `/96` layout; the prefix must be routed to those hosts on the
//! 6PN), or any function, e.g. from the 6PN addressing plan. A `wg_ip` that already is an IPv6
//! address or a `.internal` name is imported as it is.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
};

use ipnet::Ipv6Net;
use rusqlite::{Connection, OpenFlags};
use serde::Serialize;

use super::{
    sqlite::unix_now,
    validate::{self, found, show, Cell},
    write::{self, address_text, Stmt},
    SqliteState, StateError,
};
use crate::model::{Backend, BackendAddr, Health, HealthStatus, Service};

/// What to do with a v1 row whose `wg_ip` is an IPv4 address.
pub enum Ipv4Overlay {
    /// Skip it, saying it needs an IPv6 overlay address.
    Reject,
    /// `prefix` (a `/96`) with the IPv4 address in the low 32 bits.
    Prefix96(Ipv6Net),
    /// Whatever the function says; `None` skips the row.
    Map(Box<dyn Fn(Ipv4Addr) -> Option<Ipv6Addr> + Send + Sync>),
}

impl Ipv4Overlay {
    fn map(&self, v4: Ipv4Addr) -> Result<Ipv6Addr, String> {
        match self {
            Ipv4Overlay::Reject => Err(format!(
                "wg_ip {v4} is on v1's IPv4 overlay; v2 needs the backend's IPv6 overlay \
                 address (import with a /96 prefix or a mapping, or give it a .internal name)"
            )),
            Ipv4Overlay::Prefix96(net) => {
                let bits = u128::from(net.network()) | u128::from(u32::from(v4));
                Ok(Ipv6Addr::from(bits))
            }
            Ipv4Overlay::Map(f) => {
                f(v4).ok_or_else(|| format!("wg_ip {v4}: the mapping gave no IPv6 address"))
            }
        }
    }
}

pub struct ImportOptions {
    /// The POP whose health rows v1's `healthy` column becomes.
    pub pop_id: String,
    /// Each app's service address (VIP and port). Rows of an app not listed are skipped.
    pub vips: BTreeMap<String, SocketAddr>,
    pub ipv4: Ipv4Overlay,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ImportedRow {
    pub id: String,
    pub service: String,
    /// The v2 address (overlay IPv6 or `.internal` name).
    pub address: String,
    /// What changed on the way (defaults filled in, address derived, ...).
    pub notes: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SkippedRow {
    pub id: String,
    pub reason: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ImportReport {
    /// Service ids written (one per app with at least one imported row).
    pub services: Vec<String>,
    pub imported: Vec<ImportedRow>,
    pub skipped: Vec<SkippedRow>,
}

const REQUIRED: [&str; 5] = ["id", "app", "region", "wg_ip", "port"];
const OPTIONAL: [&str; 6] = [
    "country",
    "healthy",
    "weight",
    "soft_limit",
    "hard_limit",
    "deleted",
];
/// Column order of the query below.
const COLUMNS: [&str; 11] = [
    "id",
    "app",
    "region",
    "country",
    "wg_ip",
    "port",
    "healthy",
    "weight",
    "soft_limit",
    "hard_limit",
    "deleted",
];

/// v2's defaults (the schema's), for v1 rows with NULL limits.
const DEFAULT_WEIGHT: u32 = 1;
const DEFAULT_SOFT_LIMIT: u32 = 100;
const DEFAULT_HARD_LIMIT: u32 = 1000;

struct Planned {
    backend: Backend,
    status: HealthStatus,
    notes: Vec<String>,
}

fn opt_limit(
    cell: Cell<'_>,
    col: &str,
    lo: i64,
    hi: i64,
    default: u32,
    notes: &mut Vec<String>,
) -> Result<u32, String> {
    match cell {
        Cell::Null => {
            notes.push(format!("{col} was NULL: v2 default {default}"));
            Ok(default)
        }
        Cell::Int(v) if (lo..=hi).contains(&v) => Ok(v as u32),
        Cell::Int(v) => Err(format!("{col} {v} is out of range {lo}..={hi}")),
        other => Err(format!("{col} must be an integer, found {}", found(other))),
    }
}

fn text<'a>(cell: Cell<'a>, col: &str) -> Result<&'a str, String> {
    match cell {
        Cell::Text(t) if !t.is_empty() => Ok(t),
        Cell::Text(_) | Cell::Null => Err(format!("{col} is empty")),
        other => Err(format!("{col} must be text, found {}", found(other))),
    }
}

fn plan_row(c: &[Cell<'_>], opts: &ImportOptions) -> Result<Planned, String> {
    let mut notes = Vec::new();
    let id = text(c[0], "id")?;
    validate::check_id("id", id)?;
    let app = text(c[1], "app")?;
    validate::check_id("app", app)?;
    if !opts.vips.contains_key(app) {
        return Err(format!("no VIP given for app {}", show(app)));
    }
    let region = validate::parse_region(text(c[2], "region")?)?;
    let country = match c[3] {
        Cell::Null | Cell::Text("") => {
            return Err("no country; v2 needs one for the geo tiers".to_owned())
        }
        cell => validate::parse_country(text(cell, "country")?)?,
    };
    let wg_ip = text(c[4], "wg_ip")?;
    let addr = match wg_ip.parse::<Ipv4Addr>() {
        Ok(v4) => {
            let v6 = opts.ipv4.map(v4)?;
            validate::check_overlay_ip("derived address", v6)?;
            notes.push(format!("address {v6} derived from wg_ip {v4}"));
            BackendAddr::Ip(v6)
        }
        Err(_) => validate::parse_backend_addr(wg_ip)?,
    };
    let port = match c[5] {
        Cell::Int(p) if (1..=65535).contains(&p) => p as u16,
        Cell::Int(p) => return Err(format!("port {p} is out of range 1..=65535")),
        other => return Err(format!("port must be an integer, found {}", found(other))),
    };
    let status = match c[6] {
        Cell::Int(0) => HealthStatus::Down,
        Cell::Int(_) => HealthStatus::Up,
        _ => {
            notes.push("healthy was not an integer: health unknown".to_owned());
            HealthStatus::Unknown
        }
    };
    let weight = opt_limit(
        c[7],
        "weight",
        0,
        i64::from(validate::MAX_WEIGHT),
        DEFAULT_WEIGHT,
        &mut notes,
    )?;
    if weight > u32::from(u8::MAX) {
        notes.push(format!(
            "weight {weight}: v1 read it as {} (it kept weights in a u8)",
            weight % 256
        ));
    }
    let soft_limit = opt_limit(
        c[8],
        "soft_limit",
        1,
        i64::from(u32::MAX),
        DEFAULT_SOFT_LIMIT,
        &mut notes,
    )?;
    let hard_limit = opt_limit(
        c[9],
        "hard_limit",
        1,
        i64::from(u32::MAX),
        DEFAULT_HARD_LIMIT,
        &mut notes,
    )?;
    let backend = Backend {
        id: id.to_owned(),
        service: app.to_owned(),
        region,
        country,
        addr,
        port,
        weight,
        soft_limit,
        hard_limit,
        draining: false,
        enabled: true,
        check: None,
        lease: None,
    };
    validate::check_backend(&backend)?;
    Ok(Planned {
        backend,
        status,
        notes,
    })
}

fn v1_error(path: &Path) -> impl Fn(rusqlite::Error) -> StateError + '_ {
    move |e| StateError::V1Schema {
        path: path.to_owned(),
        reason: e.to_string(),
    }
}

/// Reads a v1 database (never writing to it) and plans the v2 writes: the statements, in
/// order, and the report of what they import and what was skipped.
pub fn plan_v1(
    v1_path: &Path,
    opts: &ImportOptions,
) -> Result<(Vec<Stmt>, ImportReport), StateError> {
    let options_error = |reason: String| StateError::Invalid {
        table: "import options",
        key: String::new(),
        reason,
    };
    if let Ipv4Overlay::Prefix96(net) = &opts.ipv4 {
        if net.prefix_len() != 96 {
            return Err(options_error(format!(
                "the IPv4 mapping prefix {net} must be a /96"
            )));
        }
    }
    validate::check_id("pop_id", &opts.pop_id).map_err(options_error)?;
    let mut seen: HashMap<SocketAddr, &str> = HashMap::new();
    for (app, vip) in &opts.vips {
        if let Some(other) = seen.insert(*vip, app) {
            return Err(options_error(format!(
                "apps {other} and {app} are given the same VIP {vip}"
            )));
        }
    }

    let conn = Connection::open_with_flags(
        v1_path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(v1_error(v1_path))?;
    let mut stmt = conn
        .prepare("SELECT name FROM pragma_table_info('backends')")
        .map_err(v1_error(v1_path))?;
    let present = stmt
        .query_map([], |row| row.get::<_, String>(0))
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(v1_error(v1_path))?;
    let has = |col: &str| present.iter().any(|p| p.eq_ignore_ascii_case(col));
    if let Some(missing) = REQUIRED.iter().find(|c| !has(c)) {
        return Err(StateError::V1Schema {
            path: v1_path.to_owned(),
            reason: format!("no backends table with a {missing} column: not a v1 routing.db"),
        });
    }
    // Older v1 files lack some columns (the first had no country): read those as NULL.
    let select = COLUMNS
        .iter()
        .map(|c| {
            if REQUIRED.contains(c) || (OPTIONAL.contains(c) && has(c)) {
                (*c).to_owned()
            } else {
                "NULL".to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    let mut stmt = conn
        .prepare(&format!("SELECT {select} FROM backends ORDER BY id"))
        .map_err(v1_error(v1_path))?;
    let mut rows = stmt.query([]).map_err(v1_error(v1_path))?;

    let mut report = ImportReport::default();
    let mut planned: Vec<Planned> = Vec::new();
    let mut endpoints: HashMap<(String, BackendAddr, u16), String> = HashMap::new();
    while let Some(row) = rows.next().map_err(v1_error(v1_path))? {
        let mut cells = Vec::with_capacity(COLUMNS.len());
        for i in 0..COLUMNS.len() {
            cells.push(Cell::from(row.get_ref(i).map_err(v1_error(v1_path))?));
        }
        let id = validate::key_text(cells[0]);
        // v1's own filter: `WHERE deleted IS NULL OR deleted = 0`.
        let live = match cells[10] {
            Cell::Null | Cell::Int(0) => true,
            Cell::Real(f) => f == 0.0,
            _ => false,
        };
        if !live {
            report.skipped.push(SkippedRow {
                id,
                reason: "soft-deleted in v1".to_owned(),
            });
            continue;
        }
        match plan_row(&cells, opts) {
            Ok(p) => {
                let key = (
                    p.backend.service.clone(),
                    p.backend.addr.clone(),
                    p.backend.port,
                );
                if let Some(other) = endpoints.get(&key) {
                    report.skipped.push(SkippedRow {
                        id,
                        reason: format!("same address and port as {other} of its app"),
                    });
                    continue;
                }
                endpoints.insert(key, p.backend.id.clone());
                planned.push(p);
            }
            Err(reason) => report.skipped.push(SkippedRow { id, reason }),
        }
    }

    let now = unix_now();
    let mut stmts = Vec::new();
    let mut apps: Vec<&str> = planned.iter().map(|p| p.backend.service.as_str()).collect();
    apps.sort_unstable();
    apps.dedup();
    for app in apps {
        let Some(vip) = opts.vips.get(app) else {
            continue;
        };
        let service = Service {
            id: app.to_owned(),
            vip: vip.ip(),
            port: vip.port(),
            check: None,
        };
        stmts.extend(write::upsert_service(&service, now)?);
        report.services.push(app.to_owned());
    }
    for p in planned {
        stmts.extend(write::upsert_backend(&p.backend, now)?);
        stmts.extend(write::upsert_health(&Health {
            pop_id: opts.pop_id.clone(),
            backend_id: p.backend.id.clone(),
            status: p.status,
            rtt_us: None,
            checked_at: now,
            reason: String::new(),
        })?);
        report.imported.push(ImportedRow {
            id: p.backend.id,
            service: p.backend.service,
            address: address_text(&p.backend.addr),
            notes: p.notes,
        });
    }
    Ok((stmts, report))
}

/// Imports the v1 database at `v1_path` into `into` in one transaction. Idempotent: importing
/// again rewrites the same rows.
pub fn import_v1(
    v1_path: impl AsRef<Path>,
    into: &SqliteState,
    opts: &ImportOptions,
) -> Result<ImportReport, StateError> {
    let v1_path: PathBuf = v1_path.as_ref().to_owned();
    let (stmts, report) = plan_v1(&v1_path, opts)?;
    into.execute(&stmts)?;
    Ok(report)
}

/// The VIP map from `app=ip:port` pairs, as a CLI would take them.
pub fn parse_vips<'a>(
    pairs: impl IntoIterator<Item = &'a str>,
) -> Result<BTreeMap<String, SocketAddr>, String> {
    let mut out = BTreeMap::new();
    for pair in pairs {
        let (app, addr) = pair
            .split_once('=')
            .ok_or_else(|| format!("{} is not app=ip:port", show(pair)))?;
        let addr: SocketAddr = addr
            .parse()
            .map_err(|_| format!("{} is not ip:port", show(addr)))?;
        let ip: IpAddr = addr.ip();
        validate::check_vip(ip)?;
        out.insert(app.to_owned(), addr);
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::state::testutil::TempDir;

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
}
