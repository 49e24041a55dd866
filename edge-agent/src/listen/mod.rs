//! The agent's own TCP servers (the registration API, `/metrics`, DNS over TCP) take their
//! connections through a [`Gate`] each, so that no one, credentials or not, can starve them or
//! the rest of the agent (issue 18: 1,100 slow clients at the API took every file the process
//! had; the health checks then failed with "Too many open files", every backend went down).
//!
//! A gate caps the connections open on its listener and those from one source (an IPv4
//! address, or an IPv6 /64: one host's share, however many addresses it spends). When the
//! listener is full, a newcomer from a source that holds no connection, or two fewer than the
//! biggest holder, takes the place of that holder's connection idle the longest (no request in
//! progress: a slow client still sending its head, or a kept-alive one between requests); any
//! other newcomer is refused. So slow clients hold slots only until the header timeout, a
//! legitimate client (which holds nothing, and sends its head at once) always gets in and is
//! answered, and sources that already hold their share are turned away cheaply instead of
//! displacing each other at the rate they reconnect (the lab's 5,000 slow clients from 40
//! addresses made about 2,000 such displacements a second, each a connection set up for
//! nothing, until the accept queue overflowed). Refusals are immediate and explicit (HTTP 503
//! or 429, a closed connection for DNS) so clients back off instead of hanging.
//!
//! Why not a semaphore alone (tower's `ConcurrencyLimit`, a tokio `Semaphore`): it refuses or
//! queues newcomers while slow clients hold every permit, which is exactly the starvation to
//! prevent; the gate is a semaphore that can take a permit back from an idle holder.
//!
//! The caps' sum is bounded by the process's file limit ([`budget`]), with files kept back for
//! health checks and everything else. Each gate counts what it did for `/metrics`.

pub mod budget;
pub mod http;

use std::{
    collections::{BTreeMap, HashMap},
    future::Future,
    marker::PhantomData,
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed},
        Arc, Mutex, Weak,
    },
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use tokio::{net::TcpListener, sync::Notify, task::JoinSet};
use tracing::warn;

/// The limits of one kind of listener (`[register.limits]`, `[metrics.limits]`,
/// `[dns.tcp_limits]`); each listening address has its own. `D` gives the default connection
/// cap, the only default that differs between the servers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, bound = "")]
pub struct ConnLimits<D: Defaults> {
    /// Connections open at once (default: 512 for the registration API, 64 for `/metrics`,
    /// 128 for DNS over TCP). When full, a newcomer from a source with less than the biggest
    /// holder takes the place of an idle connection of that holder; others are refused (see
    /// the module documentation). Lowered at start if the file limit cannot hold every
    /// listener's cap (see `docs/operations.md`).
    pub max_connections: u32,
    /// Connections open at once from one IPv4 address or IPv6 /64; more are refused.
    pub max_per_source: u32,
    /// A request's head (HTTP) or a whole query (DNS) must arrive within this after the
    /// connection opens or the previous answer; otherwise the connection is closed. This is
    /// also how long a kept-alive connection may sit idle.
    pub header_timeout_ms: u64,
    /// HTTP: the whole request, body included, and its answer; past it the answer is 408.
    pub request_timeout_ms: u64,
    #[serde(skip)]
    defaults: PhantomData<D>,
}

/// The defaults of one server's [`ConnLimits`].
pub trait Defaults {
    const MAX_CONNECTIONS: u32;
}

/// The registration API: sidecars connect for a request at a time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiDefaults {}
impl Defaults for ApiDefaults {
    const MAX_CONNECTIONS: u32 = 512;
}

/// `/metrics`: a scraper or two and an operator's curl.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetricsDefaults {}
impl Defaults for MetricsDefaults {
    const MAX_CONNECTIONS: u32 = 64;
}

/// DNS over TCP: truncated answers retried by resolvers; a connection may buffer a 64 KiB
/// message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DnsTcpDefaults {}
impl Defaults for DnsTcpDefaults {
    const MAX_CONNECTIONS: u32 = 128;
}

impl<D: Defaults> Default for ConnLimits<D> {
    fn default() -> Self {
        ConnLimits {
            max_connections: D::MAX_CONNECTIONS,
            max_per_source: 32,
            header_timeout_ms: 5_000,
            request_timeout_ms: 10_000,
            defaults: PhantomData,
        }
    }
}

