//! The Established state of a session: the peer's routes kept equal to the speaker's RIB,
//! keepalives, End-of-RIB, and the end: shutdown (withdraw, pause, Cease), BFD falling, or an
//! error.

use std::{sync::Arc, time::Duration};

use bgpkit_parser::models::BgpMessage;
use tokio::time::Instant;
use tracing::info;

use super::{
    conn::{unexpected, Conn, End, SessionError},
    hold_duration, stopped, GrStatus, Session, State,
};
use crate::bgp::{
    bfd,
    open::Negotiated,
    routes::Rib,
    wire::{self, code, Notify, Speaking},
};

impl Session {
    pub(super) async fn established(
        &mut self,
        conn: &mut Conn,
        n: Negotiated,
        speaking: Speaking,
    ) -> End {
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
        let mut bfd = self.bfd.as_ref().map(|b| b.signal.clone());
        let downs_before = bfd.as_mut().map_or(0, |b| b.borrow_and_update().downs);
        loop {
            tokio::select! {
                () = stopped(&mut shutdown) => return Ok(()),
                () = bfd_fell(&mut bfd, downs_before) => {
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

/// Resolves when the BFD session has fallen from Up more than `before` times; never without
/// BFD.
async fn bfd_fell(signal: &mut Option<bfd::SignalWatch>, before: u64) {
    match signal {
        Some(s) => {
            if s.wait_for(|s| s.downs > before).await.is_err() {
                // The BFD task ended (shutdown): nothing more to watch.
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending::<()>().await,
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
