//! The receiving side shared by every session: one socket per address family, each datagram
//! checked (RFC 5881 §5's TTL, RFC 5880 §6.8.6's packet checks) and handed to its session, and
//! the count of those dropped, by reason.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::{net::UdpSocket, sync::mpsc};
use tracing::debug;

use super::{
    packet::{Control, Malformed},
    socket,
};

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

/// How a session's packets find it.
pub(super) struct Demux {
    pub(super) by_disc: HashMap<u32, usize>,
    pub(super) by_addr: HashMap<IpAddr, usize>,
    pub(super) addrs: Vec<IpAddr>,
    pub(super) inboxes: Vec<mpsc::Sender<Control>>,
}

/// Reads one family's datagrams: RFC 5881 §5's TTL check, RFC 5880 §6.8.6's packet checks, then
/// the session by Your Discriminator (or, while it is 0, by the source address).
pub(super) async fn receive_loop(sock: UdpSocket, demux: Arc<Demux>, dropped: Arc<Dropped>) {
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
        match classify(&demux, &buf[..d.len], crate::bgp::canonical(d.from), d.ttl) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bgp::bfd::{config::BfdConfig, machine::Machine};

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
}
