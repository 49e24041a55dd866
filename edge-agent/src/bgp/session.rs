//! One peer's session: the RFC 4271 state machine as a task. Connect (or wait for the peer),
//! exchange OPENs, then keep the peer's routes equal to the speaker's RIB until an error, the
//! hold timer, or shutdown; after an error, back off and start again. A graceful stop withdraws
//! every route, pauses (`shutdown_pause_ms`) so routers act on the withdraws, then closes with
//! the Cease NOTIFICATION. When a connection fails, a NOTIFICATION the peer left in the socket
//! is reported as the cause: after a hang it, not the agent's own write error or hold-timer
//! expiry, says why.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use bgpkit_parser::models::{AsnLength, BgpMessage, BgpNotificationMessage};
use bytes::BytesMut;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{tcp::OwnedReadHalf, tcp::OwnedWriteHalf, TcpSocket, TcpStream},
    sync::{mpsc, watch},
    time::{timeout_at, Instant},
};
use tracing::{info, warn};

use super::{
    config::PeerConfig,
    open::{self, Negotiated},
    routes::Rib,
    wire::{self, code, Notify, Speaking},
};

/// The RFC 4271 states, as `edge-agent status` shows them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum State {
    Idle,
    Connect,
    Active,
    OpenSent,
    OpenConfirm,
    Established,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Idle => "Idle",
            State::Connect => "Connect",
            State::Active => "Active",
            State::OpenSent => "OpenSent",
            State::OpenConfirm => "OpenConfirm",
            State::Established => "Established",
        }
    }
}

/// What `edge-agent status` and `/metrics` show of a session.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PeerStatus {
    pub peer: IpAddr,
    pub asn: u32,
    /// The peer is in this POP's AS (iBGP).
    pub internal: bool,
    pub state: State,
    /// Unix seconds when the session became Established.
    pub established_at: Option<i64>,
    pub prefixes_announced: usize,
    pub prefixes_received: u64,
    pub families: Vec<&'static str>,
    pub last_error: Option<String>,
    pub established_count: u64,
    pub graceful_restart: GrStatus,
    /// The BFD session with this peer, when configured.
    pub bfd: Option<super::bfd::BfdStatus>,
}

/// Graceful restart (RFC 4724) on the current or last session.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct GrStatus {
    /// Both OPENs carried the capability.
    pub negotiated: bool,
    /// What this speaker offered (none: not configured).
    pub restart_time: Option<u16>,
    pub peer_restart_time: Option<u16>,
    /// The Forwarding State bit this speaker sent: the data plane kept forwarding.
    pub forwarding_state: bool,
    pub end_of_rib_sent: Vec<&'static str>,
    pub end_of_rib_received: Vec<&'static str>,
}

/// What a session needs from the speaker.
#[derive(Clone)]
pub struct Local {
    pub asn: u32,
    pub hold_time: u16,
    /// Fixed by config, else the local address of the session when it is IPv4.
    pub router_id: Option<Ipv4Addr>,
    pub retry: Duration,
    pub retry_max: Duration,
    /// How long after an Established session ends retries stay at `retry` (see [`Retry`]).
    pub retry_fast: Duration,
    /// Between the last withdraws and the Cease on a graceful stop.
    pub shutdown_pause: Duration,
    /// The graceful-restart capability to offer, if configured.
    pub graceful_restart: Option<open::GracefulRestart>,
}

/// The wait before each reconnect (RFC 4271 §8 leaves the ConnectRetryTimer to the
/// implementation): doubling from `base` to `max`, except for `fast` after an Established
/// session ended, when every wait is `base`. A peer that just reset a session often refuses
/// connections for an idle hold of its own (GoBGP: 5 s); doubling through it (1, 2, 4 s) came
/// back at 7 s, where waiting `base` each time comes back within `base` of the peer being ready.
#[derive(Clone, Debug)]
pub struct Retry {
    base: Duration,
    max: Duration,
    fast: Duration,
    next: Duration,
    fast_until: Option<Instant>,
}

impl Retry {
    pub fn new(base: Duration, max: Duration, fast: Duration) -> Self {
        Retry {
            base,
            max: max.max(base),
            fast,
            next: base,
            fast_until: None,
        }
    }

