//! One blocking netlink request at a time, shared by the kernel WireGuard path (generic netlink)
//! and link setup (rtnetlink). The agent configures a handful of objects at start and on
//! control-plane changes, so a synchronous exchange keeps these calls as plain as the UAPI
//! socket's, with no runtime needed by the caller (or by a test entering a namespace).
//!
//! A netlink socket belongs to the network namespace of the thread that created it, for its whole
//! life: whichever thread later uses it, it acts there.

use std::{cell::Cell, io, os::fd::AsRawFd, time::Duration};

use netlink_packet_core::{
    NetlinkBuffer, NetlinkDeserializable, NetlinkMessage, NetlinkPayload, NetlinkSerializable,
    NlasIterator, NLA_TYPE_MASK, NLM_F_ACK, NLM_F_DUMP,
};
use netlink_sys::{Socket, SocketAddr};

/// How long the kernel may take to answer; it answers in microseconds, so a stall is a bug that
/// must not wedge the agent.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Above the 32 KiB the kernel caps a dump's datagrams at (`netlink_recvmsg`), so nothing it
/// sends is cut; a truncated datagram is still detected (`MSG_TRUNC`) and refused.
const RECV_BUFFER: usize = 64 * 1024;

const NLMSG_HDRLEN: usize = 16;
/// The reply's original request is cut to its header (we set `NETLINK_CAP_ACK`).
const NLM_F_CAPPED: u16 = 0x100;
/// The reply carries extended-ack attributes after the request (we set `NETLINK_EXT_ACK`).
const NLM_F_ACK_TLVS: u16 = 0x200;
/// `NLMSGERR_ATTR_MSG`: the kernel's human-readable reason (include/uapi/linux/netlink.h).
const NLMSGERR_ATTR_MSG: u16 = 1;

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("{op}: {source}")]
    Io { op: String, source: io::Error },
    /// The kernel refused the request; `message` is its extended-ack text, if it gave one.
    #[error("{op}: {source}{}", message.as_deref().map(|m| format!(" ({m})")).unwrap_or_default())]
    Kernel {
        op: String,
        source: io::Error,
        message: Option<String>,
    },
    #[error("{op}: undecodable answer: {why}")]
    Decode { op: String, why: String },
}

impl NetlinkError {
    /// The errno the kernel answered with, if it answered with one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Kernel { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// A netlink socket of one protocol, bound to the namespace it was opened in. Not `Sync`: two
/// requests in flight on one socket would read each other's answers.
#[derive(Debug)]
pub(crate) struct NlSocket {
    socket: Socket,
    seq: Cell<u32>,
}

impl NlSocket {
    /// Opens a socket of `protocol` (`NETLINK_ROUTE`, `NETLINK_GENERIC`) in the calling thread's
    /// network namespace.
    pub(crate) fn open(protocol: isize) -> Result<Self, NetlinkError> {
        let io = |op: &str| {
            let op = op.to_owned();
            move |source| NetlinkError::Io { op, source }
        };
        let mut socket = Socket::new(protocol).map_err(io("open a netlink socket"))?;
        socket.bind_auto().map_err(io("bind a netlink socket"))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(io("connect a netlink socket to the kernel"))?;
        // Both are optional: without them errors are still reported, only with less detail.
        let _ = socket.set_cap_ack(true);
        let _ = socket.set_ext_ack(true);
        set_recv_timeout(&socket, TIMEOUT).map_err(io("set a netlink receive timeout"))?;
        Ok(Self {
            socket,
            seq: Cell::new(0),
        })
    }

    /// Finalizes, serializes and sends `message` as [`NlSocket::request`] does.
    pub(crate) fn request_message<I>(
        &self,
        op: &str,
        mut message: NetlinkMessage<I>,
    ) -> Result<Vec<I>, NetlinkError>
    where
        I: NetlinkSerializable + NetlinkDeserializable,
    {
        message.finalize();
        let mut bytes = vec![0; message.buffer_len()];
        message.serialize(&mut bytes);
        self.request(op, bytes)
    }

    /// Sends one serialized request and returns the payloads answered to it: up to the ACK for a
    /// request with `NLM_F_ACK`, up to `NLMSG_DONE` for a dump (`NLM_F_DUMP`). The request's
    /// sequence number is overwritten, so callers may build it with any.
    pub(crate) fn request<I>(&self, op: &str, mut bytes: Vec<u8>) -> Result<Vec<I>, NetlinkError>
    where
        I: NetlinkDeserializable,
    {
        let (flags, seq) = {
            let Some(header) = bytes.get_mut(..NLMSG_HDRLEN) else {
                return Err(NetlinkError::Decode {
                    op: op.to_owned(),
                    why: "the request is shorter than a netlink header".to_owned(),
                });
            };
            let seq = self.seq.get().wrapping_add(1);
            self.seq.set(seq);
            // struct nlmsghdr: len u32, type u16, flags u16, seq u32, pid u32, host order.
            header[8..12].copy_from_slice(&seq.to_ne_bytes());
            (u16::from_ne_bytes([header[6], header[7]]), seq)
        };
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        if !dump && flags & NLM_F_ACK == 0 {
            return Err(NetlinkError::Decode {
                op: op.to_owned(),
                why: "a request without NLM_F_ACK or NLM_F_DUMP gets no answer to wait for"
                    .to_owned(),
            });
        }
        self.socket
            .send(&bytes, 0)
            .map_err(|source| NetlinkError::Io {
                op: format!("send {op}"),
                source,
            })?;
        let mut answers = Vec::new();
        let mut buf = Vec::with_capacity(RECV_BUFFER);
        loop {
            buf.clear();
            let len = self
                .socket
                .recv(&mut buf, libc::MSG_TRUNC)
                .map_err(|source| NetlinkError::Io {
                    op: format!("receive the answer to {op}"),
                    source,
                })?;
            if len > buf.len() {
                return Err(NetlinkError::Decode {
                    op: op.to_owned(),
                    why: format!("a {len}-byte datagram exceeds the {RECV_BUFFER}-byte buffer"),
                });
            }
            if self.take_answers(op, seq, &buf, &mut answers)? {
                return Ok(answers);
            }
        }
    }

