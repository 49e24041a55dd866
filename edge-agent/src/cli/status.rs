//! `edge-agent status`: the data plane's counters from the pinned maps (they work without a running
//! agent), and what only the running agent knows (state source, health, BGP, 6PN) from its status
//! file.

use std::fmt::Write as _;

use super::{wg::sixpn_table, Output};
use crate::{
    agent::status::{AgentStatus, BgpStatus, FRESH_SECS},
    dataplane::{maps::counters, pins::PinDir},
    model::unix_now,
};

pub fn run(pins: &PinDir, output: Output) -> anyhow::Result<()> {
    let map = counters::open_pinned(pins)?;
    let snapshot = counters::snapshot(&map)?;
    let nat = counters::nat_report(pins)?;
    let attached = pins.attached_ifaces();
    // What only the running agent knows; written every second, so an old file means no agent.
    let agent = AgentStatus::read(pins);
    let now = unix_now();
    let age = agent.as_ref().map(|a| a.age(now));
    let running = age.is_some_and(|a| a <= FRESH_SECS);
    match output {
        Output::Json => {
            let doc = StatusDoc {
                agent_running: running,
                agent: agent.as_ref(),
                bpffs_root: pins.root(),
                attached: attached
                    .iter()
                    .map(|(iface, hook)| Attached { iface, hook })
                    .collect(),
                counters: &snapshot.classes,
                services: &nat.services,
                backends: &nat.backends,
                drops: &nat.drops,
            };
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
        Output::Table => {
            if attached.is_empty() {
                println!(
                    "data plane: not attached (maps at {})",
                    pins.root().display()
                );
            } else {
                let on: Vec<String> = attached
                    .iter()
                    .map(|(iface, hook)| format!("{iface} ({})", hook.to_uppercase()))
                    .collect();
                println!(
                    "data plane: attached to {} (pins at {})",
                    on.join(", "),
                    pins.root().display()
                );
            }
            print!("{}", agent_lines(agent.as_ref(), age, running, now));
            print!("{snapshot}");
            if !nat.services.is_empty() || !nat.backends.is_empty() {
                println!();
                print!("{nat}");
            }
        }
    }
    Ok(())
}

/// `status --output json`.
#[derive(serde::Serialize)]
struct StatusDoc<'a> {
    agent_running: bool,
    /// The status file, as the agent wrote it.
    agent: Option<&'a AgentStatus>,
    bpffs_root: &'a std::path::Path,
    attached: Vec<Attached<'a>>,
    counters: &'a [counters::ClassCounters],
    services: &'a [counters::ServiceRow],
    backends: &'a [counters::BackendRow],
    drops: &'a edge_common::DropStats,
}

/// An interface the data plane is attached to, and the hook.
#[derive(serde::Serialize)]
struct Attached<'a> {
    iface: &'a str,
    hook: &'a str,
}

/// The agent's part of the table: who it is and where its state comes from, then its BGP
/// sessions and 6PN peers while it runs.
fn agent_lines(agent: Option<&AgentStatus>, age: Option<i64>, running: bool, now: i64) -> String {
    let mut out = String::new();
    match (agent, running) {
        (Some(a), true) => match &a.pop {
            Some(pop) => {
                let stale = pop.state.stale_secs.map_or_else(
                    || "never read yet".to_owned(),
                    |s| format!("{s:.1} s stale"),
                );
                let _ = writeln!(
                    out,
                    "agent: pid {}, state from {} ({stale}), {} backends checked",
                    a.pid, pop.state.source, pop.health.checking
                );
            }
            None => {
                let _ = writeln!(out, "agent: pid {}", a.pid);
            }
        },
        (_, false) => {
            let _ = writeln!(
                out,
                "agent: not running{}",
                age.map_or_else(String::new, |a| format!(" (last status {a} s ago)"))
            );
        }
        (None, true) => {}
    }
    let Some(a) = agent.filter(|_| running) else {
        return out;
    };
    if let Some(bgp) = a.pop.as_ref().and_then(|p| p.bgp.as_ref()) {
        out.push_str(&bgp_table(bgp, now));
    }
    if let Some(sixpn) = &a.sixpn {
        out.push_str(&sixpn_table(sixpn));
        out.push('\n');
    }
    out
}

