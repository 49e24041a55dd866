//! Opening the file: waiting out the locks that agents starting together on one fresh file
//! take, WAL, the schema; and knowing the file a path named when it was opened, so that one
//! replaced under the same path is noticed rather than read as the same state.

use std::{os::unix::fs::MetadataExt, path::Path, time::Duration};

use rusqlite::Connection;
use tracing::warn;

use crate::state::{schema, StateError};

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

/// [`open_conn_once`], again while another process holds a lock it cannot wait for: agents
/// starting together on one fresh file all switch it to WAL and create the schema, and SQLite
/// answers those with `SQLITE_BUSY` at once, without its busy handler, rather than risk a
/// deadlock.
pub(super) fn open_conn(path: &Path) -> Result<Connection, StateError> {
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
