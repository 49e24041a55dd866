//! Hitless agent restarts against a router that helps with graceful restart (RFC 4724): POP A
//! (preferred: POP B announces with a longer path) carries 200 long-lived echo connections and
//! an iperf3 stream (500 Mbit/s, paced so that two cores keep up) while its agent is SIGKILLed
//! and started again ten times, the first five with the same binary, the last five with a copy
//! at another path (the upgrade path: a different binary adopting the pins). The router's RIB is
//! polled every 100 ms: POP A's path of both VIPs must be there in every sample (stale during a
//! restart, fresh after), End-of-RIB must arrive after each restart, and no connection may be
//! reset. Used by the BIRD lab (`bgp_lab`) and the FRR lab (`frr_lab`).

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use edge_tests::bpffs_pin_dir;

use super::{
    anycast_lab::{Bgp, VIP4, VIP6},
    common::{agent_bin, agent_json, TestResult},
};

type Error = Box<dyn std::error::Error>;

/// One look at the router's RIB.
pub(super) struct Sample {
    /// POP A's path of both VIPs is there.
    pub popa: bool,
    /// Held as stale (the router is helping a restart).
    pub stale: bool,
    pub text: String,
}

/// A router under test: how to read its RIB (from any thread), and how many End-of-RIB markers
/// (one per family and session) it has logged from POP A so far.
pub(super) trait Router: Sync {
    fn sample(&self) -> Sample;
    fn end_of_ribs(&self) -> usize;
    /// The router's BFD session with POP A is Up.
    fn bfd_up(&self) -> bool;
}

/// The iperf3 service beside the echo services: one backend (iperf3's control and data
/// connections must meet the same server).
pub(super) const IPERF_SERVICE: &str = "\n[[services]]\nname = \"iperf\"\nvip = \"198.18.7.10\"\nport = 5201\nbackends = [{ name = \"bea\", addr = \"fd00:ee:1:1::2\", port = 5201 }]\n";

/// POP B: the backup, two extra copies of its AS on every route.
pub(super) const POP_B: &str = "asn = 65002\nrouter_id = \"10.0.11.2\"\nlisten = [\"[::]:179\"]\nprepend = 2\n\n[[bgp.peers]]\naddress = \"2001:db8:11::1\"\nasn = 65000\npassive = true\nnext_hop_v4 = \"10.0.11.2\"\n";

const RESTARTS: usize = 10;
/// How long the bulk stream across the restarts lasts: ten restarts take about 20 s, each
/// waiting for the router to see POP A's paths fresh again, and longer on a loaded machine
/// (a CI run took close to 30 s).
const STREAM_SECS: &str = "45";

