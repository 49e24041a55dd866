//! Deletes registrations whose lease ran out.
//!
//! A lease that runs out takes the backend out of the pool at once (`Backend::in_pool`), but
//! the row stayed: 1,230 of them were found in one deployment, and an expired row still
//! conflicted with newer ones. So the row goes too, deleted by one agent, once: the POP that
//! holds the lease (`lease_pop`, the POP whose API took the registration or its latest
//! heartbeat) deletes it as soon as it runs out. Every other POP reading the same rows leaves
//! it alone for [`ORPHAN_GRACE_SECS`] more, and only then deletes it too: that covers a lease
//! POP that is gone, and registrations from before `lease_pop` was recorded. Two POPs deleting
//! the same row is harmless (the second changes nothing), it is only not what happens
//! normally.
//!
//! The delete names the lease it judged (`heartbeat_at`), so a heartbeat that lands in between
//! keeps the row; the backend's sidecar re-registers when its heartbeat finds the row gone.
//! Rows the validator rejected are reaped as well: their leases are in `Snapshot::leases`.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::watch;
use tracing::{info, warn};

use crate::{
    model::{unix_now, Snapshot},
    state::{validate::show, write, StateStore},
};

/// How long after a lease runs out a POP that does not hold it deletes the row.
pub const ORPHAN_GRACE_SECS: i64 = 600;

/// Registrations deleted in one transaction at most; the rest go on the next ticks.
pub const BATCH: usize = 256;

/// A delete that did not take (an error, or the row is somehow still there) is tried again
/// after this long, not on every tick.
const RETRY: Duration = Duration::from_secs(30);

/// How often the leases are looked at: they run out with time alone.
const TICK: Duration = Duration::from_secs(1);

/// The expired registrations `pop` deletes at `now_unix`: `(id, renewed_at)`, ids in order.
pub fn due(snapshot: &Snapshot, pop: &str, now_unix: i64) -> Vec<(String, i64)> {
    snapshot
        .leases
        .iter()
        .filter(|(_, lease)| {
            let mine = !pop.is_empty() && lease.pop == pop;
            let grace = if mine { 0 } else { ORPHAN_GRACE_SECS };
            now_unix > lease.expires_at().saturating_add(grace)
        })
        .map(|(id, lease)| (id.clone(), lease.renewed_at))
        .collect()
}

/// The reaper's memory: which deletes it has issued, so that each is issued once.
#[derive(Debug)]
pub struct Reaper {
    pop: String,
    issued: HashMap<(String, i64), Instant>,
}

impl Reaper {
    /// For the POP `pop` (its id as registrations record it; empty: it holds no lease).
    pub fn new(pop: &str) -> Self {
        Reaper {
            pop: pop.to_owned(),
            issued: HashMap::new(),
        }
    }

    /// The registrations to delete now (at most [`BATCH`]), each once: one that is still
    /// there [`RETRY`] after its delete was issued is tried again.
    pub fn next(&mut self, snapshot: &Snapshot, now_unix: i64, now: Instant) -> Vec<(String, i64)> {
        let due = due(snapshot, &self.pop, now_unix);
        self.issued
            .retain(|key, at| due.contains(key) && now.duration_since(*at) < RETRY);
        let mut batch = Vec::new();
        for key in due {
            if batch.len() == BATCH {
                break;
            }
            if !self.issued.contains_key(&key) {
                self.issued.insert(key.clone(), now);
                batch.push(key);
            }
        }
        batch
    }
}

/// Ids for a log line: quoted, the first few, and how many more.
fn listed(batch: &[(String, i64)]) -> String {
    const SHOWN: usize = 8;
    let mut text: Vec<String> = batch.iter().take(SHOWN).map(|(id, _)| show(id)).collect();
    if batch.len() > SHOWN {
        text.push(format!("and {} more", batch.len() - SHOWN));
    }
    text.join(", ")
}

