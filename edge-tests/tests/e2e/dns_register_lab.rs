//! `.internal` DNS and self-registration in a POP lab: `dig` at the POP's overlay address
//! answers from state; a backend started with the sidecar gets flows within a second, leaves
//! after its heartbeats stop (SIGKILL), and at once on SIGTERM; DNS follows every change. The
//! times measured are printed.

use std::time::{Duration, Instant};

use edge_agent::model::{BackendAddr, Pop};
use edge_tests::{
    pop_lab::{
        backend_addr, start_agent, state_agent_config, topology, BACKEND_PORT, OVERLAY, VIP4,
    },
    Lab, LabProcess,
};

use super::common::{
    agent_bin, churn, echo_backends, kernel_backend, lab_backend, tear_down, wait_eligible,
    web_state, TestResult,
};

type Error = Box<dyn std::error::Error>;

const TOKEN: &str = "lab-token-0123456789";

/// `dig` from backend 2's namespace, at the POP's overlay address; the answer lines.
fn dig(lab: &Lab, args: &[&str]) -> Result<String, Error> {
    let server = format!("@{OVERLAY}");
    let mut argv = vec!["dig", &*server, "+time=1", "+tries=2"];
    argv.extend_from_slice(args);
    Ok(lab.ns("be2").exec_ok(&argv)?.stdout)
}

fn short(lab: &Lab, name: &str, kind: &str) -> Result<Vec<String>, Error> {
    let mut lines: Vec<String> = dig(lab, &["+short", name, kind])?
        .lines()
        .map(str::to_owned)
        .collect();
    lines.sort();
    Ok(lines)
}

fn status(lab: &Lab, name: &str) -> Result<String, Error> {
    let out = dig(lab, &["+noall", "+comments", name, "A"])?;
    out.split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .map(str::to_owned)
        .ok_or_else(|| format!("no status in {out}").into())
}

fn sidecar(lab: &Lab) -> Result<LabProcess, Error> {
    let api = format!("http://[{OVERLAY}]:7070");
    let (addr, port) = (backend_addr(1), BACKEND_PORT.to_string());
    let agent = agent_bin();
    Ok(lab.ns("be1").spawn(
        "sidecar",
        &[
            &agent.to_string_lossy(),
            "register",
            "--api",
            &api,
            "--token",
            TOKEN,
            "--app",
            "web",
            "--id",
            "web-be1",
            "--port",
            &port,
            "--address",
            &addr,
            // The clients' region (unknown country: us), so that it is in their tier.
            "--region",
            "us",
            "--heartbeat-secs",
            "1",
        ],
        &[],
    )?)
}

