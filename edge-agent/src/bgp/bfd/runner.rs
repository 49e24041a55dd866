//! One peer's BFD session as a task: the timers, sending, the state machine fed by the
//! receiving side, and the signal (Up, falls from Up) the BGP session watches.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    net::UdpSocket,
    sync::{mpsc, watch},
    time::Instant,
};
use tracing::{debug, info};

use super::{
    config::BfdConfig,
    machine::{self, Machine},
    packet::{self, Control, State},
    socket,
    status::BfdStatus,
    Signal,
};

pub(super) struct Runner {
    pub(super) peer: IpAddr,
    pub(super) local: Option<IpAddr>,
    pub(super) config: BfdConfig,
    pub(super) machine: Machine,
    pub(super) inbox: mpsc::Receiver<Control>,
    pub(super) status: Arc<Mutex<Option<BfdStatus>>>,
    pub(super) signal: watch::Sender<Signal>,
    pub(super) shutdown: watch::Receiver<bool>,
}

impl Runner {
    fn show(&self, f: impl FnOnce(&mut BfdStatus)) {
        let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
        let status = s.get_or_insert_with(|| BfdStatus::new(&self.config, self.machine.my_disc));
        status.show(&self.machine);
        f(status);
    }

    pub(super) async fn run(mut self) {
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
        self.signal.send_modify(|s| {
            s.up_since = (change.to == State::Up).then(Instant::now);
            if went_down {
                s.downs += 1;
            }
        });
    }
}

/// Resolves once the speaker stops (the guard `wait_for` returns is not `Send`).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}
