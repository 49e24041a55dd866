//! Rows of every table into one [`Snapshot`]: what spans rows (duplicates, a backend's service,
//! a health row's backend, a backend at a POP's own address), and the contests over one key
//! that [`super::super::owners`] settles, each loser rejected with a reason naming the winner.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
};

use super::{
    backends::{backend_row, lease_of_rejected, PopAddresses},
    cells::{key_text, show, Cell},
    health::health_row,
    pops::pop_row,
    services::service_row,
    settings::setting_row,
};
use crate::{
    model::{dns_label, Backend, Health, Lease, Pop, RejectedRow, Service, Snapshot},
    state::owners::{self, Claim, Incumbents, Standing},
};

#[cfg(test)]
mod tests;

/// A row that can contend for a key.
trait Contender {
    fn id(&self) -> &str;
    fn standing(&self, now_unix: i64) -> Standing;
}

impl Contender for Service {
    fn id(&self) -> &str {
        &self.id
    }

    fn standing(&self, _: i64) -> Standing {
        // Only operators write services.
        Standing::Operator
    }
}

impl Contender for Backend {
    fn id(&self) -> &str {
        &self.id
    }

    fn standing(&self, now_unix: i64) -> Standing {
        Standing::of(self, now_unix)
    }
}

/// Settles the contests over `key` among `rows` (with their `created_at`): the winners in
/// their order, and one rejection per loser, whose reason (`reason`, given the winner's id)
/// names the winner and says why it won.
fn settle<T: Contender, K: std::hash::Hash + Eq>(
    table: &'static str,
    rows: Vec<(T, i64)>,
    now_unix: i64,
    key: impl Fn(&T) -> Option<K>,
    incumbents: &HashMap<K, String>,
    reason: impl Fn(&T, &str) -> String,
) -> (Vec<(T, i64)>, Vec<RejectedRow>) {
    let mut losing: HashMap<usize, String> = HashMap::new();
    {
        let claims: Vec<(Claim<'_>, Option<K>)> = rows
            .iter()
            .map(|(row, created)| {
                let claim = Claim {
                    id: row.id(),
                    standing: row.standing(now_unix),
                    created_at: *created,
                };
                (claim, key(row))
            })
            .collect();
        for l in owners::contests(&claims, incumbents) {
            let winner = claims[l.winner].0.id;
            let text = format!("{} ({})", reason(&rows[l.loser].0, winner), l.why);
            losing.insert(l.loser, text);
        }
    }
    let mut kept = Vec::with_capacity(rows.len());
    let mut rejected = Vec::new();
    for (i, (row, created)) in rows.into_iter().enumerate() {
        match losing.remove(&i) {
            Some(reason) => rejected.push(RejectedRow {
                table,
                key: row.id().to_owned(),
                reason,
            }),
            None => kept.push((row, created)),
        }
    }
    (kept, rejected)
}

/// Collects rows of all tables in any order (a replicated source may deliver a backend before
/// its service), then checks what spans rows.
#[derive(Debug, Default)]
pub struct SnapshotBuilder<'i> {
    /// Rows with their `created_at`.
    services: Vec<(Service, i64)>,
    backends: Vec<(Backend, i64)>,
    pops: Vec<Pop>,
    health: Vec<Health>,
    settings: std::collections::BTreeMap<String, String>,
    leases: std::collections::BTreeMap<String, Lease>,
    rejected: Vec<RejectedRow>,
    rejected_services: HashSet<String>,
    rejected_backends: HashSet<String>,
    /// Who held what in the source's previous snapshot.
    incumbents: Option<&'i Incumbents>,
    /// Unix seconds the leases are judged at; `None`: the clock, when finishing.
    now: Option<i64>,
}

impl<'i> SnapshotBuilder<'i> {
    pub fn new() -> Self {
        Self::default()
    }

    /// A builder that knows what the source's previous snapshot held (see
    /// [`crate::state::owners`]): sources keep the [`Incumbents`] of the snapshot they last handed
    /// out and pass them here.
    pub fn with_incumbents(incumbents: &'i Incumbents) -> Self {
        SnapshotBuilder {
            incumbents: Some(incumbents),
            ..Self::default()
        }
    }

