//! The BGP speaker in process: the decoder under mutation (no panic, the NOTIFICATION the RFC
//! names), and sessions against a scripted peer on loopback: announce, a malformed message
//! answered and the session re-established, the hold timer, the order and pause of a graceful
//! stop, connections from strangers refused, IPv4 peers on a dual-stack listener, the TCP-MD5
//! hint on connect timeouts, and reconnecting through a peer's idle hold.

// In a test an unwrap is an assertion: the lint is for the agent's own code.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use bgpkit_parser::models::{AsnLength, BgpMessage};
use bytes::BytesMut;
use edge_agent::{
    bgp::{open, routes::Inputs, wire, BgpConfig, PeerConfig, Speaker},
    testing::bgp_fuzz,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    time::timeout,
};

#[test]
fn mutated_messages_never_panic_and_get_the_right_notification() {
    let corpus = bgp_fuzz::corpus();
    assert!(corpus.len() >= 10);
    for m in &corpus {
        bgp_fuzz::check(m).unwrap();
        assert!(
            matches!(bgp_fuzz::expect(m), bgp_fuzz::Expect::Body(_)),
            "corpus message not valid"
        );
    }
    let mut rng = fastrand::Rng::with_seed(7);
    let (mut decoded, mut notified) = (0, 0);
    for i in 0..50_000 {
        let m = bgp_fuzz::mutate(&mut rng, &corpus[i % corpus.len()]);
        let outcome = std::panic::catch_unwind(|| bgp_fuzz::check(&m));
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("message {i}: {e}"),
            Err(_) => panic!("message {i} panicked the decoder: {m:02x?}"),
        }
        match bgp_fuzz::expect(&m) {
            bgp_fuzz::Expect::Body(_) => decoded += 1,
            bgp_fuzz::Expect::Header(_) => notified += 1,
            bgp_fuzz::Expect::Incomplete => {}
        }
    }
    // The mutations reach both the header checks and the body decoders.
    assert!(
        decoded > 5_000 && notified > 5_000,
        "{decoded} framed, {notified} header errors"
    );
}

#[test]
fn each_header_error_has_its_subcode() {
    let keepalive = wire::encode(&BgpMessage::KeepAlive, AsnLength::Bits32)
        .unwrap()
        .to_vec();
    let err = |m: &[u8]| wire::frame(&mut BytesMut::from(m)).unwrap_err();
    let mut m = keepalive.clone();
    m[3] = 0;
    assert_eq!((err(&m).code, err(&m).subcode), (1, 1));
    let mut m = keepalive.clone();
    m[17] = 18;
    assert_eq!(
        (err(&m).code, err(&m).subcode, err(&m).data.clone()),
        (1, 2, vec![0, 18])
    );
    let mut m = keepalive.clone();
    m[18] = 9;
    assert_eq!(
        (err(&m).code, err(&m).subcode, err(&m).data.clone()),
        (1, 3, vec![9])
    );
    let mut m = keepalive.clone();
    m[17] = 20;
    m.push(0);
    assert_eq!(
        (err(&m).code, err(&m).subcode),
        (1, 2),
        "a KEEPALIVE is exactly 19 bytes"
    );
    // Half a message waits for the rest.
    assert!(wire::frame(&mut BytesMut::from(&keepalive[..10]))
        .unwrap()
        .is_none());
}

/// The far end of a session, scripted.
struct Peer {
    stream: TcpStream,
    buf: BytesMut,
}

impl Peer {
    async fn recv(&mut self) -> Option<BgpMessage> {
        loop {
            if let Some(frame) = wire::frame(&mut self.buf).unwrap() {
                return Some(wire::decode(&frame, AsnLength::Bits32).unwrap());
            }
            let n = timeout(Duration::from_secs(10), self.stream.read_buf(&mut self.buf))
                .await
                .expect("the speaker went quiet")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
        }
    }

    async fn send(&mut self, msg: &BgpMessage) {
        let bytes = wire::encode(msg, AsnLength::Bits32).unwrap();
        self.stream.write_all(&bytes).await.unwrap();
    }

