//! The Prometheus endpoint during lab traffic: the scrape passes `promtool check metrics`, and
//! its per-backend counters add up to the connections sent.

use std::time::Duration;

use edge_tests::pop_lab::{agent_config, backend_addr, start_agent, topology, BACKEND_PORT};

use super::common::{agent_bin, churn, echo_backends, tear_down, wait_eligible, TestResult};

/// The value of the sample `name{labels}` in `text`, labels given in their order there.
fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    let head = format!("{name}{{{labels}}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&head))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

#[test]
fn a_scrape_passes_promtool_and_counts_the_traffic() -> TestResult {
    let lab = topology("metrics", 2).up()?;
    let _servers = echo_backends(&lab, 2)?;
    let agent = start_agent(
        &lab,
        &agent_bin(),
        &agent_config(2).to_toml()?,
        &["--reset"],
    )?;
    wait_eligible(&lab, 1, true, Duration::from_secs(5))?;
    let (ok, failed) = churn(&lab, 100, 2)?;
    assert_eq!((ok, failed), (200, 0));

    let scrape = lab
        .ns("pop")
        .exec_ok(&["curl", "-sf", "http://127.0.0.1:9469/metrics"])?
        .stdout;
    let file = lab.log_dir().join("metrics.txt");
    std::fs::write(&file, &scrape)?;
    let check = lab.ns("pop").exec(&[
        "sh",
        "-c",
        &format!("promtool check metrics < {}", file.display()),
    ])?;
    assert!(
        check.status.success(),
        "promtool check metrics: {}{}\n{scrape}",
        check.stdout,
        check.stderr
    );

    let mut flows = 0.0;
    for n in 1..=2 {
        let addr = format!("[{}]:{BACKEND_PORT}", backend_addr(n));
        let new = sample(
            &scrape,
            "edgeproxy_backend_new_flows_total",
            &format!("addr=\"{addr}\""),
        )
        .ok_or_else(|| format!("no new-flows sample for {addr} in\n{scrape}"))?;
        let to = sample(
            &scrape,
            "edgeproxy_backend_packets_total",
            &format!("addr=\"{addr}\",direction=\"to\""),
        )
        .unwrap_or(0.0);
        assert!(
            new > 0.0 && to >= new * 3.0,
            "be{n}: {new} flows, {to} packets to it"
        );
        assert_eq!(
            sample(
                &scrape,
                "edgeproxy_backend_info",
                // The encoder sorts labels by name.
                &format!("addr=\"{addr}\",backend=\"echo4/be{n}\",service=\"echo4\"")
            ),
            Some(1.0),
            "{scrape}"
        );
        flows += new;
    }
    assert_eq!(
        flows, 200.0,
        "every connection sent, and only those, counted"
    );
    assert!(scrape.contains("edgeproxy_state_source_info{source=\"config\"} 1"));
    drop(agent);
    tear_down(lab);
    Ok(())
}
