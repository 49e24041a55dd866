//! The replicated control plane on real Corrosion: three Corrosion nodes and three POP agents.
//! Corrosion is in no package registry, so `cargo xtask test` runs this only when
//! `CORROSION_BIN` names a `corrosion` binary (docs/corrosion.md says how to get one); without
//! it the test is listed as ignored, with that reason.
//!
//! A `ctl` namespace holds the three Corrosion nodes (gossip on its loopback); each POP reaches
//! its node's API over its own link. Backend rows written through any node's API reach all
//! three POPs' kernel maps (p99 over 100 changes printed); a stopped node leaves its POP on its
//! last state and catches up when it returns; each POP's health rows reach every node; a frozen
//! node is reported stale within 3 s; deleted backends leave no health rows behind.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use edge_tests::{
    agent_config::{Corrosion, Dns, Health},
    bpffs_pin_dir, AgentConfig, Lab, LabProcess, Topology,
};

use super::common::{agent_bin, tear_down, TestResult};

type Error = Box<dyn std::error::Error>;

const POPS: usize = 3;
const CHANGES: usize = 100;

fn corrosion_bin() -> Result<PathBuf, Error> {
    std::env::var_os("CORROSION_BIN")
        .map(PathBuf::from)
        .filter(|p| p.exists())
        .ok_or_else(|| "CORROSION_BIN does not name a corrosion binary".into())
}

fn api(i: usize) -> String {
    format!("10.77.{i}.2:8080")
}

fn topology() -> Topology {
    let mut t = Topology::new("corro").ns("ctl");
    for i in 1..=POPS {
        let pop = format!("pop{i}");
        t = t
            .ns(&pop)
            .veth((&pop, "eth0"), ("ctl", &format!("e{i}")))
            .veth((&pop, "ovl0"), ("ctl", &format!("o{i}")))
            .addr(&pop, "eth0", &format!("10.77.{i}.1/24"))
            .addr("ctl", &format!("e{i}"), &format!("10.77.{i}.2/24"))
            .addr(&pop, "ovl0", &format!("fd00:ee:{i}::1/64"))
            .addr("ctl", &format!("o{i}"), &format!("fd00:ee:{i}::2/64"));
    }
    t
}

