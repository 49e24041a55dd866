//! The gate itself: who holds the listener's slots, who is let in, whose idle connection makes
//! room for whom (see the module documentation of `listen`).

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed},
        Arc, Mutex, Weak,
    },
    time::Instant,
};

use tokio::sync::Notify;

use super::Limits;

/// Whose share a connection counts against: an IPv4 address, or an IPv6 /64 (one host can use
/// every address of its /64, as RFC 4941 privacy addresses do; counting addresses would give it
/// 2^64 shares).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    V4(u32),
    V6(u64),
}

impl Source {
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Source::V4(v4.into()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                // A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d.
                Some(v4) => Source::V4(v4.into()),
                None => Source::V6((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

/// Why a connection was turned away at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Every slot holds a connection with a request in progress.
    Full,
    /// Its source holds `max_per_source` connections already.
    Source,
}

/// One admitted connection, as the gate tracks it.
#[derive(Debug)]
struct Slot {
    source: Source,
    /// A request is in progress: the slot is not taken back.
    busy: AtomicBool,
    /// Milliseconds since the gate started at which it last became idle.
    idle_since_ms: AtomicU64,
    evict: Notify,
}

#[derive(Debug, Default)]
struct Open {
    next_id: u64,
    slots: BTreeMap<u64, Arc<Slot>>,
    per_source: HashMap<Source, usize>,
}

impl Open {
    /// Forgets slot `id` (once: eviction and the permit's drop may both ask).
    fn remove(&mut self, id: u64) -> Option<Arc<Slot>> {
        let slot = self.slots.remove(&id)?;
        if let Some(n) = self.per_source.get_mut(&slot.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_source.remove(&slot.source);
            }
        }
        Some(slot)
    }
}

/// What a gate has done since it started (counters) and holds now (gauges).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GateStats {
    /// `<server> <address>`, e.g. `register 10.0.0.1:7070`.
    pub name: String,
    pub open: u64,
    pub max: u64,
    pub accepted: u64,
    pub refused_full: u64,
    pub refused_source: u64,
    /// Idle connections closed to make room for a newcomer.
    pub evicted: u64,
    /// Connections closed (or requests answered 408) at a header or request timeout.
    pub timeouts: u64,
    /// `accept` failed (for instance with EMFILE: no file left).
    pub accept_errors: u64,
}

/// Admission to one listener; see the module documentation.
#[derive(Debug)]
pub struct Gate {
    pub(super) name: String,
    limits: Limits,
    started: Instant,
    open: Mutex<Open>,
    open_count: AtomicUsize,
    accepted: AtomicU64,
    refused_full: AtomicU64,
    refused_source: AtomicU64,
    evicted: AtomicU64,
    timeouts: AtomicU64,
    pub(super) accept_errors: AtomicU64,
}

/// When a full listener makes room, the biggest holders looked at for an idle connection
/// (each look scans the slots): if none of them has one, the newcomer is refused.
const VICTIM_SOURCES: usize = 8;

/// Every live gate, for `/metrics`.
static GATES: Mutex<Vec<Weak<Gate>>> = Mutex::new(Vec::new());

/// The figures of every gate still open.
pub fn all_stats() -> Vec<GateStats> {
    let mut gates = GATES.lock().unwrap_or_else(|e| e.into_inner());
    gates.retain(|g| g.strong_count() > 0);
    gates
        .iter()
        .filter_map(Weak::upgrade)
        .map(|g| g.stats())
        .collect()
}

impl Gate {
    pub fn new(name: String, limits: Limits) -> Arc<Self> {
        let gate = Arc::new(Gate {
            name,
            limits,
            started: Instant::now(),
            open: Mutex::new(Open::default()),
            open_count: AtomicUsize::new(0),
            accepted: AtomicU64::new(0),
            refused_full: AtomicU64::new(0),
            refused_source: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            accept_errors: AtomicU64::new(0),
        });
        GATES
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::downgrade(&gate));
        gate
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Admits a connection from `peer`, taking the slot of the longest-idle connection if the
    /// listener is full; or says why not.
    pub fn admit(self: &Arc<Self>, peer: SocketAddr) -> Result<Permit, Refusal> {
        let source = Source::of(peer.ip());
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.per_source.get(&source).copied().unwrap_or(0) >= self.limits.max_per_source {
            self.refused_source.fetch_add(1, Relaxed);
            return Err(Refusal::Source);
        }
        if open.slots.len() >= self.limits.max_connections {
            let mine = open.per_source.get(&source).copied().unwrap_or(0);
            // Max-min fairness: the newcomer may only take the place of a source holding at
            // least two more than its own (sources of equal shares do not displace each other
            // back and forth), or of anyone if it holds nothing. Of those, the biggest
            // holder's connection idle the longest. Most newcomers of an attack find no such
            // source: they are refused without a look at the slots.
            let mut holders: Vec<(usize, Source)> = open
                .per_source
                .iter()
                .filter(|&(_, &held)| mine == 0 || held >= mine + 2)
                .map(|(&source, &held)| (held, source))
                .collect();
            holders.sort_unstable_by(|a, b| b.cmp(a));
            let victim = holders
                .iter()
                .take(VICTIM_SOURCES)
                .find_map(|&(_, holder)| {
                    open.slots
                        .iter()
                        .filter(|(_, s)| s.source == holder && !s.busy.load(Relaxed))
                        // Ties: the oldest connection.
                        .min_by_key(|&(&id, s)| (s.idle_since_ms.load(Relaxed), id))
                        .map(|(&id, _)| id)
                });
            let Some(slot) = victim.and_then(|id| open.remove(id)) else {
                self.refused_full.fetch_add(1, Relaxed);
                return Err(Refusal::Full);
            };
            // Its task closes the connection; the slot is free from now on.
            slot.evict.notify_one();
            self.evicted.fetch_add(1, Relaxed);
        }
        let id = open.next_id;
        open.next_id += 1;
        let slot = Arc::new(Slot {
            source,
            busy: AtomicBool::new(false),
            idle_since_ms: AtomicU64::new(self.now_ms()),
            evict: Notify::new(),
        });
        open.slots.insert(id, Arc::clone(&slot));
        *open.per_source.entry(source).or_default() += 1;
        self.open_count.store(open.slots.len(), Relaxed);
        self.accepted.fetch_add(1, Relaxed);
        Ok(Permit {
            gate: Arc::clone(self),
            id,
            slot,
        })
    }

