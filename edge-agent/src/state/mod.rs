//! The control-plane state store: SQLite schema v2, row validation, the local `routing.db`
//! source with its watcher, and the v1 importer.
//!
//! A source hands out validated [`Snapshot`]s plus the rows it rejected, and tells when the state
//! may have changed ([`StateSource`]). The local file ([`SqliteState`]) is the embedded default;
//! a Corrosion source plugs in beside it: it feeds the rows of its subscriptions, in the column
//! order of [`validate::columns`], through the same [`validate::SnapshotBuilder`], and sends the
//! statements of [`write`](mod@write) through Corrosion's transactions API. Who keeps a VIP, an endpoint
//! or a DNS name that rows contend for is [`owners`]' rule; sources remember what their last
//! snapshot held ([`owners::Incumbents`]) for it.

pub mod corrosion;
pub mod import_v1;
pub mod owners;
pub mod schema;
pub mod sqlite;
pub mod validate;
pub mod watch;
pub mod write;

#[cfg(test)]
mod testutil;

use std::{future::Future, path::PathBuf, pin::Pin};

use thiserror::Error;

pub use self::{
    import_v1::{import_v1, ImportOptions, ImportReport, Ipv4Overlay},
    sqlite::SqliteState,
    watch::Watcher,
};
use crate::model::{RejectedRow, Snapshot};

#[derive(Debug, Error)]
pub enum StateError {
    #[error("state database {path}: {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} is a v1 routing.db (its backends table has wg_ip and no service_id); \
         import it into a v2 file with the v1 importer"
    )]
    V1Database { path: PathBuf },
    #[error(
        "{path} was replaced or removed while open; refusing to read it, since SQLite would pair \
         a new file with the old one's -wal (sqlite.org/howtocorrupt.html, 2.4): restart the \
         agent, and change a live state file in place (sqlite3 <file> \".restore new.db\"), \
         never with mv or rm"
    )]
    Replaced { path: PathBuf },
    #[error("state database {path}: schema: {reason}")]
    Schema { path: PathBuf, reason: String },
    #[error("v1 database {path}: {reason}")]
    V1Schema { path: PathBuf, reason: String },
    #[error("{table} {key:?}: {reason}")]
    Invalid {
        table: &'static str,
        key: String,
        reason: String,
    },
    #[error("{table} {key:?} does not exist")]
    NotFound { table: &'static str, key: String },
    /// The row exists but is not the writer's to change (a registration on an operator's row).
    #[error("{table} {key:?}: {reason}")]
    Conflict {
        table: &'static str,
        key: String,
        reason: String,
    },
    #[error("{what}: {reason}")]
    Remote { what: String, reason: String },
}

/// A validated state and the rows that did not make it.
pub type SnapshotResult = Result<(Snapshot, Vec<RejectedRow>), StateError>;

/// The future [`Changes::changed`] returns. Boxed so that sources can be chosen at run time
/// (`Box<dyn StateSource>`).
pub type ChangeFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// Where the control-plane state comes from: the local file, or (later) Corrosion.
pub trait StateSource: Send + Sync {
    /// What the source is, for logs and `edge-agent status` (kind and location).
    fn describe(&self) -> String;

    /// The whole state as it is now, validated. May block on I/O: call it from a blocking
    /// context (`tokio::task::spawn_blocking`).
    fn snapshot(&self) -> SnapshotResult;

    /// A feed of change notifications, independent of any other feed of the same source.
    fn changes(&self) -> Result<Box<dyn Changes>, StateError>;
}

/// A source the agent also writes to: health rows, registrations.
pub trait StateStore: StateSource {
    /// Runs the statements as one transaction. May block on I/O: call it from a blocking
    /// context (`tokio::task::spawn_blocking`).
    fn execute(&self, stmts: &[write::Stmt]) -> Result<(), StateError>;

    /// How far behind the source may be: zero while it is known to be current (a watched
    /// local file, a live subscription); while it is not, the time since it was last heard
    /// from; `None` before it was ever read.
    fn staleness(&self) -> Option<std::time::Duration> {
        Some(std::time::Duration::ZERO)
    }

    /// Source-specific details for `edge-agent status`.
    fn detail(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}

impl StateStore for SqliteState {
    fn execute(&self, stmts: &[write::Stmt]) -> Result<(), StateError> {
        SqliteState::execute(self, stmts)
    }
}

impl StateStore for corrosion::CorrosionState {
    fn execute(&self, stmts: &[write::Stmt]) -> Result<(), StateError> {
        corrosion::CorrosionState::execute(self, stmts)
    }

    fn staleness(&self) -> Option<std::time::Duration> {
        corrosion::CorrosionState::staleness(self)
    }

    fn detail(&self) -> serde_json::Value {
        serde_json::to_value(self.health()).unwrap_or_default()
    }
}

/// Change notifications of a [`StateSource`].
pub trait Changes: Send {
    /// Returns once the state may have changed since the feed was made or since the previous
    /// return. Changes that happen before the caller takes a snapshot are coalesced, never
    /// lost: take the snapshot after this returns.
    fn changed(&mut self) -> ChangeFuture<'_>;
}
