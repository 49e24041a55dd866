//! The probes: one check of one backend, bounded by its timeout, returning the round-trip time
//! it measured or why it failed.
//!
//! Each check opens its own connection (as HAProxy's do): a check must notice a backend that
//! stopped accepting, which a kept-alive connection would hide. HTTP goes through
//! `http_client` (hyper's connection API); gRPC uses tonic with tonic-health's generated client.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use hyper::Method;
use tokio::net::TcpStream;

use crate::{
    http_client,
    model::{parse_status_range, CheckKind, CheckSpec},
};

/// Where and how to check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub backend_id: String,
    pub addr: SocketAddr,
    pub spec: CheckSpec,
}

/// Runs `target`'s check within `timeout`. `commands` are the config's named commands.
pub async fn probe(
    target: &Target,
    timeout: Duration,
    commands: &BTreeMap<String, Vec<String>>,
) -> Result<Duration, String> {
    let started = Instant::now();
    let run = async {
        match &target.spec.kind {
            CheckKind::Tcp => tcp(target.addr).await,
            CheckKind::Http { path, expect } => http(target.addr, path, expect, timeout).await,
            CheckKind::Grpc { service } => grpc(target.addr, service).await,
            CheckKind::Command { name } => command(target, name, commands).await,
        }
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(Ok(())) => Ok(started.elapsed()),
        Ok(Err(error)) => Err(error),
        Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
    }
}

async fn connect(addr: SocketAddr) -> Result<TcpStream, String> {
    TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))
}

async fn tcp(addr: SocketAddr) -> Result<(), String> {
    let stream = connect(addr).await?;
    // Close with a RST, as HAProxy's checks do: one packet instead of a FIN exchange, and no
    // TIME_WAIT socket per check on either side. (A zero linger never blocks the close.)
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    Ok(())
}

async fn http(addr: SocketAddr, path: &str, expect: &str, timeout: Duration) -> Result<(), String> {
    let expect = parse_status_range(expect)?;
    let base: hyper::Uri = format!("http://{addr}")
        .parse()
        .map_err(|e| format!("HTTP check address {addr}: {e}"))?;
    // The probe's own timeout bounds the whole check (and says so); this one only backs it up.
    let response = http_client::send(&base, None, Method::GET, path, None, timeout * 2)
        .await
        .map_err(|e| format!("HTTP GET {path}: {e}"))?;
    let status = response.status().as_u16();
    if expect.contains(&status) {
        Ok(())
    } else {
        Err(format!(
            "HTTP GET {path} answered {status}, expected {}-{}",
            expect.start(),
            expect.end()
        ))
    }
}

async fn grpc(addr: SocketAddr, service: &str) -> Result<(), String> {
    use tonic_health::pb::{
        health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
    };
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| format!("gRPC endpoint {addr}: {e}"))?
        .connect()
        .await
        .map_err(|e| format!("gRPC connect {addr}: {e}"))?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .map_err(|status| format!("gRPC health check at {addr}: {}", status.code()))?;
    let status = response.into_inner().status();
    if status == ServingStatus::Serving {
        Ok(())
    } else {
        Err(format!(
            "gRPC health of {service:?} at {addr} is {}",
            status.as_str_name()
        ))
    }
}

async fn command(
    target: &Target,
    name: &str,
    commands: &BTreeMap<String, Vec<String>>,
) -> Result<(), String> {
    let argv = commands
        .get(name)
        .ok_or_else(|| format!("command {name:?} is not in [health.commands]"))?;
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| format!("command {name:?} is empty"))?;
    let status = tokio::process::Command::new(program)
        .args(args)
        .env("EDGEPROXY_CHECK_ADDR", target.addr.ip().to_string())
        .env("EDGEPROXY_CHECK_PORT", target.addr.port().to_string())
        .env("EDGEPROXY_BACKEND_ID", &target.backend_id)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        // A check that times out is dropped: its process goes with it.
        .kill_on_drop(true)
        .status()
        .await
        .map_err(|e| format!("running {program}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("command {name:?} exited with {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn target(addr: SocketAddr, kind: CheckKind) -> Target {
        Target {
            backend_id: "b1".into(),
            addr,
            spec: CheckSpec {
                kind,
                ..CheckSpec::tcp()
            },
        }
    }

    /// A one-shot HTTP server on loopback that answers every request with `status`.
    async fn http_server(status: u16) -> std::io::Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let reply = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n");
                let _ = s.write_all(reply.as_bytes()).await;
            }
        });
        Ok(addr)
    }

    #[tokio::test]
    async fn tcp_and_http_probes_tell_pass_from_fail() -> std::io::Result<()> {
        let none = BTreeMap::new();
        let t = Duration::from_secs(2);
        let ok = http_server(204).await?;
        assert!(probe(&target(ok, CheckKind::Tcp), t, &none).await.is_ok());
        let http = |expect: &str| CheckKind::Http {
            path: "/health".into(),
            expect: expect.into(),
        };
        assert!(probe(&target(ok, http("200-299")), t, &none).await.is_ok());
        let err = probe(&target(ok, http("200")), t, &none).await;
        assert!(
            err.as_ref().is_err_and(|e| e.contains("answered 204")),
            "{err:?}"
        );
        let bad = http_server(500).await?;
        assert!(probe(&target(bad, http("200-399")), t, &none)
            .await
            .is_err());
        // A port nobody listens on: refused.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            l.local_addr()?
        };
        let err = probe(&target(closed, CheckKind::Tcp), t, &none).await;
        assert!(err.is_err_and(|e| e.contains("refused")));
        Ok(())
    }

    #[tokio::test]
    async fn a_silent_server_times_out() -> std::io::Result<()> {
        // Accepts (the kernel completes the handshake) but never answers the request.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let http = CheckKind::Http {
            path: "/".into(),
            expect: "200".into(),
        };
        let err = probe(
            &target(addr, http),
            Duration::from_millis(200),
            &BTreeMap::new(),
        )
        .await;
        assert!(err.is_err_and(|e| e.contains("no answer within 200 ms")));
        drop(listener);
        Ok(())
    }

    #[tokio::test]
    async fn commands_pass_on_exit_zero_and_get_the_target() {
        let commands: BTreeMap<String, Vec<String>> = [
            ("yes".to_owned(), vec!["/bin/true".to_owned()]),
            ("no".to_owned(), vec!["/bin/false".to_owned()]),
            (
                "env".to_owned(),
                vec![
                    "/bin/sh".to_owned(),
                    "-c".to_owned(),
                    "test \"$EDGEPROXY_CHECK_PORT\" = 9 && test \"$EDGEPROXY_BACKEND_ID\" = b1"
                        .to_owned(),
                ],
            ),
            (
                "slow".to_owned(),
                vec!["/bin/sleep".to_owned(), "5".to_owned()],
            ),
        ]
        .into();
        let addr: SocketAddr = ([127, 0, 0, 1], 9).into();
        let run = |name: &str, ms| {
            let t = target(addr, CheckKind::Command { name: name.into() });
            let commands = commands.clone();
            async move { probe(&t, Duration::from_millis(ms), &commands).await }
        };
        assert!(run("yes", 2000).await.is_ok());
        assert!(run("env", 2000).await.is_ok());
        let no = run("no", 2000).await;
        assert!(no.is_err_and(|e| e.contains("exited with")));
        let started = Instant::now();
        assert!(run("slow", 100).await.is_err());
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the timeout bounds a command"
        );
        let unknown = run("missing", 2000).await;
        assert!(unknown.is_err_and(|e| e.contains("not in [health.commands]")));
    }
}
