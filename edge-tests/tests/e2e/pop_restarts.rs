//! Restarts and reloads of a realistic POP (`realistic_pop`) under load lose nothing: ten agent
//! restarts in a row, SIGTERM and SIGKILL in turn, `run` without `--reset`, while 200 long-lived
//! connections are held and a new client arrives every 10 ms from ten countries: no reset, no
//! failed connect, every client on the backend its tier picks. The same with a corrupt country
//! database put in place before each restart, and across a SIGHUP to a database with another
//! country list. A first start on a corrupt database refuses to run.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use edge_tests::pop_lab::{backend_addr, VIP4, VIP6};

use super::{
    common::{agent_bin, agent_json, summary, TestResult},
    realistic_pop::{
        assert_serving, check_churn, landings, write_database, MaxServices, RealisticPop, BACKENDS,
        CLIENTS,
    },
};

const RESTARTS: usize = 10;

/// The `geo` part of the running agent's status, once it has written one.
fn geo_status(pins: &std::path::Path) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let doc = agent_json(pins, &["status"])?;
        if doc["agent_running"] == true && !doc["agent"]["geo"].is_null() {
            return Ok(doc["agent"]["geo"].clone());
        }
        if Instant::now() > deadline {
            return Err(format!("no agent status with a geo part: {doc}").into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Restarts the agent `RESTARTS` times under load; `before_each` runs before each restart.
/// The router is asked for the POP's routes every 100 ms throughout: they must never be gone.
fn restarts_lose_nothing(
    label: &str,
    max_services: MaxServices,
    before_each: impl Fn(&RealisticPop) -> TestResult,
) -> TestResult {
    let pop = RealisticPop::up(label, max_services)?;
    let mut agent = pop.start(&["--reset"])?;
    let first = agent_json(&pop.pins, &["status"])?;
    assert_serving(&pop.pins)?;
    pop.wait_routes()?;
    let go = pop.lab.log_dir().join("go");
    let held = pop.hold(&go)?;
    let churn = pop.churn(&go)?;
    std::thread::sleep(Duration::from_millis(500));
    let stop = AtomicBool::new(false);
    let (samples, downtimes) = std::thread::scope(|s| -> Result<_, Box<dyn std::error::Error>> {
        let poller = s.spawn(|| {
            // (both VIPs routed to the POP, stale)
            let mut samples: Vec<(bool, bool)> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let v4 = pop.route(VIP4).unwrap_or_default();
                let v6 = pop.route(VIP6).unwrap_or_default();
                samples.push((
                    v4.contains("[pop") && v6.contains("[pop"),
                    v4.contains("stale") || v6.contains("stale"),
                ));
                std::thread::sleep(Duration::from_millis(100));
            }
            samples
        });
        let restarted = restart_n_times(&pop, &mut agent, &before_each);
        stop.store(true, Ordering::Relaxed);
        let samples = poller.join().map_err(|_| "the route poller panicked")?;
        Ok((samples, restarted?))
    })?;
    let missing = samples.iter().filter(|(both, _)| !both).count();
    assert_eq!(
        missing,
        0,
        "{label}: the router lost the POP's routes in {missing} of {} samples",
        samples.len()
    );
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(&go, b"")?;
    let churned = summary(&churn, "geo-churn")?;
    let connections = check_churn(
        &churned,
        &format!("{label}: new clients across {RESTARTS} restarts"),
    )?;
    let held = summary(&held, "echo-load")?;
    assert_eq!(
        held["rechecked"], 200,
        "{label}: the 200 held connections after {RESTARTS} restarts: {held}"
    );
    let last = agent_json(&pop.pins, &["status"])?;
    assert_eq!(
        last["drops"]["no_flow"], first["drops"]["no_flow"],
        "{label}: a packet missed its flow: {}",
        last["drops"]
    );
    let stale = samples.iter().filter(|(_, stale)| *stale).count();
    eprintln!(
        "{label}: {connections} new connections and 200 held, {RESTARTS} restarts (agent down to ready, ms: {downtimes:?}), every client on its tier's backend: {:?}; the router had both VIPs in all {} samples ({stale} stale)",
        landings(&churned),
        samples.len()
    );
    drop(agent);
    pop.tear_down();
    Ok(())
}

/// SIGTERM and SIGKILL in turn, `before_each` first: the time from each signal to the new
/// agent's readiness.
fn restart_n_times(
    pop: &RealisticPop,
    agent: &mut edge_tests::LabProcess,
    before_each: &impl Fn(&RealisticPop) -> TestResult,
) -> Result<Vec<u128>, Box<dyn std::error::Error>> {
    let mut downtimes = Vec::new();
    for n in 0..RESTARTS {
        before_each(pop)?;
        let started = Instant::now();
        if n % 2 == 0 {
            agent.signal(libc::SIGTERM)?;
        } else {
            agent.kill()?;
        }
        agent.wait_exit(Duration::from_secs(10))?;
        *agent = pop.start(&[])?;
        downtimes.push(started.elapsed().as_millis());
        assert_serving(&pop.pins)?;
        std::thread::sleep(Duration::from_millis(300));
    }
    Ok(downtimes)
}

#[test]
fn ten_restarts_of_a_realistic_pop_lose_nothing() -> TestResult {
    restarts_lose_nothing("restarts", MaxServices::Default, |_| Ok(()))
}

#[test]
fn ten_restarts_with_a_tight_table_budget_lose_nothing() -> TestResult {
    restarts_lose_nothing("restarts-tight", MaxServices::Tight, |_| Ok(()))
}

/// Before each restart the database file is replaced by a corrupt one: the restarted agent keeps
/// the classification the pinned tries hold, says so, and steers as before.
#[test]
fn restarts_onto_a_corrupt_geo_file_keep_the_pinned_classification() -> TestResult {
    restarts_lose_nothing("restarts-corrupt", MaxServices::Default, |pop| {
        std::fs::write(&pop.geo, b"not a country database")?;
        Ok(())
    })?;
    Ok(())
}

/// What `status` says after a restart onto a corrupt file: the pinned classification is in force
/// and the file was refused; `backends` answers from what the agent holds.
#[test]
fn status_says_which_geo_database_is_in_force() -> TestResult {
    let pop = RealisticPop::up("geo-status", MaxServices::Default)?;
    let agent = pop.start(&["--reset"])?;
    let geo = &geo_status(&pop.pins)?;
    assert_eq!(geo["source"], "file", "{geo}");
    assert_eq!(geo["networks"], 100_020, "{geo}");
    assert_eq!(geo["countries"], 56, "{geo}");
    assert_eq!(geo["database_type"], "edgeProxy-Realistic-Country", "{geo}");
    let before = agent_json(&pop.pins, &["backends"])?;
    explain_matches_a_real_connection(&pop)?;

    agent.signal(libc::SIGTERM)?;
    agent.wait_exit(Duration::from_secs(10))?;
    std::fs::write(&pop.geo, b"garbage")?;
    let agent = pop.start(&[])?;
    let geo = &geo_status(&pop.pins)?;
    assert_eq!(geo["source"], "pinned", "{geo}");
    assert_eq!(geo["networks"], 100_020, "{geo}");
    assert_eq!(geo["countries"], 56, "{geo}");
    let refused = geo["refused"]["error"].as_str().unwrap_or_default();
    assert!(
        geo["refused"]["path"] == pop.geo.display().to_string() && !refused.is_empty(),
        "the refused file and why: {geo}"
    );
    assert!(
        agent
            .output_so_far()
            .contains("the classification the previous agent left pinned stays in force"),
        "the log says what is in force:\n{}",
        agent.output_so_far()
    );
    let scrape = pop
        .lab
        .ns("pop")
        .exec_ok(&["curl", "-sf", "http://127.0.0.1:9469/metrics"])?
        .stdout;
    for needle in [
        "edgeproxy_geo_database_info{database_type=\"\",path=\"\",source=\"pinned\"} 1",
        "edgeproxy_geo_networks 100020",
        "edgeproxy_geo_countries 56",
        "edgeproxy_geo_refused 1",
    ] {
        assert!(
            scrape.contains(needle),
            "/metrics has {needle}: {:?}",
            scrape
                .lines()
                .filter(|l| l.contains("geo"))
                .collect::<Vec<_>>()
        );
    }
    // The CLI reads what the agent holds, not the file.
    let after = agent_json(&pop.pins, &["backends"])?;
    // The tables each backend is in, by the countries that use them (the shares move with the
    // health checks' RTTs).
    let tables = |doc: &serde_json::Value| -> Vec<String> {
        doc.as_array()
            .into_iter()
            .flatten()
            .map(|b| {
                let labels: Vec<&String> = b["shares"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, _)| k)
                    .collect();
                format!("{} {labels:?}", b["id"])
            })
            .collect()
    };
    let (before, after) = (tables(&before), tables(&after));
    assert_eq!(before.len(), 48, "every backend of the six services");
    if before != after {
        let diff: Vec<_> = after
            .iter()
            .filter(|a| !before.contains(a))
            .take(3)
            .collect();
        return Err(format!("the tables' country names changed: {diff:?}").into());
    }
    assert!(
        after.iter().any(|s| s.contains("GB")),
        "country names from the pinned classes: {:?}",
        after.first()
    );
    drop(agent);
    pop.tear_down();
    Ok(())
}