/// Starts Corrosion node `i` in `ctl`: API on its POP's link, gossip on loopback.
fn corrosion(lab: &Lab, bin: &Path, schema: &Path, i: usize) -> Result<LabProcess, Error> {
    let dir = lab.log_dir().join(format!("corro{i}"));
    std::fs::create_dir_all(&dir)?;
    let bootstrap: Vec<String> = (1..i)
        .map(|j| format!("\"127.0.0.1:{}\"", 8786 + j))
        .collect();
    let config = format!(
        "[db]\npath = \"{db}\"\nschema_paths = [\"{schema}\"]\n\n\
         [gossip]\naddr = \"127.0.0.1:{gossip}\"\nbootstrap = [{bootstrap}]\nplaintext = true\n\n\
         [api]\naddr = \"{api}\"\n\n[admin]\npath = \"{admin}\"\n",
        db = dir.join("corrosion.db").display(),
        schema = schema.display(),
        gossip = 8786 + i,
        bootstrap = bootstrap.join(", "),
        api = api(i),
        admin = dir.join("admin.sock").display(),
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, config)?;
    let node = lab.ns("ctl").spawn(
        &format!("corrosion{i}"),
        &[
            &bin.to_string_lossy(),
            "agent",
            "-c",
            &path.to_string_lossy(),
        ],
        &[],
    )?;
    let started = Instant::now();
    // Ready when it answers a query (its /v1/health is 503 until it has peers' lag figures).
    while curl(
        lab,
        i,
        "POST",
        "/v1/queries",
        Some("\"SELECT count(*) FROM services\""),
    )
    .is_err()
    {
        if started.elapsed() > Duration::from_secs(30) {
            return Err(format!(
                "corrosion node {i} did not answer: {}",
                node.output_so_far()
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(node)
}

/// An API call to node `i` from `ctl`; the body of a 2xx answer.
fn curl(
    lab: &Lab,
    i: usize,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<String, Error> {
    let url = format!("http://{}{path}", api(i));
    let mut argv = vec![
        "curl",
        "-sf",
        "-m",
        "5",
        "-X",
        method,
        "-H",
        "content-type: application/json",
    ];
    if let Some(b) = body {
        argv.extend_from_slice(&["-d", b]);
    }
    argv.push(&url);
    Ok(lab.ns("ctl").exec_ok(&argv)?.stdout)
}

fn transaction(lab: &Lab, i: usize, stmts: serde_json::Value) -> Result<(), Error> {
    curl(lab, i, "POST", "/v1/transactions", Some(&stmts.to_string())).map(drop)
}

fn agent(lab: &Lab, i: usize) -> Result<LabProcess, Error> {
    let config = AgentConfig::pop()
        .region("eu")
        .pop_id(&format!("pop{i}"))
        .overlay("ovl0", &format!("fd00:ee:{i}::1"))
        .max_flows(65_536)
        .max_services(8)
        .table_size(16381)
        .dns(Dns::off())
        .health(Health {
            write_interval_secs: Some(1),
            ..Health::profile("fast")
        })
        .corrosion_state(Corrosion {
            api: Some(format!("http://{}", api(i))),
            max_backoff_ms: Some(500),
        })
        .to_toml()?;
    let path = lab.log_dir().join(format!("agent{i}.toml"));
    std::fs::write(&path, config)?;
    let pins = bpffs_pin_dir(lab.ns(&format!("pop{i}")).name());
    let process = lab.ns(&format!("pop{i}")).spawn(
        &format!("agent{i}"),
        &[
            &agent_bin().to_string_lossy(),
            "--bpffs-root",
            &pins.to_string_lossy(),
            "--config",
            &path.to_string_lossy(),
            "run",
            "--reset",
        ],
        &[],
    )?;
    process.wait_for_output("edge-agent ready", Duration::from_secs(30))?;
    Ok(process)
}

/// `edge-agent status` of POP `i`.
fn status(lab: &Lab, i: usize) -> Result<serde_json::Value, Error> {
    let out = std::process::Command::new(agent_bin())
        .arg("--bpffs-root")
        .arg(bpffs_pin_dir(lab.ns(&format!("pop{i}")).name()))
        .args(["status", "--output", "json"])
        .output()?;
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// The backend addresses in POP `i`'s kernel map.
fn kernel_backends(lab: &Lab, i: usize) -> Result<Vec<String>, Error> {
    let doc = status(lab, i)?;
    Ok(doc["backends"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .filter(|b| b["active"] == true)
                .filter_map(|b| b["addr"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default())
}

fn backend_row(n: usize) -> serde_json::Value {
    serde_json::json!([
        "INSERT INTO backends (id, service_id, region, country, address, port) VALUES (?, 'web', 'eu', 'DE', ?, 7007)",
        [format!("be{n}"), format!("fd00:ee:9::{:x}", n + 1)]
    ])
}

fn addr_of(n: usize) -> String {
    format!("[fd00:ee:9::{:x}]:7007", n + 1)
}

#[test]
#[ignore = "needs CORROSION_BIN: Corrosion is in no package registry (docs/corrosion.md); cargo xtask test runs it when CORROSION_BIN is set"]
fn three_pops_replicate_through_corrosion() -> TestResult {
    let bin = corrosion_bin()?;
    let lab = topology().up()?;
    let schema = lab.log_dir().join("schema");
    std::fs::create_dir_all(&schema)?;
    std::fs::write(
        schema.join("edgeproxy.sql"),
        edge_agent::state::schema::SCHEMA,
    )?;
    let mut nodes = Vec::new();
    for i in 1..=POPS {
        nodes.push(corrosion(&lab, &bin, &schema, i)?);
    }
    transaction(
        &lab,
        1,
        serde_json::json!([[
            "INSERT INTO services (id, vip, port) VALUES ('web', ?, 80)",
            [IpAddr::from([198, 18, 0, 10]).to_string()]
        ]]),
    )?;
    let agents: Vec<LabProcess> = (1..=POPS)
        .map(|i| agent(&lab, i))
        .collect::<Result<_, _>>()?;

    // Rows through any node reach every POP's maps.
    let mut delays = Vec::new();
    for n in 0..CHANGES {
        let started = Instant::now();
        transaction(&lab, n % POPS + 1, serde_json::json!([backend_row(n)]))?;
        let want = addr_of(n);
        loop {
            // The three POPs are read at once, so that polling adds little to the figure.
            let everywhere = std::thread::scope(|s| {
                let reads: Vec<_> = (1..=POPS)
                    .map(|i| {
                        let lab = &lab;
                        s.spawn(move || kernel_backends(lab, i).map_err(|e| e.to_string()))
                    })
                    .collect();
                reads
                    .into_iter()
                    .map(|r| r.join().map_err(|_| "a reader panicked".to_owned())?)
                    .collect::<Result<Vec<_>, String>>()
            })?
            .iter()
            .all(|b| b.contains(&want));
            if everywhere {
                break;
            }
            if started.elapsed() > Duration::from_secs(10) {
                return Err(format!("be{n} not in every POP's maps after 10 s").into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        delays.push(started.elapsed());
    }
    delays.sort();
    let p = |q: f64| delays[((delays.len() as f64 * q) as usize).min(delays.len() - 1)];
    println!(
        "corrosion: row written through one node -> in all {POPS} POPs' kernel maps, {CHANGES} changes: p50 {} ms, p99 {} ms",
        p(0.5).as_millis(),
        p(0.99).as_millis()
    );
    assert!(p(0.99) < Duration::from_secs(1), "p99 {:?}", p(0.99));

    // Node 2 stops: POP 2 keeps serving its last state; rows written meanwhile arrive later.
    nodes[1].kill()?;
    transaction(&lab, 1, serde_json::json!([backend_row(CHANGES)]))?;
    std::thread::sleep(Duration::from_secs(2));
    let pop2 = kernel_backends(&lab, 2)?;
    assert_eq!(pop2.len(), CHANGES, "POP 2 keeps its last state");
    nodes[1] = corrosion(&lab, &bin, &schema, 2)?;
    let started = Instant::now();
    while !kernel_backends(&lab, 2)?.contains(&addr_of(CHANGES)) {
        if started.elapsed() > Duration::from_secs(30) {
            return Err("the row written while node 2 was down never reached POP 2".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "corrosion: node 2 back; the row written meanwhile reached POP 2 {} ms later",
        started.elapsed().as_millis()
    );

    // Every POP writes its own health rows; all of them meet in every node.
    let started = Instant::now();
    loop {
        let out = curl(
            &lab,
            3,
            "POST",
            "/v1/queries",
            Some("\"SELECT DISTINCT pop_id FROM health ORDER BY pop_id\""),
        )?;
        if (1..=POPS).all(|i| out.contains(&format!("\"pop{i}\""))) {
            break;
        }
        if started.elapsed() > Duration::from_secs(20) {
            return Err(format!("health rows of every POP: {out}").into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // `backends` answers from the running agent's state, whatever the source.
    let out = std::process::Command::new(agent_bin())
        .arg("--bpffs-root")
        .arg(bpffs_pin_dir(lab.ns("pop1").name()))
        .args(["backends", "--output", "json"])
        .output()?;
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(
        rows.as_array().map(Vec::len),
        Some(CHANGES + 1),
        "`edge-agent backends` with the state in Corrosion: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    frozen_node_is_noticed(&lab, &nodes[0])?;
    deleted_backends_leave_no_health_rows(&lab)?;
    drop(agents);
    drop(nodes);
    tear_down(lab);
    Ok(())
}

/// POP `i`'s state staleness, from `status`.
fn stale_secs(lab: &Lab, i: usize) -> Result<f64, Error> {
    let doc = status(lab, i)?;
    doc["agent"]["state"]["stale_secs"]
        .as_f64()
        .ok_or_else(|| format!("no staleness in {}", doc["agent"]["state"]).into())
}

/// Node 1 frozen (SIGSTOP) for 10 s: its subscriptions stay open and silent, but POP 1's
/// `status` and `/metrics` show the state stale within 3 s, and current again once it resumes.
fn frozen_node_is_noticed(lab: &Lab, node: &LabProcess) -> TestResult {
    let wait =
        |what: &str, limit: Duration, done: &dyn Fn(f64) -> bool| -> Result<Duration, Error> {
            let started = Instant::now();
            loop {
                let stale = stale_secs(lab, 1)?;
                if done(stale) {
                    return Ok(started.elapsed());
                }
                if started.elapsed() > limit {
                    return Err(format!("{what}: stale_secs {stale} after {limit:?}").into());
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        };
    wait("current before", Duration::from_secs(5), &|s| s == 0.0)?;
    node.signal(libc::SIGSTOP)?;
    let noticed = wait("frozen node", Duration::from_secs(3), &|s| s > 0.0);
    let scrape = lab
        .ns("pop1")
        .exec_ok(&["curl", "-sf", "http://127.0.0.1:9469/metrics"])
        .map(|o| o.stdout);
    std::thread::sleep(Duration::from_secs(10));
    node.signal(libc::SIGCONT)?;
    let noticed = noticed?;
    let scrape = scrape?;
    let metric = scrape
        .lines()
        .find_map(|l| l.strip_prefix("edgeproxy_state_staleness_seconds "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .ok_or("no edgeproxy_state_staleness_seconds")?;
    assert!(metric > 0.0, "/metrics shows the staleness: {metric}");
    let back = wait("resumed node", Duration::from_secs(5), &|s| s == 0.0)?;
    println!(
        "corrosion: node frozen 10 s: stale in status after {} ms, current again {} ms after SIGCONT",
        noticed.as_millis(),
        back.as_millis()
    );
    Ok(())
}

/// 20 backends deleted through node 2 (the project's delete statements) while POP 1 writes its
/// health rows every second: 5 s later no health row names a backend that is gone.
fn deleted_backends_leave_no_health_rows(lab: &Lab) -> TestResult {
    for n in 0..20 {
        let stmts =
            serde_json::to_value(edge_agent::state::write::delete_backend(&format!("be{n}")))?;
        transaction(lab, 2, stmts)?;
    }
    std::thread::sleep(Duration::from_secs(5));
    let orphans = curl(
        lab,
        1,
        "POST",
        "/v1/queries",
        Some("\"SELECT count(*) FROM health WHERE backend_id NOT IN (SELECT id FROM backends)\""),
    )?;
    assert!(
        orphans.contains("\"row\":[1,[0]]"),
        "health rows of deleted backends: {orphans}"
    );
    println!(
        "corrosion: 20 backends deleted while health rows were written: 0 orphan rows 5 s later"
    );
    Ok(())
}
