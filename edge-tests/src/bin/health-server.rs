//! `health-server --state FILE [--http ADDR] [--grpc ADDR] [--delay-ms N]`: the health
//! endpoints of a lab backend, switched by a file so that a test can make a backend sick and
//! well again; `--delay-ms` makes the HTTP answer slow (a slow backend where the kernel has no
//! netem).
//!
//! The file holds `serving` or `failing` (missing: serving). HTTP answers every request with
//! 200, or 500 while failing; gRPC serves `grpc.health.v1.Health` (tonic-health) with the whole
//! server's status SERVING, or NOT_SERVING while failing. Prints `health-server ready` once
//! both listeners are bound.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
};
use tonic_health::ServingStatus;

fn failing(state: &PathBuf) -> bool {
    std::fs::read_to_string(state).is_ok_and(|s| s.trim() == "failing")
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (mut state, mut http, mut grpc, mut delay) = (None, None, None, Duration::ZERO);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--state" => state = Some(PathBuf::from(value)),
            "--http" => http = Some(value.parse::<SocketAddr>()?),
            "--grpc" => grpc = Some(value.parse::<SocketAddr>()?),
            "--delay-ms" => delay = Duration::from_millis(value.parse()?),
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    let state = state.ok_or("--state FILE is required")?;
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(addr) = http {
        let listener = TcpListener::bind(addr).await?;
        let state = state.clone();
        tasks.spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let state = state.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 2048];
                    let _ = stream.read(&mut buf).await;
                    tokio::time::sleep(delay).await;
                    let status = if failing(&state) {
                        "500 Internal Server Error"
                    } else {
                        "200 OK"
                    };
                    let reply = format!(
                        "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    );
                    let _ = stream.write_all(reply.as_bytes()).await;
                });
            }
            Ok::<_, std::io::Error>(())
        });
    }
    if let Some(addr) = grpc {
        let (reporter, service) = tonic_health::server::health_reporter();
        let listener = TcpListener::bind(addr).await?;
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let state = state.clone();
        tokio::spawn(async move {
            loop {
                let status = if failing(&state) {
                    ServingStatus::NotServing
                } else {
                    ServingStatus::Serving
                };
                reporter.set_service_status("", status).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        tasks.spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await
                .map_err(std::io::Error::other)
        });
    }
    println!("health-server ready");
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}
