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
mod gate;
pub mod http;
mod limits;

use std::{
    future::Future,
    net::SocketAddr,
    sync::{atomic::Ordering::Relaxed, Arc},
    time::Duration,
};

use tokio::{net::TcpListener, task::JoinSet};
use tracing::warn;

pub use self::{
    gate::{all_stats, Busy, Gate, GateStats, Permit, Refusal, Source},
    limits::{ApiDefaults, ConnLimits, Defaults, DnsTcpDefaults, Limits, MetricsDefaults},
};

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
