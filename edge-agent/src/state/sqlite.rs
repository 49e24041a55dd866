//! The embedded default state source: a local SQLite file (`routing.db`) that any process may
//! write, for example the `sqlite3` command-line tool.

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{Mutex, MutexGuard},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use rusqlite::{params_from_iter, Connection, TransactionBehavior};
use tracing::{info, warn};

use super::{
    owners::Incumbents,
    schema,
    validate::{columns, Cell, SnapshotBuilder},
    write::{self, Stmt},
    Changes, SnapshotResult, StateError, StateSource, Watcher,
};
use crate::model::{Backend, Health, Pop, Service};

/// How long a write waits for another process's write to finish. Reads never wait in WAL mode.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Which file a path names. A file replaced by `mv new.db routing.db`, or removed, gets a new
/// inode or none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FileId {
    dev: u64,
    ino: u64,
}

pub(crate) fn file_id(path: &Path) -> Option<FileId> {
    std::fs::metadata(path).ok().map(|m| FileId {
        dev: m.dev(),
        ino: m.ino(),
    })
}

pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

struct Inner {
    conn: Connection,
    file: Option<FileId>,
    /// What the last snapshot held, for the next one's conflicts ([`super::owners`]).
    incumbents: Incumbents,
}

/// The state in a local SQLite file.
pub struct SqliteState {
    path: PathBuf,
    inner: Mutex<Inner>,
}

/// [`open_conn_once`], again while another process holds a lock it cannot wait for: agents
/// starting together on one fresh file all switch it to WAL and create the schema, and SQLite
/// answers those with `SQLITE_BUSY` at once, without its busy handler, rather than risk a
/// deadlock.
fn open_conn(path: &Path) -> Result<Connection, StateError> {
    let started = std::time::Instant::now();
    loop {
        match open_conn_once(path) {
            Err(StateError::Sqlite { source, .. })
                if is_busy(&source) && started.elapsed() < BUSY_TIMEOUT =>
            {
                std::thread::sleep(Duration::from_millis(20 + fastrand::u64(..30)));
            }
            result => return result,
        }
    }
}

