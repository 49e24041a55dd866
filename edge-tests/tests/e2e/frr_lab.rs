//! The anycast labs with FRR 8 as the router (zebra, bfdd and bgpd of Debian's `frr`, run in the
//! router namespace with their config, logs, pid files and vty sockets in the lab's directory):
//! with BFD at 100 ms x 3 and `neighbor X bfd check-control-plane-failure`, FRR withdraws a dead
//! POP within a second, and keeps a restarting one (the agent's BFD session says C = 0, so a BFD
//! down after the BGP session closed is a control-plane restart, not a dead forwarding plane).

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use edge_tests::Topology;

use super::{
    anycast_lab::{topology_with, Bgp, VIP4, VIP6},
    common::{tear_down, TestResult},
    restart_lab::{restarts_under_load, Router, Sample},
};

type Error = Box<dyn std::error::Error>;

/// FRR's vty sockets and log, for `vtysh` and the End-of-RIB count.
pub(super) struct Frr {
    pub dir: PathBuf,
}

impl Frr {
    pub fn vtysh(&self, cmd: &str) -> String {
        Command::new("vtysh")
            .arg("--vty_socket")
            .arg(&self.dir)
            .args(["-c", cmd])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }
}

impl Router for Frr {
    fn sample(&self) -> Sample {
        let r4 = self.vtysh(&format!("show bgp ipv4 unicast {VIP4}/32"));
        let r6 = self.vtysh(&format!("show bgp ipv6 unicast {VIP6}/128"));
        let from_a = |r: &str| r.contains("from 10.0.10.2");
        Sample {
            popa: from_a(&r4) && from_a(&r6),
            stale: r4.contains("stale") || r6.contains("stale"),
            text: format!("{r4}{r6}"),
        }
    }

