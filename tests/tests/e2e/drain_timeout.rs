//! A drained backend keeps its connections until `flows.drain_timeout_secs`; then the sweeper
//! ends exactly those (their next packets meet the POP's RST), and the other backend's
//! connections go on.

use std::{net::IpAddr, time::Duration};

use edge_agent::{
    model::{BackendAddr, Service},
    state::SqliteState,
};
use edge_lab::{
    bpffs_pin_dir,
    pop_lab::{backend_addr, spawn_echo_load_until, start_agent, topology, OVERLAY, VIP4, VIP6},
};

use super::common::{agent_bin, agent_json, echo_backends, lab_backend, tear_down, TestResult};

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
    let config = format!(
        "iface = \"eth0\"\nstats_log_secs = 0\nregion = \"eu\"\n\n[overlay]\niface = \"ovl0\"\naddr = \"{OVERLAY}\"\n\n\
         [flows]\nmax_entries = 65536\nsweep_interval_secs = 1\ndrain_timeout_secs = 1\n\n\
         [maglev]\nmax_services = 8\n\n[affinity]\nttl_secs = 0\n\n[state]\ndatabase = \"{}\"\n",
        db.display()
    );
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

    let out = std::process::Command::new("sqlite3")
        .arg(&db)
        .arg("UPDATE backends SET draining = 1 WHERE id LIKE '%-be1'")
        .output()?;
    assert!(out.status.success(), "sqlite3: {out:?}");
    agent.wait_for_output("drain timeout", Duration::from_secs(30))?;
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
