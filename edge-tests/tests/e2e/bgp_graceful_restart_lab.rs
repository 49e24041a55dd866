//! BIRD as a graceful-restart helper (RFC 4724): an agent SIGKILLed and restarted on its pinned
//! data plane keeps its routes in BIRD throughout (held as stale, then refreshed after its
//! End-of-RIB), and clients are served by the same POP after. Apart from the eBGP anycast test
//! of [`bgp_lab`] (whose lab it runs in) because it needs its own BIRD configuration.
//!
//! [`bgp_lab`]: super::bgp_lab

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use super::{
    anycast_lab::{topology, with_bird, Bgp, VIP4, VIP6},
    common::TestResult,
};

type Error = Box<dyn std::error::Error>;

/// BIRD as a graceful-restart helper (RFC 4724) for POP A over eBGP.
fn gr_bird_config(log: &Path) -> String {
    format!(
        r#"router id 10.0.9.1;
log "{}" all;
protocol device {{ scan time 1; }}
protocol kernel k4 {{ ipv4 {{ export all; }}; }}
protocol kernel k6 {{ ipv6 {{ export all; }}; }}
protocol bgp popa {{
  local 10.0.10.1 as 65000;
  neighbor 10.0.10.2 as 65001;
  passive on;
  hold time 9;
  error wait time 1, 2;
  graceful restart on;
  debug {{ states, routes, events, packets }};
  ipv4 {{ import all; export none; }};
  ipv6 {{ import all; export none; }};
}}
"#,
        log.display()
    )
}

#[test]
fn bird_keeps_a_restarting_pops_routes() -> TestResult {
    with_bird(topology("gr"), gr_bird_config, gr_scenario)
}

/// POP A's graceful-restart state in `edge-agent status --output json`, once `ready` holds
/// (the status file is written every second).
fn gr_status(
    t: &Bgp,
    ready: impl Fn(&serde_json::Value) -> bool,
) -> Result<serde_json::Value, Error> {
    let start = Instant::now();
    loop {
        let status = t.cli('a', &["status", "--output", "json"])?;
        let doc: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap_or_default();
        let gr = doc["agent"]["bgp"]["sessions"][0]["graceful_restart"].clone();
        if ready(&gr) || start.elapsed() > Duration::from_secs(5) {
            return Ok(gr);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn gr_scenario(t: &mut Bgp) -> TestResult {
    const BGP: &str = "asn = 65001\ngraceful_restart_secs = 30\n\n[[bgp.peers]]\naddress = \"10.0.10.1\"\nasn = 65000\nnext_hop_v6 = \"2001:db8:10::2\"\n";
    t.start_backend('a')?;
    t.start_agent_with('a', BGP)?;
    let start = Instant::now();
    while !t.birdc(&["show", "route", "for", VIP4])?.contains("[popa")
        || !t.birdc(&["show", "route", "for", VIP6])?.contains("[popa")
    {
        if start.elapsed() > Duration::from_secs(30) {
            return Err("expected both VIPs in BIRD within 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let eor = |gr: &serde_json::Value| {
        gr["end_of_rib_received"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
    };
    let gr = gr_status(t, eor)?;
    assert_eq!(gr["negotiated"], true, "expected GR negotiated: {gr}");
    assert_eq!(gr["restart_time"], 30, "{gr}");
    assert_eq!(gr["forwarding_state"], false, "a fresh data plane: {gr}");
    assert_eq!(
        gr["end_of_rib_sent"],
        serde_json::json!(["ipv4", "ipv6"]),
        "{gr}"
    );
    assert!(eor(&gr), "expected BIRD's End-of-RIB: {gr}");

    // SIGKILL: no withdraw, no NOTIFICATION. The restarted agent adopts the pinned data plane.
    let log_before = std::fs::read_to_string(&t.bird_log)?.len();
    let socket = t.socket.clone();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (samples, restarted) = std::thread::scope(|s| -> Result<_, Error> {
        let poller = s.spawn(|| {
            let mut samples = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let out = |args: &[&str]| {
                    Command::new("birdc")
                        .arg("-s")
                        .arg(&socket)
                        .args(args)
                        .output()
                        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                        .unwrap_or_default()
                };
                let r4 = out(&["show", "route", "for", VIP4]);
                let r6 = out(&["show", "route", "for", VIP6]);
                let proto = out(&["show", "protocols", "all", "popa"]);
                samples.push((
                    r4.contains("[popa") && r6.contains("[popa"),
                    proto.contains("Neighbor graceful restart active"),
                    format!("{r4}{r6}"),
                ));
                std::thread::sleep(Duration::from_millis(100));
            }
            samples
        });
        let agent = t.agents[0].take().ok_or("no agent")?;
        std::thread::sleep(Duration::from_millis(500));
        agent.signal(libc::SIGKILL)?;
        agent.wait_exit(Duration::from_secs(10))?;
        let killed = Instant::now();
        std::thread::sleep(Duration::from_millis(1_000));
        let result = t.start_agent_with('a', BGP);
        let restarted = killed.elapsed();
        // Until the new session has sent its End-of-RIB and BIRD has dropped the stale flags.
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            let log = std::fs::read_to_string(&t.bird_log).unwrap_or_default();
            if log[log_before.min(log.len())..].contains("Neighbor graceful restart done") {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let samples = poller.join().map_err(|_| "the poller panicked")?;
        result?;
        Ok((samples, restarted))
    })?;
    println!(
        "gr: agent back {} ms after SIGKILL; {} samples of BIRD's RIB, {} during the restart",
        restarted.as_millis(),
        samples.len(),
        samples.iter().filter(|s| s.1).count()
    );
    if let Some(gap) = samples.iter().find(|s| !s.0) {
        return Err(format!(
            "expected both VIPs in BIRD throughout, one sample had:\n{}",
            gap.2
        )
        .into());
    }
    assert!(
        samples.iter().any(|s| s.1),
        "expected BIRD to hold the routes as stale (graceful restart active) for a while"
    );
    assert!(
        samples.last().is_some_and(|s| !s.1),
        "expected the restart over (routes refreshed) at the end"
    );
    let log = std::fs::read_to_string(&t.bird_log)?;
    let log = &log[log_before..];
    let at = |what: &str| {
        log.find(what)
            .ok_or_else(|| format!("expected BIRD to log {what:?}:\n{log}"))
    };
    let (detected, got_eor, done) = (
        at("Neighbor graceful restart detected")?,
        at("Got END-OF-RIB")?,
        at("Neighbor graceful restart done")?,
    );
    assert!(
        detected < got_eor && got_eor <= done,
        "expected detected < End-of-RIB <= done, saw {detected} {got_eor} {done}:\n{log}"
    );
    let gr = gr_status(t, |gr| gr["forwarding_state"] == true && eor(gr))?;
    assert_eq!(gr["forwarding_state"], true, "an adopted data plane: {gr}");
    assert_eq!(gr["negotiated"], true, "{gr}");
    assert_eq!(t.echo_both()?, 'a');
    Ok(())
}
