//! `tokio-proxy LISTEN=BACKEND...`: a userspace TCP proxy for `cargo xtask bench`.
//!
//! It does what edgeProxy v1 did in userspace: accept, connect to the backend, then
//! `tokio::io::copy_bidirectional` until both sides are done. It is the baseline the XDP data
//! plane has to beat, so it is deliberately plain: default buffer sizes, one task per
//! connection, a multi-threaded runtime with one worker per core. It prints
//! `tokio-proxy ready` once every listener is bound.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let pairs = parse_args()?;
    let mut listeners = Vec::new();
    for (listen, backend) in pairs {
        listeners.push((TcpListener::bind(listen).await?, backend));
    }
    println!("tokio-proxy ready");
    let mut tasks = tokio::task::JoinSet::new();
    for (listener, backend) in listeners {
        tasks.spawn(accept_loop(listener, backend));
    }
    while let Some(done) = tasks.join_next().await {
        done.map_err(std::io::Error::other)??;
    }
    Ok(())
}

fn parse_args() -> std::io::Result<Vec<(SocketAddr, SocketAddr)>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        return Err(std::io::Error::other(
            "usage: tokio-proxy LISTEN=BACKEND... (e.g. 198.18.0.10:8080=10.0.2.2:8080)",
        ));
    }
    args.iter()
        .map(|arg| {
            let bad = |why: String| std::io::Error::other(format!("bad pair {arg}: {why}"));
            let (listen, backend) = arg
                .split_once('=')
                .ok_or_else(|| bad("expected LISTEN=BACKEND".into()))?;
            let listen = listen.parse().map_err(|e| bad(format!("{e}")))?;
            let backend = backend.parse().map_err(|e| bad(format!("{e}")))?;
            Ok((listen, backend))
        })
        .collect()
}

async fn accept_loop(listener: TcpListener, backend: SocketAddr) -> std::io::Result<()> {
    loop {
        let (client, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            // Out of descriptors or a connection reset before accept: keep serving the others.
            Err(e) => {
                eprintln!("tokio-proxy: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            if let Err(e) = proxy(client, backend).await {
                eprintln!("tokio-proxy: {backend}: {e}");
            }
        });
    }
}

async fn proxy(mut client: TcpStream, backend: SocketAddr) -> std::io::Result<()> {
    let mut server = TcpStream::connect(backend).await?;
    // A relay must not add Nagle delays of its own to small request/response exchanges.
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    tokio::io::copy_bidirectional(&mut client, &mut server).await?;
    Ok(())
}
