//! Every operator command's `--output json` parses and says what its table says, on a POP with
//! live connections.

use std::{collections::BTreeSet, path::Path, process::Command, time::Duration};

use edge_tests::{
    bpffs_pin_dir,
    pop_lab::{agent_config, spawn_echo_load, start_agent, topology},
};

use super::common::{agent_bin, echo_backends, tear_down, TestResult};

type Error = Box<dyn std::error::Error>;

fn run(pins: &Path, config: &Path, args: &[&str]) -> Result<String, Error> {
    let out = Command::new(agent_bin())
        .arg("--bpffs-root")
        .arg(pins)
        .arg("--config")
        .arg(config)
        .args(args)
        .output()?;
    if !out.status.success() {
        return Err(format!("{args:?}: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(String::from_utf8(out.stdout)?)
}

fn json(pins: &Path, config: &Path, command: &str) -> Result<serde_json::Value, Error> {
    Ok(serde_json::from_str(&run(
        pins,
        config,
        &[command, "--output", "json"],
    )?)?)
}

/// The whitespace-separated column `col` of the table lines that `start` accepts, row by row.
fn cells(table: &str, start: &dyn Fn(&str) -> bool, col: usize) -> Vec<String> {
    table
        .lines()
        .filter(|l| start(l))
        .filter_map(|l| l.split_whitespace().nth(col).map(str::to_owned))
        .collect()
}

/// The distinct values of that column.
fn column(table: &str, start: &dyn Fn(&str) -> bool, col: usize) -> BTreeSet<String> {
    cells(table, start, col).into_iter().collect()
}

#[test]
fn json_output_agrees_with_the_tables() -> TestResult {
    let lab = topology("cli", 2).up()?;
    let _servers = echo_backends(&lab, 2)?;
    let agent = start_agent(
        &lab,
        &agent_bin(),
        &agent_config(2).to_toml()?,
        &["--reset"],
    )?;
    let load = spawn_echo_load(
        &lab,
        env!("CARGO_BIN_EXE_echo-load").as_ref(),
        20,
        1024,
        30,
        false,
    )?;
    load.wait_for_output("holding 20", Duration::from_secs(30))?;
    let pins = bpffs_pin_dir(lab.ns("pop").name());
    let config = lab.log_dir().join("agent.toml");

    // status: the backends' endpoints and their connections.
    let doc = json(&pins, &config, "status")?;
    let table = run(&pins, &config, &["status"])?;
    let backends = doc["backends"].as_array().ok_or("no backends")?;
    let addrs: BTreeSet<String> = backends
        .iter()
        .filter_map(|b| b["addr"].as_str().map(str::to_owned))
        .collect();
    let is_backend_row = |l: &str| {
        l.split_whitespace()
            .nth(1)
            .is_some_and(|a| a.starts_with("[fd00"))
    };
    assert_eq!(column(&table, &is_backend_row, 1), addrs, "{table}");
    let flows_json: u64 = backends
        .iter()
        .filter_map(|b| b["active_flows"].as_u64())
        .sum();
    // Summed row by row: two backends with equal counts are two rows, not one value.
    let flows_table: u64 = cells(&table, &is_backend_row, 3)
        .iter()
        .filter_map(|n| n.parse::<u64>().ok())
        .sum();
    assert!(flows_json >= 20, "{doc}");
    assert_eq!(flows_json, flows_table, "{table}");

    // flows: the same clients and backends.
    let doc = json(&pins, &config, "flows")?;
    let table = run(&pins, &config, &["flows"])?;
    let listed = doc["flows"].as_array().ok_or("no flows")?;
    assert!(listed.len() >= 20, "{doc}");
    let clients: BTreeSet<String> = listed
        .iter()
        .filter_map(|f| f["client"].as_str().map(str::to_owned))
        .collect();
    let is_flow_row = |l: &str| l.starts_with("10.0.1.2:") || l.starts_with("[2001:db8:1::2]:");
    assert_eq!(column(&table, &is_flow_row, 0), clients, "{table}");

    // backends: ids and health.
    let doc = json(&pins, &config, "backends")?;
    let table = run(&pins, &config, &["backends"])?;
    let rows = doc.as_array().ok_or("not a list")?;
    let ids: BTreeSet<String> = rows
        .iter()
        .filter_map(|r| r["id"].as_str().map(str::to_owned))
        .collect();
    // Table rows, not the notes under the table: the second column is the service.
    let is_echo_row = |l: &str| matches!(l.split_whitespace().nth(1), Some("echo4" | "echo6"));
    assert_eq!(column(&table, &is_echo_row, 0), ids, "{table}");
    let health: BTreeSet<String> = rows
        .iter()
        .filter_map(|r| r["health"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(column(&table, &is_echo_row, 9), health, "{table}");

    // maps: the same maps.
    let doc = json(&pins, &config, "maps")?;
    let table = run(&pins, &config, &["maps"])?;
    let names: BTreeSet<String> = doc
        .as_array()
        .ok_or("not a list")?
        .iter()
        .filter_map(|m| m["name"].as_str().map(str::to_owned))
        .collect();
    let is_map_row = |l: &str| !l.starts_with(' ');
    assert_eq!(column(&table, &is_map_row, 0), names, "{table}");

    load.kill()?;
    drop(agent);
    tear_down(lab);
    Ok(())
}
