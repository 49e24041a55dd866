//! The embedded default state source: a local SQLite file (`routing.db`) that any process may
//! write, for example the `sqlite3` command-line tool.

pub(super) mod open;
#[cfg(test)]
mod tests;

use std::{
    path::{Path, PathBuf},
    sync::{Mutex, MutexGuard},
    time::{SystemTime, UNIX_EPOCH},
};

use rusqlite::{params_from_iter, Connection, TransactionBehavior};
use tracing::info;

use self::open::{file_id, open_conn, FileId};
use super::{
    owners::Incumbents,
    validate::{columns, Cell, SnapshotBuilder},
    write::{self, Stmt},
    Changes, SnapshotResult, StateError, StateSource, Watcher,
};
use crate::model::{Backend, Health, Pop, Service};

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
