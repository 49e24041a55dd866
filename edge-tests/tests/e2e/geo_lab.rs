//! Geo steering end to end, with v1's rules: clients in nine countries of four regions (their
//! prefixes in a `.mmdb` this test writes) connect to one VIP served by backends in four regions;
//! every client must land where v1's tiers say. Then backends are disabled with the `sqlite3`
//! CLI, the way an operator would: the country's backend (the client falls to its region), the
//! whole region (the POP's region), the POP's region (anywhere).

use std::{collections::BTreeMap, time::Duration, time::Instant};

use edge_agent::{model::BackendAddr, testing::mmdb_writer::write_country_mmdb};
use edge_tests::{
    bpffs_pin_dir,
    pop_lab::{backend_addr, start_agent, state_agent_config, topology, VIP4},
    Lab,
};

use super::common::{
    agent_bin, agent_json, echo_backends, lab_backend, tear_down, web_state, TestResult,
};

/// (backend id, region, country); backend `n` (1-based) listens on `backend_addr(n)`.
const BACKENDS: [(&str, &str, &str); 5] = [
    ("br", "sa", "BR"),
    ("ar", "sa", "AR"),
    ("us", "us", "US"),
    ("de", "eu", "DE"),
    ("jp", "ap", "JP"),
];

/// (client address, its /28 in the geo database, country). The last address is in no prefix.
const CLIENTS: [(&str, &str, &str); 10] = [
    ("10.0.1.17", "10.0.1.16/28", "BR"),
    ("10.0.1.33", "10.0.1.32/28", "AR"),
    ("10.0.1.49", "10.0.1.48/28", "CL"),
    ("10.0.1.65", "10.0.1.64/28", "US"),
    ("10.0.1.81", "10.0.1.80/28", "CA"),
    ("10.0.1.97", "10.0.1.96/28", "DE"),
    ("10.0.1.113", "10.0.1.112/28", "FR"),
    ("10.0.1.129", "10.0.1.128/28", "JP"),
    ("10.0.1.145", "10.0.1.144/28", "AU"),
    ("10.0.1.200", "", "unknown"),
];

fn backend_of_addr(addr: &str) -> Option<&'static str> {
    (1..=BACKENDS.len())
        .find(|n| backend_addr(*n) == addr)
        .map(|n| BACKENDS[n - 1].0)
}

/// `edge-agent flows --output json` of the POP.
fn flows_json(lab: &Lab) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let flows = std::process::Command::new(agent_bin())
        .arg("--bpffs-root")
        .arg(bpffs_pin_dir(lab.ns("pop").name()))
        .args(["flows", "--output", "json", "--limit", "10000"])
        .output()?;
    Ok(serde_json::from_slice(&flows.stdout)?)
}

/// Connects once from every client address (source port `port_base + i`) and returns, per
/// client, the backend the data plane chose (from `edge-agent flows`).
fn connect_all(
    lab: &Lab,
    port_base: u16,
) -> Result<BTreeMap<&'static str, String>, Box<dyn std::error::Error>> {
    for (i, (addr, _, _)) in CLIENTS.iter().enumerate() {
        let target = format!(
            "TCP:{VIP4}:7,bind={addr}:{},connect-timeout=2",
            port_base + i as u16
        );
        let out =
            lab.ns("client")
                .exec(&["sh", "-c", &format!("echo geo | socat -t1 - {target}")])?;
        if !out.stdout.contains("geo") {
            return Err(format!("client {addr}: no echo: {}", out.stderr).into());
        }
    }
    let doc = flows_json(lab)?;
    let mut chosen = BTreeMap::new();
    for flow in doc["flows"].as_array().ok_or("no flows")? {
        let client: std::net::SocketAddr = flow["client"].as_str().ok_or("client")?.parse()?;
        let port = client.port();
        if !(port_base..port_base + CLIENTS.len() as u16).contains(&port) {
            continue;
        }
        let country = CLIENTS[(port - port_base) as usize].2;
        let backend: std::net::SocketAddr = flow["backend"].as_str().ok_or("backend")?.parse()?;
        let name = backend_of_addr(&backend.ip().to_string()).unwrap_or("?");
        chosen.insert(country, name.to_owned());
    }
    Ok(chosen)
}

