//! Health checks steering the data plane in a POP lab: each check kind takes its backend out
//! and brings it back; a SYN-dropping backend is caught sooner by the passive signal than by
//! the active fall count; a slow backend gets a smaller share before any check fails. The
//! times measured are printed (run with `--nocapture` to see them).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use edge_agent::{health::CheckSpec, model::BackendAddr};
use edge_tests::{
    agent_config::{Health, Passive},
    bpffs_pin_dir,
    pop_lab::{backend_addr, start_agent, state_agent_config, topology, BACKEND_PORT, VIP4},
    Lab, LabProcess,
};

use super::common::{
    agent_bin, churn, echo_backends, kernel_backend, lab_backend, tear_down, wait_eligible,
    web_state, TestResult,
};

type Error = Box<dyn std::error::Error>;

/// Writes a state database with one service on VIP4:7 and a backend per entry of `checks`
/// (`be<n>`, its check as a JSON column, "" for the service's default).
fn write_state(lab: &Lab, checks: &[&str]) -> Result<PathBuf, Error> {
    let (state, db) = web_state(lab, VIP4)?;
    for (i, check) in checks.iter().enumerate() {
        let n = i + 1;
        let mut backend = lab_backend(
            &format!("be{n}"),
            "web",
            "eu",
            "DE",
            BackendAddr::Ip(backend_addr(n).parse()?),
        )?;
        backend.check = CheckSpec::parse_column(check)?;
        state.upsert_backend(&backend)?;
    }
    Ok(db)
}

fn config(db: &Path, health: Health) -> Result<String, Error> {
    Ok(state_agent_config(db)
        .pop_id("pop1")
        .affinity_ttl_secs(0)
        .health(health)
        .to_toml()?)
}

/// `edge-agent backends --output json`: the operator's view, health rows included.
fn backend_report(lab: &Lab, n: usize) -> Result<serde_json::Value, Error> {
    let out = Command::new(agent_bin())
        .arg("--bpffs-root")
        .arg(bpffs_pin_dir(lab.ns("pop").name()))
        .arg("--config")
        .arg(lab.log_dir().join("agent.toml"))
        .args(["backends", "--output", "json"])
        .output()?;
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&out.stderr)))?;
    doc.as_array()
        .and_then(|rows| rows.iter().find(|r| r["id"] == format!("be{n}")))
        .cloned()
        .ok_or_else(|| format!("no be{n} in {doc}").into())
}

fn spawn_churn(lab: &Lab, per_sec: u32, secs: u32) -> Result<LabProcess, Error> {
    Ok(lab.ns("client").spawn(
        "tcp-churn",
        &[
            env!("CARGO_BIN_EXE_tcp-churn"),
            &format!("{VIP4}:7"),
            &per_sec.to_string(),
            &secs.to_string(),
        ],
        &[],
    )?)
}

fn health_server(lab: &Lab, n: usize, flags: &[&str]) -> Result<LabProcess, Error> {
    let state = lab.log_dir().join(format!("be{n}.health"));
    let state = state.to_string_lossy();
    let mut argv = vec![env!("CARGO_BIN_EXE_health-server"), "--state", &state];
    argv.extend_from_slice(flags);
    let server = lab
        .ns(&format!("be{n}"))
        .spawn("health-server", &argv, &[])?;
    server.wait_for_output("health-server ready", Duration::from_secs(10))?;
    Ok(server)
}