    /// An Established session ended at `now`.
    pub fn session_ended(&mut self, now: Instant) {
        self.next = self.base;
        self.fast_until = Some(now + self.fast);
    }

    /// How long to wait before the attempt that follows a failure at `now`.
    pub fn next(&mut self, now: Instant) -> Duration {
        if self.fast_until.is_some_and(|until| now < until) {
            return self.base;
        }
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        wait
    }
}

/// How a session ended.
enum End {
    Shutdown,
    Failed(String),
}

/// How long an OPEN may take to come (RFC 4271 suggests 4 minutes; a router answers in
/// milliseconds, and a stuck one should not hold the session that long).
const OPEN_WAIT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a write may wait for the peer to read when the session has no hold time.
const WRITE_WAIT_NO_HOLD: Duration = Duration::from_secs(240);
/// How long a failing connection is read for a NOTIFICATION the peer already sent.
const LAST_WORDS_WAIT: Duration = Duration::from_millis(50);

pub struct Session {
    pub peer: PeerConfig,
    pub local: Local,
    pub rib: watch::Receiver<Arc<Rib>>,
    /// Connections the listener accepted from this (passive) peer.
    pub incoming: Option<mpsc::Receiver<TcpStream>>,
    pub shutdown: watch::Receiver<bool>,
    pub status: Arc<Mutex<PeerStatus>>,
    /// Counts the BFD session's falls from Up, when BFD is on for this peer.
    pub bfd_down: Option<super::bfd::DownCount>,
}