/// Runs the reaper until the snapshot's sender is gone.
pub fn spawn(
    store: Arc<dyn StateStore>,
    mut snapshot: watch::Receiver<Arc<Snapshot>>,
    pop: &str,
) -> tokio::task::JoinHandle<()> {
    let mut reaper = Reaper::new(pop);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if snapshot.has_changed().is_err() {
                return;
            }
            let current = Arc::clone(&snapshot.borrow_and_update());
            let batch = reaper.next(&current, unix_now(), Instant::now());
            if batch.is_empty() {
                continue;
            }
            let stmts: Vec<write::Stmt> = batch
                .iter()
                .flat_map(|(id, renewed_at)| write::delete_expired(id, *renewed_at))
                .collect();
            let store = Arc::clone(&store);
            match tokio::task::spawn_blocking(move || store.execute(&stmts)).await {
                Ok(Ok(())) => info!(
                    count = batch.len(),
                    ids = %listed(&batch),
                    "registrations whose lease ran out deleted"
                ),
                Ok(Err(error)) => warn!(
                    %error,
                    ids = %listed(&batch),
                    "deleting registrations whose lease ran out failed; retrying later"
                ),
                Err(error) => warn!(%error, "deleting registrations whose lease ran out"),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Lease;

    fn lease(renewed_at: i64, pop: &str) -> Lease {
        Lease {
            renewed_at,
            interval_secs: 10,
            pop: pop.to_owned(),
        }
    }

    fn snapshot(leases: &[(&str, Lease)]) -> Snapshot {
        Snapshot {
            leases: leases
                .iter()
                .map(|(id, l)| ((*id).to_owned(), l.clone()))
                .collect(),
            ..Snapshot::default()
        }
    }

    #[test]
    fn the_lease_holder_deletes_at_expiry_others_after_the_grace() {
        let now = 10_000;
        // Runs out at renewed_at + 30.
        let s = snapshot(&[
            ("mine-live", lease(now - 30, "pop-a")),
            ("mine-out", lease(now - 31, "pop-a")),
            ("theirs-out", lease(now - 31, "pop-b")),
            (
                "theirs-long-out",
                lease(now - 31 - ORPHAN_GRACE_SECS, "pop-b"),
            ),
            (
                "unrecorded-long-out",
                lease(now - 31 - ORPHAN_GRACE_SECS, ""),
            ),
        ]);
        let ids = |pop: &str| -> Vec<String> {
            due(&s, pop, now).into_iter().map(|(id, _)| id).collect()
        };
        assert_eq!(
            ids("pop-a"),
            ["mine-out", "theirs-long-out", "unrecorded-long-out"]
        );
        assert_eq!(
            ids("pop-b"),
            ["theirs-long-out", "theirs-out", "unrecorded-long-out"],
            "pop-b holds theirs-out; mine-out is pop-a's, out only a second"
        );
        assert_eq!(
            ids(""),
            ["theirs-long-out", "unrecorded-long-out"],
            "a POP without a valid id holds no lease"
        );
    }

    #[test]
    fn each_delete_is_issued_once_and_retried_only_late() {
        let now = 10_000;
        let s = snapshot(&[("gone", lease(now - 100, "pop-a"))]);
        let mut reaper = Reaper::new("pop-a");
        let t0 = Instant::now();
        assert_eq!(reaper.next(&s, now, t0), [("gone".to_owned(), now - 100)]);
        assert!(
            reaper
                .next(&s, now + 1, t0 + Duration::from_secs(1))
                .is_empty(),
            "issued once: not again while the snapshot still shows it"
        );
        assert_eq!(
            reaper.next(&s, now + 31, t0 + RETRY).len(),
            1,
            "still there after {RETRY:?}: tried again"
        );
        // Renewed meanwhile: a new lease, not due.
        let s = snapshot(&[("gone", lease(now + 40, "pop-a"))]);
        assert!(reaper.next(&s, now + 41, t0 + RETRY * 2).is_empty());
    }

    #[test]
    fn batches_are_bounded() {
        let now = 10_000;
        let many: Vec<(String, Lease)> = (0..BATCH + 10)
            .map(|i| (format!("r{i:04}"), lease(0, "")))
            .collect();
        let s = Snapshot {
            leases: many.into_iter().collect(),
            ..Snapshot::default()
        };
        let mut reaper = Reaper::new("pop-a");
        let t0 = Instant::now();
        assert_eq!(reaper.next(&s, now, t0).len(), BATCH);
        assert_eq!(
            reaper.next(&s, now, t0).len(),
            10,
            "the rest on the next tick"
        );
    }
}
