//! The flow table: one entry per direction of each connection.
//!
//! The forward entry is keyed by the packet as the client sends it (client -> VIP) and says what
//! to write into it (POP overlay address -> backend); the reverse entry is keyed by the backend's
//! reply as it arrives on the overlay (backend -> POP overlay address) and says how to restore it
//! (VIP -> client). The kernel only looks entries up, ORs TCP flags into them and stamps
//! `last_seen_ns`; the agent derives TCP state and expiry from the two entries together.
//!
//! A connection lives in one of two tables. Its SYN creates it in `HALF_OPEN`; the client's ACK
//! of the backend's SYN-ACK (RFC 9293 section 3.5: its acknowledgment number is the backend's
//! ISN + 1, which a client that spoofs its source never sees) moves it to `FLOWS`. Spoofed SYNs
//! therefore only ever evict each other, never an established connection, and only `FLOWS`
//! counts towards a backend's connection limits.

/// A TCP connection's addresses and ports as seen on the wire in one direction (IPv4
/// addresses IPv4-mapped), ports in network byte order. No protocol field: every flow is TCP,
/// and the kernel hashes the key in 4-byte words, so 36 bytes instead of 40 save one round of
/// its hash on every lookup. The layout is an IPv6 header's from its source address on,
/// followed by the TCP ports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct FlowKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
}

/// This entry is the reply direction (backend -> client).
pub const FLOW_REVERSE: u8 = 1;
/// The client is IPv4: forward packets get NAT46, replies NAT64.
pub const FLOW_V4_CLIENT: u8 = 2;
/// Remade from a mid-connection packet whose flow was gone (evicted, swept, or the table
/// replaced): the same Maglev pick and source port as the SYN got, as long as the tables are
/// the same. It waits in `HALF_OPEN` until the backend answers with anything but a RST.
pub const FLOW_RECOVERED: u8 = 4;
/// A recovered flow's reverse half whose backend answered as for another connection, or with
/// a RST: the source port was not this client's. The client it names skips it when it
/// recovers again; another client's recovery may take it.
pub const FLOW_TOMBSTONE: u8 = 8;
/// A forward entry of a connection the POP ended (a drain timeout; its backend was sent a RST
/// and its reverse half removed): the client's packets go to the POP's kernel, which resets
/// the connection, rather than remaking the flow. Its `tcp_flags` carry RST, so the sweeper
/// removes it after the closed timeout and a SYN on its 5-tuple starts a new flow.
pub const FLOW_ENDED: u8 = 16;

/// TCP flag bits as in the TCP header's flags byte (RFC 9293 section 3.1).
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// What to do with packets of one direction of a flow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct FlowValue {
    /// Source and destination to write into the packet.
    pub new_src: [u8; 16],
    pub new_dst: [u8; 16],
    pub new_sport: u16,
    pub new_dport: u16,
    pub service_id: u32,
    pub backend_id: u32,
    /// `FLOW_*` bits.
    pub flags: u8,
    /// OR of the TCP flags seen in this direction. A client's FIN or RST is recorded only
    /// at the sequence number the backend expects (`ack` of the reverse entry): a blind one
    /// with a guessed number passes to the backend, which drops it (RFC 5961), and ends nothing.
    pub tcp_flags: u8,
    /// Reverse entries of a remade flow (`FLOW_RECOVERED`): how many candidate source ports
    /// come after this one. While some do, a RST from the backend means the port was not the
    /// client's (no socket holds it any more) and the client's next packet tries the next one;
    /// at the last, the RST goes to the client.
    pub recovery_ports_left: u8,
    pub _pad: u8,
    /// Reverse entries: the backend's ISN + 1, from its SYN-ACK (what the client's handshake
    /// ACK must acknowledge).
    pub seq: u32,
    /// The acknowledgment number of this direction's latest segment: in a reverse entry the
    /// backend's (the next sequence number it expects from the client), in a forward entry the
    /// client's (how far it has received the backend's data). An ICMP error quoting a segment
    /// of the other direction must quote a sequence number near it (issue 22).
    pub ack: u32,
    /// CLOCK_MONOTONIC_COARSE nanoseconds at creation and at the last packet, to within a
    /// kernel tick (the kernel programs scale jiffies; see `PopConfig::ns_per_jiffy`).
    pub created_ns: u64,
    pub last_seen_ns: u64,
    pub packets: u64,
    pub bytes: u64,
}

impl FlowValue {
    /// The key of the other direction of this flow.
    pub const fn partner_key(&self) -> FlowKey {
        FlowKey {
            src: self.new_dst,
            dst: self.new_src,
            sport: self.new_dport,
            dport: self.new_sport,
        }
    }
}

#[cfg(feature = "user")]
// SAFETY: repr(C), explicit padding, integer fields only.
unsafe impl aya::Pod for FlowKey {}
#[cfg(feature = "user")]
// SAFETY: repr(C), explicit padding, integer fields only.
unsafe impl aya::Pod for FlowValue {}