    fn release(&self, id: u64) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.remove(id);
        self.open_count.store(open.slots.len(), Relaxed);
    }

    /// A connection ended at a header or request timeout.
    pub fn timed_out(&self) {
        self.timeouts.fetch_add(1, Relaxed);
    }

    pub fn stats(&self) -> GateStats {
        GateStats {
            name: self.name.clone(),
            open: self.open_count.load(Relaxed) as u64,
            max: self.limits.max_connections as u64,
            accepted: self.accepted.load(Relaxed),
            refused_full: self.refused_full.load(Relaxed),
            refused_source: self.refused_source.load(Relaxed),
            evicted: self.evicted.load(Relaxed),
            timeouts: self.timeouts.load(Relaxed),
            accept_errors: self.accept_errors.load(Relaxed),
        }
    }
}

/// An admitted connection's slot; dropping it frees the slot.
#[derive(Debug)]
pub struct Permit {
    gate: Arc<Gate>,
    id: u64,
    slot: Arc<Slot>,
}

impl Permit {
    /// Completes when the gate takes the slot back for a newcomer: the connection must close.
    pub async fn evicted(&self) {
        self.slot.evict.notified().await;
    }

    /// Marks a request in progress until the guard is dropped: the slot is not taken back
    /// meanwhile.
    pub fn busy(self: &Arc<Self>) -> Busy {
        self.slot.busy.store(true, Relaxed);
        Busy(Arc::clone(self))
    }

    pub fn gate(&self) -> &Gate {
        &self.gate
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.gate.release(self.id);
    }
}

/// A request in progress on a connection; see [`Permit::busy`].
#[derive(Debug)]
pub struct Busy(Arc<Permit>);

