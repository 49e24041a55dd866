//! The agent process's own health for `/metrics`: its listeners' gates, log lines suppressed,
//! open files and memory - what shows an attack on the agent itself rather than on the POP.

use super::Scrape;

/// The agent's own servers (one gate per listening address, `crate::listen`), repeated log
/// lines suppressed, and the process's files and memory: what shows an attack on the agent
/// itself (issue 18).
pub(super) fn families(out: &Scrape) -> prometheus::Result<()> {
    let gates = crate::listen::all_stats();
    let per_gate = |f: &dyn Fn(&crate::listen::GateStats) -> u64| {
        gates
            .iter()
            .map(|g| (vec![g.name.clone()], f(g)))
            .collect::<Vec<_>>()
    };
    let as_f64 = |v: Vec<(Vec<String>, u64)>| {
        v.into_iter()
            .map(|(l, v)| (l, v as f64))
            .collect::<Vec<_>>()
    };
    let listener = ["listener"];
    out.gauges(
        "edgeproxy_listener_connections",
        "Connections open on one of the agent's listeners",
        &listener,
        as_f64(per_gate(&|g| g.open)),
    )?;
    out.gauges(
        "edgeproxy_listener_connections_max",
        "The listener's connection cap (after the open-files budget)",
        &listener,
        as_f64(per_gate(&|g| g.max)),
    )?;
    out.counters(
        "edgeproxy_listener_accepted_total",
        "Connections the listener admitted",
        &listener,
        per_gate(&|g| g.accepted),
    )?;
    out.counters(
        "edgeproxy_listener_refused_total",
        "Connections refused at once: every slot busy (full) or the source at its share (source)",
        &["listener", "reason"],
        gates
            .iter()
            .flat_map(|g| {
                [
                    (vec![g.name.clone(), "full".to_owned()], g.refused_full),
                    (vec![g.name.clone(), "source".to_owned()], g.refused_source),
                ]
            })
            .collect(),
    )?;
    out.counters(
        "edgeproxy_listener_evicted_total",
        "Idle connections closed to make room for a new one",
        &listener,
        per_gate(&|g| g.evicted),
    )?;
    out.counters(
        "edgeproxy_listener_timeouts_total",
        "Connections closed, or requests answered 408, at a header or request timeout",
        &listener,
        per_gate(&|g| g.timeouts),
    )?;
    out.counters(
        "edgeproxy_listener_accept_errors_total",
        "Failed accepts (EMFILE: the process is out of files)",
        &listener,
        per_gate(&|g| g.accept_errors),
    )?;
    out.counters(
        "edgeproxy_log_lines_suppressed_total",
        "Warning and error lines not logged because the same line came too often",
        &[],
        vec![(vec![], crate::process::log_limit::suppressed_total())],
    )?;
    out.gauges(
        "edgeproxy_process_open_fds",
        "Files the agent has open",
        &[],
        vec![(vec![], crate::listen::budget::open_files() as f64)],
    )?;
    if let Ok(limit) = crate::listen::budget::file_limit() {
        out.gauges(
            "edgeproxy_process_max_fds",
            "The agent's open-files limit (soft)",
            &[],
            vec![(vec![], limit.soft as f64)],
        )?;
    }
    if let Some(bytes) = resident_bytes() {
        out.gauges(
            "edgeproxy_process_resident_memory_bytes",
            "The agent's resident memory",
            &[],
            vec![(vec![], bytes as f64)],
        )?;
    }
    Ok(())
}

/// VmRSS from /proc/self/status.
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb * 1024)
}
