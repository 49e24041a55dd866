//! The DNS server and the registration API in-process: answers, refusals, errors with their
//! status codes, and 10,000 random or malformed inputs to each that leave them answering;
//! registrations that try to take what other rows hold, and the deletion of expired ones.

mod support;

use std::{str::FromStr, sync::Arc, time::Duration};

use axum::{body::Body, http::Request};
use edge_agent::{
    dns::{zone, DnsServer},
    model::BackendAddr,
    register::reaper,
};
use hickory_proto::{
    op::{Message, MessageType, OpCode, Query, ResponseCode},
    rr::{Name, RecordType},
};
use tokio::net::UdpSocket;
use tower::ServiceExt as _;

use support::{register::*, Error};

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
    let (server, failed) = DnsServer::start(
        &["127.0.0.1:0".parse()?],
        edge_agent::dns::DnsConfig::default().tcp_limits.limits(),
    )
    .await?;
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
    assert_eq!(row.lease.as_ref().map(|l| l.interval_secs), Some(2));

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
        // 409: a mutation can land on be1's or be2's address, or make an id their DNS name.
        assert!(
            [201, 400, 409].contains(&status),
            "input {i}: every body gets a verdict, got {status}"
        );
    }
    let (s, answer) = call(&api, "POST", "/v1/registrations", Some(TOKEN), GOOD).await?;
    assert_eq!(s, 201, "{answer}");
    Ok(())
}

#[tokio::test]
async fn registrations_cannot_take_what_others_hold() -> Result<(), Error> {
    let logs = Logs::default();
    let _capture = logs.capture();
    let api = api("owners")?;
    // The operator's backends be1 and be2 (fd00:0:0:1::1 and ::2, port 8080) and another POP.
    for b in &snapshot()?.backends {
        api.store.upsert_backend(b)?;
    }
    api.store.upsert_pop(&edge_agent::model::Pop {
        id: "pop-b".into(),
        region: "sa".parse()?,
        overlay_addr: Some("fd00:0:0:fe::1".parse()?),
        public_key: None,
        endpoint: None,
        role: edge_agent::model::HostRole::Pop,
        host_number: 0,
        overlay_ipv4: None,
    })?;
    api.refresh()?;

    let cases: [(String, u16, &str); 17] = [
        (registration("..", "fd00:0:0:7::2"), 400, "not a DNS label"),
        (registration("-", "fd00:0:0:7::2"), 400, "not a DNS label"),
        (registration(".", "fd00:0:0:7::2"), 400, "not a DNS label"),
        (registration("a.b", "fd00:0:0:7::2"), 400, "not a DNS label"),
        (
            registration("x", POP_OVERLAY),
            400,
            "this POP's own overlay address",
        ),
        (registration("x", "fd00:0:0:ee::a00:1"), 400, "SNAT prefix"),
        (registration("x", "::1"), 400, "loopback"),
        (registration("x", "fe80::1"), 400, "link-local"),
        (registration("x", "ff02::1"), 400, "multicast"),
        (registration("x", "fd00:0:0:fe::1"), 400, "POP pop-b's own"),
        (
            registration("x", "pop-b.hosts.internal"),
            400,
            "POP pop-b's own",
        ),
        // An operator's row: not by its id, its address and port, nor its DNS name.
        (registration("be1", "fd00:0:0:7::2"), 409, "operator wrote"),
        (registration("00", "fd00:0:0:1::2"), 409, "backend be2's"),
        (registration("E4B1", "fd00:0:0:1::2"), 409, "backend be2's"),
        (
            registration("BE1", "fd00:0:0:7::2"),
            409,
            "one DNS name, be1.instances.internal",
        ),
        (registration("e4b1", "fd00:0:0:7::2"), 201, ""),
        (
            registration("E4b1", "fd00:0:0:7::3"),
            409,
            "one DNS name, e4b1.instances.internal",
        ),
    ];
    for (body, status, needle) in &cases {
        let (s, answer) = call(&api, "POST", "/v1/registrations", Some(TOKEN), body).await?;
        assert_eq!(s, *status, "{body}: expected {status}, got {s}: {answer}");
        if *status == 201 {
            // The API now sees e4b1, as the agent would show it after the write.
            api.refresh()?;
            continue;
        }
        let doc: serde_json::Value = serde_json::from_str(&answer)?;
        let message = doc["error"].as_str().unwrap_or_default();
        assert!(
            message.contains(needle),
            "{body}: expected an error mentioning {needle:?}, got {message:?}"
        );
    }
    // One log line per refusal, naming the registration and the row it ran into.
    let refused: Vec<String> = logs
        .lines()
        .into_iter()
        .filter(|l| l.contains("registration refused"))
        .collect();
    assert_eq!(
        refused.len(),
        cases.len() - 1,
        "one line per refusal: {refused:#?}"
    );
    assert!(
        refused
            .iter()
            .any(|l| l.contains("\"00\"") && l.contains("be2") && l.contains("409")),
        "the line names both ids: {refused:#?}"
    );

    // An operator's row the API has not seen yet: the write itself refuses to replace it.
    let mut hidden = backend("hidden", "sa", 9)?;
    hidden.addr = BackendAddr::Ip("fd00:0:0:9::9".parse()?);
    api.store.upsert_backend(&hidden)?;
    let (s, answer) = call(
        &api,
        "POST",
        "/v1/registrations",
        Some(TOKEN),
        &registration("hidden", "fd00:0:0:7::9"),
    )
    .await?;
    assert_eq!(s, 409, "{answer}");
    assert!(answer.contains("cannot replace it"), "{answer}");
    let (state, rejected) = api.store.snapshot()?;
    let row = state
        .backends
        .iter()
        .find(|b| b.id == "hidden")
        .ok_or("the operator's row is still there")?;
    assert_eq!(row.addr, hidden.addr, "and unchanged");
    assert!(row.lease.is_none(), "still an operator's row: {row:?}");
    assert!(rejected.is_empty(), "{rejected:#?}");

    // The rows the registrations would have displaced are all in, be1 and be2 with them.
    let mut ids: Vec<&str> = state.backends.iter().map(|b| b.id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["be1", "be2", "e4b1", "hidden"]);
    assert_eq!(
        state.leases.get("e4b1").map(|l| l.pop.as_str()),
        Some(THIS_POP),
        "the registration records the POP that holds its lease"
    );
    Ok(())
}

