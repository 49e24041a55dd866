//! What comes into the agent from outside, each read by a task of its own: the state (services,
//! backends, health rows) from its source, and the geo database from its file.
//!
//! The state goes out on a watch channel holding the latest good read: a read that fails keeps
//! the last one (the maps keep the last good state), and readers that fall behind skip to the
//! newest. The geo database goes to the reconcile task as a message: only that task writes the
//! tries, and a database is switched in steps there (see `reconcile`).

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::Arc,
    time::Instant,
};

use anyhow::Context as _;
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use super::Drain;
use crate::{
    config::AgentConfig,
    dataplane::pins::PinDir,
    geo::GeoDb,
    model::{Backend, BackendAddr, RejectedRow, Snapshot},
    state::{Changes, StateStore},
};

/// One good read of the state, and what the agent made of it.
#[derive(Debug)]
pub struct StateInput {
    pub snapshot: Arc<Snapshot>,
    pub read_at: Instant,
    /// Rows rejected since start (each counted once, however often it is read again).
    pub rejected_rows: u64,
    /// When each draining backend (by id) was first seen draining.
    pub draining_since: HashMap<String, Instant>,
    /// This POP's health rows about backends the state no longer has, to remove.
    pub orphan_health: Vec<(String, String)>,
}

/// The latest good read of the state; `None` until the first.
pub type StateRx = watch::Receiver<Option<Arc<StateInput>>>;

/// Reads the state and publishes each good read.
pub struct StateReader {
    source: Option<Arc<dyn StateStore>>,
    /// The configuration: its services are the state when there is no source (SIGHUP replaces
    /// them), its `pop_id` names this POP's rows.
    config: AgentConfig,
    pins: PinDir,
    /// The rejections of the last read: each is logged once, not on every reload.
    rejected_seen: HashSet<(&'static str, String, String)>,
    rejected_rows: u64,
    draining_since: HashMap<String, Instant>,
    tx: watch::Sender<Option<Arc<StateInput>>>,
    /// The bare snapshot, for the registration API and the lease reaper.
    snapshot_tx: watch::Sender<Arc<Snapshot>>,
}

impl StateReader {
    pub fn new(config: &AgentConfig, source: Option<Arc<dyn StateStore>>, pins: PinDir) -> Self {
        StateReader {
            source,
            config: config.clone(),
            pins,
            rejected_seen: HashSet::new(),
            rejected_rows: 0,
            draining_since: HashMap::new(),
            tx: watch::channel(None).0,
            snapshot_tx: watch::channel(Arc::new(Snapshot::default())).0,
        }
    }

    pub fn subscribe(&self) -> StateRx {
        self.tx.subscribe()
    }

    pub fn snapshots(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshot_tx.subscribe()
    }

    /// The latest good read, if any.
    pub fn latest(&self) -> Option<Arc<StateInput>> {
        self.tx.borrow().clone()
    }

    /// The source's change feed (none for the config's services).
    pub fn changes(&self) -> anyhow::Result<Option<Box<dyn Changes>>> {
        match &self.source {
            Some(source) => Ok(Some(source.changes().context("watching the state")?)),
            None => Ok(None),
        }
    }

    /// Reads the state and publishes it; false when it could not be read (the last good one
    /// stays).
    pub fn read(&mut self) -> bool {
        let (state, rejected) = match &self.source {
            Some(source) => match source.snapshot() {
                Ok(snapshot) => snapshot,
                Err(error) => {
                    warn!(source = %source.describe(), %error, "reading the state failed; the maps keep the last good state");
                    return false;
                }
            },
            None => self.config.snapshot(),
        };
        let orphan_health = orphan_health(&rejected, &self.config.pop_id);
        let now: HashSet<_> = rejected
            .into_iter()
            .map(|r| (r.table, r.key, r.reason))
            .collect();
        for (table, key, reason) in now.difference(&self.rejected_seen) {
            warn!(table, key = %key, reason = %reason, "row rejected");
            self.rejected_rows += 1;
        }
        self.rejected_seen = now;
        let read_at = Instant::now();
        track_draining(&mut self.draining_since, &state, read_at);
        let snapshot = Arc::new(state);
        self.snapshot_tx.send_replace(Arc::clone(&snapshot));
        match serde_json::to_vec(&*snapshot) {
            Ok(doc) => {
                let path = self.pins.agent_state_file();
                if let Err(error) = crate::dataplane::pins::write_atomically(&path, &doc) {
                    debug!(%error, path = %path.display(), "writing the state for the CLI");
                }
            }
            Err(error) => debug!(%error, "encoding the state for the CLI"),
        }
        self.tx.send_replace(Some(Arc::new(StateInput {
            snapshot,
            read_at,
            rejected_rows: self.rejected_rows,
            draining_since: self.draining_since.clone(),
            orphan_health,
        })));
        true
    }

