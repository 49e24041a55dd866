//! A drained backend keeps its connections until `flows.drain_timeout_secs`; then the sweeper
//! ends exactly those: the backend gets a RST for each (its sockets close at once, seen with
//! `ss` in its namespace), the clients' next packets meet the POP's RST, and the other
//! backend's connections go on.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use edge_agent::{
    model::{BackendAddr, Service},
    state::SqliteState,
};
use edge_tests::{
    bpffs_pin_dir,
    pop_lab::{
        backend_addr, spawn_echo_load_until, start_agent, state_agent_config, topology, VIP4, VIP6,
    },
};

use super::common::{agent_bin, agent_json, echo_backends, lab_backend, tear_down, TestResult};

/// The echo connections backend `n`'s kernel holds (any state but listening and closed).
fn backend_sockets(lab: &edge_tests::Lab, n: usize) -> Result<usize, Box<dyn std::error::Error>> {
    let out = lab.ns(&format!("be{n}")).exec_ok(&[
        "ss",
        "-Htn",
        "state",
        "connected",
        "( sport = :7007 )",
    ])?;
    Ok(out.stdout.lines().filter(|l| !l.trim().is_empty()).count())
}

#[test]
fn a_drain_timeout_ends_only_the_drained_backends_connections() -> TestResult {
    let lab = topology("drain", 2).up()?;
    let _servers = echo_backends(&lab, 2)?;
    let db = lab.log_dir().join("routing.db");
    let state = SqliteState::open(&db)?;
    for (id, vip) in [("web4", VIP4), ("web6", VIP6)] {
        state.upsert_service(&Service {
            id: id.into(),
            vip: vip.parse::<IpAddr>()?,
            port: 7,
            check: None,
        })?;
        for n in 1..=2 {
            state.upsert_backend(&lab_backend(
                &format!("{id}-be{n}"),
                id,
                "eu",
                "DE",
                BackendAddr::Ip(backend_addr(n).parse()?),
            )?)?;
        }
    }
    drop(state);
    let config = state_agent_config(&db)
        .sweep_interval_secs(1)
        .drain_timeout_secs(1)
        .affinity_ttl_secs(0)
        .to_toml()?;
    let agent = start_agent(&lab, &agent_bin(), &config, &["--reset"])?;
    // The recheck starts once the drain timeout has ended be1's connections (`go`): a
    // connection whose flow goes while its client waits for an echo gets no RST (the client
    // sends nothing more) and would hang the load. On a busy machine the timeout came after a
    // fixed hold once.
    let go = lab.log_dir().join("recheck-go");
    let load = spawn_echo_load_until(
        &lab,
        env!("CARGO_BIN_EXE_echo-load").as_ref(),
        60,
        4096,
        60,
        Some(&go),
        true,
    )?;
    load.wait_for_output("holding 60", Duration::from_secs(30))?;

    let doc = agent_json(&bpffs_pin_dir(lab.ns("pop").name()), &["status"])?;
    let on_be1 = doc["backends"]
        .as_array()
        .and_then(|b| {
            b.iter().find(|b| {
                b["addr"]
                    .as_str()
                    .is_some_and(|a| a.contains(&backend_addr(1)))
            })
        })
        .and_then(|b| b["active_flows"].as_u64())
        .ok_or("no be1 row")?;
    assert!(
        on_be1 > 0 && on_be1 < 60,
        "be1 holds some of the 60 connections: {on_be1}"
    );

    // Each backend's kernel holds its share (one socket per connection).
    let before = (backend_sockets(&lab, 1)?, backend_sockets(&lab, 2)?);
    assert_eq!(
        before,
        (on_be1 as usize, 60 - on_be1 as usize),
        "sockets in be1 and be2 before the drain: expected the status's split, seen {before:?}"
    );

    let out = std::process::Command::new("sqlite3")
        .arg(&db)
        .arg("UPDATE backends SET draining = 1 WHERE id LIKE '%-be1'")
        .output()?;
    assert!(out.status.success(), "sqlite3: {out:?}");
    agent.wait_for_output("drain timeout", Duration::from_secs(30))?;
    let ended_at = Instant::now();
    // The backend learns it too: a RST at the sequence number it expects closes each of its
    // sockets for the ended connections within a second (before, they waited for keepalive).
    let mut left = backend_sockets(&lab, 1)?;
    while left > 0 && ended_at.elapsed() < Duration::from_secs(1) {
        std::thread::sleep(Duration::from_millis(50));
        left = backend_sockets(&lab, 1)?;
    }
    assert_eq!(
        left,
        0,
        "be1's sockets 1 s after the drain timeout ended its {on_be1} connections: expected 0, \
         seen {left}\nagent:\n{}",
        agent.output_so_far()
    );
    let log = agent.output_so_far();
    assert!(
        log.contains(&format!("resets_sent={on_be1} ")),
        "the sweep's line counts {on_be1} RSTs sent: {log}"
    );
    let on_be2 = backend_sockets(&lab, 2)?;
    assert_eq!(
        on_be2,
        60 - on_be1 as usize,
        "be2's connections go on: expected {} sockets, seen {on_be2}",
        60 - on_be1
    );
    std::fs::write(&go, "")?;

    let _ = load.wait_exit(Duration::from_secs(60))?;
    let summary = load.output_so_far();
    let rechecked = summary
        .split("\"rechecked\":")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .and_then(|n| n.parse::<u64>().ok())
        .ok_or_else(|| format!("no summary: {summary}"))?;
    assert_eq!(
        rechecked,
        60 - on_be1,
        "exactly the drained backend's {on_be1} connections are ended after the timeout: {summary}"
    );
    drop(agent);
    tear_down(lab);
    Ok(())
}
