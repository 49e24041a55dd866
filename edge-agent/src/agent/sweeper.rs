//! The flow tables' upkeep: idle flows expired, connections to backends past their drain
//! timeout ended (with a RST to the backend), client bindings past their TTL dropped, and the
//! live connection counts the plan weighs.
//!
//! It writes kernel maps, so it is driven by the reconcile task (the only owner of the maps),
//! on that task's sweep and binding ticks, never concurrently with a plan being written. The
//! decisions (which backends are past their drain, whether the load moved enough to re-plan)
//! are functions of their inputs, tested without a kernel.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::Ipv6Addr,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::{maps::MapData, Ebpf};
use edge_common::{names, FlowKey, FlowValue};
use tracing::{debug, info, warn};

use super::inputs::{backends_at, StateInput};
use crate::{
    config::FlowConfig,
    dataplane::backend_reset::{BackendReset, Resetter, Sent, MAX_PER_SWEEP},
    dataplane::maps::flows,
    dataplane::maps::services::PopSettings,
    model::Snapshot,
};

type FlowMap<T> = aya::maps::HashMap<T, FlowKey, FlowValue>;

pub struct Sweeper {
    flows: FlowConfig,
    affinity_ttl: Duration,
    /// This POP's own sources: only connections from them are sent RSTs.
    overlay_addr: Ipv6Addr,
    snat_prefix: Option<ipnet::Ipv6Net>,
    /// The raw socket drain-timeout RSTs go out through, opened at the first one needed
    /// (`Err`: it could not be, logged once; connections are then ended without telling the
    /// backends).
    resetter: Option<Result<Resetter, ()>>,
    /// Live connections per backend id, from the last sweep.
    active: HashMap<String, u64>,
}

impl Sweeper {
    pub fn new(flows: &FlowConfig, affinity_ttl: Duration, pop: &PopSettings) -> Self {
        Sweeper {
            flows: flows.clone(),
            affinity_ttl,
            overlay_addr: pop.overlay_addr,
            snat_prefix: pop.snat_prefix,
            resetter: None,
            active: HashMap::new(),
        }
    }

    pub fn active(&self) -> &HashMap<String, u64> {
        &self.active
    }

    /// Expires idle flows, ends drained backends' connections, and refreshes the live
    /// connection counts; true when they moved enough to need a new plan.
    pub fn sweep(
        &mut self,
        ebpf: &Ebpf,
        endpoints: &BTreeMap<u32, (Ipv6Addr, u16)>,
        input: Option<&StateInput>,
    ) -> anyhow::Result<bool> {
        let empty = Snapshot::default();
        let state = input.map_or(&empty, |i| &*i.snapshot);
        let now = flows::monotonic_ns();
        let open = |name| -> anyhow::Result<FlowMap<&MapData>> {
            let map = ebpf
                .map(name)
                .with_context(|| format!("{name} map missing"))?;
            Ok(aya::maps::HashMap::try_from(map)?)
        };
        let (half_open, table) = (open(names::HALF_OPEN)?, open(names::FLOWS)?);
        let expire = |map, table| flows::sweep(map, table, &self.flows, now, flows::Sweep::Expire);
        let (half_report, _) = expire(&half_open, flows::Table::HalfOpen)?;
        let (report, _) = expire(&table, flows::Table::Established)?;
        let drain_timeout = Duration::from_secs(self.flows.drain_timeout_secs);
        if let (false, Some(input)) = (drain_timeout.is_zero(), input) {
            let over = drained_over(
                endpoints,
                state,
                &input.draining_since,
                Instant::now(),
                drain_timeout,
            );
            if !over.is_empty() {
                self.end_drained(&table, &half_open, &over)?;
            }
        }
        debug!(
            entries = report.entries,
            connections = report.connections,
            expired = report.expired,
            half_open = half_report.entries,
            half_open_expired = half_report.expired,
            "flow tables swept"
        );
        let active = active_by_backend(&report.active_per_backend, endpoints, state);
        let changed = load_changed(state, &self.active, &active);
        self.active = active;
        Ok(changed)
    }

