//! `cargo xtask run` with no arguments: a lab of two clients, a router, a POP running the agent
//! with XDP on its public interface, and a backend; traffic flows until Ctrl-C, while the live
//! counters are printed from the pinned maps. Everything is removed on the way out.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use edge_lab::{Lab, Topology};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn request_stop(_signal: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

const BACKEND_V4: &str = "10.50.0.2";
const BACKEND_V6: &str = "fd50::2";
const BACKEND_PORT: &str = "8080";

/// client-a and client-b reach the backend through the router and the POP; the POP's `eth0`
/// (its public side) carries the XDP program.
pub fn topology() -> Topology {
    Topology::new("demo")
        .ns("client-a")
        .ns("client-b")
        .ns("router")
        .ns("pop")
        .ns("backend")
        .veth(("client-a", "eth0"), ("router", "ca"))
        .veth(("client-b", "eth0"), ("router", "cb"))
        .veth(("router", "pop"), ("pop", "eth0"))
        .veth(("pop", "be"), ("backend", "eth0"))
        // A wire delivers full checksums; veth offload would hand XDP partial ones.
        .tx_checksum_off("router", "pop")
        .sysctl("router", "net.ipv4.ip_forward", "1")
        .sysctl("router", "net.ipv6.conf.all.forwarding", "1")
        .sysctl("pop", "net.ipv4.ip_forward", "1")
        .sysctl("pop", "net.ipv6.conf.all.forwarding", "1")
        .addr("client-a", "eth0", "198.51.100.10/24")
        .addr("client-a", "eth0", "2001:db8:a::10/64")
        .addr("client-b", "eth0", "192.0.2.10/24")
        .addr("client-b", "eth0", "2001:db8:b::10/64")
        .addr("router", "ca", "198.51.100.1/24")
        .addr("router", "ca", "2001:db8:a::1/64")
        .addr("router", "cb", "192.0.2.1/24")
        .addr("router", "cb", "2001:db8:b::1/64")
        .addr("router", "pop", "100.64.0.1/30")
        .addr("router", "pop", "2001:db8:ff::1/64")
        .addr("pop", "eth0", "100.64.0.2/30")
        .addr("pop", "eth0", "2001:db8:ff::2/64")
        .addr("pop", "be", "10.50.0.1/24")
        .addr("pop", "be", "fd50::1/64")
        .addr("backend", "eth0", "10.50.0.2/24")
        .addr("backend", "eth0", "fd50::2/64")
        .route("client-a", "default", "198.51.100.1")
        .route("client-a", "default", "2001:db8:a::1")
        .route("client-b", "default", "192.0.2.1")
        .route("client-b", "default", "2001:db8:b::1")
        .route("router", "10.50.0.0/24", "100.64.0.2")
        .route("router", "fd50::/64", "2001:db8:ff::2")
        .route("pop", "default", "100.64.0.1")
        .route("pop", "default", "2001:db8:ff::1")
        .route("backend", "default", "10.50.0.1")
        .route("backend", "default", "fd50::1")
}

/// Removes the lab agent's pins even when the demo fails half-way.
struct PinGuard(PathBuf);

impl Drop for PinGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A shell loop that opens a TCP connection and pings, five times a second. `socat_host` is the
/// address as socat takes it (IPv6 in brackets).
fn client_loop(target: &str, socat_host: &str) -> String {
    format!(
        "while :; do \
           echo hello | socat -t1 - TCP:{socat_host}:{BACKEND_PORT},connect-timeout=1 >/dev/null 2>&1; \
           ping -c1 -W1 {target} >/dev/null 2>&1; \
           sleep 0.2; \
         done"
    )
}

pub fn run(agent: &Path, duration: Option<Duration>) -> anyhow::Result<()> {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(
            libc::SIGINT,
            request_stop as *const () as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGTERM,
            request_stop as *const () as libc::sighandler_t,
        );
    }
    let lab = topology().up().context("bringing up the demo lab")?;
    println!("lab run id: {}", lab.run_id());
    let pins = PinGuard(edge_lab::bpffs_pin_dir(lab.ns("pop").name()));
    let run_id = lab.run_id().to_string();
    let result = drive(&lab, agent, &pins.0, duration);
    drop(pins);
    drop(lab);
    let left = edge_lab::find_leftovers(Some(&run_id));
    if !left.is_empty() {
        bail!("the lab left objects behind:\n{left}");
    }
    println!("lab removed; nothing left behind");
    result
}

fn drive(lab: &Lab, agent: &Path, pins: &Path, duration: Option<Duration>) -> anyhow::Result<()> {
    let agent_str = agent.to_string_lossy();
    let pins_str = pins.to_string_lossy();
    let backend = lab.ns("backend").spawn(
        "backend",
        &[
            "socat",
            &format!("TCP6-LISTEN:{BACKEND_PORT},fork,reuseaddr,ipv6only=0"),
            "SYSTEM:cat",
        ],
        &[],
    )?;
    let pop_agent = lab.ns("pop").spawn(
        "agent",
        &[
            &agent_str,
            "--bpffs-root",
            &pins_str,
            "run",
            "--iface",
            "eth0",
            "--reset",
        ],
        &[("EDGEPROXY_STATS_LOG_SECS", "0")],
    )?;
    pop_agent
        .wait_for_output("edge-agent ready", Duration::from_secs(20))
        .context("the agent did not start")?;
    let _client_a = lab.ns("client-a").spawn(
        "client-a",
        &["sh", "-c", &client_loop(BACKEND_V4, BACKEND_V4)],
        &[],
    )?;
    let _client_b = lab.ns("client-b").spawn(
        "client-b",
        &[
            "sh",
            "-c",
            &client_loop(BACKEND_V6, &format!("[{BACKEND_V6}]")),
        ],
        &[],
    )?;

    println!(
        "edgeProxy lab {}: client-a, client-b -> router -> pop (XDP on eth0) -> backend {BACKEND_V4} / [{BACKEND_V6}]:{BACKEND_PORT}",
        lab.run_id()
    );
    println!(
        "inspect: bpftool map dump pinned {}/maps/EDGE_STATS",
        pins.display()
    );
    println!("Ctrl-C stops the lab and removes it.\n");
    let started = Instant::now();
    while !STOP.load(Ordering::SeqCst) && duration.is_none_or(|d| started.elapsed() < d) {
        let status = Command::new(agent)
            .args(["--bpffs-root", &pins_str, "status"])
            .output()
            .context("running edge-agent status")?;
        println!(
            "--- {:>5.1}s ---\n{}{}",
            started.elapsed().as_secs_f64(),
            String::from_utf8_lossy(&status.stdout),
            String::from_utf8_lossy(&status.stderr)
        );
        if !pop_agent.is_running() {
            bail!("the agent exited:\n{}", pop_agent.output_so_far());
        }
        for _ in 0..10 {
            if STOP.load(Ordering::SeqCst) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    println!("stopping: agent, clients, backend, then the lab");
    drop(backend);
    Ok(())
}