    /// Accepts the speaker's connection and brings the session up with `hold` seconds.
    async fn establish(listener: &TcpListener, hold: u16) -> Peer {
        let (stream, _) = timeout(Duration::from_secs(10), listener.accept())
            .await
            .expect("the speaker did not connect")
            .unwrap();
        let mut peer = Peer {
            stream,
            buf: BytesMut::new(),
        };
        let Some(BgpMessage::Open(o)) = peer.recv().await else {
            panic!("no OPEN first")
        };
        assert_eq!(o.hold_time, 30);
        peer.send(&open::ours(65000, hold, [10, 0, 0, 9].into()))
            .await;
        peer.send(&BgpMessage::KeepAlive).await;
        assert_eq!(peer.recv().await, Some(BgpMessage::KeepAlive));
        peer
    }

    /// The next message that is not a KEEPALIVE.
    async fn next(&mut self) -> Option<BgpMessage> {
        loop {
            match self.recv().await {
                Some(BgpMessage::KeepAlive) => continue,
                other => return other,
            }
        }
    }
}

/// The pause the tests configure between the last withdraws and the Cease.
const PAUSE: Duration = Duration::from_millis(400);

async fn speaker(port: u16) -> Speaker {
    let config = BgpConfig {
        asn: 65001,
        hold_time_secs: 30,
        hold_down_ms: 0,
        shutdown_pause_ms: PAUSE.as_millis() as u64,
        peers: vec![PeerConfig {
            address: "127.0.0.1".parse().unwrap(),
            port,
            asn: 65000,
            ..PeerConfig::default()
        }],
        ..BgpConfig::default()
    };
    Speaker::start(&config).await.unwrap().unwrap()
}

fn serve(speaker: &mut Speaker, vips: &[&str]) {
    let all: BTreeSet<IpAddr> = ["198.18.0.10", "198.18.0.11"]
        .iter()
        .map(|v| v.parse().unwrap())
        .collect();
    let servable = vips.iter().map(|v| v.parse().unwrap()).collect();
    speaker.update(
        &all,
        &Inputs {
            servable,
            attached: true,
            ..Inputs::default()
        },
    );
}

fn announced(msg: &Option<BgpMessage>) -> Vec<String> {
    match msg {
        Some(BgpMessage::Update(u)) => u
            .announced_prefixes
            .iter()
            .map(|p| p.prefix.to_string())
            .collect(),
        other => panic!("expected an UPDATE, got {other:?}"),
    }
}

fn withdrawn(msg: &Option<BgpMessage>) -> Vec<String> {
    match msg {
        Some(BgpMessage::Update(u)) => u
            .withdrawn_prefixes
            .iter()
            .map(|p| p.prefix.to_string())
            .collect(),
        other => panic!("expected an UPDATE, got {other:?}"),
    }
}