    /// Ends the connections to backends whose drain timeout has run out, in both flow tables:
    /// each backend that still has a connection gets a RST for it first
    /// (`crate::dataplane::backend_reset`), then the reverse halves go, the forward ones are
    /// marked ended, and the clients' next packets meet the POP's kernel's RST. One log line
    /// per sweep.
    fn end_drained(
        &mut self,
        table: &FlowMap<&MapData>,
        half_open: &FlowMap<&MapData>,
        over: &HashSet<u32>,
    ) -> anyhow::Result<()> {
        let established = flows::backend_flows_to_end(table, over, MAX_PER_SWEEP, true)?;
        let half = flows::backend_flows_to_end(
            half_open,
            over,
            MAX_PER_SWEEP.saturating_sub(established.resets.len()),
            false,
        )?;
        let entries = established.keys.len() + established.ended.len() + half.keys.len();
        if entries == 0 && established.deferred + half.deferred == 0 {
            return Ok(());
        }
        // Only from this POP's own sources: the entries are the kernel's, the packets the
        // agent's.
        let (overlay, snat) = (self.overlay_addr, self.snat_prefix);
        let ours = |r: &&BackendReset| r.src == overlay || snat.is_some_and(|p| p.contains(&r.src));
        let resets: Vec<_> = established
            .resets
            .iter()
            .chain(&half.resets)
            .filter(ours)
            .copied()
            .collect();
        let foreign = established.resets.len() + half.resets.len() - resets.len();
        let resetter = self.resetter.get_or_insert_with(|| {
            Resetter::open().map_err(|error| {
                warn!(%error, "drain timeout: backends will not be sent RSTs");
            })
        });
        let sent = match resetter {
            Ok(r) if !resets.is_empty() => r.send(&resets),
            _ => Sent {
                failed: resets.len() as u64,
                ..Default::default()
            },
        };
        let (ended_keys, ended): (Vec<FlowKey>, Vec<FlowValue>) =
            established.ended.iter().copied().unzip();
        crate::dataplane::batch::update(aya::maps::IterableMap::map(table), &ended_keys, &ended)?;
        crate::dataplane::batch::delete(aya::maps::IterableMap::map(table), &established.keys)?;
        crate::dataplane::batch::delete(aya::maps::IterableMap::map(half_open), &half.keys)?;
        info!(
            entries,
            resets_sent = sent.sent,
            resets_failed = sent.failed,
            resets_foreign_source = foreign,
            deferred = established.deferred + half.deferred,
            error = sent.error.as_deref().unwrap_or(""),
            "drain timeout: connections to drained backends ended, backends sent RSTs"
        );
        Ok(())
    }

    /// Drops client bindings past their TTL.
    pub fn expire_bindings(&self, ebpf: &mut Ebpf) -> anyhow::Result<()> {
        if self.affinity_ttl.is_zero() {
            return Ok(());
        }
        let map = ebpf
            .map_mut(names::AFFINITY)
            .context("AFFINITY map missing")?;
        let bindings = aya::maps::HashMap::try_from(map)?;
        let expired = flows::expire_bindings(&bindings, self.affinity_ttl, flows::monotonic_ns())?;
        debug!(expired, "client bindings swept");
        Ok(())
    }
}

/// The kernel ids of the backends some draining backend of the state at their endpoint has
/// been draining for `timeout` or longer: their connections are to be ended.
pub fn drained_over(
    endpoints: &BTreeMap<u32, (Ipv6Addr, u16)>,
    state: &Snapshot,
    draining_since: &HashMap<String, Instant>,
    now: Instant,
    timeout: Duration,
) -> HashSet<u32> {
    endpoints
        .iter()
        .filter(|(_, endpoint)| {
            backends_at(state, **endpoint).any(|x| {
                draining_since
                    .get(&x.id)
                    .is_some_and(|since| now.saturating_duration_since(*since) >= timeout)
            })
        })
        .map(|(id, _)| *id)
        .collect()
}

