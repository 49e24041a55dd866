//! BFD (RFC 5880, single hop per RFC 5881) for the BGP peers that ask for it: asynchronous mode
//! on UDP 3784, TTL 255 sent and required, so that a router learns within the detection time
//! (100 ms x 3 at the fastest) that this POP is gone, instead of the BGP hold time.
//!
//! Where it runs: in the agent, one tokio task per peer (timers, sending, the state machine),
//! fed by one receiving task per address family that checks each datagram and hands it to its
//! session. A session in the agent shares the agent's fate, so its packets carry C = 0 (Control
//! Plane Independent clear, RFC 5880 §4.1): a router may conclude nothing about the forwarding
//! plane from this session going down. That is exactly what graceful restart needs told apart:
//!
//! - the agent is killed or upgraded: the BGP connection closes at once (the kernel ends it),
//!   the router starts graceful restart, then BFD times out. A router that reads the C bit
//!   (FRR's `neighbor X bfd check-control-plane-failure`) ignores a BFD down with C = 0 for a
//!   peer in graceful restart and keeps the stale routes; the pinned data plane forwards all the
//!   while, and the restarted agent re-announces and sends End-of-RIB.
//! - the host dies (kernel and agent): no FIN, so no graceful restart has begun when BFD times
//!   out; the router resets the session and withdraws the routes within the detection time.
//! - the agent hangs (SIGSTOP): BFD stops with it and the routes go within the detection time,
//!   while the data plane may still forward: the design prefers sending clients to a POP whose
//!   agent answers.
//!
//! BIRD 2 ignores the C bit (it only prints it): with `bfd on` a BFD down resets the session,
//! flushing routes kept for graceful restart too; `bfd graceful` turns every BFD down into a
//! graceful restart instead, host death included (docs/operations.md).
//!
//! When the session is Up and goes Down while the BGP session is Established, the BGP session is
//! closed as on hold timer expiry (Cease, subcode 10 "BFD Down", RFC 9384).

pub mod machine;
pub mod packet;
pub mod socket;

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::{
    net::UdpSocket,
    sync::{mpsc, watch},
    task::JoinHandle,
    time::Instant,
};
use tracing::{debug, info, warn};

use machine::{Machine, Timing};
use packet::{Control, Malformed, State};

/// `bfd = true`, or a table of timers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum BfdSetting {
    Switch(bool),
    Options(BfdConfig),
}

/// By hand rather than `untagged`: a mistyped key in the table is then reported as such, not as
/// "data did not match any variant".
impl<'de> Deserialize<'de> for BfdSetting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Setting;
        impl<'de> serde::de::Visitor<'de> for Setting {
            type Value = BfdSetting;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("true, false, or a table with min_tx_ms, min_rx_ms and multiplier")
            }

            fn visit_bool<E: serde::de::Error>(self, on: bool) -> Result<BfdSetting, E> {
                Ok(BfdSetting::Switch(on))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<BfdSetting, A::Error> {
                BfdConfig::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(BfdSetting::Options)
            }
        }
        d.deserialize_any(Setting)
    }
}

impl BfdSetting {
    /// The timers when BFD is on.
    pub fn config(&self) -> Option<BfdConfig> {
        match self {
            BfdSetting::Switch(true) => Some(BfdConfig::default()),
            BfdSetting::Switch(false) => None,
            BfdSetting::Options(c) => Some(*c),
        }
    }
}

/// `[bgp.peers.bfd]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BfdConfig {
    /// How often this side wants to send once Up (the peer may ask for slower).
    pub min_tx_ms: u32,
    /// How often this side can receive.
    pub min_rx_ms: u32,
    /// Missed packets before the peer declares this side down (its detection time is this
    /// times the agreed interval).
    pub multiplier: u8,
}

impl Default for BfdConfig {
    /// 300 ms x 3: FRR's and BIRD's defaults (BIRD: 100 ms tx, 100 ms rx, multiplier 5).
    fn default() -> Self {
        BfdConfig {
            min_tx_ms: 300,
            min_rx_ms: 300,
            multiplier: 3,
        }
    }
}

