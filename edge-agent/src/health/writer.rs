//! Writes this POP's health rows to the state store: one transaction at a time, and what
//! queued meanwhile coalesced to the latest row per backend. A store that answers slowly (a
//! remote Corrosion node) or refuses (its concurrency limit) then sees one writer, not a
//! flood, and the rows it gets are the current ones.

use std::{collections::BTreeMap, sync::Arc};

use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::{
    model::Health,
    state::{write, StateStore},
};

/// Queues rows for the writer task.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::UnboundedSender<Job>,
}

enum Job {
    Rows(Vec<Health>),
    /// (POP, backend) rows about backends that are gone.
    Forget(Vec<(String, String)>),
}

impl Writer {
    /// Starts the writer task (inside a tokio runtime).
    pub fn start(store: Arc<dyn StateStore>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(store, rx));
        Writer { tx }
    }

    pub fn send(&self, rows: Vec<Health>) {
        if !rows.is_empty() {
            // The task only ends with the runtime.
            let _ = self.tx.send(Job::Rows(rows));
        }
    }

    /// Removes (POP, backend) health rows whose backend is gone.
    pub fn forget(&self, orphans: Vec<(String, String)>) {
        if !orphans.is_empty() {
            let _ = self.tx.send(Job::Forget(orphans));
        }
    }
}

async fn run(store: Arc<dyn StateStore>, mut rx: mpsc::UnboundedReceiver<Job>) {
    let mut failing = false;
    while let Some(first) = rx.recv().await {
        let mut latest: BTreeMap<(String, String), Option<Health>> = BTreeMap::new();
        let mut add = |job: Job| match job {
            Job::Rows(rows) => {
                for row in rows {
                    latest.insert((row.pop_id.clone(), row.backend_id.clone()), Some(row));
                }
            }
            Job::Forget(orphans) => {
                for key in orphans {
                    latest.insert(key, None);
                }
            }
        };
        add(first);
        while let Ok(more) = rx.try_recv() {
            add(more);
        }
        let mut stmts = Vec::new();
        for ((pop_id, backend_id), row) in &latest {
            match row {
                Some(row) => match write::upsert_health(row) {
                    Ok(s) => stmts.extend(s),
                    Err(error) => warn!(%error, "health row refused"),
                },
                None => stmts.push(write::forget_orphan_health(pop_id, backend_id)),
            }
        }
        let store = Arc::clone(&store);
        let rows = latest.len();
        // Off the runtime's thread: the store may block (SQLite) or wait on the network.
        let result = tokio::task::spawn_blocking(move || store.execute(&stmts)).await;
        match result {
            Ok(Ok(())) if failing => {
                failing = false;
                info!(rows, "health rows written again");
            }
            Ok(Ok(())) => {}
            // One line when writes start failing, not one per batch.
            Ok(Err(error)) if !failing => {
                failing = true;
                warn!(%error, rows, "writing health rows failed; the next changes will retry");
            }
            Err(error) if !failing => {
                failing = true;
                warn!(%error, rows, "writing health rows failed; the next changes will retry");
            }
            _ => {}
        }
    }
}
