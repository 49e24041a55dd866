//! The agent's HTTP and DNS-over-TCP servers behind their gates (`edge_agent::listen`), on
//! loopback: slow heads are cut at the header timeout, slow handlers answered 408, a long head
//! gets 431, a source over its share gets 429, a full listener refuses a source as big as the
//! others with 503 and makes room for one that holds nothing, and DNS over TCP keeps to its
//! share and closes idle connections.
//! Sources are loopback addresses (127.0.0.0/8 is all local on Linux).

use std::{net::SocketAddr, time::Duration};

use axum::{routing::get, Router};
use edge_agent::{
    dns::DnsServer,
    listen::{self, GateStats, Limits},
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpSocket, TcpStream},
};

type Error = Box<dyn std::error::Error>;

/// How long a test waits for something that must happen before failing: a bound on a hung
/// test, not a measurement.
const PATIENCE: Duration = Duration::from_secs(10);

fn limits(max: usize, per_source: usize) -> Limits {
    Limits {
        max_connections: max,
        max_per_source: per_source,
        header_timeout: Duration::from_millis(300),
        request_timeout: Duration::from_millis(300),
    }
}

fn app() -> Router {
    Router::new()
        .route("/fast", get(|| async { "ok\n" }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "late\n"
            }),
        )
}

async fn connect(to: SocketAddr, from: &str) -> Result<TcpStream, Error> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from.parse()?, 0))?;
    Ok(socket.connect(to).await?)
}

/// Everything the server sends until it closes the connection.
async fn until_closed(stream: &mut TcpStream) -> Result<String, Error> {
    let mut got = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut got))
        .await
        .map_err(|_| format!("expected the server to close the connection within {PATIENCE:?}"))?
        .or_else(|e| {
            // A refusal closed with unread data in the socket may end in a reset.
            if e.kind() == std::io::ErrorKind::ConnectionReset {
                Ok(0)
            } else {
                Err(e)
            }
        })?;
    Ok(String::from_utf8_lossy(&got).into_owned())
}

/// One request on `stream`; the answer's status line and the whole answer, read until the
/// server closes (every request says `Connection: close`).
async fn request(stream: &mut TcpStream, path: &str) -> Result<String, Error> {
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    until_closed(stream).await
}

fn stats(name: &str) -> Result<GateStats, Error> {
    listen::all_stats()
        .into_iter()
        .find(|g| g.name == name)
        .ok_or_else(|| format!("no gate {name}").into())
}

#[tokio::test]
async fn slow_heads_and_slow_handlers_are_cut_short() -> Result<(), Error> {
    let addr =
        listen::http::start("t-timeouts", "127.0.0.1:0".parse()?, limits(8, 8), app()).await?;
    let name = format!("t-timeouts {addr}");

    let mut slow = connect(addr, "127.0.0.1").await?;
    slow.write_all(b"GET /fast HTTP/1.1\r\nHost: t\r\nX-Slow: a")
        .await?;
    let answer = until_closed(&mut slow).await?;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "expected an unfinished head closed (or answered 408), saw {answer:?}"
    );

    let mut late = connect(addr, "127.0.0.1").await?;
    let answer = request(&mut late, "/slow").await?;
    assert!(
        answer.starts_with("HTTP/1.1 408") && answer.to_ascii_lowercase().contains("connection: close"),
        "expected 408 and the connection closed for a handler past the request timeout, saw {answer:?}"
    );

    let mut long = connect(addr, "127.0.0.1").await?;
    let head = format!(
        "GET /fast HTTP/1.1\r\nHost: t\r\nX-Long: {}\r\n\r\n",
        "a".repeat(32 * 1024)
    );
    // The server may close before it has read it all.
    let _ = long.write_all(head.as_bytes()).await;
    let answer = until_closed(&mut long).await?;
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "expected 431 for a 32 KiB head, saw {answer:?}"
    );

    let mut fast = connect(addr, "127.0.0.1").await?;
    let answer = request(&mut fast, "/fast").await?;
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "expected 200, saw {answer:?}"
    );
    let s = stats(&name)?;
    assert!(
        s.timeouts >= 2,
        "expected the slow head and the slow handler counted as timeouts, saw {s:?}"
    );
    Ok(())
}

