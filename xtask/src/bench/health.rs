//! Health checks at scale: the real agent in a POP lab checks 1,000 backends (one backend host
//! listening on 1,000 ports) every second, and its CPU time and memory are read from /proc,
//! beside the same agent with checks off (the baseline, measured in the same run).

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use edge_tests::{
    pop_lab::{backend_addr, start_agent, topology, OVERLAY, VIP4},
    LabProcess,
};
use serde_json::{json, Value};

use crate::shell;

const BACKENDS: u16 = 1000;
const FIRST_PORT: u16 = 20_000;
const WARMUP: Duration = Duration::from_secs(4);
const WINDOW: Duration = Duration::from_secs(15);

fn config(checks: bool) -> String {
    let addr = backend_addr(1);
    let backends: Vec<String> = (0..BACKENDS)
        .map(|i| {
            format!(
                "{{ name = \"be{i}\", addr = \"{addr}\", port = {} }}",
                FIRST_PORT + i
            )
        })
        .collect();
    format!(
        "iface = \"eth0\"\nstats_log_secs = 1\nregion = \"eu\"\n\n\
         [overlay]\niface = \"ovl0\"\naddr = \"{OVERLAY}\"\n\n\
         [flows]\nmax_entries = 65536\n\n\
         # 100 slots per backend keep the Maglev split within about 1%.\n\
         [maglev]\ntable_size = 100003\nmax_services = 2\n\n\
         [health]\nenabled = {checks}\ninterval_ms = 1000\ntimeout_ms = 500\n\n\
         [[services]]\nname = \"many\"\nvip = \"{VIP4}\"\nport = 80\nbackends = [\n  {}\n]\n",
        backends.join(",\n  ")
    )
}

/// (user + system CPU seconds, resident KiB, peak resident KiB) of `pid`.
fn usage(pid: u32) -> anyhow::Result<(f64, u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed /proc/<pid>/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5), 12 and 13 after the name.
    let ticks: u64 = fields
        .get(11)
        .zip(fields.get(12))
        .and_then(|(u, s)| Some(u.parse::<u64>().ok()? + s.parse::<u64>().ok()?))
        .context("no utime/stime in /proc/<pid>/stat")?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok((ticks as f64 / hz, kib("VmRSS:"), kib("VmHWM:")))
}

/// The last `health_checks=N` the agent logged.
fn checks_logged(agent: &LabProcess) -> u64 {
    agent
        .output_so_far()
        .rsplit("health_checks=")
        .next()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

struct Run {
    cpu_percent: f64,
    rss_kib: u64,
    peak_kib: u64,
    checks_per_sec: f64,
}

fn measure(agent_bin: &Path, echo_server: &Path, checks: bool) -> anyhow::Result<Run> {
    let lab = topology("hbench", 1).up()?;
    let server = echo_server.to_string_lossy();
    let listen: Vec<String> = (0..BACKENDS)
        .map(|i| format!("[::]:{}", FIRST_PORT + i))
        .collect();
    let mut argv = vec![&*server];
    argv.extend(listen.iter().map(String::as_str));
    let backends = lab.ns("be1").spawn("echo-server", &argv, &[])?;
    backends.wait_for_output("echo-server ready", Duration::from_secs(20))?;
    let agent = start_agent(&lab, agent_bin, &config(checks), &["--reset"])?;
    std::thread::sleep(WARMUP);
    let (cpu0, _, _) = usage(agent.pid())?;
    let (checks0, t0) = (checks_logged(&agent), Instant::now());
    std::thread::sleep(WINDOW);
    let (cpu1, rss_kib, peak_kib) = usage(agent.pid())?;
    let (checks1, elapsed) = (checks_logged(&agent), t0.elapsed().as_secs_f64());
    let log = agent.output_so_far();
    if checks && log.contains("backend health changed") && log.contains("to=down") {
        bail!("a backend was marked down during the bench: the checker fell behind\n{log}");
    }
    drop(agent);
    drop(backends);
    drop(lab);
    Ok(Run {
        cpu_percent: (cpu1 - cpu0) / elapsed * 100.0,
        rss_kib,
        peak_kib,
        checks_per_sec: checks1.saturating_sub(checks0) as f64 / elapsed,
    })
}

pub fn run(agent_bin: &Path) -> anyhow::Result<()> {
    let echo_server = shell::target_dir().join("release").join("echo-server");
    println!(
        "\nHealth checks: {BACKENDS} backends, TCP check every second, agent CPU and memory ({} s window):",
        WINDOW.as_secs()
    );
    let off = measure(agent_bin, &echo_server, false).context("agent with checks off")?;
    let on = measure(agent_bin, &echo_server, true).context("agent with checks on")?;
    let expected = f64::from(BACKENDS);
    println!(
        "  {:<28} {:>10} {:>14} {:>10} {:>10}",
        "", "checks/s", "CPU (% core)", "RSS MiB", "peak MiB"
    );
    for (label, r) in [
        ("checks off (baseline)", &off),
        ("1000 backends every 1 s", &on),
    ] {
        println!(
            "  {:<28} {:>10.0} {:>14.1} {:>10.1} {:>10.1}",
            label,
            r.checks_per_sec,
            r.cpu_percent,
            r.rss_kib as f64 / 1024.0,
            r.peak_kib as f64 / 1024.0
        );
    }
    println!(
        "  checks cost {:.1}% of one core over the baseline (aim: under 10%), {:.1} MiB more memory",
        on.cpu_percent - off.cpu_percent,
        (on.rss_kib as f64 - off.rss_kib as f64) / 1024.0
    );
    let doc: Value = json!({
        "backends": BACKENDS,
        "interval_secs": 1,
        "window_secs": WINDOW.as_secs(),
        "baseline": {"cpu_percent": off.cpu_percent, "rss_kib": off.rss_kib, "peak_kib": off.peak_kib},
        "checking": {"cpu_percent": on.cpu_percent, "rss_kib": on.rss_kib, "peak_kib": on.peak_kib,
                     "checks_per_sec": on.checks_per_sec},
    });
    let path = shell::workspace_root().join("target/bench/health.json");
    std::fs::write(&path, serde_json::to_string_pretty(&doc)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("(written to {})", path.display());
    if on.checks_per_sec < expected * 0.9 {
        bail!(
            "only {:.0} checks/s for {BACKENDS} backends checked every second",
            on.checks_per_sec
        );
    }
    Ok(())
}
