//! The agent's own servers under attack (issue 18): 5,000 slow clients at the registration API
//! (a partial request head, one byte every 2 s, from 40 addresses, each reconnecting whenever
//! the agent lets it go, 1,000 new connections a second in all), a burst of malformed DNS messages over UDP and TCP, and a flood of
//! registration requests (valid, unauthenticated, malformed), all at once, under the file limit
//! the shipped systemd unit sets. Throughout: the API answers a legitimate request within 1 s,
//! `/metrics` answers, the health checks keep running and passing, 100/100 new VIP connections
//! succeed, and the agent's resident memory stays under [`RSS_BOUND_MB`]; after it, the memory
//! goes back to near idle. The malformed DNS messages leave a few log lines and a count of the
//! suppressed ones, not a line each.
//!
//! Measured before the fix (same test, 16384 files): 135 MB at the peak and 138 MB five
//! seconds after, 1,278 hickory warning lines; at systemd's default 1024 files the API and
//! `/metrics` stopped answering ("Too many open files").

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use edge_agent::model::BackendAddr;
use edge_tests::{
    agent_config::{Dns, Health},
    pop_lab::{backend_addr, start_agent_under, state_agent_config, topology, VIP4},
    Lab,
};

use super::common::{agent_bin, churn, echo_backends, lab_backend, tear_down, wait_eligible};

type Error = Box<dyn std::error::Error>;

const TOKEN: &str = "lab-token-0123456789";
/// The POP's public address, where the API, DNS and the attackers meet.
const POP4: &str = "10.0.1.1";
const API_PORT: u16 = 7070;
/// The attackers' source addresses: 10.0.1.100 and the 39 after it.
const ATTACK_SOURCES: u8 = 40;
const SLOW_CLIENTS: u32 = 5000;
const ATTACK_SECS: u64 = 20;
/// Where the registration flood comes from (the legitimate client is the namespace's own
/// 10.0.1.2).
const FLOOD_SOURCE: &str = "10.0.1.4";
/// The agent's resident memory may not exceed this at any sample of the hostile run. The lab's
/// agent is a debug build: about 31 MB idle (25 MB of it the mapped binary), 49 MB at the
/// attack's peak with the servers' caps; 135 MB without them.
const RSS_BOUND_MB: u64 = 80;
/// After the attack, the agent gives its freed memory back (`edge_agent::process::memory`, every 10 s):
/// it must come back within this of its idle size.
const RSS_RETURN_MB: u64 = 10;
/// Malformed DNS messages reach a handful of hickory call sites, each allowed
/// `log_limit::BURST` (5) lines per 10 s; the burst may straddle two windows.
const DNS_LINES_MAX: usize = 50;

/// The health checks' interval and timeout. The timeout outlasts TCP's first SYN retransmission
/// (1 s): the suite runs labs side by side, and they share each CPU's backlog queue
/// (`netdev_max_backlog`), where another lab's burst can drop this lab's SYN. A check lost that
/// way says nothing about the attack (alone, this lab drops nothing there; the whole suite
/// dropped 7,184 packets there on this machine). With checks every 500 ms (the interval caps
/// the timeout) a CI run failed one check of be2.
const CHECK_MS: u64 = 1500;

/// `LimitNOFILE=` of the shipped unit, as `prlimit` takes it (`soft:hard`).
fn unit_nofile() -> Result<String, Error> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/edge-agent.service");
    let unit = std::fs::read_to_string(path)?;
    let value = unit
        .lines()
        .find_map(|l| l.trim().strip_prefix("LimitNOFILE="))
        .ok_or_else(|| format!("{path} sets no LimitNOFILE"))?;
    Ok(if value.contains(':') {
        value.to_owned()
    } else {
        format!("{value}:{value}")
    })
}

/// The agent's resident set in kB, from /proc.
fn rss_kb(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// One HTTP/1.1 request on a new connection (`Connection: close`): status, body, and how long
/// the exchange took, connection included.
fn http(addr: SocketAddr, head: &str) -> Result<(u16, String, Duration), String> {
    let started = Instant::now();
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(format!("{head}\r\nHost: edge\r\nConnection: close\r\n\r\n").as_bytes())
        .map_err(|e| format!("write to {addr}: {e}"))?;
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    let elapsed = started.elapsed();
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status from {addr}: {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body, elapsed))
}

/// The value of `name{labels}` in a scrape (labels as the encoder orders them, by name).
fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    let head = if labels.is_empty() {
        format!("{name} ")
    } else {
        format!("{name}{{{labels}}} ")
    };
    text.lines()
        .find_map(|l| l.strip_prefix(&head))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// The sum of every sample of `name` whose labels contain `filter`.