/// Makes backend `n` sick with `sicken`, waits for it to leave, heals it, waits for it to come
/// back; checks the reason the operator sees. Returns the time out.
fn out_and_back(
    lab: &Lab,
    n: usize,
    sicken: &dyn Fn() -> Result<(), Error>,
    heal: &dyn Fn() -> Result<(), Error>,
    reason: &str,
) -> Result<Duration, Error> {
    sicken()?;
    let out = wait_eligible(lab, n, false, Duration::from_secs(5))?;
    // The kernel is written as soon as health decides; the running agent's state file, which
    // `backends` reads, follows on its next write (each second).
    let deadline = Instant::now() + Duration::from_secs(3);
    let report = loop {
        let report = backend_report(lab, n)?;
        if report["health"] == "down" || Instant::now() > deadline {
            break report;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(report["health"], "down", "{report}");
    let why = report["health_reason"].as_str().unwrap_or_default();
    assert!(
        why.contains(reason),
        "be{n}: {why:?} should mention {reason:?}"
    );
    heal()?;
    wait_eligible(lab, n, true, Duration::from_secs(5))?;
    Ok(out)
}

#[test]
fn each_check_kind_takes_its_backend_out_and_brings_it_back() -> TestResult {
    let lab = topology("health", 4).up()?;
    let mut servers = echo_backends(&lab, 4)?;
    let _http = health_server(&lab, 2, &["--http", "[::]:8081"])?;
    let _grpc = health_server(&lab, 3, &["--grpc", "[::]:50051"])?;
    let flag = lab.log_dir().join("be4-down");
    let db = write_state(
        &lab,
        &[
            "",
            r#"{"type":"http","path":"/health","port":8081}"#,
            r#"{"type":"grpc","port":50051}"#,
            r#"{"type":"command","name":"flag"}"#,
        ],
    )?;
    let health = Health {
        passive: Some(Passive {
            enabled: Some(false),
            ..Passive::default()
        }),
        commands: BTreeMap::from([(
            "flag".to_owned(),
            vec![
                "/bin/sh".to_owned(),
                "-c".to_owned(),
                format!("test ! -e {}", flag.display()),
            ],
        )]),
        ..Health::profile("fast")
    };
    let agent = start_agent(&lab, &agent_bin(), &config(&db, health)?, &["--reset"])?;
    for n in 1..=4 {
        wait_eligible(&lab, n, true, Duration::from_secs(5))?;
    }
    // Every check has passed at least once: the rows say up.
    std::thread::sleep(Duration::from_millis(600));
    for n in 1..=4 {
        let r = backend_report(&lab, n)?;
        assert_eq!(r["health"], "up", "be{n}: {r}");
        assert!(r["rtt_ms"].as_f64().is_some(), "be{n} has an RTT: {r}");
    }

    // The fast profile: 250 ms interval, fall 3. The server dies: out within fall x interval
    // plus one interval (1 s), plus this loop's polling and the scheduling of a 2-core machine
    // running other labs beside this one (the default profile would take 3.5 s and more).
    let killed = Instant::now();
    servers[0].kill()?;
    let out = wait_eligible(&lab, 1, false, Duration::from_secs(5))?;
    println!(
        "health: killed backend out of new flows after {} ms (fast profile, bound 1000 ms)",
        out.as_millis()
    );
    assert!(out <= Duration::from_millis(2000), "{out:?}");
    let (_, before) = kernel_backend(&lab, 1)?;
    let (ok, failed) = churn(&lab, 50, 1)?;
    assert_eq!(
        (ok, failed),
        (50, 0),
        "the other backends take every new client"
    );
    assert_eq!(
        kernel_backend(&lab, 1)?.1,
        before,
        "no new flow went to the dead backend"
    );
    let report = backend_report(&lab, 1)?;
    assert!(
        report["health_reason"]
            .as_str()
            .is_some_and(|r| r.contains("refused")),
        "{report}"
    );

    // Back after `rise` (2) passing checks, and taking flows again.
    servers[0] = lab.ns("be1").spawn(
        "echo-server",
        &[
            env!("CARGO_BIN_EXE_echo-server"),
            &format!("[::]:{BACKEND_PORT}"),
        ],
        &[],
    )?;
    servers[0].wait_for_output("echo-server ready", Duration::from_secs(10))?;
    let back = wait_eligible(&lab, 1, true, Duration::from_secs(5))?;
    println!(
        "health: restarted backend back after {} ms (rise 2 x 250 ms)",
        back.as_millis()
    );
    assert!(
        back >= Duration::from_millis(200),
        "two checks, not one: {back:?}"
    );
    // It returns degraded (its failed checks are still in the window): a quarter of a healthy
    // backend's weight, about 1 flow in 13 here. Fifty connections missed it about once in 55
    // runs (seen in a full test run); two hundred, about once in ten million.
    let (ok, _) = churn(&lab, 200, 1)?;
    assert_eq!(ok, 200);
    assert!(
        kernel_backend(&lab, 1)?.1 > before,
        "be1 takes new flows again"
    );
    let _ = killed;

    let write = |n: usize, what: &'static str| {
        let path = lab.log_dir().join(format!("be{n}.health"));
        move || std::fs::write(&path, what).map_err(Error::from)
    };
    let t = out_and_back(
        &lab,
        2,
        &write(2, "failing"),
        &write(2, "serving"),
        "answered 500",
    )?;
    println!("health: HTTP 500 out after {} ms", t.as_millis());
    let t = out_and_back(
        &lab,
        3,
        &write(3, "failing"),
        &write(3, "serving"),
        "NOT_SERVING",
    )?;
    println!("health: gRPC NOT_SERVING out after {} ms", t.as_millis());
    let touch = || std::fs::write(&flag, "").map_err(Error::from);
    let rm = || std::fs::remove_file(&flag).map_err(Error::from);
    let t = out_and_back(&lab, 4, &touch, &rm, "exited with")?;
    println!("health: command exiting 1 out after {} ms", t.as_millis());

    let log = agent.output_so_far();
    for n in 1..=4 {
        assert_eq!(
            log.matches(&format!("backend=be{n} from=degraded to=down"))
                .count(),
            1,
            "be{n}'s transition is logged once: {log}"
        );
    }
    drop(agent);
    drop(servers);
    tear_down(lab);
    Ok(())
}

/// Drops SYNs to the echo port in backend 1's namespace: it still answers pings and its
/// address, but every new connection hangs.
fn drop_syns(lab: &Lab, on: bool) -> Result<(), Error> {
    let ns = lab.ns("be1");
    if on {
        ns.exec_ok(&["nft", "add", "table", "inet", "edge_test"])?;
        ns.exec_ok(&[
            "nft",
            "add chain inet edge_test input { type filter hook input priority 0 ; }",
        ])?;
        ns.exec_ok(&[
            "nft",
            &format!("add rule inet edge_test input tcp dport {BACKEND_PORT} tcp flags & (syn | ack) == syn drop"),
        ])?;
    } else {
        ns.exec_ok(&["nft", "delete", "table", "inet", "edge_test"])?;
    }
    Ok(())
}

/// Time from the SYN drop to the backend leaving, with `passive` on or off, under a stream of
/// new clients.
fn syn_drop_detection(lab: &Lab, db: &Path, passive: bool) -> Result<Duration, Error> {
    let health = Health {
        fall: Some(3),
        rise: Some(1),
        passive: Some(Passive {
            enabled: Some(passive),
            interval_ms: Some(50),
            syn_deadline_ms: Some(300),
        }),
        ..Health::every(1000, 500)
    };
    let agent = start_agent(lab, &agent_bin(), &config(db, health)?, &[])?;
    wait_eligible(lab, 1, true, Duration::from_secs(10))?;
    let load = spawn_churn(lab, 40, 8)?;
    std::thread::sleep(Duration::from_millis(500));
    drop_syns(lab, true)?;
    let out = wait_eligible(lab, 1, false, Duration::from_secs(6))?;
    drop_syns(lab, false)?;
    let _ = load.wait_exit(Duration::from_secs(15))?;
    wait_eligible(lab, 1, true, Duration::from_secs(5))?;
    if passive {
        assert!(
            agent.output_so_far().contains("backend suspect (passive)"),
            "{}",
            agent.output_so_far()
        );
    }
    agent.signal(libc::SIGTERM)?;
    agent.wait_exit(Duration::from_secs(10))?;
    Ok(out)
}

#[test]
fn a_syn_dropping_backend_is_caught_sooner_by_the_passive_signal() -> TestResult {
    let lab = topology("passive", 2).up()?;
    let _servers = echo_backends(&lab, 2)?;
    let db = write_state(&lab, &["", ""])?;
    // The agent stops between the runs; the second adopts the pinned data plane.
    let passive = syn_drop_detection(&lab, &db, true)?;
    let active = syn_drop_detection(&lab, &db, false)?;
    println!(
        "health: SYN-dropping backend out after {} ms with passive signals, {} ms with active checks alone (interval 1 s, fall 3)",
        passive.as_millis(),
        active.as_millis()
    );
    assert!(passive < active, "passive {passive:?} vs active {active:?}");
    tear_down(lab);
    Ok(())
}

#[test]
fn a_slow_backend_gets_a_smaller_share_before_any_check_fails() -> TestResult {
    let lab = topology("slow", 2).up()?;
    let _servers = echo_backends(&lab, 2)?;
    // 100 ms more to be2's every packet with netem where the kernel has it; this machine's
    // kernel has no sch_netem, so there be2's health endpoint answers 100 ms late instead: the
    // checks measure the same slowness either way. (100 ms, not less: on a loaded 2-core
    // machine the fast backend's checks take a few ms too, and weights follow the ratio.)
    let netem = lab.ns("be2").exec(&[
        "tc", "qdisc", "add", "dev", "eth0", "root", "netem", "delay", "100ms",
    ])?;
    let checks = if netem.status.success() {
        println!("health: be2 slowed by netem");
        ["", ""]
    } else {
        println!(
            "health: no netem in this kernel ({}); be2's HTTP health endpoint answers 100 ms late",
            netem.stderr.trim()
        );
        [r#"{"type":"http","port":8081}"#; 2]
    };
    let _fast = health_server(&lab, 1, &["--http", "[::]:8081"])?;
    let _slow = health_server(&lab, 2, &["--http", "[::]:8081", "--delay-ms", "100"])?;
    let db = write_state(&lab, &checks)?;
    let health = Health::every(500, 500);
    let agent = start_agent(&lab, &agent_bin(), &config(&db, health)?, &["--reset"])?;
    for n in 1..=2 {
        wait_eligible(&lab, n, true, Duration::from_secs(5))?;
    }
    // A few checks: the smoothed RTTs settle, and the weights follow.
    std::thread::sleep(Duration::from_millis(2500));
    let before = [kernel_backend(&lab, 1)?.1, kernel_backend(&lab, 2)?.1];
    let (ok, failed) = churn(&lab, 100, 3)?;
    assert_eq!((ok, failed), (300, 0));
    let fast = kernel_backend(&lab, 1)?.1 - before[0];
    let slow = kernel_backend(&lab, 2)?.1 - before[1];
    println!("health: new flows with 100 ms added to one backend: fast {fast}, slow {slow}");
    assert!(
        slow * 3 < fast,
        "the slow backend gets a smaller share: fast {fast}, slow {slow}"
    );
    assert!(slow > 0, "but not none: it has not failed");
    for n in 1..=2 {
        let r = backend_report(&lab, n)?;
        assert_eq!(r["health"], "up", "no check failed: {r}");
    }
    let slow_rtt = backend_report(&lab, 2)?["rtt_ms"].as_f64().unwrap_or(0.0);
    assert!(
        slow_rtt >= 100.0,
        "the slow backend's RTT shows: {slow_rtt}"
    );
    drop(agent);
    tear_down(lab);
    Ok(())
}
