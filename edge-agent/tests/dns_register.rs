//! The DNS server and the registration API in-process: answers, refusals, errors with their
//! status codes, and 10,000 random or malformed inputs to each that leave them answering.

use std::{net::Ipv6Addr, str::FromStr, sync::Arc, time::Duration};

use axum::{body::Body, http::Request};
use edge_agent::{
    dns::{zone, DnsServer},
    model::{Backend, BackendAddr, Service, Snapshot},
    register::api::{router, ApiState},
    state::SqliteState,
};
use hickory_proto::{
    op::{Message, MessageType, OpCode, Query, ResponseCode},
    rr::{Name, RecordType},
};
use tokio::net::UdpSocket;
use tower::ServiceExt as _;

type Error = Box<dyn std::error::Error>;

fn backend(id: &str, region: &str, last: u16) -> Result<Backend, Error> {
    Ok(Backend {
        id: id.into(),
        service: "web".into(),
        region: region.parse()?,
        country: "BR".parse()?,
        addr: BackendAddr::Ip(Ipv6Addr::new(0xfd00, 0, 0, 1, 0, 0, 0, last)),
        port: 8080,
        weight: 1,
        soft_limit: 10,
        hard_limit: 20,
        draining: false,
        enabled: true,
        check: None,
        lease: None,
    })
}

fn snapshot() -> Result<Snapshot, Error> {
    Ok(Snapshot {
        services: vec![Service {
            id: "web".into(),
            vip: "198.18.0.10".parse()?,
            port: 80,
            check: None,
        }],
        backends: vec![backend("be1", "sa", 1)?, backend("be2", "us", 2)?],
        ..Snapshot::default()
    })
}

async fn ask(
    socket: &UdpSocket,
    server: std::net::SocketAddr,
    name: &str,
    kind: RecordType,
) -> Result<Message, Error> {
    let id = fastrand::u16(..);
    let mut query = Message::new(id, MessageType::Query, OpCode::Query);
    query.add_query(Query::query(Name::from_str(name)?, kind));
    let packet = query.to_vec()?;
    let mut buf = vec![0u8; 4096];
    // As a resolver does: UDP may lose the question (a full socket buffer), so ask again
    // every second, for up to 10 s.
    for _ in 0..10 {
        socket.send_to(&packet, server).await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while let Ok(received) = tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await {
            let answer = Message::from_vec(&buf[..received?])?;
            // A late answer to an earlier question is not this one's.
            if answer.metadata.id == id {
                return Ok(answer);
            }
        }
    }
    Err(format!("no answer to {name} {kind} within 10 s").into())
}

