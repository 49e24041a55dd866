//! BFD against BIRD 2: POP A sits behind a switch (a bridge in `swa`), so its host can die (its
//! links go down) while the router's own link stays up, as in a real POP. With BFD at
//! 100 ms x 3 BIRD withdraws POP A's VIPs within a second (p50 and max of 10 tries printed),
//! against the 3 s hold time without BFD (printed too); new connections go to POP B (which
//! announces with a longer path, so POP A is preferred while alive). A hung agent (SIGSTOP)
//! stops its BFD session too: the design withdraws it the same way. 100,000 malformed BFD
//! packets leave the agent up, counted by reason, its sessions untouched.
//!
//! ```text
//! client --c0-- router (BIRD) --ra-- swa (br0) -- popa (XDP eth0) --ovl0-- hub --b1-- bea
//!                             --rb-- popb (XDP eth0) --ovl0-- hub --b2-- beb
//! ```

use std::{
    path::Path,
    time::{Duration, Instant},
};

use super::{
    anycast_lab::{topology_with, with_bird, Bgp},
    common::TestResult,
    restart_lab::{Bird, Router, POP_B},
};

type Error = Box<dyn std::error::Error>;

fn bird_config(log: &Path) -> String {
    format!(
        r#"router id 10.0.9.1;
log "{}" all;
protocol device {{ scan time 1; }}
protocol kernel k4 {{ ipv4 {{ export all; }}; }}
protocol kernel k6 {{ ipv6 {{ export all; }}; }}
protocol bfd {{
  interface "ra" {{ min rx interval 100 ms; min tx interval 100 ms; multiplier 3; }};
  interface "rb" {{ min rx interval 300 ms; min tx interval 300 ms; multiplier 3; }};
}}
protocol bgp popa {{
  local 10.0.10.1 as 65000;
  neighbor 10.0.10.2 as 65001;
  passive on;
  hold time 3;
  error wait time 1, 2;
  graceful restart on;
  bfd on;
  debug {{ states, events, packets }};
  ipv4 {{ import all; export none; }};
  ipv6 {{ import all; export none; }};
}}
protocol bgp popb {{
  local 2001:db8:11::1 as 65000;
  neighbor 2001:db8:11::2 as 65002;
  hold time 9;
  connect delay time 1;
  connect retry time 1;
  error wait time 1, 2;
  bfd on;
  ipv4 {{ import all; export none; }};
  ipv6 {{ import all; export none; }};
}}
"#,
        log.display()
    )
}

/// POP A's `[bgp]`: graceful restart (30 s), hold time 3 s, and BFD at 100 ms x 3 unless `bfd`
/// is false.
fn pop_a(bfd: bool) -> String {
    let mut s = "asn = 65001\ngraceful_restart_secs = 30\n\n[[bgp.peers]]\naddress = \"10.0.10.1\"\nasn = 65000\nhold_time_secs = 3\nnext_hop_v6 = \"2001:db8:10::2\"\n".to_owned();
    if bfd {
        s.push_str("\n[bgp.peers.bfd]\nmin_tx_ms = 100\nmin_rx_ms = 100\nmultiplier = 3\n");
    }
    s
}

