//! The anycast BGP speaker: every POP announces the VIPs it can serve to its routers, and
//! withdraws one the moment it cannot (no eligible backend, data plane detached, agent
//! stopping, operator drain), so the routers send clients to another POP with no DNS TTL to
//! wait out. Announce-only: routes the peers send are read, checked and counted, never used.
//! Peers may be external (eBGP) or in this POP's own AS (iBGP, e.g. route reflectors: RFC 4271
//! §5.1.2 and §5.1.5 decide what the routes carry then).
//!
//! `wire` frames and checks messages (bgpkit-parser encodes and decodes the bodies), `open`
//! negotiates, `session` is one peer's state machine, `routes` decides what is announced.

pub mod bfd;
pub mod config;
pub mod drain;
pub mod md5;
pub mod metrics;
pub mod open;
pub mod routes;
pub mod session;
pub mod wire;

use std::{
    collections::{BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::{
    net::{TcpListener, TcpSocket, TcpStream},
    sync::{mpsc, watch},
    task::JoinHandle,
};
use tracing::{debug, info, warn};

pub use config::{BgpConfig, PeerConfig};
use routes::{Announcer, Inputs, Rib, VipState};
use session::{Local, PeerStatus, Session, State};

pub struct Speaker {
    announcer: Announcer,
    rib: watch::Sender<Arc<Rib>>,
    shutdown: watch::Sender<bool>,
    peers: Vec<Arc<Mutex<PeerStatus>>>,
    /// Each peer's BFD state (none without BFD), shown with its session.
    bfd_status: Vec<Arc<Mutex<Option<bfd::status::BfdStatus>>>>,
    bfd: bfd::Bfd,
    tasks: Vec<JoinHandle<()>>,
    listeners: Vec<JoinHandle<()>>,
    vips: Vec<VipState>,
}

impl Speaker {
    /// Starts a session per peer and the listeners for passive ones; `None` without peers.
    pub async fn start(config: &BgpConfig) -> Result<Option<Speaker>, String> {
        Speaker::start_after(config, false).await
    }

    /// [`Speaker::start`] for an agent whose data plane kept forwarding since the last one
    /// (`forwarding_kept`: it adopted the pinned programs), which graceful restart tells the
    /// peers (RFC 4724 §3, the Restart State and Forwarding State bits).
    pub async fn start_after(
        config: &BgpConfig,
        forwarding_kept: bool,
    ) -> Result<Option<Speaker>, String> {
        if config.peers.is_empty() {
            return Ok(None);
        }
        config.validate()?;
        let announcer = Announcer::new(config)?;
        let (rib, rib_rx) = watch::channel(Arc::new(Rib::new()));
        let (shutdown, shutdown_rx) = watch::channel(false);
        let local = Local {
            asn: config.asn,
            hold_time: config.hold_time_secs,
            router_id: config.router_id,
            retry: Duration::from_secs(config.connect_retry_secs.max(1)),
            retry_max: Duration::from_secs(
                config
                    .connect_retry_max_secs
                    .max(config.connect_retry_secs.max(1)),
            ),
            retry_fast: Duration::from_secs(config.connect_retry_fast_secs),
            shutdown_pause: Duration::from_millis(config.shutdown_pause_ms),
            graceful_restart: (config.graceful_restart_secs > 0).then_some(open::GracefulRestart {
                restart_time: config.graceful_restart_secs,
                restarted: forwarding_kept,
                forwarding: forwarding_kept,
            }),
        };
        let bfd_status: Vec<_> = config
            .peers
            .iter()
            .map(|_| Arc::new(Mutex::new(None)))
            .collect();
        let (mut bfd_peers, mut bfd_slots, mut bfd_of) = (Vec::new(), Vec::new(), Vec::new());
        for (peer, slot) in config.peers.iter().zip(&bfd_status) {
            let on = peer.bfd.as_ref().and_then(bfd::config::BfdSetting::config);
            bfd_of.push(on.map(|c| {
                let hold = Duration::from_millis(u64::from(c.strict_hold_ms));
                (bfd_peers.len(), c.strict.then_some(hold))
            }));
            if let Some(c) = on {
                bfd_peers.push(bfd::PeerBfd {
                    peer: canonical(peer.address),
                    local: peer.local_address,
                    config: c,
                });
                bfd_slots.push(Arc::clone(slot));
            }
        }
        let (bfd, bfd_signals) = bfd::Bfd::start(&bfd_peers, bfd_slots);
        let mut inboxes = HashMap::new();
        let (mut peers, mut tasks) = (Vec::new(), Vec::new());
        for (peer, peer_bfd) in config.peers.iter().zip(bfd_of) {
            let status = Arc::new(Mutex::new(PeerStatus {
                peer: peer.address,
                asn: peer.asn,
                internal: peer.asn == config.asn,
                state: State::Idle,
                established_at: None,
                prefixes_announced: 0,
                prefixes_received: 0,
                families: Vec::new(),
                last_error: None,
                established_count: 0,
                graceful_restart: session::GrStatus::default(),
                bfd: None,
            }));
            let incoming = peer.passive.then(|| {
                let (tx, rx) = mpsc::channel(1);
                inboxes.insert(canonical(peer.address), tx);
                rx
            });
            let session = Session {
                peer: peer.clone(),
                local: local.clone(),
                rib: rib_rx.clone(),
                incoming,
                shutdown: shutdown_rx.clone(),
                status: Arc::clone(&status),
                bfd: peer_bfd.and_then(|(i, strict)| {
                    bfd_signals.get(i).map(|signal| session::SessionBfd {
                        signal: signal.clone(),
                        strict,
                    })
                }),
            };
            peers.push(status);
            tasks.push(tokio::spawn(session.run()));
        }
        let mut listeners = Vec::new();
        if !inboxes.is_empty() {
            let inboxes = Arc::new(inboxes);
            for &addr in &config.listen {
                match listen(addr, config) {
                    Ok(listener) => {
                        info!(%addr, "BGP listening for passive peers");
                        listeners.push(tokio::spawn(accept_loop(listener, Arc::clone(&inboxes))));
                    }
                    Err(error) => warn!(%addr, %error, "BGP: cannot listen"),
                }
            }
        }
        Ok(Some(Speaker {
            announcer,
            rib,
            shutdown,
            peers,
            bfd_status,
            bfd,
            tasks,
            listeners,
            vips: Vec::new(),
        }))
    }

    /// Recomputes the routes; the sessions send what changed at once.
    pub fn update(&mut self, vips: &BTreeSet<IpAddr>, inputs: &Inputs) {
        let (rib, states) = self.announcer.routes(vips, inputs, Instant::now());
        for s in &states {
            let before = self.vips.iter().find(|v| v.vip == s.vip);
            if before.is_none_or(|b| b.announced != s.announced) {
                info!(vip = %s.vip, prefix = %s.prefix, announced = s.announced, reason = s.reason, "BGP route");
            }
        }
        self.vips = states;
        self.rib.send_if_modified(|current| {
            if **current == rib {
                false
            } else {
                *current = Arc::new(rib);
                true
            }
        });
    }

    /// Each session and VIP, for `edge-agent status` and `/metrics`.
    pub fn status(&self) -> (Vec<PeerStatus>, Vec<VipState>) {
        let peers = self
            .peers
            .iter()
            .zip(&self.bfd_status)
            .map(|(p, b)| {
                let mut p = p.lock().unwrap_or_else(|e| e.into_inner()).clone();
                p.bfd = b.lock().unwrap_or_else(|e| e.into_inner()).clone();
                p
            })
            .collect();
        (peers, self.vips.clone())
    }

    /// BFD datagrams dropped, by reason (`edge-agent status`, `/metrics`).
    pub fn bfd_dropped(&self) -> std::collections::BTreeMap<&'static str, u64> {
        self.bfd.dropped.snapshot()
    }

    /// Closes every session's connection without a withdraw or a NOTIFICATION, for an agent
    /// stopping to be restarted: routers that negotiated graceful restart keep its routes
    /// (stale) for the restart time while the pinned data plane goes on forwarding, and the
    /// next agent refreshes them (RFC 4724 section 4.2: the end of the TCP connection, not a
    /// NOTIFICATION, starts the helper's side).
    pub fn leave_to_graceful_restart(self) {
        for t in self.listeners.iter().chain(&self.tasks) {
            t.abort();
        }
        self.bfd.abandon();
    }

    /// Withdraws every route on every session, closes them with a Cease, and waits (at most
    /// `wait`) for that to reach the peers.
    pub async fn shutdown(self, wait: Duration) {
        let _ = self.shutdown.send(true);
        for l in &self.listeners {
            l.abort();
        }
        let all = async {
            futures_join(self.tasks).await;
            self.bfd.stop().await;
        };
        if tokio::time::timeout(wait, all).await.is_err() {
            warn!("BGP sessions did not close in time");
        }
    }
}

async fn futures_join(tasks: Vec<JoinHandle<()>>) {
    for t in tasks {
        let _ = t.await;
    }
}

/// IPv4-mapped IPv6 addresses (a dual-stack listener's view of IPv4 peers, e.g.
/// `[::ffff:10.77.2.1]` when FRR connects to `[::]:179`) as IPv4, for matching the configured
/// peer and for the session's own addresses (router id, next hop).
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn listen(addr: SocketAddr, config: &BgpConfig) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    for peer in config.peers.iter().filter(|p| p.passive) {
        if peer.address.is_ipv6() && addr.is_ipv4() {
            continue;
        }
        if let Ok(Some(key)) = peer.md5_key() {
            md5::set_key(&socket, peer.address, addr.is_ipv6(), &key)?;
        }
    }
    socket.listen(16)
}

/// Hands each connection to its peer's session; a connection from anyone else is closed.
async fn accept_loop(
    listener: TcpListener,
    inboxes: Arc<HashMap<IpAddr, mpsc::Sender<TcpStream>>>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, from)) => match inboxes.get(&canonical(from.ip())) {
                Some(tx) => {
                    if tx.try_send(stream).is_err() {
                        debug!(%from, "BGP: the session is busy; connection closed");
                    }
                }
                None => warn!(%from, "BGP: connection from an address that is not a peer; closed"),
            },
            Err(error) => {
                warn!(%error, "BGP: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
