//! Anycast against a real router: BIRD 2 peers with two POPs announcing the same VIPs (the lab
//! is `anycast_lab`). Clients behind the router reach the VIP through the POP BIRD chose; when
//! that POP loses its backend, is drained, or its agent stops, the route is withdrawn and new
//! connections land on the other POP. Times are printed (`--nocapture`).
use std::{
    path::Path,
    time::{Duration, Instant},
};

use super::anycast_lab::{topology, with_bird, Bgp, MD5, VIP4, VIP6};
use super::common::TestResult;

fn bird_config(log: &Path) -> String {
    format!(
        r#"router id 10.0.9.1;
log "{}" all;
timeformat protocol iso long;
protocol device {{ scan time 1; }}
protocol kernel k4 {{ ipv4 {{ export all; }}; }}
protocol kernel k6 {{ ipv6 {{ export all; }}; }}
template bgp pops {{
  local as 65000;
  hold time 9;
  connect delay time 1;
  connect retry time 1;
  error wait time 1, 2;
  debug {{ states, routes, events, packets }};
  ipv4 {{ import all; export none; }};
  ipv6 {{ import all; export none; }};
}}
protocol bgp popa from pops {{
  local 10.0.10.1 as 65000;
  neighbor 10.0.10.2 as 65001;
  passive on;
  password "{MD5}";
}}
protocol bgp popb from pops {{
  local 2001:db8:11::1 as 65000;
  neighbor 2001:db8:11::2 as 65002;
}}
"#,
        log.display()
    )
}

#[test]
fn bird_routes_clients_to_a_pop_that_can_serve_them() -> TestResult {
    with_bird(topology("bgp"), bird_config, scenario)
}