#[tokio::test]
async fn a_session_announces_resets_on_garbage_and_withdraws_before_closing() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut speaker = speaker(port).await;
    serve(&mut speaker, &["198.18.0.10"]);
    let mut peer = Peer::establish(&listener, 30).await;
    assert_eq!(announced(&peer.next().await), vec!["198.18.0.10/32"]);
    // End-of-RIB for IPv4 (the only family a 127.0.0.1 session has a next hop for).
    let eor = peer.next().await;
    assert!(announced(&eor).is_empty() && withdrawn(&eor).is_empty());

    // Changes go out at once: a new VIP announced, a lost one withdrawn.
    serve(&mut speaker, &["198.18.0.11"]);
    let mut changes = [peer.next().await, peer.next().await];
    changes.sort_by_key(|m| announced(m).is_empty());
    assert_eq!(announced(&changes[0]), vec!["198.18.0.11/32"]);
    assert_eq!(withdrawn(&changes[1]), vec!["198.18.0.10/32"]);

    // ROUTE-REFRESH (RFC 2918): everything announced again.
    peer.send(&BgpMessage::RouteRefresh(
        bgpkit_parser::models::BgpRouteRefreshMessage {
            afi: 1,
            subtype: 0,
            safi: 1,
            data: Vec::new(),
        },
    ))
    .await;
    assert_eq!(announced(&peer.next().await), vec!["198.18.0.11/32"]);

    // A broken marker: NOTIFICATION 1/1, the connection closes, the speaker comes back.
    let mut garbage = wire::encode(&BgpMessage::KeepAlive, AsnLength::Bits32)
        .unwrap()
        .to_vec();
    garbage[0] = 0;
    peer.stream.write_all(&garbage).await.unwrap();
    match peer.next().await {
        Some(BgpMessage::Notification(n)) => assert_eq!(n.error.get_codes(), (1, 1)),
        other => panic!("expected NOTIFICATION 1/1, got {other:?}"),
    }
    assert_eq!(peer.next().await, None, "closed after the NOTIFICATION");
    let (peers, _) = speaker.status();
    assert!(
        peers[0].last_error.as_deref().unwrap_or("").contains("1/1"),
        "{:?}",
        peers[0]
    );
    let mut peer = Peer::establish(&listener, 30).await;
    assert_eq!(announced(&peer.next().await), vec!["198.18.0.11/32"]);
    let _eor = peer.next().await;
    let (peers, _) = speaker.status();
    assert_eq!(peers[0].established_count, 2);

    // A graceful stop: the withdraw, then Cease / Administrative Shutdown, then the close.
    let stop = tokio::spawn(speaker.shutdown(Duration::from_secs(3)));
    assert_eq!(withdrawn(&peer.next().await), vec!["198.18.0.11/32"]);
    let withdrawn_at = std::time::Instant::now();
    match peer.next().await {
        Some(BgpMessage::Notification(n)) => assert_eq!(n.error.get_codes(), (6, 2)),
        other => panic!("expected NOTIFICATION 6/2, got {other:?}"),
    }
    let gap = withdrawn_at.elapsed();
    assert!(
        gap >= PAUSE - Duration::from_millis(50) && gap < PAUSE + Duration::from_secs(1),
        "expected the Cease {PAUSE:?} after the withdraw, saw {gap:?}"
    );
    assert_eq!(peer.next().await, None);
    stop.await.unwrap();
}

#[tokio::test]
async fn the_hold_timer_and_bad_opens_end_sessions_with_their_notifications() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let speaker = speaker(port).await;
    // Hold 3 s, and the peer never sends a KEEPALIVE.
    let mut peer = Peer::establish(&listener, 3).await;
    let start = std::time::Instant::now();
    let notification = loop {
        let msg = peer.recv().await;
        if let Some(BgpMessage::Notification(n)) = msg {
            break n;
        }
        assert!(msg.is_some(), "closed without a NOTIFICATION");
    };
    assert_eq!(notification.error.get_codes(), (4, 0));
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(2_500) && waited < Duration::from_secs(6),
        "{waited:?}"
    );

    // The wrong AS: OPEN Message Error / Bad Peer AS.
    let (stream, _) = timeout(Duration::from_secs(10), listener.accept())
        .await
        .unwrap()
        .unwrap();
    let mut peer = Peer {
        stream,
        buf: BytesMut::new(),
    };
    assert!(matches!(peer.recv().await, Some(BgpMessage::Open(_))));
    peer.send(&open::ours(65099, 30, [10, 0, 0, 9].into()))
        .await;
    match peer.recv().await {
        Some(BgpMessage::Notification(n)) => assert_eq!(n.error.get_codes(), (2, 2)),
        other => panic!("expected NOTIFICATION 2/2, got {other:?}"),
    }
    speaker.shutdown(Duration::from_secs(3)).await;
}

#[tokio::test]
async fn only_configured_passive_peers_are_accepted() {
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let listen: SocketAddr = ([127, 0, 0, 1], port).into();
    let config = BgpConfig {
        asn: 65001,
        router_id: Some([10, 0, 0, 1].into()),
        listen: vec![listen],
        peers: vec![PeerConfig {
            address: "127.0.0.2".parse().unwrap(),
            asn: 65000,
            passive: true,
            ..PeerConfig::default()
        }],
        ..BgpConfig::default()
    };
    let speaker = Speaker::start(&config).await.unwrap().unwrap();
    // From 127.0.0.1: not a peer, closed without a word.
    let mut stranger = TcpStream::connect(listen).await.unwrap();
    let mut byte = [0u8; 1];
    let n = timeout(Duration::from_secs(5), stranger.read(&mut byte))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "a stranger got bytes");
    // From 127.0.0.2, the peer: an OPEN comes.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(([127, 0, 0, 2], 0).into()).unwrap();
    let stream = socket.connect(listen).await.unwrap();
    let mut peer = Peer {
        stream,
        buf: BytesMut::new(),
    };
    assert!(matches!(peer.recv().await, Some(BgpMessage::Open(_))));
    speaker.shutdown(Duration::from_secs(3)).await;
}