impl Drop for Busy {
    fn drop(&mut self) {
        let slot = &self.0.slot;
        slot.idle_since_ms.store(self.0.gate.now_ms(), Relaxed);
        slot.busy.store(false, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::{future::Future, time::Duration};

    use super::*;

    fn limits(max: usize, per_source: usize) -> Limits {
        Limits {
            max_connections: max,
            max_per_source: per_source,
            header_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
        }
    }

    fn peer(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap_or(IpAddr::from([0, 0, 0, 0])), 40000)
    }

    #[test]
    fn sources_are_ipv4_addresses_and_ipv6_slash_64s() {
        let of = |ip: &str| Source::of(peer(ip).ip());
        assert_eq!(
            of("10.0.0.1"),
            of("::ffff:10.0.0.1"),
            "a mapped address is IPv4"
        );
        assert_ne!(of("10.0.0.1"), of("10.0.0.2"));
        assert_eq!(of("2001:db8:1:2::1"), of("2001:db8:1:2:ffff::9"), "one /64");
        assert_ne!(of("2001:db8:1:2::1"), of("2001:db8:1:3::1"));
    }

    #[test]
    fn a_source_gets_its_share_and_no_more() {
        let gate = Gate::new("test share".into(), limits(10, 2));
        let a = [gate.admit(peer("10.0.0.1")), gate.admit(peer("10.0.0.1"))];
        assert!(
            a.iter().all(Result::is_ok),
            "expected two admitted, saw {a:?}"
        );
        let third = gate.admit(peer("10.0.0.1"));
        assert_eq!(
            third.err(),
            Some(Refusal::Source),
            "expected the third refused"
        );
        assert!(
            gate.admit(peer("10.0.0.2")).is_ok(),
            "another source is admitted"
        );
        drop(a);
        assert!(
            gate.admit(peer("10.0.0.1")).is_ok(),
            "expected a slot again once the first two closed"
        );
        let s = gate.stats();
        assert_eq!((s.refused_source, s.accepted), (1, 4), "{s:?}");
    }

    #[test]
    fn a_full_gate_makes_room_for_a_source_with_less_never_from_a_busy_slot() -> Result<(), String>
    {
        let gate = Gate::new("test full".into(), limits(4, 4));
        let admit = |ip: &str| {
            gate.admit(peer(ip))
                .map(Arc::new)
                .map_err(|r| format!("{r:?}"))
        };
        // A holds three, B one.
        let a1 = admit("10.0.0.1")?;
        let a2 = admit("10.0.0.1")?;
        let a3 = admit("10.0.0.1")?;
        let b1 = admit("10.0.0.2")?;
        let evicted = |p: &Permit| ready_now(p.evicted());
        // B (one) may displace A (three, two more): A's longest-idle connection that is not
        // busy, a2 (a1 is answering a request).
        let busy = a1.busy();
        let b2 = admit("10.0.0.2")?;
        assert!(
            evicted(&a2),
            "expected A's longest-idle connection to make room"
        );
        assert!(
            !evicted(&a1) && !evicted(&a3) && !evicted(&b1),
            "expected only one connection closed"
        );
        assert_eq!(gate.stats().open, 4, "the evicted slot is free at once");
        // Now A holds two and B two: neither displaces the other.
        let refused = [gate.admit(peer("10.0.0.1")), gate.admit(peer("10.0.0.2"))];
        assert!(
            refused
                .iter()
                .all(|r| r.as_ref().err() == Some(&Refusal::Full)),
            "expected equal shares refused, saw {refused:?}"
        );
        // A newcomer holding nothing displaces an idle connection of a biggest holder (A and
        // B hold two each).
        let c1 = admit("10.0.0.3")?;
        let closed = [&a3, &b1, &b2].iter().filter(|p| evicted(p)).count();
        assert_eq!(
            closed, 1,
            "expected one idle connection of A or B closed for C"
        );
        assert!(!evicted(&a1), "a1 is busy");
        // Every slot busy: even a new source is refused.
        let _busy = [&a3, &b1, &b2, &c1].map(|p| p.busy());
        assert_eq!(gate.admit(peer("10.0.0.4")).err(), Some(Refusal::Full));
        drop(busy);
        assert!(gate.admit(peer("10.0.0.4")).is_ok(), "a1 is idle again");
        let s = gate.stats();
        assert_eq!((s.evicted, s.refused_full), (3, 3), "{s:?}");
        Ok(())
    }

    /// Whether `future` is ready at its first poll.
    fn ready_now(future: impl Future<Output = ()>) -> bool {
        let mut future = std::pin::pin!(future);
        let waker = std::task::Waker::noop();
        future
            .as_mut()
            .poll(&mut std::task::Context::from_waker(waker))
            .is_ready()
    }
}
