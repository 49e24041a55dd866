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
//!
//! Strict (the default, `strict = false` turns it off): the BGP session sends its OPEN only once
//! BFD is Up. A restarted agent is back within a few hundred milliseconds, sooner than the
//! router's BFD detects the old agent gone; a BGP session established by then is torn down by
//! that late BFD down (FRR: Cease 6/10), a reset where graceful restart was wanted. Waiting for
//! Up means the router's BFD has already been through Down before the new session exists.
//!
//! Here: the speaker's [`Bfd`], which starts the sessions. `config` is the setting, `machine`
//! the RFC 5880 state machine, `packet` and `socket` the wire, `receive` the receiving side the
//! sessions share, `runner` one session's task, `status` what it shows.

pub mod config;
pub mod machine;
pub mod packet;
pub mod receive;
mod runner;
pub mod socket;
pub mod status;

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
};

use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};
use tracing::warn;

use config::BfdConfig;
use machine::Machine;
use receive::{receive_loop, Demux, Dropped};
use runner::Runner;
use status::BfdStatus;

/// One peer's session as the speaker starts it.
pub struct PeerBfd {
    pub peer: IpAddr,
    pub local: Option<IpAddr>,
    pub config: BfdConfig,
}

/// What the BGP session of a peer watches: since when BFD is Up (none: not Up), and how many
/// times it fell from Up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Signal {
    pub up_since: Option<tokio::time::Instant>,
    pub downs: u64,
}

pub type SignalWatch = watch::Receiver<Signal>;

/// Every BFD task of the speaker.
pub struct Bfd {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    receivers: Vec<JoinHandle<()>>,
    pub dropped: Arc<Dropped>,
}

impl Bfd {
    /// Starts a session per peer and a receiver per family in use. `status[i]` is where peer
    /// `i`'s state is shown; the returned receivers say whether each session is Up and when it
    /// went down.
    pub fn start(
        peers: &[PeerBfd],
        status: Vec<Arc<Mutex<Option<BfdStatus>>>>,
    ) -> (Bfd, Vec<SignalWatch>) {
        let (stop, shutdown) = watch::channel(false);
        let dropped = Arc::new(Dropped::default());
        let mut demux = Demux {
            by_disc: HashMap::new(),
            by_addr: HashMap::new(),
            addrs: Vec::new(),
            inboxes: Vec::new(),
        };
        let (mut tasks, mut signals) = (Vec::new(), Vec::new());
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
            let (signal_tx, signal_rx) = watch::channel(Signal::default());
            signals.push(signal_rx);
            let runner = Runner {
                peer: p.peer,
                local: p.local,
                config: p.config,
                machine: Machine::new(p.config.timing(), my_disc),
                inbox: rx,
                status,
                signal: signal_tx,
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
            signals,
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
