//! One TCP connection of a session: framed BGP messages in and out under the hold timer, and
//! how it ends: the NOTIFICATION owed sent, and the one the peer left read as the cause.

use std::time::Duration;

use bgpkit_parser::models::{AsnLength, BgpMessage, BgpNotificationMessage};
use bytes::BytesMut;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::tcp::{OwnedReadHalf, OwnedWriteHalf},
    time::{timeout_at, Instant},
};

use crate::bgp::wire::{self, code, Notify};

/// How a session ended.
pub(super) enum End {
    Shutdown,
    Failed(String),
}

/// How long a failing connection is read for a NOTIFICATION the peer already sent.
const LAST_WORDS_WAIT: Duration = Duration::from_millis(50);

/// A NOTIFICATION from the peer ends the session; any other message out of place is a
/// Finite State Machine Error (RFC 6608 subcodes: 1 OpenSent, 2 OpenConfirm, 3 Established).
pub(super) fn unexpected(msg: &BgpMessage, fsm_subcode: u8) -> SessionError {
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

pub(super) enum SessionError {
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

pub(super) struct Conn {
    pub(super) rd: OwnedReadHalf,
    pub(super) wr: OwnedWriteHalf,
    pub(super) buf: BytesMut,
    pub(super) asn_len: AsnLength,
    /// How long a write may wait for the peer to take it.
    pub(super) write_wait: Duration,
    /// A write stopped partway: the stream is out of step, and no NOTIFICATION can follow.
    pub(super) torn: bool,
}

impl Conn {
    pub(super) async fn send(&mut self, msg: &BgpMessage) -> Result<(), SessionError> {
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
    pub(super) async fn recv(&mut self, deadline: Instant) -> Result<BgpMessage, SessionError> {
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
    pub(super) async fn fail(&mut self, error: SessionError) -> End {
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
    pub(super) async fn close(&mut self, notify: &Notify) {
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

#[cfg(test)]
mod tests {
    use tokio::net::TcpStream;

    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

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
            write_wait: super::super::OPEN_WAIT,
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