    /// Adds the payloads of one datagram's messages to `answers`; true once the final one (ACK
    /// or DONE) was seen.
    fn take_answers<I>(
        &self,
        op: &str,
        seq: u32,
        mut datagram: &[u8],
        answers: &mut Vec<I>,
    ) -> Result<bool, NetlinkError>
    where
        I: NetlinkDeserializable,
    {
        let decode = |why: String| NetlinkError::Decode {
            op: op.to_owned(),
            why,
        };
        while !datagram.is_empty() {
            let len = NetlinkBuffer::new_checked(datagram)
                .map_err(|e| decode(e.to_string()))?
                .length() as usize;
            let (bytes, rest) = datagram.split_at(len);
            datagram = rest.get(align4(len) - len..).unwrap_or_default();
            let message =
                NetlinkMessage::<I>::deserialize(bytes).map_err(|e| decode(e.to_string()))?;
            if message.header.sequence_number != seq {
                // The late answer to an earlier request that timed out.
                continue;
            }
            match message.payload {
                NetlinkPayload::InnerMessage(inner) => answers.push(inner),
                NetlinkPayload::Error(error) => {
                    let Some(code) = error.code else {
                        return Ok(true);
                    };
                    return Err(NetlinkError::Kernel {
                        op: op.to_owned(),
                        source: io::Error::from_raw_os_error(code.get().saturating_abs()),
                        message: ext_ack_message(message.header.flags, &error.header),
                    });
                }
                NetlinkPayload::Done(done) if done.code < 0 => {
                    return Err(NetlinkError::Kernel {
                        op: op.to_owned(),
                        source: io::Error::from_raw_os_error(done.code.saturating_abs()),
                        message: None,
                    });
                }
                NetlinkPayload::Done(_) => return Ok(true),
                NetlinkPayload::Overrun(_) => {
                    return Err(decode("the kernel reported an overrun".to_owned()))
                }
                _ => {}
            }
        }
        Ok(false)
    }
}

fn align4(len: usize) -> usize {
    (len + 3) & !3
}

/// The text of an error's extended ack: after the echoed request (only its header when capped)
/// come attributes, of which `NLMSGERR_ATTR_MSG` is a NUL-terminated string.
fn ext_ack_message(flags: u16, payload: &[u8]) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    let echoed = if flags & NLM_F_CAPPED != 0 {
        NLMSG_HDRLEN
    } else {
        u32::from_ne_bytes(payload.get(..4)?.try_into().ok()?) as usize
    };
    NlasIterator::new(payload.get(align4(echoed)..)?)
        .filter_map(Result::ok)
        .find(|nla| nla.kind() & NLA_TYPE_MASK == NLMSGERR_ATTR_MSG)
        .map(|nla| {
            let text = nla.value();
            let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
            String::from_utf8_lossy(&text[..end]).into_owned()
        })
}

fn set_recv_timeout(socket: &Socket, timeout: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_usec: libc::suseconds_t::from(timeout.subsec_micros()),
    };
    // SAFETY: setsockopt(2) on a descriptor `socket` owns, reading `size_of::<timeval>()` bytes
    // from a live `timeval`.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            std::ptr::addr_of!(tv).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Linux's rule for interface names (`dev_valid_name`): 1 to 15 bytes, not `.` or `..`, no `/`,
/// `:` or whitespace. Checked before sending so that a bad name is reported as such rather than as
/// the kernel's bare EINVAL.
pub(crate) fn valid_ifname(name: &str) -> bool {
    (1..16).contains(&name.len())
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_follow_the_kernels_rule() {
        for good in ["wg0", "6pn-probe", "a", "fifteen-chars15"] {
            assert!(valid_ifname(good), "{good:?} refused");
        }
        for bad in [
            "",
            ".",
            "..",
            "sixteen-chars-16",
            "a/b",
            "a:b",
            "a b",
            "a\0b",
        ] {
            assert!(!valid_ifname(bad), "{bad:?} accepted");
        }
    }

    #[test]
    fn extended_ack_text_is_found_after_the_capped_request() {
        let mut payload = vec![0u8; NLMSG_HDRLEN];
        let text = b"Unknown device type\0";
        let nla_len = u16::try_from(4 + text.len()).unwrap_or(u16::MAX);
        payload.extend_from_slice(&nla_len.to_ne_bytes());
        payload.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        payload.extend_from_slice(text);
        payload.resize(align4(payload.len()), 0);
        assert_eq!(
            ext_ack_message(NLM_F_CAPPED | NLM_F_ACK_TLVS, &payload).as_deref(),
            Some("Unknown device type")
        );
        assert_eq!(ext_ack_message(NLM_F_CAPPED, &payload), None);
    }
}
