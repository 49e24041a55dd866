//! `echo-server [--hello NAME [--say-peer]] ADDR...`: a TCP echo server for `cargo xtask bench`
//! and the labs. With `--hello`, each connection first gets the line `NAME`, so that a client can
//! tell which backend it reached; with `--say-peer` too, `NAME PEER`, where PEER is the address
//! the connection came from (behind a POP: the POP's overlay address, so the client also learns
//! which POP carried it).
//!
//! socat's `fork` mode relays every byte through a forked process and a pipe, which adds its own
//! latency to the round trip the benchmark measures; this server echoes straight from the socket
//! on a tokio task, so the figure is dominated by the path under test. It prints
//! `echo-server ready` once every listener is bound.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::io::Result<()> {
    let (hello, addrs) = parse_args()?;
    let hello = hello.map(std::sync::Arc::new);
    let mut listeners = Vec::new();
    for addr in addrs {
        // A `[::]` listener is dual-stack (net.ipv6.bindv6only is 0), so it serves IPv4 too.
        listeners.push(TcpListener::bind(addr).await?);
    }
    println!("echo-server ready");
    let mut tasks = tokio::task::JoinSet::new();
    for listener in listeners {
        tasks.spawn(accept_loop(listener, hello.clone()));
    }
    while let Some(done) = tasks.join_next().await {
        done.map_err(std::io::Error::other)??;
    }
    Ok(())
}

/// What a connection is greeted with: the name, and whether the peer's address follows it.
struct Hello {
    name: String,
    say_peer: bool,
}

fn parse_args() -> std::io::Result<(Option<Hello>, Vec<SocketAddr>)> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let say_peer = match args.iter().position(|a| a == "--say-peer") {
        Some(i) => {
            args.remove(i);
            true
        }
        None => false,
    };
    let hello = match args.iter().position(|a| a == "--hello") {
        Some(i) if i + 1 < args.len() => {
            let name = args.remove(i + 1);
            args.remove(i);
            Some(Hello { name, say_peer })
        }
        Some(_) => return Err(std::io::Error::other("--hello needs a name")),
        None if say_peer => return Err(std::io::Error::other("--say-peer needs --hello")),
        None => None,
    };
    if args.is_empty() {
        return Err(std::io::Error::other(
            "usage: echo-server [--hello NAME [--say-peer]] ADDR... (e.g. [::]:7007)",
        ));
    }
    let addrs = args
        .iter()
        .map(|a| {
            a.parse()
                .map_err(|e| std::io::Error::other(format!("bad address {a}: {e}")))
        })
        .collect::<std::io::Result<_>>()?;
    Ok((hello, addrs))
}

async fn accept_loop(
    listener: TcpListener,
    hello: Option<std::sync::Arc<Hello>>,
) -> std::io::Result<()> {
    loop {
        let (stream, peer) = listener.accept().await?;
        let hello = hello.as_ref().map(|h| {
            if h.say_peer {
                // An IPv4 peer of a dual-stack listener reads as ::ffff:a.b.c.d: show a.b.c.d.
                format!("{} {}\n", h.name, peer.ip().to_canonical())
            } else {
                format!("{}\n", h.name)
            }
        });
        tokio::spawn(async move {
            if let Err(e) = echo(stream, hello).await {
                eprintln!("echo-server: connection: {e}");
            }
        });
    }
}

async fn echo(mut stream: TcpStream, hello: Option<String>) -> std::io::Result<()> {
    // Each reply is one small write: Nagle would hold it back behind an unacknowledged one.
    stream.set_nodelay(true)?;
    if let Some(hello) = hello {
        stream.write_all(hello.as_bytes()).await?;
    }
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        stream.write_all(&buf[..n]).await?;
    }
}