/// Live connections per state backend id, from the per kernel id counts: every backend of the
/// state at a kernel backend's endpoint counts its connections.
pub fn active_by_backend(
    per_kernel_id: &BTreeMap<u32, u64>,
    endpoints: &BTreeMap<u32, (Ipv6Addr, u16)>,
    state: &Snapshot,
) -> HashMap<String, u64> {
    let mut active: HashMap<String, u64> = HashMap::new();
    for (id, count) in per_kernel_id {
        let Some(&endpoint) = endpoints.get(id) else {
            continue;
        };
        for backend in backends_at(state, endpoint) {
            *active.entry(backend.id.clone()).or_default() += count;
        }
    }
    active
}

/// Whether the load moved enough to change the tables: they only change when a backend's
/// load crosses a tenth of its soft limit, or its hard limit, so the plan is recomputed only
/// then.
pub fn load_changed(
    state: &Snapshot,
    old: &HashMap<String, u64>,
    new: &HashMap<String, u64>,
) -> bool {
    let step = |id: &str, n: u64| {
        state.backends.iter().find(|x| x.id == id).map(|x| {
            (
                n * 10 / u64::from(x.soft_limit.max(1)),
                n >= u64::from(x.hard_limit),
            )
        })
    };
    new.len() != old.len()
        || new
            .iter()
            .any(|(id, n)| step(id, *n) != old.get(id).and_then(|o| step(id, *o)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::fixtures::{backend, TestResult};

    fn state() -> Result<Snapshot, Box<dyn std::error::Error>> {
        Ok(Snapshot {
            // be1 and be1-again share one endpoint (two services on one port).
            backends: vec![
                backend("be1", 1)?,
                backend("be1-again", 1)?,
                backend("be2", 2)?,
            ],
            ..Snapshot::default()
        })
    }

    fn endpoints() -> BTreeMap<u32, (Ipv6Addr, u16)> {
        BTreeMap::from([
            (10, (Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1), 8080)),
            (11, (Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2), 8080)),
        ])
    }

    #[test]
    fn a_backend_is_over_its_drain_only_once_the_timeout_ran_out() -> TestResult {
        let state = state()?;
        let t0 = Instant::now();
        let since = HashMap::from([("be2".to_owned(), t0)]);
        let timeout = Duration::from_secs(30);
        let at = |secs| t0 + Duration::from_secs(secs);
        assert!(drained_over(&endpoints(), &state, &since, at(29), timeout).is_empty());
        assert_eq!(
            drained_over(&endpoints(), &state, &since, at(30), timeout),
            HashSet::from([11])
        );
        // A backend not draining is never over.
        assert!(drained_over(&endpoints(), &state, &HashMap::new(), at(999), timeout).is_empty());
        Ok(())
    }

    #[test]
    fn connections_count_for_every_backend_at_their_endpoint() -> TestResult {
        let active = active_by_backend(
            &BTreeMap::from([(10, 7), (11, 3), (99, 5)]),
            &endpoints(),
            &state()?,
        );
        assert_eq!(
            active,
            HashMap::from([
                ("be1".to_owned(), 7),
                ("be1-again".to_owned(), 7),
                ("be2".to_owned(), 3)
            ])
        );
        Ok(())
    }

    #[test]
    fn the_plan_is_recomputed_only_when_a_load_crosses_a_step() -> TestResult {
        // Soft limit 100: steps of 10 connections; hard limit 200.
        let state = state()?;
        let load = |n: u64| HashMap::from([("be1".to_owned(), n)]);
        assert!(!load_changed(&state, &load(11), &load(19)), "same tenth");
        assert!(load_changed(&state, &load(19), &load(20)), "next tenth");
        assert!(
            load_changed(&state, &load(199), &load(1000)),
            "at the hard limit"
        );
        assert!(
            load_changed(&state, &HashMap::new(), &load(1)),
            "a new backend with load"
        );
        assert!(
            load_changed(&state, &load(1), &HashMap::new()),
            "its load gone"
        );
        assert!(!load_changed(&state, &load(5), &load(5)));
        Ok(())
    }
}
