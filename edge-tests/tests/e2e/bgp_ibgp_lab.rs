//! BIRD as a router inside the POP's own AS (as a route reflector would be): over iBGP the
//! POP's LOCAL_PREF arrives, the AS_PATH stays empty, the next hop is resolved recursively, and
//! the routes are installed and serve clients. Apart from the eBGP anycast test of [`bgp_lab`]
//! (whose lab it runs in) because it needs its own BIRD configuration.
//!
//! [`bgp_lab`]: super::bgp_lab

use std::{
    path::Path,
    time::{Duration, Instant},
};

use super::{
    anycast_lab::{topology, with_bird, Bgp, VIP4, VIP6},
    common::TestResult,
};

/// BIRD inside POP A's AS, as a route reflector would be: iBGP, with the next hop resolved
/// recursively (through the connected routes `protocol direct` brings) as across a real AS.
fn ibgp_bird_config(log: &Path) -> String {
    format!(
        r#"router id 10.0.9.1;
log "{}" all;
protocol device {{ scan time 1; }}
protocol direct {{ ipv4; ipv6; }}
protocol kernel k4 {{ ipv4 {{ export where source != RTS_DEVICE; }}; }}
protocol kernel k6 {{ ipv6 {{ export where source != RTS_DEVICE; }}; }}
protocol bgp popa {{
  local 10.0.10.1 as 65001;
  neighbor 10.0.10.2 as 65001;
  passive on;
  hold time 9;
  error wait time 1, 2;
  debug {{ states, routes, events }};
  ipv4 {{ import all; export none; }};
  ipv6 {{ import all; export none; }};
}}
"#,
        log.display()
    )
}

#[test]
fn bird_installs_routes_from_a_pop_in_its_own_as() -> TestResult {
    with_bird(topology("ibgp"), ibgp_bird_config, ibgp_scenario)
}

fn ibgp_scenario(t: &mut Bgp) -> TestResult {
    t.start_backend('a')?;
    t.start_agent_with(
        'a',
        "asn = 65001\n\n[[bgp.peers]]\naddress = \"10.0.10.1\"\nasn = 65001\nlocal_pref = 200\nnext_hop_v6 = \"2001:db8:10::2\"\n",
    )?;
    let start = Instant::now();
    let (routes4, routes6) = loop {
        let r4 = t.birdc(&["show", "route", "for", VIP4, "all"])?;
        let r6 = t.birdc(&["show", "route", "for", VIP6, "all"])?;
        if r4.contains("BGP.") && r6.contains("BGP.") {
            println!(
                "ibgp: both VIPs in BIRD after {} ms",
                start.elapsed().as_millis()
            );
            break (r4, r6);
        }
        if start.elapsed() > Duration::from_secs(30) {
            return Err(format!(
                "expected both VIPs from the iBGP session in BIRD, saw:\n{r4}\n{r6}\n{}",
                t.birdc(&["show", "protocols", "all", "popa"])?
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    for (vip, r) in [(VIP4, &routes4), (VIP6, &routes6)] {
        assert!(
            r.contains("BGP.local_pref: 200"),
            "{vip}: expected the POP's LOCAL_PREF 200, saw:\n{r}"
        );
        let path = r
            .lines()
            .find_map(|l| l.split_once("BGP.as_path:"))
            .map(|(_, p)| p.trim());
        assert_eq!(
            path,
            Some(""),
            "{vip}: expected an empty AS_PATH inside the AS, saw:\n{r}"
        );
    }
    // Accepted and installed: the router's kernel sends clients to POP A, and they are served.
    t.wait_route(
        "iBGP routes in the router's kernel",
        Duration::from_secs(5),
        |c| c == Some('a'),
    )?;
    assert_eq!(t.echo_both()?, 'a');
    let status = t.cli('a', &["status", "--output", "json"])?;
    let doc: serde_json::Value = serde_json::from_slice(&status.stdout)?;
    let session = &doc["agent"]["bgp"]["sessions"][0];
    assert_eq!(
        session["internal"], true,
        "expected the session shown as internal: {session}"
    );
    Ok(())
}
