//! `cargo xtask run` with no arguments: the POP lab (`edge_lab::pop_lab`) with three backends,
//! clients connecting to the IPv4 and IPv6 VIPs in a loop, and the agent's live view of the data
//! plane (packet classes, services, backends, flows) until Ctrl-C. Everything is removed on the
//! way out.

use std::{
    path::Path,
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use edge_lab::{
    pop_lab::{self, VIP4, VIP6},
    Lab,
};

use crate::shell;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn request_stop(_signal: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

const BACKENDS: usize = 3;

/// Removes the lab agent's pins even when the demo fails half-way.
struct PinGuard(std::path::PathBuf);

impl Drop for PinGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A shell loop opening short echo connections to both VIPs, five times a second.
fn client_loop() -> String {
    format!(
        "while :; do \
           echo hello | socat -t1 - TCP:{VIP4}:7,connect-timeout=1 >/dev/null 2>&1; \
           echo hello | socat -t1 - TCP:[{VIP6}]:7,connect-timeout=1 >/dev/null 2>&1; \
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
    let lab = pop_lab::topology("demo", BACKENDS)
        .up()
        .context("bringing up the demo lab")?;
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
    let _backends = pop_lab::start_backends(lab, BACKENDS, &shell::debug_bin("echo-server")?)?;
    let pop_agent = pop_lab::start_agent(
        lab,
        agent,
        &pop_lab::agent_config(BACKENDS, ""),
        &["--reset"],
    )
    .context("the agent did not start")?;
    let _client = lab
        .ns("client")
        .spawn("client", &["sh", "-c", &client_loop()], &[])?;

    println!(
        "edgeProxy lab {}: client -> VIPs {VIP4}:7 and [{VIP6}]:7 at the POP (XDP on eth0, full NAT) \
         -> overlay [{}] -> {BACKENDS} echo backends",
        lab.run_id(),
        pop_lab::OVERLAY
    );
    println!(
        "inspect: bpftool map dump pinned {}/maps/FLOWS",
        pins.display()
    );
    println!("Ctrl-C stops the lab and removes it.\n");
    let pins_str = pins.to_string_lossy();
    let started = Instant::now();
    while !STOP.load(Ordering::SeqCst) && duration.is_none_or(|d| started.elapsed() < d) {
        let mut screen = format!("--- {:>5.1}s ---\n", started.elapsed().as_secs_f64());
        for args in [&["status"][..], &["flows", "--limit", "6"][..]] {
            let out = Command::new(agent)
                .args(["--bpffs-root", &pins_str])
                .args(args)
                .output()
                .context("running edge-agent")?;
            screen.push_str(&String::from_utf8_lossy(&out.stdout));
            screen.push_str(&String::from_utf8_lossy(&out.stderr));
            screen.push('\n');
        }
        println!("{screen}");
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
    println!("stopping: agent, clients, backends, then the lab");
    Ok(())
}