fn sum(text: &str, name: &str, filter: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(filter))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// What the watchers saw during the attack.
#[derive(Default, Debug)]
struct Watch {
    rss_max_kb: u64,
    rss_samples: u64,
    api_answers: u64,
    api_slowest: Duration,
    api_failures: Vec<String>,
    scrapes: Vec<String>,
    scrape_failures: Vec<String>,
}

/// The state: `echo4` on the VIP with be1 and be2, and `flood`, the service the flood
/// registers into (no client uses its VIP).
fn state_db(lab: &Lab) -> Result<std::path::PathBuf, Error> {
    let db = lab.log_dir().join("routing.db");
    let state = edge_agent::state::SqliteState::open(&db)?;
    for (id, vip) in [("echo4", VIP4), ("flood", "198.18.0.77")] {
        state.upsert_service(&edge_agent::model::Service {
            id: id.into(),
            vip: vip.parse::<std::net::IpAddr>()?,
            port: 7,
            check: None,
        })?;
    }
    for n in 1..=2 {
        state.upsert_backend(&lab_backend(
            &format!("be{n}"),
            "echo4",
            "us",
            "US",
            BackendAddr::Ip(backend_addr(n).parse()?),
        )?)?;
    }
    Ok(db)
}

#[test]
fn slow_clients_junk_dns_and_a_registration_flood_starve_nothing() -> Result<(), Error> {
    let mut topo = topology("hostile", 2);
    for n in 0..ATTACK_SOURCES {
        topo = topo.addr("client", "eth0", &format!("10.0.1.{}/24", 100 + n));
    }
    let lab = topo
        .addr("client", "eth0", &format!("{FLOOD_SOURCE}/24"))
        .up()?;
    let _servers = echo_backends(&lab, 2)?;
    let db = state_db(&lab)?;
    let config = state_agent_config(&db)
        .pop_id("pop1")
        .affinity_ttl_secs(0)
        .register(&[&format!("{POP4}:{API_PORT}")], TOKEN)
        .dns(Dns {
            listen: vec![format!("{POP4}:53")],
            on_overlay: Some(false),
            ..Dns::default()
        })
        .health(Health::every(CHECK_MS, CHECK_MS))
        .to_toml()?;
    let nofile = unit_nofile()?;
    let limit = format!("--nofile={nofile}");
    let agent = start_agent_under(
        &lab,
        &["prlimit", &limit, "--"],
        &agent_bin(),
        &config,
        &["--reset"],
    )?;
    let pid = agent.pid();
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))?;
    assert_eq!(
        comm.trim(),
        "edge-agent",
        "expected the lab process to be the agent itself (prlimit execs it)"
    );
    wait_eligible(&lab, 1, true, Duration::from_secs(10))?;
    wait_eligible(&lab, 2, true, Duration::from_secs(10))?;
    let idle_kb = rss_kb(pid).unwrap_or(0);

    let api: SocketAddr = format!("{POP4}:{API_PORT}").parse()?;
    let metrics: SocketAddr = "127.0.0.1:9469".parse()?;
    let legit = format!("GET /v1/health HTTP/1.1\r\nAuthorization: Bearer {TOKEN}");
    let (status, body, _) = lab.ns("client").run_in_thread(|| http(api, &legit))??;
    assert_eq!(
        (status, body.trim()),
        (200, "ok"),
        "expected the API to answer before the attack"
    );
    let scrape = || {
        lab.ns("pop")
            .run_in_thread(|| http(metrics, "GET /metrics HTTP/1.1"))
    };
    let before = scrape()??.1;

    let hostile = env!("CARGO_BIN_EXE_hostile-client");
    let froms: Vec<String> = (0..ATTACK_SOURCES)
        .flat_map(|n| ["--from".to_owned(), format!("10.0.1.{}", 100 + n)])
        .collect();
    let (target, connections, secs) = (
        api.to_string(),
        SLOW_CLIENTS.to_string(),
        ATTACK_SECS.to_string(),
    );
    let mut argv = vec![
        hostile,
        "slow-http",
        "--target",
        &target,
        "--connections",
        &connections,
        "--interval-ms",
        "2000",
        "--secs",
        &secs,
        "--connects-per-sec",
        "1000",
    ];
    argv.extend(froms.iter().map(String::as_str));
    let attack = lab.ns("client").spawn("slow-http", &argv, &[])?;
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let (watch, churned, dns, flood) = std::thread::scope(|scope| {
        let (stop, lab, legit) = (&stop, &lab, &legit);
        let rss = scope.spawn(move || {
            let (mut max, mut n) = (0, 0);
            while !stop.load(Ordering::Relaxed) {
                if let Some(kb) = rss_kb(pid) {
                    max = kb.max(max);
                    n += 1;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            (max, n)
        });
        let prober = scope.spawn(move || {
            lab.ns("client").run_in_thread(|| {
                let mut w = Watch::default();
                while !stop.load(Ordering::Relaxed) {
                    match http(api, legit) {
                        Ok((200, body, took)) if body.trim() == "ok" => {
                            w.api_answers += 1;
                            w.api_slowest = w.api_slowest.max(took);
                            if took > Duration::from_secs(1) {
                                w.api_failures.push(format!("answered after {took:?}"));
                            }
                        }
                        Ok((status, body, took)) => w
                            .api_failures
                            .push(format!("{status} {body:?} after {took:?}")),
                        Err(e) => w.api_failures.push(e),
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                w
            })
        });
        let scraper = scope.spawn(move || {
            lab.ns("pop").run_in_thread(|| {
                let (mut ok, mut failed) = (Vec::new(), Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    match http(metrics, "GET /metrics HTTP/1.1") {
                        Ok((200, body, _)) => ok.push(body),
                        Ok((status, _, _)) => failed.push(format!("status {status}")),
                        Err(e) => failed.push(e),
                    }
                    std::thread::sleep(Duration::from_millis(1000));
                }
                (ok, failed)
            })
        });
        // Once every attacker is started: the junk DNS, the registration flood, and new
        // clients at the VIP, one after the other.
        let ready = attack.wait_for_output(
            &format!("all {SLOW_CLIENTS} attackers started"),
            Duration::from_secs(20),
        );
        let dns = lab.ns("client").exec(&[
            hostile,
            "dns-junk",
            "--udp",
            &format!("{POP4}:53"),
            "--tcp",
            &format!("{POP4}:53"),
            "--count",
            "3000",
        ]);
        let flood = lab.ns("client").exec(&[
            hostile,
            "http-flood",
            "--target",
            &target,
            "--token",
            TOKEN,
            "--requests",
            "3000",
            "--concurrency",
            "8",
            "--from",
            FLOOD_SOURCE,
        ]);
        let churned = churn(lab, 50, 2).map_err(|e| e.to_string());
        // The rest of the attack.
        let done = attack.wait_exit(Duration::from_secs(ATTACK_SECS + 30));
        stop.store(true, Ordering::Relaxed);
        let (rss_max_kb, rss_samples) = rss.join().unwrap_or((0, 0));
        let mut w = prober
            .join()
            .map_err(|_| "the prober panicked".to_owned())
            .and_then(|r| r.map_err(|e| e.to_string()))
            .unwrap_or_else(|e| Watch {
                api_failures: vec![e],
                ..Watch::default()
            });
        (w.rss_max_kb, w.rss_samples) = (rss_max_kb, rss_samples);
        match scraper.join() {
            Ok(Ok((ok, failed))) => (w.scrapes, w.scrape_failures) = (ok, failed),
            other => w.scrape_failures.push(format!("the scraper: {other:?}")),
        }
        if let Err(e) = ready.and(done.map(drop)) {
            w.api_failures.push(format!("the attack: {e}"));
        }
        (w, churned, dns, flood)
    });
    let elapsed = started.elapsed();
    let after = scrape()??.1;
    // Memory back to near idle: the trimmer runs every 10 s.
    let returned = Instant::now();
    let mut rss_after_kb = rss_kb(pid).unwrap_or(0);
    while rss_after_kb > idle_kb + RSS_RETURN_MB * 1024
        && returned.elapsed() < Duration::from_secs(25)
    {
        std::thread::sleep(Duration::from_millis(200));
        rss_after_kb = rss_kb(pid).unwrap_or(0);
    }
    // The suppressed DNS warnings are reported within a window (10 s).
    let summary = agent.wait_for_output("repeated log lines suppressed", Duration::from_secs(15));
    let log = agent.output_so_far();
    let dns_lines = log
        .lines()
        .filter(|l| l.contains("hickory") && (l.contains("WARN") || l.contains("ERROR")))
        .filter(|l| !l.contains("log_limit"))
        .count();
    let overflows = lab
        .ns("pop")
        .exec(&["nstat", "-az", "TcpExtListenOverflows"])
        .map(|o| o.stdout.lines().last().unwrap_or_default().to_owned());

    println!(
        "hostile: {elapsed:.1?} of attack under LimitNOFILE {nofile}; agent RSS idle {} MB, max {} MB over {} samples (bound {RSS_BOUND_MB} MB), {} MB after {:.1?}",
        idle_kb / 1024,
        watch.rss_max_kb / 1024,
        watch.rss_samples,
        rss_after_kb / 1024,
        returned.elapsed()
    );
    println!(
        "hostile: API answered {} legitimate requests, slowest {:?}, failures {:?}",
        watch.api_answers, watch.api_slowest, watch.api_failures
    );
    println!(
        "hostile: {} scrapes, failures {:?}; VIP connections {churned:?}; accept queue {overflows:?}",
        watch.scrapes.len(),
        watch.scrape_failures
    );
    println!("hostile: slow-http {}", attack.output_so_far().trim());
    let dns = dns?.stdout;
    let flood = flood?.stdout;
    println!("hostile: dns-junk {}", dns.trim());
    println!("hostile: http-flood {}", flood.trim());
    println!("hostile: {dns_lines} hickory warning lines");
    for line in after.lines().filter(|l| {
        [
            "edgeproxy_listener_",
            "edgeproxy_log_",
            "edgeproxy_process_",
        ]
        .iter()
        .any(|p| l.starts_with(p))
    }) {
        println!("hostile: {line}");
    }

    // Everything that had to keep working did.
    assert!(
        watch.api_failures.is_empty() && watch.api_answers >= 20,
        "expected every legitimate API request answered within 1 s, saw {} answered and failures {:?}",
        watch.api_answers,
        watch.api_failures
    );
    assert!(
        watch.scrape_failures.is_empty() && watch.scrapes.len() >= 5,
        "expected /metrics to answer every scrape, saw {} answers and failures {:?}",
        watch.scrapes.len(),
        watch.scrape_failures
    );
    assert_eq!(
        churned,
        Ok((100, 0)),
        "expected 100/100 new VIP connections during the attack"
    );
    assert!(
        flood.contains("\"201\":") && !flood.contains("\"0\":"),
        "expected the flood's valid registrations accepted and every request answered, saw {flood}"
    );
    let first = watch
        .scrapes
        .first()
        .map_or(before.as_str(), String::as_str);
    for n in 1..=2 {
        let backend = format!("backend=\"be{n}\"");
        let checks = |text: &str| sample(text, "edgeproxy_backend_checks_total", &backend);
        let failures =
            |text: &str| sample(text, "edgeproxy_backend_check_failures_total", &backend);
        assert!(
            checks(&after) > checks(first),
            "expected be{n}'s health checks to go on during the attack, saw {:?} then {:?}",
            checks(first),
            checks(&after)
        );
        let said: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(&format!("backend=be{n} ")))
            .collect();
        assert_eq!(
            failures(&after),
            failures(&before),
            "expected no failed health check of be{n} during the attack; the agent said {said:#?}"
        );
        assert_eq!(
            sample(
                &after,
                "edgeproxy_backend_health",
                &format!("{backend},status=\"up\"")
            ),
            Some(1.0),
            "expected be{n} up after the attack"
        );
    }
    assert!(
        !log.contains("Too many open files"),
        "expected no file exhaustion in the agent's log"
    );
    assert!(
        watch.rss_max_kb < RSS_BOUND_MB * 1024,
        "expected the agent's RSS under {RSS_BOUND_MB} MB throughout, saw {} kB",
        watch.rss_max_kb
    );
    assert!(
        rss_after_kb <= idle_kb + RSS_RETURN_MB * 1024,
        "expected the agent's RSS back within {RSS_RETURN_MB} MB of its idle {idle_kb} kB after the attack, saw {rss_after_kb} kB"
    );

    // The limits did the work: the API never held more connections than its cap, and far more
    // slow connections than its cap were turned away.
    let api_label = format!("listener=\"register {api}\"");
    let cap = sample(&after, "edgeproxy_listener_connections_max", &api_label)
        .ok_or_else(|| format!("no connection cap for {api_label} in\n{after}"))?;
    let open_max = watch
        .scrapes
        .iter()
        .filter_map(|s| sample(s, "edgeproxy_listener_connections", &api_label))
        .fold(0.0, f64::max);
    assert!(
        open_max > 0.0 && open_max <= cap,
        "expected the API's open connections within its cap {cap}, saw up to {open_max}"
    );
    let turned_away = sum(&after, "edgeproxy_listener_refused_total", &api_label)
        + sum(&after, "edgeproxy_listener_evicted_total", &api_label)
        + sum(&after, "edgeproxy_listener_timeouts_total", &api_label);
    assert!(
        turned_away > f64::from(SLOW_CLIENTS),
        "expected more than {SLOW_CLIENTS} slow connections refused, evicted or timed out, saw {turned_away}"
    );

    // Malformed DNS: a few lines and a count, not a line each.
    assert!(
        dns_lines <= DNS_LINES_MAX,
        "expected at most {DNS_LINES_MAX} DNS warning lines for 3,000 malformed messages, saw {dns_lines}"
    );
    let counted = sample(&after, "edgeproxy_log_lines_suppressed_total", "").unwrap_or(0.0);
    assert!(
        counted > 0.0 && summary.is_ok(),
        "expected suppressed log lines counted (saw {counted}) and reported (saw {summary:?})"
    );
    drop(agent);
    tear_down(lab);
    Ok(())
}
