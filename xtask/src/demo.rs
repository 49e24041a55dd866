//! `cargo xtask run` with no arguments: geo-routed flows, live. The POP lab (`edge_lab::pop_lab`)
//! with four backends in four regions, clients from eight countries (their prefixes in a
//! country database this demo writes), and the agent's view of the data plane - flows with the
//! backend each client's country was steered to, and every backend's share of each country's
//! table - until Ctrl-C. Everything is removed on the way out.

use std::{
    fmt::Write as _,
    path::Path,
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use edge_lab::{
    pop_lab::{self, VIP4, VIP6},
    Lab, Topology,
};

use crate::shell;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn request_stop(_signal: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// (backend name, region, country); backend n listens on `pop_lab::backend_addr(n)`.
const BACKENDS: [(&str, &str, &str); 4] = [
    ("sao-paulo", "sa", "BR"),
    ("virginia", "us", "US"),
    ("frankfurt", "eu", "DE"),
    ("tokyo", "ap", "JP"),
];

/// (client address, its prefix in the demo's country database, country).
const CLIENTS: [(&str, &str, &str); 8] = [
    ("10.0.1.17", "10.0.1.16/28", "BR"),
    ("10.0.1.33", "10.0.1.32/28", "AR"),
    ("10.0.1.49", "10.0.1.48/28", "US"),
    ("10.0.1.65", "10.0.1.64/28", "CA"),
    ("10.0.1.81", "10.0.1.80/28", "DE"),
    ("10.0.1.97", "10.0.1.96/28", "FR"),
    ("10.0.1.113", "10.0.1.112/28", "JP"),
    ("10.0.1.129", "10.0.1.128/28", "AU"),
];

/// Removes the lab agent's pins even when the demo fails half-way.
struct PinGuard(std::path::PathBuf);

impl Drop for PinGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn topology() -> Topology {
    CLIENTS.iter().fold(
        pop_lab::topology("demo", BACKENDS.len()),
        |t, (addr, _, _)| t.addr("client", "eth0", &format!("{addr}/24")),
    )
}

/// The agent's configuration: the POP in eu, one service on both VIPs, the geo database.
fn agent_config(geo: &Path) -> String {
    let backends: Vec<String> = BACKENDS
        .iter()
        .enumerate()
        .map(|(i, (name, region, country))| {
            format!(
                "{{ name = \"{name}\", addr = \"{}\", port = {}, region = \"{region}\", country = \"{country}\" }}",
                pop_lab::backend_addr(i + 1),
                pop_lab::BACKEND_PORT
            )
        })
        .collect();
    let backends = backends.join(",\n    ");
    let mut config = format!(
        "iface = \"eth0\"\nstats_log_secs = 0\nregion = \"eu\"\n\n[overlay]\niface = \"ovl0\"\naddr = \"{}\"\n\n\
         [flows]\nmax_entries = 65536\n\n[maglev]\nmax_services = 8\n\n[geo]\ndatabase = \"{}\"\n",
        pop_lab::OVERLAY,
        geo.display()
    );
    for (name, vip) in [("web4", VIP4), ("web6", VIP6)] {
        let _ = write!(
            config,
            "\n[[services]]\nname = \"{name}\"\nvip = \"{vip}\"\nport = 7\nbackends = [\n    {backends}\n]\n"
        );
    }
    config
}

/// A shell loop: every client address opens a short echo connection to the IPv4 VIP in turn,
/// and one IPv6 connection per round.
fn client_loop() -> String {
    let addrs: Vec<&str> = CLIENTS.iter().map(|(a, _, _)| *a).collect();
    format!(
        "while :; do \
           for a in {}; do \
             echo hello | socat -t1 - TCP:{VIP4}:7,bind=$a,connect-timeout=1 >/dev/null 2>&1; \
           done; \
           echo hello | socat -t1 - TCP:[{VIP6}]:7,connect-timeout=1 >/dev/null 2>&1; \
           sleep 0.3; \
         done",
        addrs.join(" ")
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
    let geo = lab.log_dir().join("countries.csv");
    let csv: String = CLIENTS
        .iter()
        .map(|(_, prefix, country)| format!("{prefix},{country}\n"))
        .collect();
    std::fs::write(&geo, csv).with_context(|| format!("writing {}", geo.display()))?;
    let _backends =
        pop_lab::start_backends(lab, BACKENDS.len(), &shell::debug_bin("echo-server")?)?;
    let config = agent_config(&geo);
    let pop_agent = pop_lab::start_agent(lab, agent, &config, &["--reset"])
        .context("the agent did not start")?;
    let _client = lab
        .ns("client")
        .spawn("client", &["sh", "-c", &client_loop()], &[])?;

    println!(
        "edgeProxy lab {}: clients in BR AR US CA DE FR JP AU -> VIP {VIP4}:7 (and [{VIP6}]:7) at a POP in eu \
         (XDP/TC full NAT) -> backends sao-paulo (BR, sa), virginia (US, us), frankfurt (DE, eu), tokyo (JP, ap)",
        lab.run_id()
    );
    println!(
        "v1's rules: same country, else the client's region, else the POP's region, else anywhere."
    );
    println!(
        "inspect: bpftool map dump pinned {}/maps/FLOWS",
        pins.display()
    );
    println!("Ctrl-C stops the lab and removes it.\n");
    let pins_str = pins.to_string_lossy();
    let config_path = lab.log_dir().join("agent.toml");
    let config_str = config_path.to_string_lossy();
    let started = Instant::now();
    while !STOP.load(Ordering::SeqCst) && duration.is_none_or(|d| started.elapsed() < d) {
        let mut screen = format!("--- {:>5.1}s ---\n", started.elapsed().as_secs_f64());
        for args in [
            &["status"][..],
            &["flows", "--limit", "9"][..],
            &["--config", &config_str, "backends"][..],
        ] {
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