/// Runs `connect_all` until every client lands in its expected set (the agent applies a
/// change within milliseconds; this allows for a slow machine), then prints the table.
fn expect(lab: &Lab, phase: &str, port_base: u16, expected: &[(&str, &[&str])]) -> TestResult {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut attempt = 0;
    loop {
        let chosen = connect_all(lab, port_base + attempt * 100)?;
        let wrong: Vec<String> = expected
            .iter()
            .filter(|(c, want)| {
                !chosen
                    .get(c)
                    .is_some_and(|got| want.contains(&got.as_str()))
            })
            .map(|(c, want)| format!("{c}: expected {want:?}, got {:?}", chosen.get(c)))
            .collect();
        if wrong.is_empty() {
            eprintln!("{phase}:");
            for (country, want) in expected {
                eprintln!(
                    "  {country:<8} expected {want:?} actual {}",
                    chosen[country]
                );
            }
            return Ok(());
        }
        attempt += 1;
        if Instant::now() > deadline {
            return Err(format!("{phase}: {}", wrong.join("; ")).into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn rss_kib(pid: u32) -> Result<u64, Box<dyn std::error::Error>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| "no VmRSS".into())
}

fn sqlite(db: &std::path::Path, sql: &str) -> TestResult {
    let out = std::process::Command::new("sqlite3")
        .arg(db)
        .arg(sql)
        .output()?;
    if !out.status.success() {
        return Err(format!("sqlite3 {sql}: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(())
}

#[test]
fn clients_land_where_v1s_tiers_say() -> TestResult {
    let mut t = topology("geo", BACKENDS.len());
    for (addr, _, _) in CLIENTS {
        t = t.addr("client", "eth0", &format!("{addr}/24"));
    }
    let lab = t.up()?;
    let _servers = echo_backends(&lab, BACKENDS.len())?;

    let geo = lab.log_dir().join("countries.mmdb");
    let entries: Vec<(ipnet::IpNet, edge_agent::model::Country)> = CLIENTS
        .iter()
        .filter(|(_, net, _)| !net.is_empty())
        .map(|(_, net, country)| Ok((net.parse()?, country.parse()?)))
        .collect::<Result<_, Box<dyn std::error::Error>>>()?;
    write_country_mmdb(&geo, &entries, "edgeProxy-Test-Country")?;

    let (state, db) = web_state(&lab, VIP4)?;
    for (n, (id, region, country)) in BACKENDS.iter().enumerate() {
        state.upsert_backend(&lab_backend(
            id,
            "web",
            region,
            country,
            BackendAddr::Ip(backend_addr(n + 1).parse()?),
        )?)?;
    }
    drop(state);
    let config = state_agent_config(&db).geo_database(&geo).to_toml()?;
    let agent = start_agent(&lab, &agent_bin(), &config, &["--reset"])?;
    assert!(
        agent.output_so_far().contains("geo database loaded"),
        "{}",
        agent.output_so_far()
    );

    expect(
        &lab,
        "all backends up (POP in eu)",
        20_000,
        &[
            ("BR", &["br"]),
            ("AR", &["ar"]),
            ("CL", &["br", "ar"]),
            ("US", &["us"]),
            ("CA", &["us"]),
            ("DE", &["de"]),
            ("FR", &["de"]),
            ("JP", &["jp"]),
            ("AU", &["jp"]),
            ("unknown", &["us"]),
        ],
    )?;

    // 10,000 malformed rows arrive at once: every one is rejected, the valid rows keep being
    // served, and the agent's memory stays flat.
    let rss_before = rss_kib(agent.pid())?;
    let mut sql = String::from("BEGIN;\n");
    for i in 0..10_000 {
        let (region, country, address, port, weight) = match i % 6 {
            0 => ("sa", "BR", "fd00:ee:1:1::2", 0, 1),
            1 => ("sa", "BR", "not-an-address", 7007, 1),
            2 => ("sa", "B1", "fd00:ee:1:1::2", 7007, 1),
            3 => ("sa", "BR", "fd00:ee:1:1::2", 7007, 5000),
            4 => ("SA!", "BR", "fd00:ee:1:1::2", 7007, 1),
            _ => ("sa", "BR", "10.0.0.1", 7007, 1),
        };
        sql.push_str(&format!(
            "INSERT INTO backends (id, service_id, region, country, address, port, weight) \
             VALUES ('bad{i}', 'web', '{region}', '{country}', '{address}', {port}, {weight});\n"
        ));
    }
    sql.push_str("COMMIT;\n");
    let script = lab.log_dir().join("malformed.sql");
    std::fs::write(&script, sql)?;
    sqlite(&db, &format!(".read {}", script.display()))?;
    // Counted one by one (status); logged a few at a time, with a count of the rest: a log
    // line per bad row is a log flood anyone who can write a row could cause.
    let pins = edge_tests::bpffs_pin_dir(lab.ns("pop").name());
    let rejected = || -> Result<u64, String> {
        let doc = agent_json(&pins, &["status"])?;
        Ok(doc["agent"]["rejected_rows"].as_u64().unwrap_or(0))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while rejected()? < 10_000 {
        if Instant::now() > deadline {
            return Err(format!("expected 10000 rejected rows, saw {}", rejected()?).into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let logged = agent.output_so_far().matches("row rejected").count();
    assert!(
        logged <= 100,
        "10,000 rejected rows took {logged} log lines: the log is rate-limited per call site"
    );
    expect(
        &lab,
        "after 10,000 malformed rows",
        24_000,
        &[("BR", &["br"]), ("US", &["us"]), ("JP", &["jp"])],
    )?;
    let rss_after = rss_kib(agent.pid())?;
    eprintln!("agent RSS {rss_before} KiB -> {rss_after} KiB across 10,000 rejected rows");
    assert!(
        rss_after < rss_before + 32 * 1024,
        "agent memory must stay flat: {rss_before} KiB -> {rss_after} KiB"
    );

    // Affinity: CL's tier holds two backends, yet 100 reconnects all meet the same one.
    let cl = CLIENTS[2].0;
    for i in 0..100u16 {
        let target = format!("TCP:{VIP4}:7,bind={cl}:{},connect-timeout=2", 30_000 + i);
        lab.ns("client")
            .exec_ok(&["sh", "-c", &format!("echo a | socat -t1 - {target}")])?;
    }
    let doc = flows_json(&lab)?;
    let mut seen = std::collections::BTreeSet::new();
    let mut count = 0;
    for flow in doc["flows"].as_array().ok_or("no flows")? {
        let client: std::net::SocketAddr = flow["client"].as_str().ok_or("client")?.parse()?;
        if client.ip().to_string() == cl && (30_000..30_100).contains(&client.port()) {
            count += 1;
            seen.insert(flow["backend"].as_str().unwrap_or_default().to_owned());
        }
    }
    assert_eq!(count, 100, "100 reconnects from {cl}");
    assert_eq!(
        seen.len(),
        1,
        "one client, one backend while it is eligible: {seen:?}"
    );

    sqlite(&db, "UPDATE backends SET enabled = 0 WHERE id = 'br'")?;
    expect(
        &lab,
        "br disabled: BR falls to its region",
        21_000,
        &[
            ("BR", &["ar"]),
            ("AR", &["ar"]),
            ("CL", &["ar"]),
            ("US", &["us"]),
        ],
    )?;

    // The operator's view: br is disabled and out of the kernel's eligible set; ar now takes
    // the whole table Brazil's clients use.
    let out = std::process::Command::new(agent_bin())
        .arg("--bpffs-root")
        .arg(bpffs_pin_dir(lab.ns("pop").name()))
        .arg("--config")
        .arg(lab.log_dir().join("agent.toml"))
        .args(["backends", "--output", "json"])
        .output()?;
    assert!(out.status.success(), "edge-agent backends: {out:?}");
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let row = |id: &str| {
        rows.as_array()
            .and_then(|r| r.iter().find(|b| b["id"] == id))
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(row("br")["eligible"], false, "{}", row("br"));
    assert_eq!(row("br")["enabled"], false);
    assert_eq!(row("ar")["eligible"], true);
    let ar_shares = row("ar")["shares"].as_object().cloned().unwrap_or_default();
    assert!(
        ar_shares
            .iter()
            .any(|(who, share)| who.split(',').any(|c| c == "BR") && share.as_f64() == Some(1.0)),
        "ar holds all of the table Brazil uses: {ar_shares:?}"
    );

    sqlite(&db, "UPDATE backends SET enabled = 0 WHERE id = 'ar'")?;
    expect(
        &lab,
        "sa empty: the POP's region",
        22_000,
        &[
            ("BR", &["de"]),
            ("AR", &["de"]),
            ("CL", &["de"]),
            ("JP", &["jp"]),
        ],
    )?;

    sqlite(&db, "UPDATE backends SET enabled = 0 WHERE id = 'de'")?;
    expect(
        &lab,
        "sa and eu empty: anywhere",
        23_000,
        &[
            ("BR", &["us", "jp"]),
            ("FR", &["us", "jp"]),
            ("US", &["us"]),
            ("JP", &["jp"]),
        ],
    )?;

    drop(agent);
    tear_down(lab);
    Ok(())
}