/// Runs the restarts; `pop_a` is POP A's `[bgp]` (with `graceful_restart_secs`), ending with
/// [`IPERF_SERVICE`].
pub(super) fn restarts_under_load(t: &mut Bgp, router: &dyn Router, pop_a: &str) -> TestResult {
    edge_tests::raise_nofile();
    t.start_backend('a')?;
    t.start_backend('b')?;
    let iperf_server = t.lab.ns("bea").spawn(
        "iperf3-server",
        &["iperf3", "-s", "-p", "5201", "--forceflush"],
        &[],
    )?;
    iperf_server.wait_for_output("Server listening", Duration::from_secs(10))?;
    t.start_agent_with('a', pop_a)?;
    t.start_agent_with('b', POP_B)?;
    let start = Instant::now();
    while !router.sample().popa || router.sample().stale {
        if start.elapsed() > Duration::from_secs(30) {
            return Err(
                format!("POP A's paths not in the router:\n{}", router.sample().text).into(),
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    t.wait_route("POP A preferred", Duration::from_secs(10), |c| {
        c == Some('a')
    })?;
    assert_eq!(t.echo_both()?, 'a');

    // The upgrade: the same agent at another path (a different file, as a package upgrade
    // leaves it), started on the pins the running one made.
    let next: PathBuf = t.lab.log_dir().join("edge-agent-next");
    std::fs::copy(agent_bin(), &next)?;

    let go = t.lab.log_dir().join("echo-go");
    let idle = t.lab.ns("client").spawn(
        "echo-load",
        &[
            env!("CARGO_BIN_EXE_echo-load"),
            "--target",
            &format!("{VIP4}:7"),
            "--target",
            &format!("[{VIP6}]:7"),
            "--connections",
            "200",
            "--max-bytes",
            "8192",
            "--hold-secs",
            "600",
            "--go-file",
            go.to_str().ok_or("path")?,
            "--recheck",
        ],
        &[],
    )?;
    idle.wait_for_output("holding 200", Duration::from_secs(60))?;
    let stream = t.lab.ns("client").spawn(
        "iperf3",
        &[
            "iperf3",
            "-c",
            VIP4,
            "-p",
            "5201",
            "-t",
            STREAM_SECS,
            "-b",
            "500M",
            "-J",
        ],
        &[],
    )?;
    std::thread::sleep(Duration::from_secs(2));

    let stop = AtomicBool::new(false);
    let (samples, cycles) = std::thread::scope(|s| -> Result<_, Error> {
        let poller = s.spawn(|| {
            let mut samples = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let at = Instant::now();
                samples.push(router.sample());
                // Every 100 ms at most, whatever a sample took.
                if let Some(rest) = Duration::from_millis(100).checked_sub(at.elapsed()) {
                    std::thread::sleep(rest);
                }
            }
            samples
        });
        let result = cycle(t, router, &next, pop_a);
        stop.store(true, Ordering::Relaxed);
        let samples = poller.join().map_err(|_| "the poller panicked")?;
        Ok((samples, result?))
    })?;
    let stale = samples.iter().filter(|s| s.stale).count();
    println!(
        "restart: {RESTARTS} SIGKILLs and restarts (5 with the same binary, 5 with another), agent back after {:?} ms; {} samples of the router's RIB (every 100 ms), {stale} with POP A's paths stale",
        cycles.iter().map(Duration::as_millis).collect::<Vec<_>>(),
        samples.len()
    );
    if let Some(gap) = samples.iter().find(|s| !s.popa) {
        return Err(format!(
            "expected POP A's paths in the router throughout; one sample had:\n{}",
            gap.text
        )
        .into());
    }
    assert!(
        stale > 0,
        "expected the router to hold POP A's paths as stale during restarts"
    );
    assert!(
        samples.last().is_some_and(|s| !s.stale),
        "expected fresh paths after the last restart:\n{}",
        samples.last().map(|s| s.text.as_str()).unwrap_or_default()
    );

    assert!(
        stream.is_running(),
        "the {STREAM_SECS} s stream ended before the restarts did ({cycles:?}): {}",
        stream.output_so_far()
    );

    // Every connection survived: the stream completes, and all 200 echo again.
    std::fs::write(&go, b"go")?;
    let status = idle.wait_exit(Duration::from_secs(60))?;
    let summary = idle.output_so_far();
    assert!(
        status.success() && summary.contains("\"rechecked\":200"),
        "all 200 long-lived connections must echo after the restarts: {summary}"
    );
    let status = stream.wait_exit(Duration::from_secs(60))?;
    let report = stream.output_so_far();
    assert!(
        status.success(),
        "iperf3 failed across the restarts:\n{report}"
    );
    let json_start = report
        .find('{')
        .ok_or_else(|| format!("no iperf3 JSON: {report}"))?;
    let doc: serde_json::Value = serde_json::from_str(&report[json_start..])?;
    assert!(
        doc.get("error").is_none(),
        "iperf3 reported an error: {}",
        doc["error"]
    );
    let received = doc["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0);
    let seconds = doc["end"]["sum_received"]["seconds"]
        .as_f64()
        .unwrap_or(0.0);
    let retransmits = doc["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0);
    println!(
        "restart: iperf3 through every restart: {:.0} Mbit/s over {seconds:.1} s, {retransmits} retransmits; 200 echo connections rechecked",
        received as f64 * 8.0 / seconds.max(0.001) / 1e6
    );
    assert!(
        seconds >= 29.0 && received > 0,
        "the stream ran its 30 s: {seconds} s, {received} bytes"
    );
    let pins = bpffs_pin_dir(t.lab.ns("popa").name());
    let doc = agent_json(&pins, &["status"])?;
    assert_eq!(
        doc["drops"]["no_flow"].as_u64(),
        Some(0),
        "no packet may miss its flow across the restarts: {}",
        doc["drops"]
    );
    let session = &doc["agent"]["bgp"]["sessions"][0];
    let gr = &session["graceful_restart"];
    assert_eq!(gr["negotiated"], true, "{gr}");
    assert_eq!(gr["forwarding_state"], true, "an adopted data plane: {gr}");
    assert_eq!(
        gr["end_of_rib_sent"],
        serde_json::json!(["ipv4", "ipv6"]),
        "{gr}"
    );
    // /metrics says the same, in a form promtool accepts.
    let popa = t.lab.ns("popa");
    let scrape = popa
        .exec_ok(&["curl", "-sf", "http://127.0.0.1:9469/metrics"])?
        .stdout;
    let file = t.lab.log_dir().join("metrics.txt");
    std::fs::write(&file, &scrape)?;
    let check = popa.exec(&[
        "sh",
        "-c",
        &format!("promtool check metrics < {}", file.display()),
    ])?;
    assert!(
        check.status.success(),
        "promtool check metrics: {}{}",
        check.stdout,
        check.stderr
    );
    for line in [
        "edgeproxy_bgp_graceful_restart_negotiated{peer=\"10.0.10.1\"} 1",
        "edgeproxy_bgp_graceful_restart_time_seconds{peer=\"10.0.10.1\"} 30",
        "edgeproxy_bgp_graceful_restart_forwarding_state{peer=\"10.0.10.1\"} 1",
        "edgeproxy_bgp_end_of_rib_sent{peer=\"10.0.10.1\"} 2",
    ] {
        assert!(
            scrape.lines().any(|l| l == line),
            "expected {line:?} in /metrics:\n{}",
            scrape
                .lines()
                .filter(|l| l.contains("edgeproxy_b"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    Ok(())
}

/// The kills and restarts; how long each agent took to be back (ready).
fn cycle(t: &mut Bgp, router: &dyn Router, next: &Path, bgp: &str) -> Result<Vec<Duration>, Error> {
    let mut back = Vec::new();
    for i in 0..RESTARTS {
        let eors = router.end_of_ribs();
        let agent = t.agents[0].take().ok_or("no agent")?;
        agent.signal(libc::SIGKILL)?;
        agent.wait_exit(Duration::from_secs(10))?;
        let killed = Instant::now();
        if i < RESTARTS / 2 {
            t.start_agent_with('a', bgp)?;
        } else {
            t.start_agent_bin('a', bgp, next)?;
        }
        back.push(killed.elapsed());
        // Until the new session's End-of-RIB is in and the paths are fresh again.
        let start = Instant::now();
        loop {
            let s = router.sample();
            // Both families' End-of-RIB from the new session.
            if s.popa && !s.stale && router.end_of_ribs() >= eors + 2 {
                break;
            }
            if start.elapsed() > Duration::from_secs(20) {
                return Err(format!(
                    "restart {i}: the router has not refreshed POP A's paths after 20 s:\n{}",
                    s.text
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // Spread over the stream.
        std::thread::sleep(Duration::from_millis(1500));
    }
    Ok(back)
}

/// BIRD as the router: `birdc` on its control socket, End-of-RIB counted in its log.
pub(super) struct Bird {
    pub socket: String,
    pub log: PathBuf,
}

impl Bird {
    fn birdc(&self, args: &[&str]) -> String {
        std::process::Command::new("birdc")
            .arg("-s")
            .arg(&self.socket)
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }
}

impl Router for Bird {
    fn sample(&self) -> Sample {
        let r4 = self.birdc(&["show", "route", "for", VIP4]);
        let r6 = self.birdc(&["show", "route", "for", VIP6]);
        let proto = self.birdc(&["show", "protocols", "all", "popa"]);
        Sample {
            popa: r4.contains("[popa") && r6.contains("[popa"),
            stale: proto.contains("Neighbor graceful restart active"),
            text: format!("{r4}{r6}"),
        }
    }

    fn end_of_ribs(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("popa") && l.contains("Got END-OF-RIB"))
            .count()
    }

    fn bfd_up(&self) -> bool {
        self.birdc(&["show", "bfd", "sessions"])
            .lines()
            .any(|l| l.contains("10.0.10.2") && l.contains("Up"))
    }
}

/// BIRD helping POP A's graceful restart (no BFD: BIRD ignores the C bit, and with `bfd on` a
/// killed agent's BFD session going down would flush the routes it keeps; see `bfd_lab`).
fn bird_config(log: &Path) -> String {
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
  debug {{ states, events, packets }};
  ipv4 {{ import all; export none; }};
  ipv6 {{ import all; export none; }};
}}
protocol bgp popb {{
  local 2001:db8:11::1 as 65000;
  neighbor 2001:db8:11::2 as 65002;
  hold time 9;
  connect delay time 1;
  connect retry time 1;
  error wait time 1, 2;
  ipv4 {{ import all; export none; }};
  ipv6 {{ import all; export none; }};
}}
"#,
        log.display()
    )
}

/// POP A with graceful restart (30 s) and the iperf3 service.
pub(super) fn pop_a_gr(extra_peer: &str) -> String {
    format!(
        "asn = 65001\ngraceful_restart_secs = 30\n\n[[bgp.peers]]\naddress = \"10.0.10.1\"\nasn = 65000\nnext_hop_v6 = \"2001:db8:10::2\"\n{extra_peer}{IPERF_SERVICE}"
    )
}

#[test]
fn bird_keeps_pop_a_through_ten_restarts_under_load() -> TestResult {
    super::anycast_lab::with_bird(
        super::anycast_lab::topology_with("grload", false),
        bird_config,
        |t| {
            let bird = Bird {
                socket: t.socket.clone(),
                log: t.bird_log.clone(),
            };
            restarts_under_load(t, &bird, &pop_a_gr(""))
        },
    )
}