    /// Reads again on every change of the source, and on every configuration reload (SIGHUP:
    /// the config's services may be the state), until the drain.
    pub async fn run(
        mut self,
        mut changes: Option<Box<dyn Changes>>,
        mut reloads: watch::Receiver<Arc<AgentConfig>>,
        mut drain: Drain,
    ) {
        loop {
            tokio::select! {
                () = drain.signaled() => break,
                () = async {
                    match changes.as_mut() {
                        Some(changes) => changes.changed().await,
                        None => std::future::pending().await,
                    }
                } => {
                    self.read();
                }
                Ok(()) = reloads.changed() => {
                    let new = Arc::clone(&reloads.borrow_and_update());
                    self.config.services.clone_from(&new.services);
                    self.config.geo.clone_from(&new.geo);
                    self.read();
                }
            }
        }
    }
}

/// This POP's rejected health rows whose backend is gone: (POP, backend) rows to delete.
fn orphan_health(rejected: &[RejectedRow], pop_id: &str) -> Vec<(String, String)> {
    let ours = format!("{pop_id}/");
    rejected
        .iter()
        .filter(|r| r.table == "health" && r.reason.starts_with("unknown backend"))
        .filter_map(|r| r.key.strip_prefix(&ours))
        .map(|backend| (pop_id.to_owned(), backend.to_owned()))
        .collect()
}

/// Keeps when each draining backend was first seen draining: a drain timeout counts from
/// then, across reads; a backend no longer draining (or gone) is forgotten.
fn track_draining(since: &mut HashMap<String, Instant>, state: &Snapshot, now: Instant) {
    since.retain(|id, _| state.backends.iter().any(|x| &x.id == id && x.draining));
    for backend in state.backends.iter().filter(|x| x.draining) {
        since.entry(backend.id.clone()).or_insert(now);
    }
}

/// The state's backends at an overlay endpoint (several services may share one).
pub fn backends_at(
    state: &Snapshot,
    (addr, port): (std::net::Ipv6Addr, u16),
) -> impl Iterator<Item = &Backend> {
    state
        .backends
        .iter()
        .filter(move |b| b.port == port && b.addr == BackendAddr::Ip(addr))
}

/// A geo database file read for the reconcile task.
pub struct GeoLoad {
    /// The configured file; `None`: no database (the tries are emptied).
    pub path: Option<PathBuf>,
    /// What reading it gave; `None` without a path.
    pub db: Option<Result<GeoDb, String>>,
    /// When the reload began, for the log.
    pub started: Instant,
}

/// Reads the configured geo database again on every configuration reload (SIGHUP), off the
/// runtime's thread (a MaxMind file takes a while), and hands it to the reconcile task.
pub async fn load_geo(
    mut reloads: watch::Receiver<Arc<AgentConfig>>,
    to_reconcile: mpsc::Sender<GeoLoad>,
    mut drain: Drain,
) {
    loop {
        tokio::select! {
            () = drain.signaled() => break,
            Ok(()) = reloads.changed() => {
                let path = reloads.borrow_and_update().geo.database.clone();
                let started = Instant::now();
                let db = match path.clone() {
                    None => None,
                    Some(path) => Some(
                        tokio::task::spawn_blocking(move || {
                            GeoDb::load(&path).map_err(|e| e.to_string())
                        })
                        .await
                        .unwrap_or_else(|e| Err(e.to_string())),
                    ),
                };
                if to_reconcile.send(GeoLoad { path, db, started }).await.is_err() {
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::fixtures::TestResult;

    fn backend(id: &str, draining: bool) -> Result<Backend, Box<dyn std::error::Error>> {
        let mut b = crate::agent::fixtures::backend(id, 1)?;
        b.draining = draining;
        Ok(b)
    }

    #[test]
    fn a_drain_counts_from_when_it_was_first_seen_and_ends_with_it() -> TestResult {
        let t0 = Instant::now();
        let t1 = t0 + std::time::Duration::from_secs(5);
        let mut since = HashMap::new();
        let mut state = Snapshot {
            backends: vec![backend("a", true)?, backend("b", false)?],
            ..Snapshot::default()
        };
        track_draining(&mut since, &state, t0);
        assert_eq!(since.get("a"), Some(&t0));
        assert!(!since.contains_key("b"));
        // Read again later: a's drain still counts from t0; b starts draining now.
        state.backends[1].draining = true;
        track_draining(&mut since, &state, t1);
        assert_eq!(since.get("a"), Some(&t0));
        assert_eq!(since.get("b"), Some(&t1));
        // a undrained, b removed: both forgotten.
        state.backends = vec![backend("a", false)?];
        track_draining(&mut since, &state, t1);
        assert!(since.is_empty());
        Ok(())
    }

    #[test]
    fn only_this_pops_rows_of_unknown_backends_are_orphans() {
        let row = |table: &'static str, key: &str, reason: &str| RejectedRow {
            table,
            key: key.to_owned(),
            reason: reason.to_owned(),
        };
        let rejected = [
            row("health", "pop-a/be1", "unknown backend be1"),
            row("health", "pop-b/be2", "unknown backend be2"),
            row("health", "pop-a/be3", "status: bad value"),
            row("backends", "pop-a/be4", "unknown backend be4"),
        ];
        assert_eq!(
            orphan_health(&rejected, "pop-a"),
            [("pop-a".to_owned(), "be1".to_owned())]
        );
    }
}
