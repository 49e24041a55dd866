//! The agent's own services under load: `internal.` DNS queries per second, and registration
//! API requests (registrations, then heartbeats) per second sustained for 10 s, each beside a
//! baseline measured in the same run on the same sockets and client: a bare UDP responder for
//! DNS, the API's trivial `/v1/health` route for the API (same HTTP stack, no state write).
//!
//! `cargo bench -p edge-agent --bench services [-- --json PATH]`

use std::{
    collections::HashMap,
    net::{Ipv6Addr, SocketAddr},
    str::FromStr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use edge_agent::{
    dns::{zone, DnsServer},
    model::{Backend, BackendAddr, Service, Snapshot},
    register::api::{router, ApiState},
    state::SqliteState,
};
use hickory_proto::{
    op::{Message, MessageType, OpCode, Query},
    rr::{Name, RecordType},
};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use tokio::net::UdpSocket;

type Error = Box<dyn std::error::Error + Send + Sync>;

const DNS_SECS: u64 = 5;
const API_SECS: u64 = 10;
const CLIENTS: usize = 8;
const REGIONS: [&str; 10] = ["sa", "us", "eu", "ap", "af", "me", "oc", "na", "ca", "in"];
const TOKEN: &str = "bench-token-0123456789";

fn state(backends: u16) -> Result<Snapshot, Error> {
    let mut s = Snapshot {
        services: vec![Service {
            id: "web".into(),
            vip: "198.18.0.10".parse()?,
            port: 80,
            check: None,
        }],
        ..Snapshot::default()
    };
    for i in 0..backends {
        s.backends.push(Backend {
            id: format!("be{i}"),
            service: "web".into(),
            region: REGIONS[usize::from(i) % REGIONS.len()].parse()?,
            country: "ZZ".parse()?,
            addr: BackendAddr::Ip(Ipv6Addr::new(0xfd00, 0, 0, 1, 0, 0, 0, i + 1)),
            port: 8080,
            weight: 1,
            soft_limit: 10,
            hard_limit: 20,
            draining: false,
            enabled: true,
            check: None,
            lease: None,
        });
    }
    Ok(s)
}

/// Queries per second answered by `server`: CLIENTS sockets, each keeping one question in
/// flight (a mix of names), for DNS_SECS.
async fn query_rate(server: SocketAddr, packets: Arc<Vec<Vec<u8>>>) -> Result<f64, Error> {
    let answered = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let (answered, stop, packets) = (answered.clone(), stop.clone(), packets.clone());
        tasks.push(tokio::spawn(async move {
            let socket = UdpSocket::bind("127.0.0.1:0").await?;
            socket.connect(server).await?;
            let mut buf = [0u8; 4096];
            let mut i = c;
            while !stop.load(Ordering::Relaxed) {
                socket.send(&packets[i % packets.len()]).await?;
                i += 1;
                // A lost datagram must not stall the client.
                if tokio::time::timeout(Duration::from_millis(200), socket.recv(&mut buf))
                    .await
                    .is_ok()
                {
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok::<_, Error>(())
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(DNS_SECS)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await??;
    }
    Ok(answered.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

async fn dns() -> Result<(f64, f64), Error> {
    let (server, failed) = DnsServer::start(
        &["127.0.0.1:0".parse()?],
        edge_agent::dns::DnsConfig::default().tcp_limits.limits(),
    )
    .await?;
    if let Some(e) = failed.first() {
        return Err(e.to_string().into());
    }
    let health = HashMap::new();
    let region = "sa".parse()?;
    let z = zone::build(
        &state(1000)?,
        &zone::ZoneInputs {
            pop_region: &region,
            health: &health,
            now_unix: 0,
            ns_addr: None,
            ttl: 5,
            serial: 1,
        },
    );
    server.update(&z, 1).await;
    let mut packets = Vec::new();
    for (i, (name, kind)) in [
        ("sa.backends.internal.", RecordType::AAAA),
        ("be7.instances.internal.", RecordType::AAAA),
        ("web.eu.services.internal.", RecordType::SRV),
        ("regions.web.services.internal.", RecordType::TXT),
        ("nobody.instances.internal.", RecordType::AAAA),
    ]
    .into_iter()
    .enumerate()
    {
        let mut m = Message::new(i as u16, MessageType::Query, OpCode::Query);
        m.add_query(Query::query(Name::from_str(name)?, kind));
        packets.push(m.to_vec()?);
    }
    let packets = Arc::new(packets);
    let dns_qps = query_rate(server.local[0], packets.clone()).await?;

    // The floor: a responder that sends each datagram straight back.
    let echo = UdpSocket::bind("127.0.0.1:0").await?;
    let echo_addr = echo.local_addr()?;
    let responder = tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        while let Ok((n, from)) = echo.recv_from(&mut buf).await {
            let _ = echo.send_to(&buf[..n], from).await;
        }
    });
    let echo_qps = query_rate(echo_addr, packets).await?;
    responder.abort();
    Ok((dns_qps, echo_qps))
}

/// Requests per second the API answered with `ok` over API_SECS: CLIENTS keep-alive
/// connections, each sending `request(client, n)` one after another.
async fn request_rate(
    addr: SocketAddr,
    request: Arc<dyn Fn(usize, u64) -> hyper::Request<Full<Bytes>> + Send + Sync>,
    ok: hyper::StatusCode,
) -> Result<f64, Error> {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let (done, stop, request) = (done.clone(), stop.clone(), request.clone());
        tasks.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let response = sender.send_request(request(c, n)).await?;
                let status = response.status();
                response.into_body().collect().await?;
                if status != ok {
                    return Err(format!("request {n} of client {c}: {status}").into());
                }
                done.fetch_add(1, Ordering::Relaxed);
                n += 1;
            }
            Ok::<_, Error>(())
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(API_SECS)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

fn request(method: &str, path: String, body: String) -> hyper::Request<Full<Bytes>> {
    let mut r = hyper::Request::new(Full::new(Bytes::from(body)));
    *r.method_mut() = hyper::Method::from_bytes(method.as_bytes()).unwrap_or_default();
    *r.uri_mut() = hyper::Uri::try_from(path).unwrap_or_default();
    if let Ok(v) = hyper::header::HeaderValue::from_str(&format!("Bearer {TOKEN}")) {
        r.headers_mut().insert(hyper::header::AUTHORIZATION, v);
    }
    r
}

async fn api(dir: &std::path::Path) -> Result<(f64, f64, f64), Error> {
    let store = Arc::new(SqliteState::open(dir.join("routing.db"))?);
    let snapshot = state(0)?;
    store.upsert_service(&snapshot.services[0])?;
    let (tx, rx) = tokio::sync::watch::channel(Arc::new(snapshot));
    let api = Arc::new(ApiState {
        token: TOKEN.into(),
        store,
        snapshot: rx,
        default_heartbeat_secs: 10,
        pop: edge_agent::register::api::ThisPop::new("pop-bench", None, None),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, router(api)).await });

    let register = Arc::new(|c: usize, n: u64| {
        // Client c owns ids c, c+CLIENTS, ...: re-registering its first 100 in turn.
        let id = (n % 100) as usize * CLIENTS + c;
        let last = (id % 65_000 + 1) as u16;
        request(
            "POST",
            "/v1/registrations".into(),
            format!(
                r#"{{"id":"be{id}","app":"web","region":"sa","address":"fd00:0:0:2::{last:x}","port":8080,"heartbeat_secs":10}}"#
            ),
        )
    });
    let registrations = request_rate(addr, register, hyper::StatusCode::CREATED).await?;
    let heartbeat = Arc::new(|c: usize, n: u64| {
        let id = (n % 100) as usize * CLIENTS + c;
        request(
            "PUT",
            format!("/v1/registrations/be{id}/heartbeat"),
            String::new(),
        )
    });
    let heartbeats = request_rate(addr, heartbeat, hyper::StatusCode::OK).await?;
    let floor = Arc::new(|_: usize, _: u64| request("GET", "/v1/health".into(), String::new()));
    let baseline = request_rate(addr, floor, hyper::StatusCode::OK).await?;
    server.abort();
    drop(tx);
    Ok((registrations, heartbeats, baseline))
}

fn main() -> Result<(), Error> {
    let json_path = std::env::args().skip_while(|a| a != "--json").nth(1);
    let dir = std::env::temp_dir().join(format!("edge-bench-services-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    // Two worker threads: the machine's two cores, shared by clients and servers.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (dns_qps, echo_qps) = runtime.block_on(dns())?;
    println!("DNS, internal. zone of 1000 backends in 10 regions, {CLIENTS} clients one query in flight each, {DNS_SECS} s:");
    println!(
        "  {dns_qps:.0} queries/s answered; a bare UDP responder on the same client: {echo_qps:.0}/s (ratio {:.2})",
        dns_qps / echo_qps.max(1.0)
    );
    let (registrations, heartbeats, baseline) = runtime.block_on(api(&dir))?;
    println!("registration API (SQLite state file, WAL), {CLIENTS} keep-alive clients, {API_SECS} s each:");
    println!(
        "  registrations {registrations:.0}/s, heartbeats {heartbeats:.0}/s; the same HTTP stack without a write (GET /v1/health): {baseline:.0}/s (ratios {:.2}, {:.2})",
        registrations / baseline.max(1.0),
        heartbeats / baseline.max(1.0)
    );
    let _ = std::fs::remove_dir_all(&dir);
    if let Some(path) = json_path {
        let doc = serde_json::json!({
            "dns": {"qps": dns_qps, "udp_floor_qps": echo_qps, "seconds": DNS_SECS},
            "register": {"registrations_per_sec": registrations, "heartbeats_per_sec": heartbeats,
                         "http_floor_per_sec": baseline, "seconds": API_SECS},
        });
        std::fs::write(&path, serde_json::to_string_pretty(&doc)?)?;
    }
    Ok(())
}
