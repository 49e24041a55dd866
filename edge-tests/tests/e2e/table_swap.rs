//! Maglev tables swapped under load drop no established flow: 300 connections open, the
//! backends' weights changed and a backend drained (SIGHUP re-reads the config), and every
//! connection still echoes afterwards.

use std::time::Duration;

use edge_tests::pop_lab::{agent_config, spawn_echo_load, start_agent, topology};

use super::common::{agent_bin, echo_backends, tear_down, TestResult};

const BACKENDS: usize = 3;

#[test]
fn table_swaps_keep_every_established_flow() -> TestResult {
    let lab = topology("swap", BACKENDS).up()?;
    let _servers = echo_backends(&lab, BACKENDS)?;
    let agent = start_agent(
        &lab,
        &agent_bin(),
        &agent_config(BACKENDS).to_toml()?,
        &["--reset"],
    )?;

    let echo_load = env!("CARGO_BIN_EXE_echo-load").as_ref();
    let load = spawn_echo_load(&lab, echo_load, 300, 16384, 6, true)?;
    load.wait_for_output("holding 300", Duration::from_secs(60))?;

    // New weights for every backend, and be3 drained: every table is rebuilt and swapped.
    // Weight 5 for every backend but echo4's be1 (1) and be3 (0, drained).
    let mut config = agent_config(BACKENDS);
    for (i, service) in config.services.iter_mut().enumerate() {
        for (n, backend) in (1..).zip(&mut service.backends) {
            backend.weight = Some(match (i, n) {
                (_, 3) => 0,
                (0, 1) => 1,
                _ => 5,
            });
        }
    }
    let config = config.to_toml()?;
    std::fs::write(lab.log_dir().join("agent.toml"), config)?;
    agent.signal(libc::SIGHUP)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while agent
        .output_so_far()
        .matches("state applied")
        .nth(1)
        .is_none()
    {
        if std::time::Instant::now() > deadline {
            return Err(format!("no second apply after SIGHUP:\n{}", agent.output_so_far()).into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        agent
            .output_so_far()
            .lines()
            .filter(|l| l.contains("state applied"))
            .nth(1)
            .is_some_and(|l| !l.contains("tables_built=0")),
        "the reload must build new tables:\n{}",
        agent.output_so_far()
    );

    let status = load.wait_exit(Duration::from_secs(60))?;
    let summary = load.output_so_far();
    assert!(
        status.success() && summary.contains("\"rechecked\":300"),
        "every established connection must survive the table swaps: {summary}"
    );
    drop(agent);
    tear_down(lab);
    Ok(())
}
