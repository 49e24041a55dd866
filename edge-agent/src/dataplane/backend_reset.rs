//! RSTs the agent sends to backends for the connections it ends (issue 22).
//!
//! When `flows.drain_timeout_secs` ends a draining backend's connections, removing their flow
//! entries told only the client (its next packet meets the POP's RST); the backend's socket
//! waited for its own keepalive, holding its memory and counting towards whatever limits the
//! backend keeps. So before the entries go, the agent sends each backend a RST from the
//! connection's translated source (the forward entry's `new_src:new_sport`, the POP's overlay
//! address or an address of its SNAT prefix) with the sequence number the backend expects next
//! (the reverse entry's `ack`): RFC 5961 section 3.2's condition for a RST that resets, which
//! the backend's kernel accepts and no other does.
//!
//! The segments are written whole (IPv6 and TCP headers) to a raw socket (`IPPROTO_RAW`, which
//! implies `IPV6_HDRINCL`): the SNAT prefix's addresses are not local to the POP, so a socket
//! that let the kernel pick the source could not send from them. The kernel routes them to the
//! overlay like the data plane's own translated packets.

use std::{
    io,
    net::{Ipv6Addr, SocketAddrV6},
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::Duration,
};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use thiserror::Error;

/// One RST to send: addresses and ports (host order) as the backend sees its connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendReset {
    pub src: Ipv6Addr,
    pub sport: u16,
    pub dst: Ipv6Addr,
    pub dport: u16,
    /// The next sequence number the backend expects from the client.
    pub seq: u32,
}

/// At most this many RSTs per sweep; the connections beyond it keep their entries until a
/// later sweep sends theirs, so that a drained backend with a million connections paces out
/// over several sweeps instead of flooding the overlay's queues at once.
pub const MAX_PER_SWEEP: usize = 20_000;

/// Hop limit of the RSTs (as a host's own packets).
const HOP_LIMIT: u8 = 64;
const IPV6_LEN: usize = 40;
const TCP_LEN: usize = 20;
const IPPROTO_TCP: u8 = 6;
const TCP_RST: u8 = 0x04;

#[derive(Debug, Error)]
pub enum ResetError {
    #[error("opening a raw IPv6 socket for backend RSTs (needs CAP_NET_RAW): {0}")]
    Socket(#[source] io::Error),
}

/// What one batch of sends did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sent {
    pub sent: u64,
    pub failed: u64,
    /// The first send error, for the sweep's log line.
    pub error: Option<String>,
}

static SENT: AtomicU64 = AtomicU64::new(0);
static FAILED: AtomicU64 = AtomicU64::new(0);

/// RSTs sent and failed since the process started (`edgeproxy_drain_resets_total`).
pub fn totals() -> (u64, u64) {
    (SENT.load(Relaxed), FAILED.load(Relaxed))
}

/// The raw socket RSTs go out through (in the agent's network namespace: the POP's).
pub struct Resetter {
    socket: Socket,
}

impl Resetter {
    pub fn open() -> Result<Self, ResetError> {
        let socket = Socket::new(
            Domain::IPV6,
            Type::RAW,
            Some(Protocol::from(libc::IPPROTO_RAW)),
        )
        .map_err(ResetError::Socket)?;
        Ok(Resetter { socket })
    }

    /// Sends every RST in `resets`. A full queue (`ENOBUFS`, `EAGAIN`) is waited out a
    /// millisecond at a time, a few times; anything else counts the RST as failed.
    pub fn send(&self, resets: &[BackendReset]) -> Sent {
        let mut out = Sent::default();
        for reset in resets {
            let segment = segment(reset);
            let to = SockAddr::from(SocketAddrV6::new(reset.dst, 0, 0, 0));
            let mut tries = 0;
            loop {
                match self.socket.send_to(&segment, &to) {
                    Ok(_) => {
                        out.sent += 1;
                        break;
                    }
                    Err(e)
                        if tries < 5
                            && matches!(e.raw_os_error(), Some(libc::ENOBUFS | libc::EAGAIN)) =>
                    {
                        tries += 1;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(e) => {
                        out.failed += 1;
                        out.error
                            .get_or_insert_with(|| format!("to {}: {e}", reset.dst));
                        break;
                    }
                }
            }
        }
        SENT.fetch_add(out.sent, Relaxed);
        FAILED.fetch_add(out.failed, Relaxed);
        out
    }
}

/// The IPv6 packet of a RST: no options, no payload, ACK clear (RFC 9293 section 3.10.7.4: a
/// RST is judged by its sequence number alone).
pub fn segment(r: &BackendReset) -> [u8; IPV6_LEN + TCP_LEN] {
    let mut p = [0u8; IPV6_LEN + TCP_LEN];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&(TCP_LEN as u16).to_be_bytes());
    p[6] = IPPROTO_TCP;
    p[7] = HOP_LIMIT;
    p[8..24].copy_from_slice(&r.src.octets());
    p[24..40].copy_from_slice(&r.dst.octets());
    let tcp = &mut p[IPV6_LEN..];
    tcp[0..2].copy_from_slice(&r.sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&r.dport.to_be_bytes());
    tcp[4..8].copy_from_slice(&r.seq.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = TCP_RST;
    let check = checksum(r, tcp);
    tcp[16..18].copy_from_slice(&check.to_be_bytes());
    p
}

/// The TCP checksum over the IPv6 pseudo-header (RFC 8200 section 8.1) and `tcp`.
fn checksum(r: &BackendReset, tcp: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for pair in bytes.chunks(2) {
            let hi = u32::from(pair[0]) << 8;
            sum += hi | pair.get(1).map_or(0, |&b| u32::from(b));
        }
    };
    add(&r.src.octets());
    add(&r.dst.octets());
    add(&(tcp.len() as u32).to_be_bytes());
    add(&[0, 0, 0, IPPROTO_TCP]);
    add(tcp);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use etherparse::{Ipv6HeaderSlice, TcpHeaderSlice};

    use super::*;

    #[test]
    fn a_reset_is_a_valid_rst_at_the_given_sequence_number(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let reset = BackendReset {
            src: "fd00:ee:ff::a00:102".parse()?,
            sport: 40123,
            dst: "fd00:ee:1:1::2".parse()?,
            dport: 7007,
            seq: 0xdead_beef,
        };
        let p = segment(&reset);
        let ip = Ipv6HeaderSlice::from_slice(&p)?;
        assert_eq!(
            (ip.source_addr(), ip.destination_addr(), ip.payload_length()),
            (reset.src, reset.dst, 20),
            "IPv6 header"
        );
        let tcp = TcpHeaderSlice::from_slice(&p[40..])?;
        assert!(
            tcp.rst() && !tcp.ack() && !tcp.syn() && !tcp.fin(),
            "RST only"
        );
        assert_eq!(
            (
                tcp.source_port(),
                tcp.destination_port(),
                tcp.sequence_number()
            ),
            (40123, 7007, 0xdead_beef),
            "ports and sequence number"
        );
        let want = tcp.to_header().calc_checksum_ipv6(&ip.to_header(), &[])?;
        assert_eq!(
            tcp.checksum(),
            want,
            "TCP checksum: expected {want:#06x} (etherparse), seen {:#06x}",
            tcp.checksum()
        );
        Ok(())
    }
}
