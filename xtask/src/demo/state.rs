//! The state the POPs and hosts share: one SQLite file (the agents' default source), written
//! here once with the service, its backends and the 6PN prefix, and read for every POP's
//! health view. The agents publish their own `pops` rows (keys, endpoints) and `health` rows.

use std::path::Path;

use anyhow::Context as _;
use rusqlite::{params, Connection, OpenFlags};

use super::plan::{sixpn_addr, BACKENDS, BACKEND_PORT, SIXPN_PREFIX, VIP, VIP_PORT};

/// The agents' schema: the file the agent embeds and migrates from, so this database is
/// exactly what an agent would have created.
const SCHEMA: &str = include_str!("../../../edge-agent/schema/edgeproxy.sql");

pub fn init(db: &Path) -> anyhow::Result<()> {
    let conn = Connection::open(db).with_context(|| format!("creating {}", db.display()))?;
    // The agents' journal mode (WAL: their readers and writers never block each other), set
    // while no agent has the file open.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.execute_batch(SCHEMA)
        .context("applying edge-agent/schema/edgeproxy.sql")?;
    let now = unix_now();
    conn.execute(
        "INSERT INTO settings (key, value, updated_at) VALUES ('sixpn.prefix', ?1, ?2)",
        params![SIXPN_PREFIX, now],
    )?;
    conn.execute(
        "INSERT INTO services (id, vip, port, updated_at, created_at) VALUES ('web', ?1, ?2, ?3, ?3)",
        params![VIP, VIP_PORT, now],
    )?;
    for b in &BACKENDS {
        conn.execute(
            "INSERT INTO backends (id, service_id, region, country, address, port, weight, \
             soft_limit, hard_limit, updated_at, created_at) \
             VALUES (?1, 'web', ?2, ?3, ?4, ?5, 1, 1000, 10000, ?6, ?6)",
            params![
                b.id,
                b.region,
                b.country,
                sixpn_addr(b.region, b.host_number),
                BACKEND_PORT,
                now
            ],
        )?;
    }
    Ok(())
}

/// One POP's view of one backend, as that POP wrote it.
#[derive(Clone, Debug, Default)]
pub struct HealthRow {
    pub pop_id: String,
    pub backend_id: String,
    pub status: String,
    pub rtt_us: Option<i64>,
    pub checked_at: i64,
}

/// Every POP's health rows.
pub fn health(db: &Path) -> anyhow::Result<Vec<HealthRow>> {
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .with_context(|| format!("opening {}", db.display()))?;
    conn.busy_timeout(std::time::Duration::from_millis(200))?;
    let mut stmt = conn.prepare(
        "SELECT pop_id, backend_id, status, rtt_us, checked_at FROM health ORDER BY pop_id, backend_id",
    )?;
    let rows = stmt
        .query_map([], |r| {
            Ok(HealthRow {
                pop_id: r.get(0)?,
                backend_id: r.get(1)?,
                status: r.get(2)?,
                rtt_us: r.get(3)?,
                checked_at: r.get(4)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
