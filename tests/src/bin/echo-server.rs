//! `echo-server ADDR...`: a TCP echo server for `cargo xtask bench`.
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
    let addrs = parse_args()?;
    let mut listeners = Vec::new();
    for addr in addrs {
        // A `[::]` listener is dual-stack (net.ipv6.bindv6only is 0), so it serves IPv4 too.
        listeners.push(TcpListener::bind(addr).await?);
    }
    println!("echo-server ready");
    let mut tasks = tokio::task::JoinSet::new();
    for listener in listeners {
        tasks.spawn(accept_loop(listener));
    }
    while let Some(done) = tasks.join_next().await {
        done.map_err(std::io::Error::other)??;
    }
    Ok(())
}

fn parse_args() -> std::io::Result<Vec<SocketAddr>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        return Err(std::io::Error::other(
            "usage: echo-server ADDR... (e.g. [::]:7007)",
        ));
    }
    args.iter()
        .map(|a| {
            a.parse()
                .map_err(|e| std::io::Error::other(format!("bad address {a}: {e}")))
        })
        .collect()
}

async fn accept_loop(listener: TcpListener) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            if let Err(e) = echo(stream).await {
                eprintln!("echo-server: connection: {e}");
            }
        });
    }
}

async fn echo(mut stream: TcpStream) -> std::io::Result<()> {
    // Each reply is one small write: Nagle would hold it back behind an unacknowledged one.
    stream.set_nodelay(true)?;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        stream.write_all(&buf[..n]).await?;
    }
}