/// `edge-agent explain` answers from the pinned maps: a BR client's table holds only the BR
/// backend, a 6to4 address counts as the IPv4 address it embeds, and for a CL client (its region's
/// two backends) the backend it names for a source port is the one a real connection from that
/// port reaches.
fn explain_matches_a_real_connection(pop: &RealisticPop) -> TestResult {
    let explain = |client: &str, vip: &str, port: Option<&str>| {
        let mut args = vec!["explain", client, "--vip", vip];
        if let Some(port) = port {
            args.extend(["--port", port]);
        }
        agent_json(&pop.pins, &args)
    };
    let name_of = |addr: &str| -> String {
        (1..=BACKENDS.len())
            .find(|n| addr.starts_with(&format!("[{}]", backend_addr(*n))))
            .map_or_else(|| addr.to_owned(), |n| BACKENDS[n - 1].0.to_owned())
    };
    let br = explain("10.0.1.17", "198.18.0.10:80", None)?;
    assert_eq!(br["country"], "BR", "{br}");
    let shares: Vec<String> = br["shares"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, _)| name_of(k))
        .collect();
    assert_eq!(shares, ["br"], "{br}");
    // 2002:0a00:0111::/48 is the 6to4 prefix of 10.0.1.17.
    let tunnelled = explain("2002:a00:111::1", "[2001:db8:ff::10]:80", None)?;
    assert_eq!(
        (
            tunnelled["country"].clone(),
            tunnelled["classified_as"].clone()
        ),
        ("BR".into(), "10.0.1.17".into()),
        "{tunnelled}"
    );
    let cl = explain("10.0.1.145", "198.18.0.10:80", Some("40001"))?;
    assert_eq!(cl["country"], "CL", "{cl}");
    let mut names: Vec<String> = cl["shares"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, _)| name_of(k))
        .collect();
    names.sort();
    assert_eq!(names, ["ar", "br"], "{cl}");
    let picked = name_of(cl["picked"].as_str().ok_or("no pick")?);
    let reached = pop.lab.ns("client").exec_ok(&[
        "sh",
        "-c",
        "echo x | socat -t1 - TCP:198.18.0.10:80,bind=10.0.1.145:40001,connect-timeout=2",
    ])?;
    assert_eq!(
        reached.stdout.lines().next(),
        Some(picked.as_str()),
        "explain said {cl}"
    );
    Ok(())
}