fn scenario(t: &mut Bgp) -> TestResult {
    t.start_backend('a')?;
    t.start_backend('b')?;
    t.start_agent('a')?;
    t.start_agent('b')?;

    // Both sessions up, each carrying both families, and BIRD sees both paths.
    let start = Instant::now();
    loop {
        let protocols = t.birdc(&["show", "protocols"])?;
        let up = protocols
            .lines()
            .filter(|l| l.contains("Established"))
            .count();
        let routes4 = t.birdc(&["show", "route", "for", VIP4, "all"])?;
        let routes6 = t.birdc(&["show", "route", "for", VIP6, "all"])?;
        let paths = |r: &str| r.matches("BGP.as_path").count();
        if up == 2 && paths(&routes4) == 2 && paths(&routes6) == 2 {
            println!(
                "bgp: both sessions Established and both paths of both VIPs in BIRD after {} ms",
                start.elapsed().as_millis()
            );
            assert!(
                routes4.contains("65010:7") || routes4.contains("(65010,7)"),
                "community missing:\n{routes4}"
            );
            break;
        }
        if start.elapsed() > Duration::from_secs(30) {
            return Err(
                format!("sessions/paths not up:\n{protocols}\n{routes4}\n{routes6}").into(),
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // The agents' status (written every second) says the same.
    for x in ['a', 'b'] {
        let start = Instant::now();
        let session = loop {
            let status = t.cli(x, &["status", "--output", "json"])?;
            let doc: serde_json::Value = serde_json::from_slice(&status.stdout)?;
            let session = doc["agent"]["bgp"]["sessions"][0].clone();
            if session["state"] == "Established" || start.elapsed() > Duration::from_secs(3) {
                break session;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        assert_eq!(session["state"], "Established", "POP {x}: {session}");
        assert_eq!(session["prefixes_announced"], 2, "POP {x}: {session}");
        assert_eq!(
            session["families"],
            serde_json::json!(["ipv4", "ipv6"]),
            "POP {x}: {session}"
        );
    }
    let table = t.cli('b', &["status"])?;
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("Established") && table.contains("announced: servable"),
        "{table}"
    );

    // Clients go where BIRD points.
    t.wait_route("initial", Duration::from_secs(5), |c| c.is_some())?;
    let first = t.chosen(VIP4)?.ok_or("no route")?;
    assert_eq!(t.chosen(VIP6)?, Some(first), "both VIPs through one POP");
    assert_eq!(t.echo_both()?, first);
    let other = if first == 'a' { 'b' } else { 'a' };
    println!("bgp: BIRD chose POP {first}; clients land there");

    // The chosen POP loses its last backend: withdrawn, and clients land on the other.
    let i = usize::from(first == 'b');
    if let Some(p) = t.backends[i].take() {
        p.kill()?;
    }
    let moved = t.wait_route("backend lost", Duration::from_secs(5), |c| c == Some(other))?;
    println!(
        "bgp: backend killed -> route moved to POP {other} in the router's kernel after {} ms (fast checks: fall 3 x 250 ms)",
        moved.as_millis()
    );
    assert_eq!(t.echo_both()?, other);

    // Recovery: back after the hold-down.
    t.start_backend(first)?;
    let back = t.wait_route("backend back", Duration::from_secs(10), |c| {
        c == Some(first)
    })?;
    println!(
        "bgp: backend back -> route back after {} ms (rise + 1 s hold-down)",
        back.as_millis()
    );
    assert_eq!(t.echo_both()?, first);

    // Drain: graceful-shutdown community first, then withdrawn; undrain brings it back.
    let out = t.cli(first, &["drain"])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let start = Instant::now();
    loop {
        let r = t.birdc(&["show", "route", "for", VIP4, "all"])?;
        if r.contains("65535:0") || r.contains("(65535,0)") || r.contains("graceful") {
            println!(
                "bgp: drain -> graceful-shutdown community at BIRD after {} ms",
                start.elapsed().as_millis()
            );
            break;
        }
        if start.elapsed() > Duration::from_secs(3) {
            return Err(format!("no graceful-shutdown community:\n{r}").into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // The longer, marked path loses at once; the withdraw follows after the delay.
    let drained = t.wait_route("drain", Duration::from_secs(6), |c| c == Some(other))?;
    println!(
        "bgp: drain -> route at POP {other} after {} ms (longer path, marked)",
        drained.as_millis()
    );
    loop {
        let r = t.birdc(&["show", "route", "for", VIP4, "all"])?;
        if r.matches("BGP.as_path").count() == 1 {
            println!(
                "bgp: drain -> withdrawn after {} ms (drain_delay_secs = 2)",
                start.elapsed().as_millis()
            );
            break;
        }
        if start.elapsed() > Duration::from_secs(5) {
            return Err(format!("the drained POP's path is still there:\n{r}").into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(t.echo_both()?, other);
    let out = t.cli(first, &["undrain"])?;
    assert!(out.status.success());
    let undrained = t.wait_route("undrain", Duration::from_secs(5), |c| c == Some(first))?;
    println!(
        "bgp: undrain -> route back after {} ms",
        undrained.as_millis()
    );

    // A graceful stop: withdraw on the wire before the session closes, then the other POP.
    let log_before = std::fs::read_to_string(&t.bird_log)?.len();
    let agent = t.agents[i].take().ok_or("no agent")?;
    agent.signal(libc::SIGTERM)?;
    let moved = t.wait_route("agent stopped", Duration::from_secs(5), |c| {
        c == Some(other)
    })?;
    agent.wait_exit(Duration::from_secs(10))?;
    println!(
        "bgp: SIGTERM -> route at POP {other} after {} ms",
        moved.as_millis()
    );
    assert_eq!(t.echo_both()?, other);
    let log = std::fs::read_to_string(&t.bird_log)?;
    let log = &log[log_before..];
    let proto = format!("pop{first}");
    let withdraw = log
        .lines()
        .position(|l| l.contains(&proto) && l.contains("removed") && l.contains(VIP4))
        .ok_or_else(|| format!("BIRD logged no withdraw of {VIP4} from {proto}:\n{log}"))?;
    let closed = log
        .lines()
        .position(|l| {
            l.contains(&proto)
                && (l.contains("Received: Administrative shutdown")
                    || l.contains("State changed to stop")
                    || l.contains("Down"))
        })
        .ok_or_else(|| format!("BIRD logged no session end for {proto}:\n{log}"))?;
    assert!(
        withdraw < closed,
        "withdraw (line {withdraw}) after the close (line {closed}):\n{log}"
    );
    Ok(())
}