/// The BGP part of `edge-agent status`: each session, then each VIP and why it is (not)
/// announced.
fn bgp_table(bgp: &BgpStatus, now: i64) -> String {
    let mut out = String::new();
    if let Some(since) = bgp.draining_since {
        let _ = writeln!(out, "BGP: draining since {} s ago", now - since);
    }
    let _ = writeln!(
        out,
        "{:<40} {:>10} {:<12} {:>10} {:>9} {:>9}  last error",
        "BGP peer", "AS", "state", "uptime", "announced", "received"
    );
    for s in &bgp.sessions {
        let uptime = s
            .established_at
            .map_or_else(|| "-".to_owned(), |t| format!("{} s", now - t));
        let _ = writeln!(
            out,
            "{:<40} {:>10} {:<12} {:>10} {:>9} {:>9}  {}",
            s.peer.to_string(),
            s.asn,
            s.state,
            uptime,
            s.prefixes_announced,
            s.prefixes_received,
            s.last_error.as_deref().unwrap_or("-"),
        );
    }
    for v in &bgp.vips {
        let _ = writeln!(
            out,
            "  VIP {:<39} as {:<43} {}: {}",
            v.vip.to_string(),
            v.prefix.to_string(),
            if v.announced {
                "announced"
            } else {
                "withdrawn"
            },
            v.reason,
        );
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        agent::status::{BgpSession, BgpVip, ChecksStatus, PopStatus, StateStatus},
        sixpn::node::SixpnStatus,
    };

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn status() -> Result<AgentStatus, Box<dyn std::error::Error>> {
        Ok(AgentStatus {
            pid: 4242,
            role: None,
            written_at: 1000,
            pop: Some(PopStatus {
                state: StateStatus {
                    source: "corrosion http://[::1]:8080".to_owned(),
                    stale_secs: Some(1.25),
                    detail: None,
                },
                rejected_rows: 0,
                geo: crate::geo::GeoInForce::default(),
                state_read_secs_ago: Some(0.5),
                health: ChecksStatus {
                    checking: 7,
                    checks: 0,
                    transitions: 0,
                },
                dns: None,
                bgp: Some(BgpStatus {
                    draining_since: Some(990),
                    sessions: vec![BgpSession {
                        peer: "10.0.10.1".parse()?,
                        asn: 65010,
                        state: "Established".to_owned(),
                        established_at: Some(940),
                        prefixes_announced: 2,
                        prefixes_received: 3,
                        last_error: None,
                        more: serde_json::Map::new(),
                    }],
                    vips: vec![BgpVip {
                        vip: "192.0.2.10".parse()?,
                        prefix: "192.0.2.0/24".parse()?,
                        announced: false,
                        reason: "draining".to_owned(),
                    }],
                    bfd_dropped: Default::default(),
                }),
            }),
            sixpn: Some(SixpnStatus {
                ifname: "6pn0".to_owned(),
                ..SixpnStatus::default()
            }),
        })
    }

    #[test]
    fn the_agent_line_reads_the_typed_status() -> TestResult {
        let a = status()?;
        let text = agent_lines(Some(&a), Some(1), true, 1001);
        let first = text.lines().next().unwrap_or_default();
        assert_eq!(
            first,
            "agent: pid 4242, state from corrosion http://[::1]:8080 (1.2 s stale), 7 backends checked"
        );
        assert!(text.contains("6PN 6pn0"), "{text}");
        Ok(())
    }

    #[test]
    fn a_state_never_read_and_an_old_status_say_so() -> TestResult {
        let mut a = status()?;
        if let Some(pop) = a.pop.as_mut() {
            pop.state.stale_secs = None;
        }
        let text = agent_lines(Some(&a), Some(0), true, 1000);
        assert!(
            text.starts_with(
                "agent: pid 4242, state from corrosion http://[::1]:8080 (never read yet)"
            ),
            "{text}"
        );
        let old = agent_lines(Some(&a), Some(60), false, 1060);
        assert_eq!(old, "agent: not running (last status 60 s ago)\n");
        assert_eq!(agent_lines(None, None, false, 0), "agent: not running\n");
        Ok(())
    }

    #[test]
    fn the_bgp_table_reads_sessions_and_vips_from_the_typed_status() -> TestResult {
        let a = status()?;
        let bgp = a.pop.and_then(|p| p.bgp).ok_or("the test status has BGP")?;
        let text = bgp_table(&bgp, 1000);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "BGP: draining since 10 s ago");
        assert!(lines[1].starts_with("BGP peer"), "{text}");
        let session: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(
            session,
            [
                "10.0.10.1",
                "65010",
                "Established",
                "60",
                "s",
                "2",
                "3",
                "-"
            ]
        );
        assert_eq!(
            lines[3].split_whitespace().collect::<Vec<_>>(),
            [
                "VIP",
                "192.0.2.10",
                "as",
                "192.0.2.0/24",
                "withdrawn:",
                "draining"
            ]
        );
        assert!(text.ends_with("\n\n"), "a blank line after the table");
        Ok(())
    }
}