/// Waits until the router has POP A's fresh paths for both VIPs and (with `bfd`) its BFD
/// session with POP A is Up.
fn wait_popa(router: &dyn Router, bfd: bool, timeout: Duration) -> Result<Duration, Error> {
    let start = Instant::now();
    loop {
        let s = router.sample();
        if s.popa && !s.stale && (!bfd || router.bfd_up()) {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            return Err(format!(
                "expected POP A's paths (and BFD Up: {bfd}) within {timeout:?}:\n{}",
                s.text
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls the router until POP A's paths are gone; how long that took from `since`.
fn time_withdraw(
    router: &dyn Router,
    since: Instant,
    timeout: Duration,
) -> Result<Duration, Error> {
    loop {
        let s = router.sample();
        if !s.popa {
            return Ok(since.elapsed());
        }
        if since.elapsed() > timeout {
            return Err(format!(
                "POP A's paths still in the router after {timeout:?}:\n{}",
                s.text
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// POP A's host dies (its link goes down) or comes back. Its overlay link stays up: a backend's
/// health is not what this measures, and taking ovl0 down would drop the routes to them.
fn popa_links(t: &Bgp, up: bool) -> Result<(), Error> {
    let ns = t.lab.ns("popa");
    ns.exec_ok(&["ip", "link", "set", "eth0", if up { "up" } else { "down" }])?;
    if up {
        // Taking a link down flushes the routes through it.
        ns.exec_ok(&["ip", "route", "replace", "default", "via", "10.0.10.1"])?;
        ns.exec_ok(&[
            "ip",
            "-6",
            "route",
            "replace",
            "default",
            "via",
            "2001:db8:10::1",
            "dev",
            "eth0",
            "onlink",
        ])?;
    }
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[test]
fn bird_withdraws_a_dead_pop_within_a_second_with_bfd() -> TestResult {
    with_bird(topology_with("bfd", true), bird_config, |t| {
        let bird = Bird {
            socket: t.socket.clone(),
            log: t.bird_log.clone(),
        };
        // POP B's session is over IPv6: BFD over IPv6 too (hop limit 255), at BIRD's pace.
        let pop_b = format!("{POP_B}bfd = true\n");
        host_death(t, &bird, &pop_b)?;
        let b = t.cli('b', &["status", "--output", "json"])?;
        let doc: serde_json::Value = serde_json::from_slice(&b.stdout)?;
        let bfd = &doc["agent"]["bgp"]["sessions"][0]["bfd"];
        assert_eq!(bfd["state"], "up", "POP B's BFD session over IPv6: {bfd}");
        assert_eq!(bfd["detection_time_ms"], 900.0, "300 ms x 3: {bfd}");
        bird_flushes_a_killed_pop(t, &bird)
    })
}

/// With POP A's BFD session at 100 ms x 3 (and graceful restart on): ten host deaths, a hung
/// agent, then a death without BFD (the hold time). `router` is BIRD or FRR.
pub(super) fn host_death(t: &mut Bgp, router: &dyn Router, pop_b: &str) -> TestResult {
    t.bridge_switch()?;
    t.start_backend('a')?;
    t.start_backend('b')?;
    t.start_agent_with('a', &pop_a(true))?;
    t.start_agent_with('b', pop_b)?;
    wait_popa(router, true, Duration::from_secs(30))?;
    t.wait_route("POP A preferred", Duration::from_secs(10), |c| {
        c == Some('a')
    })?;
    assert_eq!(t.echo_both()?, 'a');
    let status = bfd_status(t)?;
    assert_eq!(status["state"], "up", "POP A's BFD session: {status}");
    assert_eq!(status["detection_time_ms"], 300.0, "{status}");
    assert_eq!(status["tx_interval_ms"], 100.0, "{status}");

    // Ten deaths and returns.
    let mut took = Vec::new();
    for i in 0..10 {
        let since = Instant::now();
        popa_links(t, false)?;
        took.push(time_withdraw(router, since, Duration::from_secs(10))?);
        if i == 0 {
            // New connections go to POP B once the router has moved.
            t.wait_route("POP A dead", Duration::from_secs(2), |c| c == Some('b'))?;
            assert_eq!(t.echo_both()?, 'b');
        }
        popa_links(t, true)?;
        wait_popa(router, true, Duration::from_secs(30))?;
    }
    let mut sorted = took.clone();
    sorted.sort();
    let (p50, max) = (percentile(&sorted, 0.5), percentile(&sorted, 1.0));
    println!(
        "bfd: host death -> the router withdrew POP A (BFD 100 ms x 3) p50 {} ms, max {} ms over {} tries: {:?}",
        p50.as_millis(),
        max.as_millis(),
        took.len(),
        took.iter().map(Duration::as_millis).collect::<Vec<_>>()
    );
    assert!(
        max < Duration::from_secs(1),
        "expected every withdraw within 1 s with BFD 100 ms x 3, saw {took:?}"
    );
    let status = bfd_status(t)?;
    assert!(
        status["down_transitions"].as_u64() >= Some(10),
        "the agent saw each death from its side too: {status}"
    );
    // ... and closed its BGP session on it, as on hold timer expiry.
    let log = t.agents[0].as_ref().ok_or("no agent")?.output_so_far();
    assert!(
        log.contains("sent BFD session down (NOTIFICATION 6/10)"),
        "expected the agent to close its BGP session when BFD fell:\n{log}"
    );

    // A hung agent: its BFD session stops with it, so the router withdraws the POP.
    let agent = t.agents[0].as_ref().ok_or("no agent")?;
    let since = Instant::now();
    agent.signal(libc::SIGSTOP)?;
    let hung = time_withdraw(router, since, Duration::from_secs(10));
    agent.signal(libc::SIGCONT)?;
    let hung = hung?;
    println!(
        "bfd: SIGSTOP -> the router withdrew POP A after {} ms (BFD runs in the agent: a hung agent is withdrawn)",
        hung.as_millis()
    );
    assert!(
        hung < Duration::from_secs(1),
        "SIGSTOP withdraw took {hung:?}"
    );
    let back = wait_popa(router, true, Duration::from_secs(30))?;
    println!("bfd: SIGCONT -> POP A back in {} ms", back.as_millis());

    // The same death without BFD: the hold time (3 s) decides.
    let agent = t.agents[0].take().ok_or("no agent")?;
    agent.signal(libc::SIGTERM)?;
    agent.wait_exit(Duration::from_secs(10))?;
    // The router's BFD session with the stopped agent lasts its detection time (300 ms); a new
    // agent whose session came up within it lost that session when BFD went down (seen once,
    // with the agent connected 282 ms after the stop).
    let start = Instant::now();
    while router.bfd_up() {
        if start.elapsed() > Duration::from_secs(5) {
            return Err("the router's BFD session outlived the stopped agent by 5 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    t.start_agent_with('a', &pop_a(false))?;
    wait_popa(router, false, Duration::from_secs(30))?;
    // Keepalives at hold / 3: let a few pass so the measure starts from a steady session.
    std::thread::sleep(Duration::from_secs(2));
    let since = Instant::now();
    popa_links(t, false)?;
    let hold = time_withdraw(router, since, Duration::from_secs(10))?;
    println!(
        "bfd: host death without BFD -> the router withdrew POP A after {} ms (hold time 3 s)",
        hold.as_millis()
    );
    assert!(
        hold > max,
        "without BFD ({hold:?}) expected slower than with it ({max:?})"
    );
    t.wait_route("POP A dead", Duration::from_secs(2), |c| c == Some('b'))?;
    assert_eq!(t.echo_both()?, 'b');
    popa_links(t, true)?;
    Ok(())
}

/// What BIRD does with a killed agent whose sessions have both graceful restart and BFD: BIRD
/// ignores the C bit, so the BFD session timing out resets the BGP session it was keeping for
/// the restart, and the routes go. (FRR with `bfd check-control-plane-failure` keeps them:
/// `frr_lab`.)
fn bird_flushes_a_killed_pop(t: &mut Bgp, bird: &Bird) -> TestResult {
    let agent = t.agents[0].take().ok_or("no agent")?;
    agent.signal(libc::SIGTERM)?;
    agent.wait_exit(Duration::from_secs(10))?;
    t.start_agent_with('a', &pop_a(true))?;
    wait_popa(bird, true, Duration::from_secs(30))?;
    let agent = t.agents[0].take().ok_or("no agent")?;
    let since = Instant::now();
    agent.signal(libc::SIGKILL)?;
    let gone = time_withdraw(bird, since, Duration::from_secs(5))?;
    println!(
        "bfd: SIGKILL with graceful restart and BFD -> BIRD flushed POP A's kept paths after {} ms (BFD down; BIRD ignores the C bit)",
        gone.as_millis()
    );
    let log = std::fs::read_to_string(&t.bird_log)?;
    assert!(
        log.contains("Neighbor graceful restart detected") && log.contains("BFD session down"),
        "expected BIRD to start a graceful restart, then take BFD down"
    );
    Ok(())
}

/// POP A's BFD session in `edge-agent status --output json`.
fn bfd_status(t: &Bgp) -> Result<serde_json::Value, Error> {
    Ok(agent_bgp(t)?["sessions"][0]["bfd"].clone())
}

/// POP A's `agent.bgp` in `edge-agent status --output json`, once its status file is fresh.
fn agent_bgp(t: &Bgp) -> Result<serde_json::Value, Error> {
    // Written every second.
    std::thread::sleep(Duration::from_millis(1100));
    let out = t.cli('a', &["status", "--output", "json"])?;
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok(doc["agent"]["bgp"].clone())
}

#[test]
fn malformed_bfd_packets_are_counted_and_change_nothing() -> TestResult {
    with_bird(topology_with("bfdjunk", true), bird_config, malformed)
}

fn malformed(t: &mut Bgp) -> TestResult {
    t.bridge_switch()?;
    t.start_backend('a')?;
    t.start_agent_with('a', &pop_a(true))?;
    let bird = Bird {
        socket: t.socket.clone(),
        log: t.bird_log.clone(),
    };
    wait_popa(&bird, true, Duration::from_secs(30))?;
    let before = agent_bgp(t)?;
    let session = &before["sessions"][0];
    assert_eq!(session["state"], "Established", "{session}");
    let disc = session["bfd"]["local_discriminator"]
        .as_u64()
        .ok_or("no discriminator")?;
    // From the router's namespace (the peer's own address: only the packets' faults differ).
    let flood = t.lab.ns("router").spawn(
        "bfd-flood",
        &[
            env!("CARGO_BIN_EXE_bfd-flood"),
            "--target",
            "10.0.10.2:3784",
            "--count",
            "100000",
            "--pps",
            "20000",
            "--avoid-disc",
            &disc.to_string(),
        ],
        &[],
    )?;
    let status = flood.wait_exit(Duration::from_secs(60))?;
    let report = flood.output_so_far();
    assert!(status.success(), "bfd-flood failed: {report}");
    println!("bfd: flood {}", report.trim());
    let agent = t.agents[0].as_ref().ok_or("no agent")?;
    assert!(agent.is_running(), "the agent died under the flood");
    // The counters reach the status file through the announce task's report and the status
    // writer, each once a second: read until two readings agree.
    let mut after = agent_bgp(t)?;
    for _ in 0..5 {
        let again = agent_bgp(t)?;
        if again["bfd_dropped"] == after["bfd_dropped"] {
            break;
        }
        after = again;
    }
    let dropped = &after["bfd_dropped"];
    let counted: u64 = [
        "version",
        "length",
        "detect_mult",
        "ttl",
        "unknown_discriminator",
    ]
    .iter()
    .map(|k| dropped[*k].as_u64().unwrap_or(0) - before["bfd_dropped"][*k].as_u64().unwrap_or(0))
    .sum();
    let overflow = dropped["socket_overflow"].as_u64().unwrap_or(0)
        - before["bfd_dropped"]["socket_overflow"]
            .as_u64()
            .unwrap_or(0);
    println!(
        "bfd: the agent counted {counted} of 100000 malformed packets by reason, and {overflow} dropped by its socket's buffer before reading: {dropped}"
    );
    // Every packet is accounted for: read and counted by reason, or counted as overflowed (which
    // may also hold some of the router's valid packets).
    assert!(
        counted <= 100_000 && counted + overflow >= 100_000,
        "counted {counted} + overflowed {overflow} of 100,000: {dropped}"
    );
    for k in [
        "version",
        "length",
        "detect_mult",
        "ttl",
        "unknown_discriminator",
    ] {
        assert!(
            dropped[k].as_u64() >= Some(15_000),
            "expected about 20,000 packets dropped as {k}, saw {dropped}"
        );
    }
    let (b, a) = (&before["sessions"][0], &after["sessions"][0]);
    assert_eq!(a["state"], "Established", "{a}");
    assert_eq!(
        a["established_count"], b["established_count"],
        "the BGP session was reset: {a}"
    );
    assert_eq!(a["bfd"]["state"], "up", "{a}");
    assert_eq!(
        a["bfd"]["down_transitions"], b["bfd"]["down_transitions"],
        "the BFD session fell during the flood: {a}"
    );
    assert!(
        t.birdc(&["show", "protocols", "popa"])?
            .contains("Established"),
        "BIRD's session with POP A"
    );
    // /metrics shows the same counts.
    let metrics = t
        .lab
        .ns("popa")
        .exec_ok(&["curl", "-s", "http://127.0.0.1:9469/metrics"])?;
    assert!(
        metrics
            .stdout
            .contains("edgeproxy_bfd_dropped_total{reason=\"detect_mult\"}")
            && metrics
                .stdout
                .contains("edgeproxy_bfd_session_up{peer=\"10.0.10.1\"} 1")
            && metrics
                .stdout
                .contains("edgeproxy_bfd_detection_time_seconds{peer=\"10.0.10.1\"} 0.3"),
        "expected BFD families in /metrics:\n{}",
        metrics
            .stdout
            .lines()
            .filter(|l| l.contains("bfd"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    Ok(())
}