impl Session {
    fn set(&self, f: impl FnOnce(&mut PeerStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()));
    }

    fn stopping(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Runs until shutdown.
    pub async fn run(mut self) {
        let mut retry = Retry::new(
            self.local.retry,
            self.local.retry_max,
            self.local.retry_fast,
        );
        while !self.stopping() {
            self.set(|s| {
                s.state = if self.peer.passive {
                    State::Active
                } else {
                    State::Connect
                }
            });
            let stream = if self.peer.passive {
                self.accept().await
            } else {
                self.connect().await
            };
            let end = match stream {
                Ok(Some(stream)) => self.session(stream).await,
                Ok(None) => End::Shutdown,
                Err(e) => End::Failed(e),
            };
            let established = self.status.lock().is_ok_and(|s| s.established_at.is_some());
            self.set(|s| {
                s.state = State::Idle;
                s.established_at = None;
                s.prefixes_announced = 0;
                s.families.clear();
            });
            match end {
                End::Shutdown => return,
                End::Failed(error) => {
                    warn!(peer = %self.peer.address, %error, "BGP session down");
                    self.set(|s| s.last_error = Some(error));
                }
            }
            if established {
                retry.session_ended(Instant::now());
            }
            let wait = retry.next(Instant::now());
            let mut shutdown = self.shutdown.clone();
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = stopped(&mut shutdown) => return,
            }
        }
    }

    async fn accept(&mut self) -> Result<Option<TcpStream>, String> {
        let mut shutdown = self.shutdown.clone();
        let Some(incoming) = self.incoming.as_mut() else {
            return Err("a passive peer without a listener".into());
        };
        tokio::select! {
            s = incoming.recv() => s.map(Some).ok_or_else(|| "the listener stopped".to_owned()),
            () = stopped(&mut shutdown) => Ok(None),
        }
    }

    async fn connect(&mut self) -> Result<Option<TcpStream>, String> {
        let peer = SocketAddr::new(self.peer.address, self.peer.port);
        let socket = if peer.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(|e| format!("socket: {e}"))?;
        if let Some(key) = self.peer.md5_key()? {
            super::md5::set_key(&socket, self.peer.address, false, &key)
                .map_err(|e| format!("setting the TCP-MD5 key: {e}"))?;
        }
        if let Some(local) = self.peer.local_address {
            socket
                .bind(SocketAddr::new(local, 0))
                .map_err(|e| format!("binding {local}: {e}"))?;
        }
        let signed = self.peer.md5_key()?.is_some();
        let mut shutdown = self.shutdown.clone();
        tokio::select! {
            r = tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(peer)) => match r {
                Ok(Ok(s)) => Ok(Some(s)),
                Ok(Err(e)) => Err(format!("connecting to {peer}: {e}")),
                Err(_) if signed => Err(format!(
                    "connecting to {peer}: timed out; a TCP-MD5 key is set, and a peer whose key \
                     differs (or that has none) drops the SYNs without a word (RFC 2385): check \
                     the key on both sides"
                )),
                Err(_) => Err(format!("connecting to {peer}: timed out")),
            },
            () = stopped(&mut shutdown) => Ok(None),
        }
    }

    /// One TCP connection's life: OPENs, then Established until it ends.
    async fn session(&mut self, stream: TcpStream) -> End {
        let _ = stream.set_nodelay(true);
        let local_addr = match (stream.local_addr(), stream.peer_addr()) {
            // On a dual-stack listener an IPv4 session's addresses are IPv4-mapped IPv6 ones.
            (Ok(l), Ok(_)) => SocketAddr::new(super::canonical(l.ip()), l.port()),
            _ => return End::Failed("the connection closed at once".into()),
        };
        let router_id = match (self.local.router_id, local_addr.ip()) {
            (Some(id), _) => id,
            (None, IpAddr::V4(v4)) => v4,
            (None, IpAddr::V6(_)) => {
                return End::Failed("bgp.router_id is needed for a session over IPv6".into())
            }
        };
        let (rd, wr) = stream.into_split();
        let mut conn = Conn {
            rd,
            wr,
            buf: BytesMut::with_capacity(4096),
            asn_len: AsnLength::Bits32,
            write_wait: OPEN_WAIT,
            torn: false,
        };
        let hold = self.peer.hold_time_secs.unwrap_or(self.local.hold_time);
        match self.establish(&mut conn, hold, router_id, local_addr).await {
            Ok(Some((negotiated, speaking))) => {
                self.established(&mut conn, negotiated, speaking).await
            }
            Ok(None) => {
                conn.close(&Notify::administrative_shutdown()).await;
                End::Shutdown
            }
            Err(error) => conn.fail(error).await,
        }
    }

    /// OpenSent and OpenConfirm: `None` when shutdown came first.
    async fn establish(
        &mut self,
        conn: &mut Conn,
        hold: u16,
        router_id: Ipv4Addr,
        local_addr: SocketAddr,
    ) -> Result<Option<(Negotiated, Speaking)>, SessionError> {
        conn.send(&open::ours_with(
            self.local.asn,
            hold,
            router_id,
            self.local.graceful_restart,
        ))
        .await?;
        self.set(|s| s.state = State::OpenSent);
        let mut shutdown = self.shutdown.clone();
        let deadline = Instant::now() + OPEN_WAIT;
        let msg = tokio::select! {
            m = conn.recv(deadline) => m?,
            () = stopped(&mut shutdown) => return Ok(None),
        };
        let negotiated = match msg {
            BgpMessage::Open(o) => open::accept(&o, self.peer.asn, hold, router_id)?,
            other => return Err(unexpected(&other, 1)),
        };
        conn.asn_len = negotiated.asn_len;
        // A peer that reads nothing for its hold time has let its own hold timer expire.
        conn.write_wait = hold_duration(negotiated.hold_time).unwrap_or(WRITE_WAIT_NO_HOLD);
        conn.send(&BgpMessage::KeepAlive).await?;
        self.set(|s| s.state = State::OpenConfirm);
        let deadline = Instant::now() + hold_duration(negotiated.hold_time).unwrap_or(OPEN_WAIT);
        let msg = tokio::select! {
            m = conn.recv(deadline) => m?,
            () = stopped(&mut shutdown) => return Ok(None),
        };
        match msg {
            BgpMessage::KeepAlive => {}
            other => return Err(unexpected(&other, 2)),
        }
        let ibgp = self.peer.asn == self.local.asn;
        let speaking = Speaking {
            ibgp,
            local_pref: self
                .peer
                .local_pref
                .unwrap_or(super::config::DEFAULT_LOCAL_PREF),
            local_asn: self.local.asn,
            asn_len: negotiated.asn_len,
            next_hop_v4: self.peer.next_hop_v4.or(match local_addr.ip() {
                IpAddr::V4(v4) => Some(v4),
                IpAddr::V6(v6) => v6.to_ipv4_mapped(),
            }),
            next_hop_v6: self.peer.next_hop_v6.or(match local_addr.ip() {
                IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => Some(v6),
                _ => None,
            }),
        };
        Ok(Some((negotiated, speaking)))
    }

    async fn established(&mut self, conn: &mut Conn, n: Negotiated, speaking: Speaking) -> End {
        let families: Vec<&'static str> = [
            (n.ipv4 && speaking.next_hop_v4.is_some(), "ipv4"),
            (n.ipv6 && speaking.next_hop_v6.is_some(), "ipv6"),
        ]
        .into_iter()
        .filter_map(|(on, f)| on.then_some(f))
        .collect();
        info!(peer = %self.peer.address, peer_id = %n.peer_id, hold = n.hold_time, ?families, "BGP session established");
        let gr = self.local.graceful_restart;
        self.set(|s| {
            s.state = State::Established;
            s.established_at = Some(crate::model::unix_now());
            s.established_count += 1;
            s.families.clone_from(&families);
            s.last_error = None;
            s.graceful_restart = GrStatus {
                negotiated: gr.is_some() && n.peer_restart_time.is_some(),
                restart_time: gr.map(|g| g.restart_time),
                peer_restart_time: n.peer_restart_time,
                forwarding_state: gr.is_some_and(|g| g.forwarding),
                end_of_rib_sent: Vec::new(),
                end_of_rib_received: Vec::new(),
            };
        });
        // Only the first sessions after a start are a restart (RFC 4724 §3, Restart State).
        if let Some(g) = self.local.graceful_restart.as_mut() {
            g.restarted = false;
        }
        let mut out = Outbox {
            speaking,
            ipv4: families.contains(&"ipv4"),
            ipv6: families.contains(&"ipv6"),
            advertised: Rib::new(),
        };
        match self.run_established(conn, &n, &mut out).await {
            Ok(()) => {
                // Withdraw first, then close: routers move traffic before the session drops.
                let had_routes = !out.advertised.is_empty();
                let withdrawn = out.sync(conn, &Rib::new()).await;
                if withdrawn.is_ok() {
                    info!(peer = %self.peer.address, "routes withdrawn; closing the session");
                    if had_routes {
                        // Some routers flush a closed session's routes on a path of their own,
                        // slower than a withdraw: let the withdraws act first.
                        tokio::time::sleep(self.local.shutdown_pause).await;
                    }
                }
                conn.close(&Notify::administrative_shutdown()).await;
                End::Shutdown
            }
            Err(error) => conn.fail(error).await,
        }
    }

    async fn run_established(
        &mut self,
        conn: &mut Conn,
        n: &Negotiated,
        out: &mut Outbox,
    ) -> Result<(), SessionError> {
        let hold = hold_duration(n.hold_time);
        let mut keepalive = tokio::time::interval(Duration::from_secs(n.keepalive_secs().max(1)));
        keepalive.reset();
        let far = Duration::from_secs(86_400 * 365);
        let mut deadline = Instant::now() + hold.unwrap_or(far);
        let rib = Arc::clone(&self.rib.borrow_and_update());
        out.sync(conn, &rib).await?;
        self.set(|s| s.prefixes_announced = out.advertised.len());
        out.end_of_rib(conn).await?;
        let sent: Vec<&'static str> = [(out.ipv4, "ipv4"), (out.ipv6, "ipv6")]
            .into_iter()
            .filter_map(|(on, f)| on.then_some(f))
            .collect();
        self.set(|s| s.graceful_restart.end_of_rib_sent = sent);
        let mut shutdown = self.shutdown.clone();
        // Only a fall of BFD during this session ends it.
        let mut bfd_down = self.bfd_down.clone();
        if let Some(b) = bfd_down.as_mut() {
            b.borrow_and_update();
        }
        loop {
            tokio::select! {
                () = stopped(&mut shutdown) => return Ok(()),
                () = bfd_fell(&mut bfd_down) => {
                    // As on hold timer expiry: the peer is unreachable, so the NOTIFICATION
                    // (Cease 10, BFD Down: RFC 9384) is best effort.
                    return Err(SessionError::Sent(Notify::new(
                        code::CEASE,
                        10,
                        Vec::new(),
                        "BFD session down",
                    )));
                }
                changed = self.rib.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    let rib = Arc::clone(&self.rib.borrow_and_update());
                    out.sync(conn, &rib).await?;
                    self.set(|s| s.prefixes_announced = out.advertised.len());
                }
                _ = keepalive.tick(), if hold.is_some() => conn.send(&BgpMessage::KeepAlive).await?,
                msg = conn.recv(deadline) => {
                    deadline = Instant::now() + hold.unwrap_or(far);
                    match msg? {
                        BgpMessage::KeepAlive => {}
                        BgpMessage::Update(u) => {
                            let (announced, _) = wire::update_counts(&u);
                            let eor = wire::end_of_rib(&u);
                            self.set(|s| {
                                s.prefixes_received += announced as u64;
                                let got = &mut s.graceful_restart.end_of_rib_received;
                                if let Some(f) = eor.filter(|f| !got.contains(f)) {
                                    got.push(f);
                                }
                            });
                        }
                        BgpMessage::RouteRefresh(_) => {
                            let rib = Arc::clone(&self.rib.borrow());
                            out.advertised.clear();
                            out.sync(conn, &rib).await?;
                        }
                        other => return Err(unexpected(&other, 3)),
                    }
                }
            }
        }
    }
}