/// Waits until `name` has `open` connections.
async fn until_open(name: &str, open: u64) -> Result<(), Error> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while stats(name)?.open != open {
        if tokio::time::Instant::now() > deadline {
            return Err(format!("expected {open} open, saw {:?}", stats(name)?).into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

#[tokio::test]
async fn a_source_over_its_share_is_told_429() -> Result<(), Error> {
    let addr = listen::http::start("t-share", "127.0.0.1:0".parse()?, limits(8, 1), app()).await?;
    let name = format!("t-share {addr}");
    let _first = connect(addr, "127.0.0.2").await?;
    until_open(&name, 1).await?;
    let mut second = connect(addr, "127.0.0.2").await?;
    let answer = until_closed(&mut second).await?;
    assert!(
        answer.starts_with("HTTP/1.1 429"),
        "expected 429 for a second connection from a source with a share of one, saw {answer:?}"
    );
    let mut other = connect(addr, "127.0.0.3").await?;
    let answer = request(&mut other, "/fast").await?;
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "expected another source answered, saw {answer:?}"
    );
    assert_eq!(stats(&name)?.refused_source, 1);
    Ok(())
}

#[tokio::test]
async fn a_full_listener_refuses_equal_shares_and_makes_room_for_a_newcomer() -> Result<(), Error> {
    let limits = Limits {
        // Idle connections must stay for the whole test.
        header_timeout: Duration::from_secs(60),
        ..limits(4, 3)
    };
    let addr = listen::http::start("t-full", "127.0.0.1:0".parse()?, limits, app()).await?;
    let name = format!("t-full {addr}");
    // Two sources holding two idle connections each: the listener is full.
    let mut idle = Vec::new();
    for from in ["127.0.0.2", "127.0.0.2", "127.0.0.3", "127.0.0.3"] {
        idle.push(connect(addr, from).await?);
    }
    until_open(&name, 4).await?;

    let mut equal = connect(addr, "127.0.0.2").await?;
    let answer = until_closed(&mut equal).await?;
    assert!(
        answer.starts_with("HTTP/1.1 503"),
        "expected 503 for a source as big as every other when full, saw {answer:?}"
    );
    let s = stats(&name)?;
    assert_eq!((s.refused_full, s.evicted), (1, 0), "{s:?}");

    // A source holding nothing gets in, in place of an idle connection, and is answered.
    let mut newcomer = connect(addr, "127.0.0.4").await?;
    let answer = request(&mut newcomer, "/fast").await?;
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "expected the newcomer answered, saw {answer:?}"
    );
    let s = stats(&name)?;
    assert_eq!(
        s.evicted, 1,
        "expected one idle connection closed for it: {s:?}"
    );
    let mut closed = 0;
    for stream in &mut idle {
        let mut byte = [0u8; 1];
        // The evicted one reads end-of-file; the others would block.
        if let Ok(Ok(0)) =
            tokio::time::timeout(Duration::from_millis(200), stream.read(&mut byte)).await
        {
            closed += 1;
        }
    }
    assert_eq!(
        closed, 1,
        "expected exactly one of the idle connections closed"
    );
    Ok(())
}

#[tokio::test]
async fn dns_over_tcp_keeps_to_its_share_and_closes_idle_connections() -> Result<(), Error> {
    let (server, failed) = DnsServer::start(&["127.0.0.1:0".parse()?], limits(4, 2)).await?;
    assert!(failed.is_empty(), "{failed:?}");
    let addr = server.local[0];
    let name = format!("dns {addr}");
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(connect(addr, "127.0.0.5").await?);
    }
    until_open(&name, 2).await?;
    let mut third = connect(addr, "127.0.0.5").await?;
    let answer = until_closed(&mut third).await?;
    assert!(
        answer.is_empty(),
        "expected a refusal to close at once, saw {answer:?}"
    );
    // The two held connections send nothing: closed at the idle timeout.
    for stream in &mut held {
        let answer = until_closed(stream).await?;
        assert!(
            answer.is_empty(),
            "expected an idle connection closed, saw {answer:?}"
        );
    }
    let s = stats(&name)?;
    assert!(
        s.refused_source == 1 && s.timeouts == 2,
        "expected one refusal and two idle timeouts, saw {s:?}"
    );
    drop(server);
    Ok(())
}