#[tokio::test]
async fn an_ipv4_peer_on_a_dual_stack_listener_is_recognised() {
    // `[::]` takes IPv4 connections too, with IPv4-mapped addresses (FRR connects this way).
    let port = {
        let probe = std::net::TcpListener::bind("[::]:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let config = BgpConfig {
        asn: 65001,
        // No router id: it comes from the session's local address, seen as ::ffff:127.0.0.1.
        listen: vec![SocketAddr::from(([0u16; 8], port))],
        hold_time_secs: 30,
        peers: vec![PeerConfig {
            address: "127.0.0.1".parse().unwrap(),
            asn: 65000,
            passive: true,
            ..PeerConfig::default()
        }],
        ..BgpConfig::default()
    };
    let mut speaker = Speaker::start(&config).await.unwrap().unwrap();
    serve(&mut speaker, &["198.18.0.10"]);
    let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut peer = Peer {
        stream,
        buf: BytesMut::new(),
    };
    match peer.recv().await {
        Some(BgpMessage::Open(o)) => assert_eq!(
            o.bgp_identifier,
            std::net::Ipv4Addr::LOCALHOST,
            "expected the IPv4 local address as router id"
        ),
        other => panic!("expected an OPEN from the speaker, got {other:?}"),
    }
    peer.send(&open::ours(65000, 30, [10, 0, 0, 9].into()))
        .await;
    peer.send(&BgpMessage::KeepAlive).await;
    assert_eq!(peer.recv().await, Some(BgpMessage::KeepAlive));
    assert_eq!(announced(&peer.next().await), vec!["198.18.0.10/32"]);
    let (peers, _) = speaker.status();
    assert_eq!(
        peers[0].state.as_str(),
        "Established",
        "expected Established, saw {:?}",
        peers[0]
    );
    speaker.shutdown(Duration::from_secs(3)).await;
}

#[tokio::test]
async fn a_connect_timeout_with_a_tcp_md5_key_says_the_key_may_be_wrong() {
    // A listener without a key: Linux drops SYNs that carry a signature (TCPMD5Unexpected).
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let config = BgpConfig {
        asn: 65001,
        peers: vec![PeerConfig {
            address: "127.0.0.1".parse().unwrap(),
            port,
            asn: 65000,
            password: Some("not-the-routers-key".into()),
            ..PeerConfig::default()
        }],
        ..BgpConfig::default()
    };
    let speaker = Speaker::start(&config).await.unwrap().unwrap();
    let start = std::time::Instant::now();
    let error = loop {
        let (peers, _) = speaker.status();
        if let Some(e) = peers[0].last_error.clone() {
            break e;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "expected a connect timeout within 10 s, saw {:?}",
            peers[0]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        error.contains("timed out") && error.contains("TCP-MD5"),
        "expected a timeout naming the TCP-MD5 key, saw {error:?}"
    );
    speaker.shutdown(Duration::from_secs(3)).await;
}

#[tokio::test]
async fn a_session_comes_back_within_a_retry_of_the_peer_idle_hold() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let speaker = speaker(port).await;
    let peer = Peer::establish(&listener, 30).await;
    // The peer resets the session, then refuses connections for an idle hold (GoBGP: 5 s).
    let idle_hold = Duration::from_millis(3_200);
    drop(peer);
    let down = std::time::Instant::now();
    let mut refused = 0;
    while let Some(left) = idle_hold.checked_sub(down.elapsed()) {
        if let Ok(Ok((s, _))) = timeout(left, listener.accept()).await {
            drop(s);
            refused += 1;
        }
    }
    let _peer = Peer::establish(&listener, 30).await;
    let back = down.elapsed();
    // Doubling waits (1, 2, 4 s) came back at 7 s; 1 s waits within 1 s of the idle hold.
    assert!(
        back < idle_hold + Duration::from_millis(1_500),
        "expected the session back within 1.5 s of a {idle_hold:?} idle hold, saw {back:?} \
         ({refused} connections refused)"
    );
    speaker.shutdown(Duration::from_secs(3)).await;
}