    fn end_of_ribs(&self) -> usize {
        std::fs::read_to_string(self.dir.join("bgpd.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("rcvd End-of-RIB") && l.contains("10.0.10.2"))
            .count()
    }

    fn bfd_up(&self) -> bool {
        self.vtysh("show bfd peers brief")
            .lines()
            .any(|l| l.contains("10.0.10.2") && l.contains("up"))
    }
}

/// bgpd's config: POP A over IPv4 (the agent connects), POP B over IPv6 (FRR connects), both
/// families on each; graceful-restart helper (FRR's default) with a long stale-path time.
fn bgpd_config(dir: &Path, bfd: FrrBfd) -> String {
    let bfd = match bfd {
        FrrBfd::On => " neighbor 10.0.10.2 bfd profile fast\n",
        FrrBfd::CheckControlPlane => " neighbor 10.0.10.2 bfd profile fast\n neighbor 10.0.10.2 bfd check-control-plane-failure\n",
    };
    format!(
        r#"frr defaults traditional
hostname router
log file {}/bgpd.log debugging
debug bgp neighbor-events
debug bgp graceful-restart
debug bgp bfd
!
router bgp 65000
 bgp router-id 10.0.9.1
 no bgp ebgp-requires-policy
 bgp graceful-restart
 bgp graceful-restart stalepath-time 300
 neighbor 10.0.10.2 remote-as 65001
 neighbor 10.0.10.2 timers 1 3
 neighbor 10.0.10.2 timers connect 1
{bfd} neighbor 2001:db8:11::2 remote-as 65002
 neighbor 2001:db8:11::2 timers connect 1
 address-family ipv4 unicast
  neighbor 10.0.10.2 activate
  neighbor 2001:db8:11::2 activate
 exit-address-family
 address-family ipv6 unicast
  neighbor 10.0.10.2 activate
  neighbor 2001:db8:11::2 activate
 exit-address-family
!
"#,
        dir.display()
    )
}

/// BFD with POP A, and whether FRR reads the C bit.
#[derive(Clone, Copy)]
pub(super) enum FrrBfd {
    On,
    CheckControlPlane,
}

const BFDD_CONFIG: &str = "hostname router\n!\nbfd\n profile fast\n  detect-multiplier 3\n  receive-interval 100\n  transmit-interval 100\n !\n!\n";

/// Brings up `topology` with FRR in `router` (`pop_a_bfd`: BFD with POP A), runs `scenario`
/// with it, and tears everything down (FRR's logs printed on failure).
fn with_frr(
    topology: Topology,
    bfd: FrrBfd,
    scenario: fn(&mut Bgp, &Frr) -> TestResult,
) -> TestResult {
    let lab = topology.up()?;
    let mut dir = lab.log_dir().join("frr");
    if dir.as_os_str().len() > 80 {
        // A unix socket path has room for 107 bytes.
        dir = PathBuf::from(format!("/run/{}.frr", lab.ns("router").name()));
    }
    std::fs::create_dir_all(&dir)?;
    let started = start_frr(&lab, &dir, bfd);
    let (daemons, result) = match started {
        Ok(daemons) => (daemons, Ok(())),
        Err(e) => (Vec::new(), Err(e)),
    };
    let frr = Frr { dir: dir.clone() };
    let mut t = Bgp {
        lab,
        router: daemons,
        socket: dir.display().to_string(),
        bird_log: dir.join("bgpd.log"),
        agents: [None, None],
        backends: [None, None],
    };
    let result = result.and_then(|()| scenario(&mut t, &frr));
    for p in t.agents.iter().chain(t.backends.iter()).flatten() {
        let _ = p.kill();
    }
    for p in &t.router {
        let _ = p.kill();
    }
    if result.is_err() {
        for log in ["bgpd.log", "bfdd.log", "zebra.log"] {
            let text = std::fs::read_to_string(dir.join(log)).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(80).collect();
            eprintln!("FRR {log} (last 80 lines):");
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
    if !dir.starts_with(t.lab.log_dir()) {
        let _ = std::fs::remove_dir_all(&dir);
    }
    tear_down(t.lab);
    result
}

/// zebra first (bgpd and bfdd talk through it), then bfdd and bgpd; ready once bgpd answers.
fn start_frr(
    lab: &edge_tests::Lab,
    dir: &Path,
    bfd: FrrBfd,
) -> Result<Vec<edge_tests::LabProcess>, Error> {
    let d = dir.to_str().ok_or("path")?;
    std::fs::write(dir.join("zebra.conf"), "hostname router\n")?;
    std::fs::write(dir.join("bfdd.conf"), BFDD_CONFIG)?;
    std::fs::write(dir.join("bgpd.conf"), bgpd_config(dir, bfd))?;
    // The daemons drop to Debian's `frr` user (whose group frrvty their vty sockets need).
    let chown = Command::new("chown").args(["-R", "frr:frr", d]).output()?;
    if !chown.status.success() {
        return Err(format!(
            "chown frr:frr {d}: {}",
            String::from_utf8_lossy(&chown.stderr)
        )
        .into());
    }
    let zserv = format!("{d}/zserv.api");
    let mut daemons = Vec::new();
    for daemon in ["zebra", "bfdd", "bgpd"] {
        let bin = format!("/usr/lib/frr/{daemon}");
        let conf = format!("{d}/{daemon}.conf");
        let pid = format!("{d}/{daemon}.pid");
        let log = format!("file:{d}/{daemon}.log");
        let ctl = format!("{d}/bfdd.sock");
        let mut argv = vec![
            bin.as_str(),
            "-f",
            &conf,
            "-i",
            &pid,
            "-z",
            &zserv,
            "--vty_socket",
            d,
            "-P",
            "0",
            "--log",
            &log,
            "--log-level",
            "debug",
        ];
        if daemon == "bfdd" {
            argv.extend(["--bfdctl", &ctl]);
        }
        let p = lab.ns("router").spawn(daemon, &argv, &[])?;
        if daemon == "zebra" {
            let start = std::time::Instant::now();
            while !Path::new(&zserv).exists() {
                if start.elapsed() > Duration::from_secs(10) {
                    return Err(format!("zebra did not open {zserv}: {}", p.output_so_far()).into());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        daemons.push(p);
    }
    let frr = Frr {
        dir: dir.to_path_buf(),
    };
    let start = std::time::Instant::now();
    while !frr.vtysh("show bgp summary").contains("10.0.10.2") {
        if start.elapsed() > Duration::from_secs(15) {
            return Err("FRR's bgpd does not answer on its vty".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(daemons)
}

#[test]
fn frr_withdraws_a_dead_pop_within_a_second_with_bfd() -> TestResult {
    with_frr(topology_with("frrbfd", true), FrrBfd::On, |t, frr| {
        super::bfd_lab::host_death(t, frr, super::restart_lab::POP_B)
    })
}

/// With the agent's BFD at its default, 300 ms x 3: the restarted agent is back (225-300 ms)
/// before FRR's BFD notices the old one gone (900 ms), which is where a session established
/// before BFD came back was torn down by FRR's late BFD down (strict BFD prevents it).
#[test]
fn frr_keeps_pop_a_through_ten_restarts_under_load() -> TestResult {
    with_frr(topology_with("frrgr", false), FrrBfd::On, |t, frr| {
        restarts_under_load(t, frr, &super::restart_lab::pop_a_gr("bfd = true\n"))
    })
}

/// FRR's `neighbor X bfd check-control-plane-failure` with this speaker's C = 0: FRR 8.4 then
/// ignores every BFD down of a graceful-restart-capable session while it is Established
/// (PEER_STATUS_NSF_MODE), not only during a restart, so a dead host is withdrawn at the hold
/// time, not the detection time. The test shows it (FRR's log, and the time printed), which is
/// why docs/operations.md recommends plain `bfd` for these sessions: a killed agent's kernel
/// closes the BGP connection at once, so FRR is already keeping the routes for the restart when
/// BFD goes down, and a BFD down for a session not Established changes nothing.
#[test]
fn frr_check_control_plane_failure_waits_for_the_hold_time() -> TestResult {
    with_frr(
        topology_with("frrcpi", true),
        FrrBfd::CheckControlPlane,
        |t, frr| {
            t.bridge_switch()?;
            t.start_backend('a')?;
            t.start_agent_with(
                'a',
                &super::restart_lab::pop_a_gr(
                    "hold_time_secs = 3\n\n[bgp.peers.bfd]\nmin_tx_ms = 100\nmin_rx_ms = 100\nmultiplier = 3\n",
                ),
            )?;
            let start = std::time::Instant::now();
            while !(frr.sample().popa && frr.bfd_up()) {
                if start.elapsed() > Duration::from_secs(30) {
                    return Err(format!("POP A not up in FRR:\n{}", frr.sample().text).into());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            // Keepalives at hold / 3: start from a steady session.
            std::thread::sleep(Duration::from_secs(2));
            let since = std::time::Instant::now();
            t.lab
                .ns("popa")
                .exec_ok(&["ip", "link", "set", "eth0", "down"])?;
            while frr.sample().popa {
                if since.elapsed() > Duration::from_secs(10) {
                    return Err("POP A's paths still in FRR 10 s after its host died".into());
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            println!(
                "bfd: FRR with check-control-plane-failure withdrew a dead POP after {} ms (hold time 3 s; BFD down ignored)",
                since.elapsed().as_millis()
            );
            let log = std::fs::read_to_string(frr.dir.join("bgpd.log"))?;
            assert!(
                log.contains("BFD DOWN message ignored in the process of graceful restart"),
                "expected FRR to log that it ignored the BFD down (C bit clear)"
            );
            Ok(())
        },
    )
}