/// Resolves when the BFD session falls from Up; never without BFD.
async fn bfd_fell(down: &mut Option<super::bfd::DownCount>) {
    match down {
        Some(d) => {
            if d.changed().await.is_err() {
                // The BFD task ended (shutdown): nothing more to watch.
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending::<()>().await,
    }
}

/// Resolves once the speaker stops (the guard `wait_for` returns is not `Send`).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

fn hold_duration(secs: u16) -> Option<Duration> {
    (secs > 0).then(|| Duration::from_secs(u64::from(secs)))
}

/// A NOTIFICATION from the peer ends the session; any other message out of place is a
/// Finite State Machine Error (RFC 6608 subcodes: 1 OpenSent, 2 OpenConfirm, 3 Established).
fn unexpected(msg: &BgpMessage, fsm_subcode: u8) -> SessionError {
    match msg {
        BgpMessage::Notification(n) => SessionError::Gone(peer_sent(n)),
        other => SessionError::Sent(Notify::new(
            code::FSM,
            fsm_subcode,
            vec![other.msg_type() as u8],
            format!("unexpected {:?}", other.msg_type()),
        )),
    }
}

fn peer_sent(n: &BgpNotificationMessage) -> String {
    let (c, s) = n.error.get_codes();
    format!("peer sent NOTIFICATION {c}/{s} ({:?})", n.error)
}

enum SessionError {
    /// We must send this NOTIFICATION, then close.
    Sent(Notify),
    /// The connection is gone (or the peer closed it with a NOTIFICATION).
    Gone(String),
}

impl From<Notify> for SessionError {
    fn from(n: Notify) -> Self {
        SessionError::Sent(n)
    }
}

struct Conn {
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    buf: BytesMut,
    asn_len: AsnLength,
    /// How long a write may wait for the peer to take it.
    write_wait: Duration,
    /// A write stopped partway: the stream is out of step, and no NOTIFICATION can follow.
    torn: bool,
}

impl Conn {
    async fn send(&mut self, msg: &BgpMessage) -> Result<(), SessionError> {
        let bytes = wire::encode(msg, self.asn_len)?;
        match tokio::time::timeout(self.write_wait, self.wr.write_all(&bytes)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(SessionError::Gone(format!("writing: {e}"))),
            Err(_) => {
                self.torn = true;
                Err(SessionError::Sent(Notify::new(
                    code::HOLD_TIMER,
                    0,
                    Vec::new(),
                    format!(
                        "hold timer expired: the peer read nothing for {} s",
                        self.write_wait.as_secs()
                    ),
                )))
            }
        }
    }

    /// A NOTIFICATION the peer sent that is still waiting to be read: after a hang, the peer
    /// usually said why before it closed, and that is the cause worth reporting.
    async fn last_words(&mut self) -> Option<String> {
        while self.buf.len() < 2 * wire::MAX_LEN {
            match tokio::time::timeout(LAST_WORDS_WAIT, self.rd.read_buf(&mut self.buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => break,
            }
        }
        while let Ok(Some(frame)) = wire::frame(&mut self.buf) {
            if let Ok(BgpMessage::Notification(n)) = wire::decode(&frame, self.asn_len) {
                return Some(peer_sent(&n));
            }
        }
        None
    }

    /// The next message, or the hold timer's NOTIFICATION at `deadline`.
    async fn recv(&mut self, deadline: Instant) -> Result<BgpMessage, SessionError> {
        loop {
            if let Some(frame) = wire::frame(&mut self.buf)? {
                return Ok(wire::decode(&frame, self.asn_len)?);
            }
            match timeout_at(deadline, self.rd.read_buf(&mut self.buf)).await {
                Err(_) => {
                    return Err(SessionError::Sent(Notify::new(
                        code::HOLD_TIMER,
                        0,
                        Vec::new(),
                        "hold timer expired",
                    )))
                }
                Ok(Ok(0)) => {
                    return Err(SessionError::Gone("the peer closed the connection".into()))
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(SessionError::Gone(format!("reading: {e}"))),
            }
        }
    }

    /// Ends the connection after an error: the NOTIFICATION owed is sent first.
    async fn fail(&mut self, error: SessionError) -> End {
        let theirs = self.last_words().await;
        let ours = match error {
            SessionError::Sent(notify) => {
                self.close(&notify).await;
                format!("sent {notify}")
            }
            SessionError::Gone(e) => e,
        };
        End::Failed(match theirs {
            Some(theirs) => format!("{theirs}; then {ours}"),
            None => ours,
        })
    }

    /// Sends `notify` (best effort) and closes.
    async fn close(&mut self, notify: &Notify) {
        if self.torn {
            let _ = self.wr.shutdown().await;
            return;
        }
        if let Ok(bytes) = wire::encode(&notify.message(), self.asn_len) {
            let _ = tokio::time::timeout(Duration::from_secs(1), self.wr.write_all(&bytes)).await;
        }
        let _ = self.wr.shutdown().await;
    }
}

/// What this session has announced, and how to bring the peer to a new RIB.
struct Outbox {
    speaking: Speaking,
    ipv4: bool,
    ipv6: bool,
    advertised: Rib,
}

impl Outbox {
    fn carries(&self, p: &ipnet::IpNet) -> bool {
        match p {
            ipnet::IpNet::V4(_) => self.ipv4,
            ipnet::IpNet::V6(_) => self.ipv6,
        }
    }

    async fn sync(&mut self, conn: &mut Conn, rib: &Rib) -> Result<(), SessionError> {
        let gone: Vec<ipnet::IpNet> = self
            .advertised
            .keys()
            .filter(|p| !rib.contains_key(p))
            .copied()
            .collect();
        for v6 in [false, true] {
            let family: Vec<ipnet::IpNet> = gone
                .iter()
                .filter(|p| p.addr().is_ipv6() == v6)
                .copied()
                .collect();
            if !family.is_empty() {
                conn.send(&wire::withdraw(v6, &family)).await?;
            }
        }
        for p in gone {
            self.advertised.remove(&p);
        }
        for (p, attrs) in rib {
            if !self.carries(p) || self.advertised.get(p) == Some(attrs) {
                continue;
            }
            if let Some(msg) = wire::announce(*p, attrs, &self.speaking) {
                conn.send(&msg).await?;
                self.advertised.insert(*p, attrs.clone());
            }
        }
        Ok(())
    }

    async fn end_of_rib(&self, conn: &mut Conn) -> Result<(), SessionError> {
        if self.ipv4 {
            conn.send(&wire::withdraw(false, &[])).await?;
        }
        if self.ipv6 {
            conn.send(&wire::withdraw(true, &[])).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn retries_stay_short_through_a_peer_idle_hold_then_double() {
        let s = Duration::from_secs;
        let mut r = Retry::new(s(1), s(30), s(20));
        let t0 = Instant::now();
        // Never established: doubling from the start.
        let first: Vec<u64> = (0..6).map(|_| r.next(t0).as_secs()).collect();
        assert_eq!(first, vec![1, 2, 4, 8, 16, 30], "before any session");
        // A session ends: 1 s waits for the fast window (a 5 s idle hold costs at most 1 s).
        r.session_ended(t0);
        let mut at = t0;
        let mut waits = Vec::new();
        while at < t0 + s(25) {
            let w = r.next(at);
            waits.push(w.as_secs());
            at += w;
        }
        assert!(
            waits[..20].iter().all(|&w| w == 1),
            "expected 1 s waits for the first 20 s after a session ended, saw {waits:?}"
        );
        assert_eq!(&waits[20..], &[1, 2, 4], "then doubling again: {waits:?}");
    }

    /// A connected pair: the session's `Conn` and the peer's end.
    async fn pair() -> Result<(Conn, TcpStream), Box<dyn std::error::Error>> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let peer = TcpStream::connect(listener.local_addr()?).await?;
        let (ours, _) = listener.accept().await?;
        let (rd, wr) = ours.into_split();
        let conn = Conn {
            rd,
            wr,
            buf: BytesMut::new(),
            asn_len: AsnLength::Bits32,
            write_wait: OPEN_WAIT,
            torn: false,
        };
        Ok((conn, peer))
    }

    #[tokio::test]
    async fn a_failed_connection_reports_the_notification_the_peer_left() -> TestResult {
        // The peer's hold timer expired while the agent hung; it said so and closed. The agent
        // then fails on its own write, or its own hold timer.
        for ours in [
            SessionError::Gone("writing: Broken pipe (os error 32)".into()),
            SessionError::Sent(Notify::new(
                code::HOLD_TIMER,
                0,
                Vec::new(),
                "hold timer expired",
            )),
        ] {
            let (mut conn, mut peer) = pair().await?;
            let theirs = Notify::new(code::HOLD_TIMER, 0, Vec::new(), "");
            peer.write_all(&wire::encode(&BgpMessage::KeepAlive, AsnLength::Bits32)?)
                .await?;
            peer.write_all(&wire::encode(&theirs.message(), AsnLength::Bits32)?)
                .await?;
            peer.shutdown().await?;
            let End::Failed(why) = conn.fail(ours).await else {
                panic!("expected a failure")
            };
            assert!(
                why.starts_with("peer sent NOTIFICATION 4/0"),
                "expected the peer's NOTIFICATION 4/0 as the cause, saw {why:?}"
            );
        }
        // Nothing waiting: the agent's own cause alone.
        let (mut conn, _peer) = pair().await?;
        let End::Failed(why) = conn.fail(SessionError::Gone("writing: x".into())).await else {
            panic!("expected a failure")
        };
        assert_eq!(why, "writing: x");
        Ok(())
    }

    #[tokio::test]
    async fn a_write_the_peer_never_reads_expires_the_hold_timer() -> TestResult {
        let (mut conn, _peer) = pair().await?;
        conn.write_wait = Duration::from_millis(300);
        let update = BgpMessage::KeepAlive;
        let start = std::time::Instant::now();
        // The peer reads nothing: the socket buffers fill, then a write waits.
        let error = loop {
            if let Err(e) = conn.send(&update).await {
                break e;
            }
            if start.elapsed() > Duration::from_secs(20) {
                panic!("expected a write to stall within 20 s");
            }
        };
        match error {
            SessionError::Sent(n) => assert_eq!((n.code, n.subcode), (4, 0), "{n}"),
            SessionError::Gone(e) => panic!("expected a hold-timer NOTIFICATION, saw {e}"),
        }
        assert!(conn.torn, "a stalled write leaves the stream torn");
        Ok(())
    }
}