/// The fastest interval allowed (the 100 ms x 3).
pub const MIN_INTERVAL_MS: u32 = 100;
pub const MAX_INTERVAL_MS: u32 = 60_000;

impl BfdConfig {
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [("min_tx_ms", self.min_tx_ms), ("min_rx_ms", self.min_rx_ms)] {
            if !(MIN_INTERVAL_MS..=MAX_INTERVAL_MS).contains(&v) {
                return Err(format!(
                    "bfd.{name} must be {MIN_INTERVAL_MS} to {MAX_INTERVAL_MS}, not {v}"
                ));
            }
        }
        if self.multiplier == 0 {
            return Err("bfd.multiplier must be at least 1".into());
        }
        Ok(())
    }

    fn timing(&self) -> Timing {
        Timing {
            min_tx_us: self.min_tx_ms * 1000,
            min_rx_us: self.min_rx_ms * 1000,
            multiplier: self.multiplier,
        }
    }
}

/// One peer's BFD session, for `edge-agent status` and `/metrics`.
#[derive(Clone, Debug, Serialize)]
pub struct BfdStatus {
    pub state: &'static str,
    pub up: bool,
    pub local_discriminator: u32,
    pub remote_discriminator: u32,
    /// Configured.
    pub min_tx_ms: u32,
    pub min_rx_ms: u32,
    pub multiplier: u8,
    /// Agreed: how often this side sends, how often the peer does, and how long a silence
    /// takes this session down.
    pub tx_interval_ms: f64,
    pub rx_interval_ms: f64,
    pub detection_time_ms: f64,
    pub remote_multiplier: u8,
    /// The peer's C bit (Control Plane Independent).
    pub remote_control_plane_independent: bool,
    /// Every state change, and the Up -> Down ones.
    pub transitions: u64,
    pub down_transitions: u64,
    /// Why the session last went down (RFC 5880 §4.1 diagnostic).
    pub last_down_diag: Option<&'static str>,
    pub packets_sent: u64,
    pub packets_received: u64,
    pub error: Option<String>,
}

impl BfdStatus {
    fn new(config: &BfdConfig, my_disc: u32) -> BfdStatus {
        BfdStatus {
            state: State::Down.as_str(),
            up: false,
            local_discriminator: my_disc,
            remote_discriminator: 0,
            min_tx_ms: config.min_tx_ms,
            min_rx_ms: config.min_rx_ms,
            multiplier: config.multiplier,
            tx_interval_ms: 0.0,
            rx_interval_ms: 0.0,
            detection_time_ms: 0.0,
            remote_multiplier: 0,
            remote_control_plane_independent: false,
            transitions: 0,
            down_transitions: 0,
            last_down_diag: None,
            packets_sent: 0,
            packets_received: 0,
            error: None,
        }
    }

    fn show(&mut self, m: &Machine) {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        self.state = m.state.as_str();
        self.up = m.state == State::Up;
        self.remote_discriminator = m.remote_disc;
        self.tx_interval_ms = m.tx_interval().map_or(0.0, ms);
        self.rx_interval_ms = ms(m.rx_interval());
        self.detection_time_ms = if m.remote_mult > 0 {
            ms(m.detection_time())
        } else {
            0.0
        };
        self.remote_multiplier = m.remote_mult;
        self.remote_control_plane_independent = m.remote_cpi;
    }
}

/// Datagrams dropped, by reason, across every session (many have no session to count under),
/// and those the receiving sockets' buffers dropped before they could be read
/// (`socket_overflow`, whatever they held).
#[derive(Default)]
pub struct Dropped {
    malformed: [AtomicU64; Malformed::ALL.len()],
    overflow: AtomicU64,
}

