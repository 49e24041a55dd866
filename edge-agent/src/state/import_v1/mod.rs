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

mod row;
#[cfg(test)]
pub(crate) mod tests;

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
};

use ipnet::Ipv6Net;
use rusqlite::{Connection, OpenFlags};
use serde::Serialize;

use self::row::{plan_row, Planned};
use super::{
    sqlite::unix_now,
    validate::{self, show, Cell},
    write::{self, Stmt},
    SqliteState, StateError,
};
use crate::model::{BackendAddr, Health, Service};

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
            address: validate::address_text(&p.backend.addr),
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