#[tokio::test]
async fn dns_answers_refuses_and_survives_garbage() -> Result<(), Error> {
    let (server, failed) = DnsServer::start(&["127.0.0.1:0".parse()?]).await?;
    assert!(failed.is_empty(), "{failed:?}");
    let addr = server.local[0];
    let health = std::collections::HashMap::new();
    let region = "sa".parse()?;
    let z = zone::build(
        &snapshot()?,
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
    let socket = UdpSocket::bind("127.0.0.1:0").await?;

    let r = ask(&socket, addr, "sa.backends.internal.", RecordType::AAAA).await?;
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert!(r.metadata.authoritative);
    let answers: Vec<String> = r.answers.iter().map(|a| a.data.to_string()).collect();
    assert_eq!(answers, ["fd00:0:0:1::1"]);
    assert!(r.answers.iter().all(|a| a.ttl == 5));

    let r = ask(&socket, addr, "web.services.internal.", RecordType::SRV).await?;
    let srv: Vec<String> = r.answers.iter().map(|a| a.data.to_string()).collect();
    assert_eq!(
        srv,
        [
            "0 1 8080 be1.instances.internal.",
            "1 1 8080 be2.instances.internal."
        ],
        "nearest region (this POP's, sa) first"
    );
    let r = ask(&socket, addr, "nobody.backends.internal.", RecordType::AAAA).await?;
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    let r = ask(&socket, addr, "example.com.", RecordType::A).await?;
    assert_eq!(r.metadata.response_code, ResponseCode::Refused);
    assert!(!r.metadata.recursion_available, "not a resolver");

    // Garbage: random bytes, and valid queries cut or flipped at random places.
    let mut valid = Message::new(1, MessageType::Query, OpCode::Query);
    valid.add_query(Query::query(
        Name::from_str("sa.backends.internal.")?,
        RecordType::AAAA,
    ));
    let valid = valid.to_vec()?;
    let sender = UdpSocket::bind("127.0.0.1:0").await?;
    for i in 0..10_000u32 {
        let packet: Vec<u8> = match i % 3 {
            0 => (0..fastrand::usize(0..600))
                .map(|_| fastrand::u8(..))
                .collect(),
            1 => valid[..fastrand::usize(0..valid.len())].to_vec(),
            _ => {
                let mut p = valid.clone();
                let at = fastrand::usize(0..p.len());
                p[at] ^= fastrand::u8(1..);
                p
            }
        };
        sender.send_to(&packet, addr).await?;
        if i % 500 == 0 {
            // Let the server drain its socket: UDP drops what overflows, which is not the point.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    // The server may still be working through the bad packets queued before this one.
    let r = ask(&socket, addr, "sa.backends.internal.", RecordType::AAAA).await?;
    assert_eq!(
        r.answers.len(),
        1,
        "still answering after 10,000 bad packets"
    );

    // A change shows at once.
    let mut s = snapshot()?;
    s.backends.push(backend("be3", "sa", 3)?);
    let z = zone::build(
        &s,
        &zone::ZoneInputs {
            pop_region: &region,
            health: &health,
            now_unix: 0,
            ns_addr: None,
            ttl: 5,
            serial: 2,
        },
    );
    server.update(&z, 2).await;
    let r = ask(&socket, addr, "sa.backends.internal.", RecordType::AAAA).await?;
    assert_eq!(r.answers.len(), 2);
    Ok(())
}

const TOKEN: &str = "0123456789abcdef-token";

struct Api {
    router: axum::Router,
    store: Arc<SqliteState>,
    _dir: std::path::PathBuf,
}

impl Drop for Api {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

fn api(name: &str) -> Result<Api, Error> {
    let dir = std::env::temp_dir().join(format!("edge-api-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let store = Arc::new(SqliteState::open(dir.join("routing.db"))?);
    let snap = snapshot()?;
    for s in &snap.services {
        store.upsert_service(s)?;
    }
    let (tx, rx) = tokio::sync::watch::channel(Arc::new(snap));
    // The agent keeps the sender; here nothing changes it.
    std::mem::forget(tx);
    let state = Arc::new(ApiState {
        token: TOKEN.into(),
        store: Arc::clone(&store) as Arc<dyn edge_agent::state::StateStore>,
        snapshot: rx,
        default_heartbeat_secs: 10,
    });
    Ok(Api {
        router: router(state),
        store,
        _dir: dir,
    })
}

async fn call(
    api: &Api,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> Result<(u16, String), Error> {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        request = request.header("authorization", format!("Bearer {t}"));
    }
    let response = api
        .router
        .clone()
        .oneshot(request.body(Body::from(body.to_owned()))?)
        .await?;
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await?;
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}

const GOOD: &str = r#"{"id":"web-host7-8080","app":"web","region":"sa","address":"fd00:0:0:7::2","port":8080,"heartbeat_secs":2,"metadata":{"v":"1.2"}}"#;

#[tokio::test]
async fn registration_api_statuses() -> Result<(), Error> {
    let api = api("statuses")?;
    let (s, body) = call(&api, "POST", "/v1/registrations", None, GOOD).await?;
    assert_eq!(s, 401, "{body}");
    let (s, _) = call(
        &api,
        "POST",
        "/v1/registrations",
        Some("wrong-token-xxxxxxx"),
        GOOD,
    )
    .await?;
    assert_eq!(s, 403);
    for (body, needle) in [
        ("{", "invalid registration"),
        ("[]", "invalid registration"),
        (r#"{"id":"x"}"#, "missing field"),
        (&GOOD.replace("fd00:0:0:7::2", "10.1.2.3"), "IPv4"),
        (&GOOD.replace("fd00:0:0:7::2", "not an address"), "address"),
        (&GOOD.replace("8080,", "0,"), "port 0"),
        (&GOOD.replace("8080,", "70000,"), "invalid registration"),
        (&GOOD.replace("\"web\"", "\"nope\""), "not a service"),
        (&GOOD.replace("\"sa\"", "\"South America\""), "region"),
        (
            &GOOD.replace("\"heartbeat_secs\":2", "\"heartbeat_secs\":0"),
            "heartbeat_secs 0",
        ),
        (&GOOD.replace("\"metadata\"", "\"bogus\""), "unknown field"),
    ] {
        let (s, answer) = call(&api, "POST", "/v1/registrations", Some(TOKEN), body).await?;
        assert_eq!(s, 400, "{body} -> {answer}");
        let doc: serde_json::Value = serde_json::from_str(&answer)?;
        let message = doc["error"].as_str().unwrap_or_default();
        assert!(
            message.contains(needle),
            "{body}: {message:?} should mention {needle:?}"
        );
    }

    let (s, answer) = call(&api, "POST", "/v1/registrations", Some(TOKEN), GOOD).await?;
    assert_eq!(s, 201, "{answer}");
    let (snapshot, rejected) = api.store.snapshot()?;
    assert!(rejected.is_empty(), "{rejected:?}");
    let row = snapshot
        .backends
        .iter()
        .find(|b| b.id == "web-host7-8080")
        .ok_or("the registration is a backend row")?;
    assert_eq!(row.lease.map(|l| l.interval_secs), Some(2));

    let path = "/v1/registrations/web-host7-8080/heartbeat";
    assert_eq!(call(&api, "PUT", path, Some(TOKEN), "").await?.0, 200);
    assert_eq!(
        call(
            &api,
            "PUT",
            "/v1/registrations/ghost/heartbeat",
            Some(TOKEN),
            ""
        )
        .await?
        .0,
        404
    );
    assert_eq!(
        call(
            &api,
            "DELETE",
            "/v1/registrations/web-host7-8080",
            Some(TOKEN),
            ""
        )
        .await?
        .0,
        204
    );
    assert!(
        api.store.snapshot()?.0.backends.is_empty(),
        "deregistered at once"
    );
    assert_eq!(
        call(
            &api,
            "DELETE",
            "/v1/registrations/web-host7-8080",
            Some(TOKEN),
            ""
        )
        .await?
        .0,
        404
    );
    Ok(())
}

#[tokio::test]
async fn random_bodies_leave_the_api_answering() -> Result<(), Error> {
    let api = api("fuzz")?;
    let good = GOOD.as_bytes();
    for i in 0..10_000u32 {
        let body: Vec<u8> = match i % 3 {
            0 => (0..fastrand::usize(0..300))
                .map(|_| fastrand::u8(..))
                .collect(),
            1 => good[..fastrand::usize(0..good.len())].to_vec(),
            _ => {
                let mut b = good.to_vec();
                let at = fastrand::usize(0..b.len());
                b[at] = fastrand::u8(..);
                b
            }
        };
        let request = Request::builder()
            .method("POST")
            .uri("/v1/registrations")
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(Body::from(body))?;
        let status = api.router.clone().oneshot(request).await?.status().as_u16();
        assert!(
            [201, 400].contains(&status),
            "input {i}: every body gets a verdict, got {status}"
        );
    }
    let (s, answer) = call(&api, "POST", "/v1/registrations", Some(TOKEN), GOOD).await?;
    assert_eq!(s, 201, "{answer}");
    Ok(())
}