impl<D: Defaults> ConnLimits<D> {
    pub fn validate(&self, section: &str) -> Result<(), String> {
        if self.max_connections == 0 || self.max_per_source == 0 {
            return Err(format!(
                "{section}: max_connections and max_per_source must be at least 1"
            ));
        }
        if self.header_timeout_ms == 0 || self.request_timeout_ms == 0 {
            return Err(format!(
                "{section}: header_timeout_ms and request_timeout_ms must be at least 1"
            ));
        }
        Ok(())
    }

    /// The limits a gate applies, as configured.
    pub fn limits(&self) -> Limits {
        self.with_cap(self.max_connections)
    }

    /// The limits a gate applies, with the connection cap the file budget allows.
    pub fn with_cap(&self, max_connections: u32) -> Limits {
        Limits {
            max_connections: max_connections.max(1) as usize,
            max_per_source: self.max_per_source.max(1) as usize,
            header_timeout: Duration::from_millis(self.header_timeout_ms.max(1)),
            request_timeout: Duration::from_millis(self.request_timeout_ms.max(1)),
        }
    }
}

/// What a gate and its server enforce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub max_per_source: usize,
    pub header_timeout: Duration,
    pub request_timeout: Duration,
}

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
    name: String,
    limits: Limits,
    started: Instant,
    open: Mutex<Open>,
    open_count: AtomicUsize,
    accepted: AtomicU64,
    refused_full: AtomicU64,
    refused_source: AtomicU64,
    evicted: AtomicU64,
    timeouts: AtomicU64,
    accept_errors: AtomicU64,
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

/// Connections the kernel completes before the agent accepts them (Linux caps it at
/// `net.core.somaxconn`, 4096 by default). tokio's `TcpListener::bind` asks for 1024: at the
/// lab attack's 2,500 connections a second that is 0.4 s of slack, and a moment of CPU
/// starvation overflowed it, dropping SYNs, so that a legitimate client waited for its SYN's
/// retransmission (1 s). Refusing is cheap; waiting for the retransmit is not.
const BACKLOG: u32 = 4096;

/// A listener on `addr` with the agent's backlog.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // As `TcpListener::bind` does: a restarted agent rebinds while old connections linger.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// How long to wait after `accept` fails: the error (EMFILE, ENFILE, ENOBUFS) leaves the
/// listener readable, so retrying at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Accepts on `listener` through `gate` until the task is dropped: `refuse` answers a refused
/// connection (at once, without waiting on the peer) before it is closed; `serve` runs each
/// admitted one (and must end it when the permit is evicted). Connections are tasks of this
/// loop, so dropping it closes them too.
pub async fn accept_loop<S, F>(
    listener: TcpListener,
    gate: Arc<Gate>,
    refuse: fn(&tokio::net::TcpStream, Refusal),
    serve: S,
) where
    S: Fn(tokio::net::TcpStream, SocketAddr, Permit) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let mut connections = JoinSet::new();
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => match gate.admit(peer) {
                Ok(permit) => {
                    connections.spawn(serve(stream, peer, permit));
                }
                Err(refusal) => refuse(&stream, refusal),
            },
            Err(error) => {
                gate.accept_errors.fetch_add(1, Relaxed);
                warn!(listener = %gate.name, %error, "accepting a connection failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
        while connections.try_join_next().is_some() {}
    }
}

#[cfg(test)]
mod tests {
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
    fn a_partial_limits_table_keeps_the_server_s_own_defaults() -> Result<(), String> {
        let metrics: crate::metrics::MetricsConfig =
            toml::from_str("[limits]\nheader_timeout_ms = 1000\n").map_err(|e| e.to_string())?;
        assert_eq!(
            (
                metrics.limits.max_connections,
                metrics.limits.header_timeout_ms
            ),
            (64, 1000),
            "expected /metrics' own cap beside the value given"
        );
        let dns = crate::dns::DnsConfig::default();
        assert_eq!(dns.tcp_limits.max_connections, 128);
        let zero: Result<crate::register::RegisterConfig, _> =
            toml::from_str("[limits]\nmax_per_source = 0\n");
        let zero = zero.map_err(|e| e.to_string())?;
        assert!(
            zero.limits.validate("register.limits").is_err(),
            "expected a share of 0 refused"
        );
        Ok(())
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
