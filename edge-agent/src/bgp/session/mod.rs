//! One peer's session: the RFC 4271 state machine as a task. Connect (or wait for the peer),
//! exchange OPENs, then keep the peer's routes equal to the speaker's RIB until an error, the
//! hold timer, or shutdown; after an error, back off and start again. A graceful stop withdraws
//! every route, pauses (`shutdown_pause_ms`) so routers act on the withdraws, then closes with
//! the Cease NOTIFICATION. When a connection fails, a NOTIFICATION the peer left in the socket
//! is reported as the cause: after a hang it, not the agent's own write error or hold-timer
//! expiry, says why.
//!
//! Here: the task up to Established (connect or accept, OpenSent, OpenConfirm). `established`
//! holds the Established state, `conn` one TCP connection's messages and ending, `retry` the
//! wait between attempts.

mod conn;
mod established;
pub mod retry;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use bgpkit_parser::models::{AsnLength, BgpMessage};
use bytes::BytesMut;
use tokio::{
    net::{TcpSocket, TcpStream},
    sync::{mpsc, watch},
    time::Instant,
};
use tracing::{info, warn};

use self::{
    conn::{unexpected, Conn, End, SessionError},
    retry::Retry,
};
use super::{
    config::PeerConfig,
    open::{self, Negotiated},
    routes::Rib,
    wire::{Notify, Speaking},
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
    pub bfd: Option<super::bfd::status::BfdStatus>,
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
    /// How long after an Established session ends retries stay at `retry` (see [`retry::Retry`]).
    pub retry_fast: Duration,
    /// Between the last withdraws and the Cease on a graceful stop.
    pub shutdown_pause: Duration,
    /// The graceful-restart capability to offer, if configured.
    pub graceful_restart: Option<open::GracefulRestart>,
}

/// How long an OPEN may take to come (RFC 4271 suggests 4 minutes; a router answers in
/// milliseconds, and a stuck one should not hold the session that long).
const OPEN_WAIT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a write may wait for the peer to read when the session has no hold time.
const WRITE_WAIT_NO_HOLD: Duration = Duration::from_secs(240);
pub struct Session {
    pub peer: PeerConfig,
    pub local: Local,
    pub rib: watch::Receiver<Arc<Rib>>,
    /// Connections the listener accepted from this (passive) peer.
    pub incoming: Option<mpsc::Receiver<TcpStream>>,
    pub shutdown: watch::Receiver<bool>,
    pub status: Arc<Mutex<PeerStatus>>,
    /// The BFD session with this peer, when BFD is on for it.
    pub bfd: Option<SessionBfd>,
}

/// What a BGP session knows of its peer's BFD session.
pub struct SessionBfd {
    /// Since when it is Up, and the count of its falls from Up.
    pub signal: super::bfd::SignalWatch,
    /// Strict: the OPEN only once BFD has been Up this long (see `bfd/mod.rs`).
    pub strict: Option<Duration>,
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
        match self.bfd_ready().await {
            Ok(true) => {}
            Ok(false) => {
                conn.close(&Notify::administrative_shutdown()).await;
                return End::Shutdown;
            }
            Err(error) => return End::Failed(error),
        }
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

    /// With strict BFD, waits (at most [`OPEN_WAIT`]) until the peer's BFD session has been Up
    /// for the hold before the OPEN; `false` when shutdown came first. The peer's OPEN, if it
    /// sent one, waits in the socket meanwhile.
    ///
    /// The hold: routers act on BFD coming Up too (FRR starts a connection of its own), and an
    /// OPEN at that very moment races with it; FRR 8.4 was seen to tear down the session this
    /// OPEN had just established when its own connection attempt failed.
    async fn bfd_ready(&mut self) -> Result<bool, String> {
        let Some((signal, hold)) = self
            .bfd
            .as_ref()
            .and_then(|b| b.strict.map(|hold| (b.signal.clone(), hold)))
        else {
            return Ok(true);
        };
        if signal
            .borrow()
            .up_since
            .is_some_and(|since| since.elapsed() >= hold)
        {
            return Ok(true);
        }
        info!(peer = %self.peer.address, hold_ms = hold.as_millis() as u64, "BGP waits for BFD to be up before its OPEN (bfd strict)");
        let mut shutdown = self.shutdown.clone();
        tokio::select! {
            up = tokio::time::timeout(OPEN_WAIT, up_for(signal, hold)) => match up {
                Ok(true) => Ok(true),
                // The BFD tasks ended: the speaker is stopping.
                Ok(false) => Ok(false),
                Err(_) => Err(format!(
                    "BFD with the peer did not come up within {} s; with bfd strict (the \
                     default) the BGP session waits for it: is BFD on for this session on the \
                     router, or set `strict = false`",
                    OPEN_WAIT.as_secs()
                )),
            },
            () = stopped(&mut shutdown) => Ok(false),
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
}

/// Resolves once BFD has stayed Up for `hold` (`true`), or the BFD task ended (`false`).
async fn up_for(mut signal: super::bfd::SignalWatch, hold: Duration) -> bool {
    loop {
        let since = match signal.wait_for(|s| s.up_since.is_some()).await {
            Ok(s) => s.up_since,
            Err(_) => return false,
        };
        let Some(since) = since else { continue };
        let fell = async {
            signal
                .wait_for(|s| s.up_since != Some(since))
                .await
                .is_err()
        };
        tokio::select! {
            () = tokio::time::sleep_until(since + hold) => return true,
            ended = fell => if ended { return false },
        }
    }
}

/// Resolves once the speaker stops (the guard `wait_for` returns is not `Send`).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

fn hold_duration(secs: u16) -> Option<Duration> {
    (secs > 0).then(|| Duration::from_secs(u64::from(secs)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bgp::bfd::Signal;

    const HOLD: Duration = Duration::from_millis(500);

    fn up(s: &watch::Sender<Signal>) {
        s.send_modify(|s| s.up_since = Some(Instant::now()));
    }

    fn down(s: &watch::Sender<Signal>) {
        s.send_modify(|s| {
            s.up_since = None;
            s.downs += 1;
        });
    }

    #[tokio::test(start_paused = true)]
    async fn strict_bfd_opens_only_after_bfd_stayed_up_for_the_hold() {
        let (tx, rx) = watch::channel(Signal::default());
        let start = Instant::now();
        let waiting = tokio::spawn(up_for(rx, HOLD));
        tokio::time::sleep(Duration::from_millis(200)).await;
        up(&tx);
        // Falls before the hold is over: the hold starts again at the next Up.
        tokio::time::sleep(Duration::from_millis(300)).await;
        down(&tx);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiting.is_finished(), "BFD fell during the hold");
        up(&tx);
        let ready = waiting.await.unwrap_or(false);
        assert!(ready);
        assert_eq!(start.elapsed(), Duration::from_millis(600) + HOLD);
    }

    #[tokio::test(start_paused = true)]
    async fn strict_bfd_gives_up_when_the_bfd_task_ends() {
        let (tx, rx) = watch::channel(Signal::default());
        let waiting = tokio::spawn(up_for(rx, HOLD));
        up(&tx);
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(tx);
        assert!(!waiting.await.unwrap_or(true));
    }
}