/// A SIGHUP to a database with two more countries (each class of the old one would move under
/// a sorted numbering) under load: no client on a backend neither database picks, no failure.
#[test]
fn a_sighup_to_another_country_list_steers_no_client_astray() -> TestResult {
    let mut pop = RealisticPop::up("geo-hup", MaxServices::Default)?;
    // Without affinity: a client's binding would keep it on its first backend whatever its
    // class says, and hide a misclassification.
    pop.config = std::mem::take(&mut pop.config).affinity_ttl_secs(0);
    let agent = pop.start(&["--reset"])?;
    let go = pop.lab.log_dir().join("go");
    let churn = pop.churn(&go)?;
    std::thread::sleep(Duration::from_millis(500));
    let loaded = |agent: &edge_tests::LabProcess| {
        agent.output_so_far().matches("geo database loaded").count()
    };
    for round in 0..3 {
        // "AA"/"AB" sort before every other country: they would shift every class by two.
        let extra: &[&str] = if round % 2 == 0 { &["AA", "AB"] } else { &[] };
        // Written aside and renamed into place, as an operator's update job does: the agent
        // never reads a file half written.
        let next = pop.lab.log_dir().join("next.mmdb");
        write_database(&next, extra)?;
        std::fs::rename(&next, &pop.geo)?;
        let before = loaded(&agent);
        agent.signal(libc::SIGHUP)?;
        let deadline = Instant::now() + Duration::from_secs(15);
        while loaded(&agent) == before {
            if Instant::now() > deadline {
                return Err(
                    format!("reload {round} not logged:\n{}", agent.output_so_far()).into(),
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    std::fs::write(&go, b"")?;
    let churned = summary(&churn, "geo-churn")?;
    let connections = check_churn(&churned, "new clients across three database switches")?;
    let loads = agent.output_so_far().matches("geo database loaded").count();
    assert!(loads >= 4, "three reloads and the start: {loads}");
    eprintln!(
        "{connections} new connections across 3 database switches, all on their tier's backend"
    );
    drop(agent);
    pop.tear_down();
    Ok(())
}

/// A first start (nothing pinned) on a corrupt database: refused at once, naming the file and
/// the cause.
#[test]
fn a_first_start_on_a_corrupt_geo_file_refuses_to_run() -> TestResult {
    let pop = RealisticPop::up("geo-first", MaxServices::Default)?;
    std::fs::write(&pop.geo, b"not a country database")?;
    let config = pop.lab.log_dir().join("agent.toml");
    std::fs::write(&config, pop.config.to_toml()?)?;
    let started = Instant::now();
    let out = pop.lab.ns("pop").exec(&[
        &agent_bin().to_string_lossy(),
        "--bpffs-root",
        &pop.pins.to_string_lossy(),
        "--config",
        &config.to_string_lossy(),
        "run",
        "--reset",
    ])?;
    let took = started.elapsed();
    assert!(!out.success(), "the agent must not start: {}", out.stderr);
    assert!(
        out.stderr.contains(&pop.geo.display().to_string()) && out.stderr.contains("geo database"),
        "the message names the file and the cause: {}",
        out.stderr
    );
    assert!(took < Duration::from_secs(2), "refused in {took:?}");
    eprintln!(
        "first start on a corrupt database refused in {took:?}: {}",
        out.stderr.trim()
    );
    assert!(CLIENTS.len() > 1);
    pop.tear_down();
    Ok(())
}