impl Dropped {
    fn count(&self, why: Malformed) {
        self.malformed[why.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        let mut all: BTreeMap<&'static str, u64> = Malformed::ALL
            .iter()
            .map(|m| {
                (
                    m.as_str(),
                    self.malformed[m.index()].load(Ordering::Relaxed),
                )
            })
            .collect();
        all.insert("socket_overflow", self.overflow.load(Ordering::Relaxed));
        all
    }
}

/// One peer's session as the speaker starts it.
pub struct PeerBfd {
    pub peer: IpAddr,
    pub local: Option<IpAddr>,
    pub config: BfdConfig,
}

/// What the BGP session of a peer gets: the count of Up -> Down transitions, which it watches.
pub type DownCount = watch::Receiver<u64>;

/// Every BFD task of the speaker.
pub struct Bfd {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    receivers: Vec<JoinHandle<()>>,
    pub dropped: Arc<Dropped>,
}

/// How a session's packets find it.
struct Demux {
    by_disc: HashMap<u32, usize>,
    by_addr: HashMap<IpAddr, usize>,
    addrs: Vec<IpAddr>,
    inboxes: Vec<mpsc::Sender<Control>>,
}

impl Bfd {
    /// Starts a session per peer and a receiver per family in use. `status[i]` is where peer
    /// `i`'s state is shown; the returned receivers say when each session went down.
    pub fn start(
        peers: &[PeerBfd],
        status: Vec<Arc<Mutex<Option<BfdStatus>>>>,
    ) -> (Bfd, Vec<DownCount>) {
        let (stop, shutdown) = watch::channel(false);
        let dropped = Arc::new(Dropped::default());
        let mut demux = Demux {
            by_disc: HashMap::new(),
            by_addr: HashMap::new(),
            addrs: Vec::new(),
            inboxes: Vec::new(),
        };
        let (mut tasks, mut downs) = (Vec::new(), Vec::new());
        for (i, (p, status)) in peers.iter().zip(status).enumerate() {
            let mut my_disc = fastrand::u32(1..);
            while demux.by_disc.contains_key(&my_disc) {
                my_disc = fastrand::u32(1..);
            }
            let (tx, rx) = mpsc::channel(64);
            demux.by_disc.insert(my_disc, i);
            demux.by_addr.insert(p.peer, i);
            demux.addrs.push(p.peer);
            demux.inboxes.push(tx);
            let (down_tx, down_rx) = watch::channel(0u64);
            downs.push(down_rx);
            let runner = Runner {
                peer: p.peer,
                local: p.local,
                config: p.config,
                machine: Machine::new(p.config.timing(), my_disc),
                inbox: rx,
                status,
                down: down_tx,
                shutdown: shutdown.clone(),
            };
            tasks.push(tokio::spawn(runner.run()));
        }
        let demux = Arc::new(demux);
        let mut receivers = Vec::new();
        for v6 in [false, true] {
            if !peers.iter().any(|p| p.peer.is_ipv6() == v6) {
                continue;
            }
            match socket::receiver(v6) {
                Ok(sock) => receivers.push(tokio::spawn(receive_loop(
                    sock,
                    Arc::clone(&demux),
                    Arc::clone(&dropped),
                ))),
                Err(error) => {
                    warn!(%error, v6, port = socket::PORT, "BFD: cannot listen; the sessions of this family stay down")
                }
            }
        }
        (
            Bfd {
                stop,
                tasks,
                receivers,
                dropped,
            },
            downs,
        )
    }

    /// Ends every session without a word, as a crash would: for an agent that leaves its
    /// routes to the routers' graceful restart (an AdminDown could make them drop the routes).
    pub fn abandon(self) {
        for t in self.receivers.iter().chain(&self.tasks) {
            t.abort();
        }
    }