/// Polls until `done` holds; how long it took.
fn until(
    limit: Duration,
    what: &str,
    done: &dyn Fn() -> Result<bool, Error>,
) -> Result<Duration, Error> {
    let started = Instant::now();
    while !done()? {
        if started.elapsed() > limit {
            return Err(format!("{what}: not within {limit:?}").into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(started.elapsed())
}

#[test]
fn dns_answers_from_state_and_registrations_come_and_go() -> TestResult {
    let lab = topology("dns", 3).up()?;
    let _servers = echo_backends(&lab, 3)?;
    let (state, db) = web_state(&lab, VIP4)?;
    state.upsert_pop(&Pop {
        id: "pop1".into(),
        region: "eu".parse()?,
        overlay_addr: Some(OVERLAY.parse()?),
        public_key: None,
        endpoint: None,
        role: edge_agent::model::HostRole::Pop,
        host_number: 0,
        overlay_ipv4: None,
    })?;
    state.upsert_pop(&Pop {
        id: "host3".into(),
        region: "us".parse()?,
        overlay_addr: Some(backend_addr(3).parse()?),
        public_key: None,
        endpoint: None,
        role: edge_agent::model::HostRole::Host,
        host_number: 0,
        overlay_ipv4: None,
    })?;
    for (n, region, addr) in [
        (2, "us", BackendAddr::Ip(backend_addr(2).parse()?)),
        // Named, not numbered: the agent resolves it from its own state (host3's row).
        (3, "us", BackendAddr::Name("host3.hosts.internal".into())),
    ] {
        state.upsert_backend(&lab_backend(&format!("be{n}"), "web", region, "US", addr)?)?;
    }
    drop(state);
    let config = state_agent_config(&db)
        .pop_id("pop1")
        .affinity_ttl_secs(0)
        .register(&[&format!("[{OVERLAY}]:7070")], TOKEN)
        .to_toml()?;
    let agent = start_agent(&lab, &agent_bin(), &config, &["--reset"])?;
    wait_eligible(&lab, 2, true, Duration::from_secs(5))?;
    wait_eligible(&lab, 3, true, Duration::from_secs(5))?;

    // Names from state.
    let (be2, be3) = (backend_addr(2), backend_addr(3));
    assert_eq!(short(&lab, "us.backends.internal", "AAAA")?, {
        let mut v = vec![be2.clone(), be3.clone()];
        v.sort();
        v
    });
    assert_eq!(short(&lab, "eu.pops.internal", "AAAA")?, [OVERLAY]);
    assert_eq!(
        short(&lab, "be2.instances.internal", "AAAA")?,
        [be2.as_str()]
    );
    assert_eq!(
        short(&lab, "web.us.services.internal", "SRV")?,
        [
            format!("0 1 {BACKEND_PORT} be2.instances.internal."),
            format!("0 1 {BACKEND_PORT} be3.instances.internal.")
        ]
    );
    assert_eq!(
        short(&lab, "regions.web.services.internal", "TXT")?,
        ["\"us\""]
    );
    let tcp = dig(&lab, &["+tcp", "+short", "be2.instances.internal", "AAAA"])?;
    assert_eq!(tcp.trim(), be2, "TCP too");
    assert_eq!(status(&lab, "nobody.backends.internal")?, "NXDOMAIN");
    assert_eq!(status(&lab, "example.com")?, "REFUSED", "not a resolver");

    // The sidecar registers be1: in the kernel and in DNS within a second.
    let started = Instant::now();
    let mut car = sidecar(&lab)?;
    wait_eligible(&lab, 1, true, Duration::from_secs(5))?;
    let in_kernel = started.elapsed();
    until(Duration::from_secs(5), "be1 in DNS", &|| {
        Ok(short(&lab, "web-be1.instances.internal", "AAAA")? == [backend_addr(1)])
    })?;
    let in_dns = started.elapsed();
    println!(
        "register: sidecar start to eligible in the kernel {} ms, in DNS {} ms (the sidecar's own start included)",
        in_kernel.as_millis(),
        in_dns.as_millis()
    );
    assert!(in_kernel < Duration::from_millis(1500), "{in_kernel:?}");
    let before = kernel_backend(&lab, 1)?.1;
    let (ok, failed) = churn(&lab, 60, 1)?;
    assert_eq!((ok, failed), (60, 0));
    assert!(kernel_backend(&lab, 1)?.1 > before, "be1 receives flows");
    assert_eq!(short(&lab, "us.backends.internal", "AAAA")?.len(), 3);

    // SIGKILL: no deregistration; the lease runs out after 3 missed heartbeats (3 s).
    car.kill()?;
    let killed = Instant::now();
    wait_eligible(&lab, 1, false, Duration::from_secs(10))?;
    let expired = killed.elapsed();
    until(Duration::from_secs(3), "be1 out of DNS", &|| {
        Ok(short(&lab, "web-be1.instances.internal", "AAAA")?.is_empty())
    })?;
    println!(
        "register: SIGKILLed sidecar out of the pool after {} ms (3 heartbeats of 1 s)",
        expired.as_millis()
    );
    assert!(
        expired >= Duration::from_millis(1500) && expired < Duration::from_secs(6),
        "{expired:?}"
    );

    // Back, then SIGTERM: deregistered at once.
    car = sidecar(&lab)?;
    car.wait_for_output("registered web-be1", Duration::from_secs(10))?;
    wait_eligible(&lab, 1, true, Duration::from_secs(5))?;
    car.signal(libc::SIGTERM)?;
    let termed = Instant::now();
    wait_eligible(&lab, 1, false, Duration::from_secs(5))?;
    let gone = termed.elapsed();
    println!(
        "register: SIGTERMed sidecar out of the pool after {} ms",
        gone.as_millis()
    );
    assert!(gone < Duration::from_millis(1000), "{gone:?}");
    car.wait_exit(Duration::from_secs(5))?;
    assert!(car.output_so_far().contains("deregistered web-be1"));

    // The API refuses callers without the token, from the lab's side too.
    let curl = lab.ns("be2").exec(&[
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-X",
        "POST",
        &format!("http://[{OVERLAY}]:7070/v1/registrations"),
    ])?;
    assert_eq!(curl.stdout.trim(), "401");

    // The operator sees which state source the running agent uses, and that it is current.
    let out = std::process::Command::new(agent_bin())
        .arg("--bpffs-root")
        .arg(edge_tests::bpffs_pin_dir(lab.ns("pop").name()))
        .args(["status", "--output", "json"])
        .output()?;
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(doc["agent_running"], true, "{doc}");
    let source = doc["agent"]["state"]["source"].as_str().unwrap_or_default();
    assert!(
        source.starts_with("sqlite ") && source.ends_with("routing.db"),
        "{source}"
    );
    assert_eq!(doc["agent"]["state"]["stale_secs"], 0.0);
    drop(agent);
    tear_down(lab);
    Ok(())
}