#[tokio::test]
async fn expired_registrations_are_deleted_by_their_pop() -> Result<(), Error> {
    let api = api("reaper")?;
    for (id, last) in [("short", "1"), ("kept", "2")] {
        let body = registration(id, &format!("fd00:0:0:7::{last}"));
        let body = if id == "short" {
            body.replace("\"heartbeat_secs\":2", "\"heartbeat_secs\":1")
        } else {
            body
        };
        let (s, answer) = call(&api, "POST", "/v1/registrations", Some(TOKEN), &body).await?;
        assert_eq!(s, 201, "{answer}");
    }
    // "kept" is another POP's lease: this one leaves it for the grace period.
    rusqlite::Connection::open(api._dir.join("routing.db"))?.execute(
        "UPDATE backends SET lease_pop = 'pop-b' WHERE id = 'kept'",
        [],
    )?;
    api.refresh()?;
    let task = reaper::spawn(
        Arc::clone(&api.store) as Arc<dyn edge_agent::state::StateStore>,
        api.snapshot.subscribe(),
        THIS_POP,
    );
    // short's lease (1 s) runs out 3 s after the registration; the reaper looks every second.
    let started = std::time::Instant::now();
    loop {
        api.refresh()?;
        let (state, _) = api.store.snapshot()?;
        if !state.leases.contains_key("short") {
            assert!(
                state.backends.iter().any(|b| b.id == "kept"),
                "another POP's registration stays until its grace runs out: {:?}",
                state.backends
            );
            break;
        }
        if started.elapsed() > Duration::from_secs(10) {
            task.abort();
            return Err("the expired registration was not deleted within 10 s".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    task.abort();
    // A heartbeat for the deleted row finds nothing: the sidecar registers again.
    let (s, _) = call(
        &api,
        "PUT",
        "/v1/registrations/short/heartbeat",
        Some(TOKEN),
        "",
    )
    .await?;
    assert_eq!(s, 404);
    Ok(())
}