    /// Judges leases at `now_unix` instead of the clock (tests).
    pub fn at(mut self, now_unix: i64) -> Self {
        self.now = Some(now_unix);
        self
    }

    fn reject(&mut self, table: &'static str, key: String, reason: String) {
        self.rejected.push(RejectedRow { table, key, reason });
    }

    /// Records the losers of [`settle`]: their backends (or health rows) go with them.
    fn lost(&mut self, lost: Vec<RejectedRow>) {
        for r in lost {
            match r.table {
                "services" => self.rejected_services.insert(r.key.clone()),
                _ => self.rejected_backends.insert(r.key.clone()),
            };
            self.rejected.push(r);
        }
    }

    /// A `services` row, columns as in [`super::columns::SERVICES`].
    pub fn service(&mut self, cells: &[Cell<'_>]) {
        match service_row(cells) {
            Ok(row) => self.services.push(row),
            Err(reason) => {
                let key = cells.first().map_or_else(String::new, |c| key_text(*c));
                self.rejected_services.insert(key.clone());
                self.reject("services", key, reason);
            }
        }
    }

    /// A `backends` row, columns as in [`super::columns::BACKENDS`].
    pub fn backend(&mut self, cells: &[Cell<'_>]) {
        match backend_row(cells) {
            Ok(row) => {
                if let Some(lease) = &row.0.lease {
                    self.leases.insert(row.0.id.clone(), lease.clone());
                }
                self.backends.push(row);
            }
            Err(reason) => {
                if let Some((id, lease)) = lease_of_rejected(cells) {
                    self.leases.insert(id, lease);
                }
                let key = cells.first().map_or_else(String::new, |c| key_text(*c));
                self.rejected_backends.insert(key.clone());
                self.reject("backends", key, reason);
            }
        }
    }

    /// A `settings` row, columns as in [`super::columns::SETTINGS`].
    pub fn setting(&mut self, cells: &[Cell<'_>]) {
        match setting_row(cells) {
            Ok((k, v)) => {
                self.settings.insert(k, v);
            }
            Err(reason) => {
                let key = cells.first().map_or_else(String::new, |c| key_text(*c));
                self.reject("settings", key, reason);
            }
        }
    }

    /// A `pops` row, columns as in [`super::columns::POPS`].
    pub fn pop(&mut self, cells: &[Cell<'_>]) {
        match pop_row(cells) {
            Ok(p) => self.pops.push(p),
            Err(reason) => {
                let key = cells.first().map_or_else(String::new, |c| key_text(*c));
                self.reject("pops", key, reason);
            }
        }
    }

    /// A `health` row, columns as in [`super::columns::HEALTH`].
    pub fn health(&mut self, cells: &[Cell<'_>]) {
        match health_row(cells) {
            Ok(h) => self.health.push(h),
            Err(reason) => {
                let part = |i: usize| cells.get(i).map_or_else(String::new, |c| key_text(*c));
                let key = format!("{}/{}", part(0), part(1));
                self.reject("health", key, reason);
            }
        }
    }

    pub fn finish(mut self) -> (Snapshot, Vec<RejectedRow>) {
        let mut snap = Snapshot::default();
        let now = self.now.unwrap_or_else(crate::model::unix_now);
        let none = Incumbents::default();
        let incumbents = self.incumbents.unwrap_or(&none);

        // Sorted so that the output, and the order of rejections, do not depend on the order
        // rows arrived in; who wins a conflict is [`owners`]' verdict, not this order.
        self.services.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        let mut unique = Vec::new();
        for (s, created) in std::mem::take(&mut self.services) {
            if unique
                .last()
                .is_some_and(|(last, _): &(Service, i64)| last.id == s.id)
            {
                self.reject("services", s.id, "duplicate id".to_owned());
            } else {
                unique.push((s, created));
            }
        }
        let (unique, lost) = settle(
            "services",
            unique,
            now,
            |s| Some((s.vip, s.port)),
            &incumbents.vips,
            |s, winner| {
                format!(
                    "{} is also service {winner}, which keeps it",
                    SocketAddr::new(s.vip, s.port)
                )
            },
        );
        self.lost(lost);
        let (unique, lost) = settle(
            "services",
            unique,
            now,
            |s| dns_label(&s.id),
            &incumbents.service_labels,
            |s, winner| {
                format!(
                    "its DNS name {}.services.internal is also service {winner}'s (ids that \
                     differ only in case or punctuation are one name), which keeps it",
                    dns_label(&s.id).unwrap_or_default()
                )
            },
        );
        self.lost(lost);
        let services: HashSet<String> = unique.iter().map(|(s, _)| s.id.clone()).collect();
        snap.services = unique.into_iter().map(|(s, _)| s).collect();

        // POPs before backends: a backend may not be a POP's own address.
        self.pops.sort_by(|a, b| a.id.cmp(&b.id));
        for p in std::mem::take(&mut self.pops) {
            if snap.pops.last().is_some_and(|last| last.id == p.id) {
                self.reject("pops", p.id, "duplicate id".to_owned());
            } else {
                snap.pops.push(p);
            }
        }

        self.backends.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        let pop_addresses = PopAddresses::of(&snap.pops);
        let mut kept: Vec<(Backend, i64)> = Vec::new();
        let mut last_id: Option<String> = None;
        for (b, created) in std::mem::take(&mut self.backends) {
            if last_id.as_ref() == Some(&b.id) {
                self.rejected_backends.insert(b.id.clone());
                self.reject("backends", b.id, "duplicate id".to_owned());
                continue;
            }
            last_id = Some(b.id.clone());
            let reason = if self.rejected_services.contains(&b.service) {
                Some(format!("its service {} is rejected", show(&b.service)))
            } else if !services.contains(&b.service) {
                Some(format!("unknown service {}", show(&b.service)))
            } else {
                pop_addresses.check(&b.addr).err()
            };
            match reason {
                Some(reason) => {
                    self.rejected_backends.insert(b.id.clone());
                    self.reject("backends", b.id, reason);
                }
                None => kept.push((b, created)),
            }
        }
        let (kept, lost) = settle(
            "backends",
            kept,
            now,
            |b| Some((b.service.clone(), b.addr.clone(), b.port)),
            &incumbents.endpoints,
            |b, winner| {
                format!(
                    "same address and port as backend {winner} of its service {}, which keeps \
                     them",
                    b.service
                )
            },
        );
        self.lost(lost);
        let (kept, lost) = settle(
            "backends",
            kept,
            now,
            |b| dns_label(&b.id),
            &incumbents.backend_labels,
            |b, winner| {
                format!(
                    "its DNS name {}.instances.internal is also backend {winner}'s (ids that \
                     differ only in case or punctuation are one name), which keeps it",
                    dns_label(&b.id).unwrap_or_default()
                )
            },
        );
        self.lost(lost);
        let backends: HashSet<String> = kept.iter().map(|(b, _)| b.id.clone()).collect();
        snap.backends = kept.into_iter().map(|(b, _)| b).collect();

        snap.settings = std::mem::take(&mut self.settings);
        snap.leases = std::mem::take(&mut self.leases);

        self.health
            .sort_by(|a, b| (&a.pop_id, &a.backend_id).cmp(&(&b.pop_id, &b.backend_id)));
        for h in std::mem::take(&mut self.health) {
            let key = || format!("{}/{}", h.pop_id, h.backend_id);
            let reason = if snap
                .health
                .last()
                .is_some_and(|l| l.pop_id == h.pop_id && l.backend_id == h.backend_id)
            {
                Some("duplicate key".to_owned())
            } else if self.rejected_backends.contains(&h.backend_id) {
                Some(format!("its backend {} is rejected", show(&h.backend_id)))
            } else if !backends.contains(&h.backend_id) {
                Some(format!("unknown backend {}", show(&h.backend_id)))
            } else {
                None
            };
            match reason {
                Some(reason) => {
                    let key = key();
                    self.reject("health", key, reason);
                }
                None => snap.health.push(h),
            }
        }

        (snap, self.rejected)
    }
}
