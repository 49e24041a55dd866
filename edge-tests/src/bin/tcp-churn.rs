//! `tcp-churn ADDR PER_SEC SECS`: opens a new TCP connection to ADDR PER_SEC times a second for
//! SECS seconds, each echoing one message, with a 300 ms deadline; the lab's stand-in for a
//! stream of new clients. With `max` for PER_SEC, 16 clients each open the next connection as
//! soon as the last one is done, for SECS seconds (the rate a POP sustains). Prints one JSON
//! line: `{"ok":N,"failed":N}`.

use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

async fn one(addr: SocketAddr) -> std::io::Result<()> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(b"ping").await?;
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).await?;
    Ok(())
}

/// 16 clients, each connecting again as soon as its last connection echoed (or failed), until
/// `length` has passed: (ok, failed).
async fn closed_loop(addr: SocketAddr, length: Duration) -> (u64, u64) {
    let until = tokio::time::Instant::now() + length;
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..16 {
        clients.spawn(async move {
            let (mut ok, mut failed) = (0u64, 0u64);
            while tokio::time::Instant::now() < until {
                match tokio::time::timeout(Duration::from_millis(300), one(addr)).await {
                    Ok(Ok(())) => ok += 1,
                    _ => failed += 1,
                }
            }
            (ok, failed)
        });
    }
    let (mut ok, mut failed) = (0u64, 0u64);
    while let Some(done) = clients.join_next().await {
        if let Ok((o, f)) = done {
            ok += o;
            failed += f;
        }
    }
    (ok, failed)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, rate, secs] = args.as_slice() else {
        return Err("usage: tcp-churn ADDR PER_SEC SECS".into());
    };
    let addr: SocketAddr = addr.parse()?;
    let secs: u64 = secs.parse()?;
    if rate == "max" {
        let (ok, failed) = closed_loop(addr, Duration::from_secs(secs)).await;
        println!("{{\"ok\":{ok},\"failed\":{failed}}}");
        return Ok(());
    }
    let rate: u64 = rate.parse()?;
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..rate * secs {
        tick.tick().await;
        tasks.spawn(tokio::time::timeout(Duration::from_millis(300), one(addr)));
    }
    let (mut ok, mut failed) = (0u64, 0u64);
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(Ok(Ok(()))) => ok += 1,
            _ => failed += 1,
        }
    }
    println!("{{\"ok\":{ok},\"failed\":{failed}}}");
    Ok(())
}