fn is_busy(error: &rusqlite::Error) -> bool {
    matches!(
        error.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

fn open_conn_once(path: &Path) -> Result<Connection, StateError> {
    let sqlite = |source| StateError::Sqlite {
        path: path.to_owned(),
        source,
    };
    let mut conn = Connection::open(path).map_err(sqlite)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(sqlite)?;
    schema::refuse_v1(&conn, path)?;
    // WAL: readers (the agent) and a writer (an operator's sqlite3, the health checker) never
    // block each other, and each commit is an append to the -wal file that the watcher sees.
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(sqlite)?;
    if !mode.eq_ignore_ascii_case("wal") {
        warn!(path = %path.display(), mode, "state database is not in WAL mode; readers and writers will block each other");
    }
    // In WAL mode NORMAL loses at most the last commits on power loss, never consistency; FULL
    // would fsync every health update.
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(sqlite)?;
    schema::apply(&mut conn, path)?;
    Ok(conn)
}

/// The widest row a source selects ([`columns::BACKENDS`]).
const MAX_COLUMNS: usize = columns::BACKENDS.len();

fn select(table: &str, cols: &[&str]) -> String {
    format!("SELECT {} FROM {table}", cols.join(", "))
}

fn read_table(
    conn: &Connection,
    table: &str,
    cols: &[&str],
    mut push: impl FnMut(&[Cell<'_>]),
) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(&select(table, cols))?;
    let mut rows = stmt.query([])?;
    let n = cols.len().min(MAX_COLUMNS);
    while let Some(row) = rows.next()? {
        // On the stack: a snapshot of many rows allocates nothing per row here.
        let mut cells = [Cell::Null; MAX_COLUMNS];
        for (i, cell) in cells.iter_mut().enumerate().take(n) {
            *cell = Cell::from(row.get_ref(i)?);
        }
        push(&cells[..n]);
    }
    Ok(())
}

impl SqliteState {
    /// Opens the file, creating it (and its directory) with the schema if it is missing, and
    /// bringing an older v2 file up to the schema. Refuses a v1 `routing.db`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StateError> {
        let path = path.as_ref().to_owned();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StateError::Io {
                path: dir.to_owned(),
                source,
            })?;
        }
        let conn = open_conn(&path)?;
        let file = file_id(&path);
        info!(path = %path.display(), "state database open");
        Ok(SqliteState {
            path,
            inner: Mutex::new(Inner {
                conn,
                file,
                incumbents: Incumbents::default(),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn sqlite(&self) -> impl Fn(rusqlite::Error) -> StateError + '_ {
        |source| StateError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// The connection, as long as the path still names the file it was opened on.
    fn lock(&self) -> Result<MutexGuard<'_, Inner>, StateError> {
        // A panic while the lock was held leaves the connection usable: an open transaction is
        // rolled back when it is dropped during unwinding.
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        // Reopening would not help: the old file's -wal and -shm keep their names, and a new
        // connection would read the old WAL's pages over the new file. An empty recreated file
        // would withdraw every service. So the last good state stays, and the error says why.
        if file_id(&self.path) != inner.file {
            return Err(StateError::Replaced {
                path: self.path.clone(),
            });
        }
        Ok(inner)
    }

    /// Reads every table in one read transaction (so the view is consistent) and validates
    /// every row.
    pub fn snapshot(&self) -> SnapshotResult {
        let mut guard = self.lock()?;
        let inner = &mut *guard;
        let mut b = SnapshotBuilder::with_incumbents(&inner.incumbents);
        let tx = inner.conn.transaction().map_err(self.sqlite())?;
        let mut read = || -> rusqlite::Result<()> {
            read_table(&tx, "services", &columns::SERVICES, |c| b.service(c))?;
            read_table(&tx, "backends", &columns::BACKENDS, |c| b.backend(c))?;
            read_table(&tx, "pops", &columns::POPS, |c| b.pop(c))?;
            read_table(&tx, "health", &columns::HEALTH, |c| b.health(c))?;
            read_table(&tx, "settings", &columns::SETTINGS, |c| b.setting(c))
        };
        read().map_err(self.sqlite())?;
        tx.finish().map_err(self.sqlite())?;
        let (snapshot, rejected) = b.finish();
        inner.incumbents = Incumbents::of(&snapshot);
        Ok((snapshot, rejected))
    }

    /// Runs the statements in one write transaction.
    pub fn execute(&self, stmts: &[Stmt]) -> Result<(), StateError> {
        let mut inner = self.lock()?;
        let tx = inner
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.sqlite())?;
        for stmt in stmts {
            let rows = tx
                .execute(stmt.sql, params_from_iter(stmt.params.iter()))
                .map_err(self.sqlite())?;
            if let Some(error) = stmt.none_error(rows as u64) {
                return Err(error);
            }
        }
        tx.commit().map_err(self.sqlite())
    }

    pub fn upsert_service(&self, service: &Service) -> Result<(), StateError> {
        self.execute(&write::upsert_service(service, unix_now())?)
    }

    /// Keeps the row's `metadata`.
    pub fn upsert_backend(&self, backend: &Backend) -> Result<(), StateError> {
        self.execute(&write::upsert_backend(backend, unix_now())?)
    }

    pub fn set_backend_enabled(&self, id: &str, enabled: bool) -> Result<(), StateError> {
        self.execute(&write::set_backend_enabled(id, enabled, unix_now()))
    }

    pub fn set_backend_draining(&self, id: &str, draining: bool) -> Result<(), StateError> {
        self.execute(&write::set_backend_draining(id, draining, unix_now()))
    }

    pub fn set_backend_weight(&self, id: &str, weight: u32) -> Result<(), StateError> {
        self.execute(&write::set_backend_weight(id, weight, unix_now())?)
    }

    /// Also removes every POP's health rows about the backend.
    pub fn delete_backend(&self, id: &str) -> Result<(), StateError> {
        self.execute(&write::delete_backend(id))
    }

    pub fn upsert_pop(&self, pop: &Pop) -> Result<(), StateError> {
        self.execute(&write::upsert_pop(pop, unix_now())?)
    }

    pub fn upsert_health(&self, health: &Health) -> Result<(), StateError> {
        self.execute(&write::upsert_health(health)?)
    }

    pub fn upsert_setting(&self, key: &str, value: &str) -> Result<(), StateError> {
        self.execute(&write::upsert_setting(key, value, unix_now())?)
    }
}

impl StateSource for SqliteState {
    fn describe(&self) -> String {
        format!("sqlite {}", self.path.display())
    }

    fn snapshot(&self) -> SnapshotResult {
        SqliteState::snapshot(self)
    }

    fn changes(&self) -> Result<Box<dyn Changes>, StateError> {
        Ok(Box::new(Watcher::new(&self.path)?))
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use super::*;
    use crate::{
        model::{BackendAddr, HealthStatus},
        state::testutil::{rss_kib, TempDir},
    };

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

    /// A generated malformed row: its key, what it breaks, and the word the reason must hold.
    struct Bad {
        table: &'static str,
        key: String,
        sql: String,
        expect: &'static str,
    }

    fn malformed(i: usize) -> Bad {
        let id = format!("bad-{i:05}");
        let row = |cols: &str, vals: String| {
            format!("INSERT INTO backends (id, service_id, region, country, address, port{cols}) VALUES ('{id}', 'svc-{}', 'sa', 'BR', {vals})", i % 10)
        };
        let (sql, expect) = match i % 20 {
            0 => (row("", "'10.50.1.1', 80".into()), "IPv4"),
            1 => (row("", "'not-an-address', 80".into()), "internal"),
            2 => (row("", format!("'fd10::{:x}', 0", i)), "port 0"),
            3 => (row("", format!("'fd10::{:x}', 70000", i)), "port 70000"),
            4 => (row(", weight", format!("'fd10::{:x}', 80, 1001", i)), "weight 1001"),
            5 => (row(", weight", format!("'fd10::{:x}', 80, -3", i)), "weight -3"),
            6 => (
                row(", soft_limit, hard_limit", format!("'fd10::{:x}', 80, 500, 10", i)),
                "above hard_limit",
            ),
            7 => (
                format!("INSERT INTO backends (id, service_id, region, country, address, port) VALUES ('{id}', 'svc-{}', 'sa', 'Brazil', 'fd10::{:x}', 80)", i % 10, i),
                "country",
            ),
            8 => (
                format!("INSERT INTO backends (id, service_id, region, country, address, port) VALUES ('{id}', 'svc-{}', 'South America', 'BR', 'fd10::{:x}', 80)", i % 10, i),
                "region",
            ),
            9 => (
                format!("INSERT INTO backends (id, service_id, region, country, address, port) VALUES ('{id}', 'missing', 'sa', 'BR', 'fd10::{:x}', 80)", i),
                "unknown service",
            ),
            10 => (row(", enabled", format!("'fd10::{:x}', 80, 'yes'", i)), "enabled"),
            11 => (row(", draining", format!("'fd10::{:x}', 80, 7", i)), "draining"),
            12 => (row(", metadata", format!("'fd10::{:x}', 80, 'not json'", i)), "metadata"),
            13 => (row("", format!("'fd10::{:x}', 'eighty'", i)), "port must be an integer"),
            14 => (row("", "'-bad-.internal', 80".into()), "DNS label"),
            15 => (row("", "X'deadbeef', 80".into()), "address must be text"),
            16 => (
                format!("INSERT INTO services (id, vip, port) VALUES ('{id}', '999.1.1.1', 80)"),
                "vip",
            ),
            17 => (
                format!("INSERT INTO services (id, vip, port, proto) VALUES ('{id}', '198.51.100.{}', {}, 'udp')", i % 250, 1000 + i),
                "tcp only",
            ),
            18 => (
                format!("INSERT INTO health (pop_id, backend_id, status) VALUES ('pop-1', '{id}', 'sick')"),
                "status",
            ),
            _ => (
                format!("INSERT INTO pops (id, region, overlay_addr) VALUES ('{id}', 'sa', '10.50.0.{}')", i % 250),
                "IPv4",
            ),
        };
        let table = match i % 20 {
            16 | 17 => "services",
            18 => "health",
            19 => "pops",
            _ => "backends",
        };
        let key = if table == "health" {
            format!("pop-1/{id}")
        } else {
            id
        };
        Bad {
            table,
            key,
            sql,
            expect,
        }
    }

    #[test]
    fn ten_thousand_malformed_rows_are_rejected_and_memory_stays_flat() -> anyhow::Result<()> {
        const BAD: usize = 10_000;
        const GOOD: usize = 2_000;
        let dir = TempDir::new("malformed")?;
        let path = dir.path().join("routing.db");
        let state = SqliteState::open(&path)?;
        let mut conn = Connection::open(&path)?;
        let tx = conn.transaction()?;
        for s in 0..10 {
            tx.execute(
                "INSERT INTO services (id, vip, port) VALUES (?1, ?2, 80)",
                (format!("svc-{s}"), format!("203.0.113.{}", s + 1)),
            )?;
        }
        for g in 0..GOOD {
            tx.execute(
                "INSERT INTO backends (id, service_id, region, country, address, port, weight) \
                 VALUES (?1, ?2, 'eu', 'DE', ?3, 8080, ?4)",
                (
                    format!("good-{g:05}"),
                    format!("svc-{}", g % 10),
                    format!("fd20::{g:x}"),
                    (g % 1001) as i64,
                ),
            )?;
            // Valid health rows for half of them, from two POPs.
            if g % 2 == 0 {
                tx.execute(
                    "INSERT INTO health (pop_id, backend_id, status, rtt_us, checked_at) \
                     VALUES (?1, ?2, 'up', 900, 1700000000)",
                    (format!("pop-{}", g % 4 / 2), format!("good-{g:05}")),
                )?;
            }
        }
        let bad: Vec<Bad> = (0..BAD).map(malformed).collect();
        for b in &bad {
            tx.execute(&b.sql, [])?;
        }
        tx.commit()?;

        let started = std::time::Instant::now();
        let (snap, rejected) = state.snapshot()?;
        let first = started.elapsed();

        let good_ids: Vec<String> = (0..GOOD).map(|g| format!("good-{g:05}")).collect();
        let got: Vec<&str> = snap.backends.iter().map(|b| b.id.as_str()).collect();
        assert_eq!(got, good_ids, "every valid backend, and nothing else");
        assert_eq!(snap.services.len(), 10);
        assert_eq!(snap.health.len(), GOOD / 2);
        assert_eq!(rejected.len(), BAD, "one rejection per malformed row");
        let by_key: std::collections::HashMap<(&str, &str), &str> = rejected
            .iter()
            .map(|r| ((r.table, r.key.as_str()), r.reason.as_str()))
            .collect();
        for b in &bad {
            let Some(reason) = by_key.get(&(b.table, b.key.as_str())) else {
                panic!("{} {} was not rejected ({})", b.table, b.key, b.sql);
            };
            assert!(
                reason.contains(b.expect) && !reason.contains('\n'),
                "{} {}: reason {reason:?} should mention {:?}",
                b.table,
                b.key,
                b.expect
            );
        }

        // Memory: repeated snapshots must not accumulate.
        for _ in 0..5 {
            state.snapshot()?;
        }
        let before = rss_kib().unwrap_or(0);
        let mut times = Vec::new();
        for _ in 0..50 {
            let t = std::time::Instant::now();
            let (snap, rejected) = state.snapshot()?;
            times.push(t.elapsed());
            assert_eq!((snap.backends.len(), rejected.len()), (GOOD, BAD));
        }
        let after = rss_kib().unwrap_or(0);
        times.sort();
        println!(
            "malformed rows: {} rows per snapshot, first {first:?}, median {:?}; \
             RSS after 5 warm-up snapshots {before} KiB, after 50 more {after} KiB ({:+} KiB)",
            GOOD + BAD + 10 + GOOD / 2,
            times[times.len() / 2],
            after as i64 - before as i64,
        );
        // A leak of even one snapshot's rows per round would add hundreds of MiB over 50
        // rounds; this bound leaves room for the other tests running in this process.
        assert!(
            after.saturating_sub(before) < 64 * 1024,
            "RSS grew from {before} KiB to {after} KiB over 50 snapshots"
        );
        Ok(())
    }
}