    /// Stops every session, which tells its peer AdminDown first. Called after the BGP
    /// sessions closed: a router that took AdminDown as a failure would otherwise reset the BGP
    /// session before the agent's withdraws and Cease.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for r in &self.receivers {
            r.abort();
        }
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Reads one family's datagrams: RFC 5881 §5's TTL check, RFC 5880 §6.8.6's packet checks, then
/// the session by Your Discriminator (or, while it is 0, by the source address).
async fn receive_loop(sock: UdpSocket, demux: Arc<Demux>, dropped: Arc<Dropped>) {
    let mut buf = [0u8; 512];
    let mut overflowed = 0u32;
    loop {
        let d = match socket::recv(&sock, &mut buf).await {
            Ok(d) => d,
            Err(error) => {
                debug!(%error, "BFD: receive failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if let Some(now) = d.overflowed {
            // A running count of the socket's own (it wraps at 2^32).
            let more = now.wrapping_sub(overflowed);
            overflowed = now;
            dropped
                .overflow
                .fetch_add(u64::from(more), Ordering::Relaxed);
        }
        match classify(&demux, &buf[..d.len], super::canonical(d.from), d.ttl) {
            Ok((i, c)) => {
                // A full inbox means the session task is behind; the next packet will do.
                let _ = demux.inboxes[i].try_send(c);
            }
            Err(why) => dropped.count(why),
        }
    }
}

fn classify(
    demux: &Demux,
    payload: &[u8],
    from: IpAddr,
    ttl: Option<u8>,
) -> Result<(usize, Control), Malformed> {
    match ttl {
        Some(socket::TTL) => {}
        Some(_) => return Err(Malformed::Ttl),
        None => return Err(Malformed::NoTtl),
    }
    let c = Control::parse(payload)?;
    let i = if c.your_disc != 0 {
        *demux
            .by_disc
            .get(&c.your_disc)
            .ok_or(Malformed::UnknownDiscriminator)?
    } else {
        *demux.by_addr.get(&from).ok_or(Malformed::UnknownPeer)?
    };
    // RFC 5881 §3: a single-hop session is bound to its peer's address.
    if demux.addrs[i] != from {
        return Err(Malformed::UnknownPeer);
    }
    Ok((i, c))
}

struct Runner {
    peer: IpAddr,
    local: Option<IpAddr>,
    config: BfdConfig,
    machine: Machine,
    inbox: mpsc::Receiver<Control>,
    status: Arc<Mutex<Option<BfdStatus>>>,
    down: watch::Sender<u64>,
    shutdown: watch::Receiver<bool>,
}

impl Runner {
    fn show(&self, f: impl FnOnce(&mut BfdStatus)) {
        let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
        let status = s.get_or_insert_with(|| BfdStatus::new(&self.config, self.machine.my_disc));
        status.show(&self.machine);
        f(status);
    }

    async fn run(mut self) {
        self.show(|_| {});
        let to = SocketAddr::new(self.peer, socket::PORT);
        let mut sock: Option<UdpSocket> = None;
        let mut next_tx = Instant::now();
        let mut last_sent = Instant::now();
        let mut shutdown = self.shutdown.clone();
        loop {
            if sock.is_none() {
                match socket::sender(self.peer, self.local) {
                    Ok(s) => {
                        sock = Some(s);
                        self.show(|s| s.error = None);
                    }
                    Err(e) => self.show(|s| s.error = Some(format!("socket: {e}"))),
                }
            }
            let deadline = self.machine.deadline();
            let far = Instant::now() + Duration::from_secs(3600);
            tokio::select! {
                () = tokio::time::sleep_until(next_tx) => {
                    self.send(sock.as_ref(), to, false).await;
                    last_sent = Instant::now();
                    next_tx = self
                        .machine
                        .next_tx(Instant::now(), fastrand::f64())
                        .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
                }
                () = tokio::time::sleep_until(deadline.unwrap_or(far)), if deadline.is_some() => {
                    if let Some(change) = self.machine.expire(Instant::now()) {
                        self.changed(change);
                    }
                    self.show(|_| {});
                }
                c = self.inbox.recv() => {
                    let Some(c) = c else { return };
                    let got = self.machine.receive(&c, Instant::now());
                    self.show(|s| s.packets_received += 1);
                    if let Some(change) = got.change {
                        self.changed(change);
                    }
                    if got.reply_final {
                        self.send(sock.as_ref(), to, true).await;
                    }
                    // A faster rate (the session came Up, or the peer can receive faster)
                    // applies from the last packet sent, not after the slow one already due:
                    // the peer's detection time is already the fast one.
                    if let Some(sooner) = self.machine.next_tx(last_sent, fastrand::f64()) {
                        next_tx = next_tx.min(sooner);
                    }
                }
                () = stopped(&mut shutdown) => {
                    // Tell the peer this is administrative, not a failure (RFC 5880 §6.8.16,
                    // RFC 5882 §3.2): a few times, as packets may be lost.
                    self.machine.admin_down();
                    for _ in 0..3 {
                        self.send(sock.as_ref(), to, false).await;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    self.show(|_| {});
                    return;
                }
            }
        }
    }

    async fn send(&self, sock: Option<&UdpSocket>, to: SocketAddr, final_: bool) {
        let Some(sock) = sock else { return };
        let bytes = self.machine.packet(final_).encode();
        match sock.send_to(&bytes, to).await {
            Ok(_) => self.show(|s| s.packets_sent += 1),
            // The peer unreachable for a while is what BFD is there to notice, not an error.
            Err(error) => debug!(peer = %self.peer, %error, "BFD: send failed"),
        }
    }

    fn changed(&self, change: machine::Change) {
        let why = packet::diag::name(change.diag);
        info!(peer = %self.peer, from = change.from.as_str(), to = change.to.as_str(), diag = why, "BFD session state");
        let went_down = change.from == State::Up;
        self.show(|s| {
            s.transitions += 1;
            if went_down {
                s.down_transitions += 1;
                s.last_down_diag = Some(why);
            }
        });
        if went_down {
            self.down.send_modify(|n| *n += 1);
        }
    }
}

/// Resolves once the speaker stops (the guard `wait_for` returns is not `Send`).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demux() -> Demux {
        let peer: IpAddr = [10, 0, 0, 1].into();
        let (tx, _rx) = mpsc::channel(1);
        Demux {
            by_disc: HashMap::from([(77, 0)]),
            by_addr: HashMap::from([(peer, 0)]),
            addrs: vec![peer],
            inboxes: vec![tx],
        }
    }

    #[test]
    fn datagrams_reach_their_session_or_are_counted_by_reason() {
        let d = demux();
        let peer: IpAddr = [10, 0, 0, 1].into();
        let other: IpAddr = [10, 0, 0, 9].into();
        let mut m = Machine::new(BfdConfig::default().timing(), 5);
        let down = m.packet(false).encode();
        assert_eq!(classify(&d, &down, peer, Some(255)).map(|r| r.0), Ok(0));
        assert_eq!(
            classify(&d, &down, peer, Some(254)).err(),
            Some(Malformed::Ttl)
        );
        assert_eq!(
            classify(&d, &down, peer, None).err(),
            Some(Malformed::NoTtl)
        );
        assert_eq!(
            classify(&d, &down, other, Some(255)).err(),
            Some(Malformed::UnknownPeer)
        );
        m.remote_disc = 78;
        let unknown = m.packet(false).encode();
        assert_eq!(
            classify(&d, &unknown, peer, Some(255)).err(),
            Some(Malformed::UnknownDiscriminator)
        );
        m.remote_disc = 77;
        let known = m.packet(false).encode();
        assert_eq!(classify(&d, &known, peer, Some(255)).map(|r| r.0), Ok(0));
        assert_eq!(
            classify(&d, &known, other, Some(255)).err(),
            Some(Malformed::UnknownPeer),
            "the right discriminator from the wrong address"
        );
    }

    #[test]
    fn config_is_a_switch_or_timers() -> Result<(), Box<dyn std::error::Error>> {
        #[derive(Deserialize)]
        struct P {
            bfd: BfdSetting,
        }
        let on: P = toml::from_str("bfd = true")?;
        assert_eq!(on.bfd.config(), Some(BfdConfig::default()));
        let off: P = toml::from_str("bfd = false")?;
        assert_eq!(off.bfd.config(), None);
        let fast: P = toml::from_str("[bfd]\nmin_tx_ms = 100\nmin_rx_ms = 100\nmultiplier = 3")?;
        let c = fast.bfd.config().ok_or("on")?;
        c.validate()?;
        assert_eq!((c.min_tx_ms, c.min_rx_ms, c.multiplier), (100, 100, 3));
        let too_fast = BfdConfig { min_tx_ms: 50, ..c };
        assert!(too_fast.validate().is_err());
        assert!(BfdConfig { multiplier: 0, ..c }.validate().is_err());
        let typo = toml::from_str::<P>("[bfd]\nmin_tx = 100")
            .err()
            .map(|e| e.to_string());
        assert!(
            typo.as_deref().is_some_and(|e| e.contains("min_tx")),
            "a mistyped key is named: {typo:?}"
        );
        Ok(())
    }
}
