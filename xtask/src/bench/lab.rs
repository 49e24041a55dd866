//! The benchmark lab: `client` — `lb` — `backend`, the same addressing in every mode, so that the
//! edgeProxy agent (which NATs the VIP to the backend's IPv6 overlay address) fits without
//! changes, and the backend's servers.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use edge_tests::{Lab, LabProcess, NetNs, Topology};

use super::load;

pub const CLIENT: &str = "client";
pub const LB: &str = "lb";
pub const BACKEND: &str = "backend";

/// The service address the balancers answer on (on the lb's `lo` where something there owns it).
pub const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
/// The backend's IPv4 address: what `plain` targets and the IPv4 balancers forward to.
pub const BACKEND_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
/// The lb's and the backend's addresses on the overlay side (edgeProxy's full NAT uses these).
pub const LB_OVERLAY_V6: &str = "fd00:ee::1";
pub const BACKEND_OVERLAY_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xee, 0, 0, 0, 0, 0, 2);

pub const IPERF_PORT: u16 = 5201;
pub const HTTP_PORT: u16 = 8080;
pub const ECHO_PORT: u16 = 7007;
pub const PORTS: [(&str, u16); 3] = [
    ("iperf", IPERF_PORT),
    ("http", HTTP_PORT),
    ("echo", ECHO_PORT),
];

/// The CPU the round-trip and HTTP tests run the whole path on: both ends, the balancer, and
/// (receive steering off, `Lab::steering_off`) the packets' work, which then runs where each
/// packet is sent from. On two CPUs the scheduler put the echo server on the client's CPU in
/// some runs and on the other in others, and a round trip that has to wake an idle virtual CPU
/// took about 65 us instead of 7; the HTTP rates moved by 7-12% between rounds of one mode,
/// with which CPUs the connections' hashes and the scheduler picked, and each hop to the other
/// CPU costs an interrupt the host must deliver. On one CPU a round trip's time and a request
/// rate count what the path costs, the same way in every mode.
pub const PATH_CPU: usize = 0;

/// The MTU of every lab wire, the overlay side's included (a veth's default). The agent's
/// `overlay.mtu` is set to it so that edgeproxy's connections carry the segments the wire does:
/// with WireGuard's 1420 there, as the bench once had it, the agent clamped their MSS 80 bytes
/// lower and edgeproxy moved 7% more packets per byte than every other mode.
pub const WIRE_MTU: u16 = 1500;

/// Every veth end of the lab.
pub const VETHS: [(&str, &str); 4] = [
    (CLIENT, "eth0"),
    (LB, "eth0"),
    (LB, "ovl0"),
    (BACKEND, "eth0"),
];

/// The body nginx serves: small, so the HTTP figures measure connection and request handling
/// rather than bulk transfer.
pub const HTTP_BODY: &str = "edgeproxy bench\n";

/// The three namespaces. `with_vip` puts the VIP on the lb's `lo` as a /32, for the modes where
/// a process or the kernel's NAT on lb owns it; without, the backend owns it and lb routes it.
/// `gro`: every veth end coalesces what it receives, as a NIC's driver does.
pub fn topology(with_vip: bool, gro: bool) -> Topology {
    let mut t = Topology::new("bench")
        .ns(CLIENT)
        .ns(LB)
        .ns(BACKEND)
        .veth(VETHS[0], VETHS[1])
        .veth(VETHS[2], VETHS[3])
        // A wire delivers full checksums; veth tx offload would hand the lb partial ones, which
        // an XDP NAT must not be allowed to get away with (see TOOLCHAIN.md). Off in every mode,
        // so that every mode pays the same cost for it.
        .tx_checksum_off(CLIENT, "eth0")
        .tx_checksum_off(BACKEND, "eth0")
        .sysctl(LB, "net.ipv4.ip_forward", "1")
        .sysctl(LB, "net.ipv6.conf.all.forwarding", "1")
        .addr(CLIENT, "eth0", "10.0.1.2/24")
        .addr(CLIENT, "eth0", "2001:db8:1::2/64")
        .addr(LB, "eth0", "10.0.1.1/24")
        .addr(LB, "eth0", "2001:db8:1::1/64")
        .addr(LB, "ovl0", "10.0.2.1/24")
        .addr(LB, "ovl0", &format!("{LB_OVERLAY_V6}/64"))
        .addr(BACKEND, "eth0", &format!("{BACKEND_V4}/24"))
        .addr(BACKEND, "eth0", &format!("{BACKEND_OVERLAY_V6}/64"))
        .route(CLIENT, "default", "10.0.1.1")
        .route(CLIENT, "default", "2001:db8:1::1")
        .route(BACKEND, "default", "10.0.2.1")
        .route(BACKEND, "default", LB_OVERLAY_V6);
    // The HTTP test with a new connection per request opens tens of thousands of connections in
    // a few seconds; with the default 28k ephemeral ports and 60 s TIME_WAIT the port supply,
    // not the path under test, would set the figure. The client and the lb (where the proxies
    // open their backend connections) get the full range and TIME_WAIT reuse, in every mode.
    for ns in [CLIENT, LB] {
        t = t
            .sysctl(ns, "net.ipv4.ip_local_port_range", "1024 65535")
            .sysctl(ns, "net.ipv4.tcp_tw_reuse", "1");
    }
    // The kernel's receive hash of an IPv6 packet with a flow label covers its addresses and
    // label, not its ports, and each end draws its label at random per connection: IPv6
    // connections would land on CPUs at random from run to run, IPv4 ones by their ports. A
    // NIC's RSS hashes addresses and ports in both families; without labels, so does the lab.
    for ns in [CLIENT, LB, BACKEND] {
        t = t.sysctl(ns, "net.ipv6.auto_flowlabels", "0");
    }
    if gro {
        for (ns, ifname) in VETHS {
            t = t.gro_on(ns, ifname);
        }
    }
    if with_vip {
        t = t.addr(LB, "lo", &format!("{VIP}/32"));
    } else {
        // Plain routing to the same address the balancers answer on.
        t = t.addr(BACKEND, "lo", &format!("{VIP}/32")).route(
            LB,
            &format!("{VIP}/32"),
            &BACKEND_V4.to_string(),
        );
    }
    t
}

/// Paths of the workspace's helper binaries (built in release by the bench).
pub struct Tools {
    pub echo_server: std::path::PathBuf,
    pub echo_client: std::path::PathBuf,
    pub tokio_proxy: std::path::PathBuf,
}

/// The backend's servers; dropping this stops them.
pub struct Backends {
    _processes: Vec<LabProcess>,
}

/// Starts iperf3, nginx and the echo server on the backend, listening on all addresses (IPv4
/// and IPv6, so the overlay address serves edgeProxy's NAT46 flows), and waits until each answers.
pub fn start_backends(lab: &Lab, tools: &Tools) -> anyhow::Result<Backends> {
    let ns = lab.ns(BACKEND);
    let mut processes = Vec::new();

    processes.push(start_iperf_server(ns)?);

    let echo_addr = format!("[::]:{ECHO_PORT}");
    let echo = ns.spawn(
        "echo-server",
        // On the path's CPU with the rest of the lab while the round trips run (`Lab::pinned`).
        &[&tools.echo_server.to_string_lossy(), &echo_addr],
        &[],
    )?;
    wait_ready(&echo, "echo-server ready", Duration::from_secs(10))?;
    processes.push(echo);

    let conf = write_nginx_conf(lab.log_dir())?;
    let prefix = lab.log_dir().to_string_lossy().into_owned();
    let nginx = ns.spawn(
        "nginx",
        &[
            "nginx",
            "-p",
            &prefix,
            // nginx opens its compiled-in error log before reading the config; point it here.
            "-e",
            &format!("{prefix}/nginx-error.log"),
            "-c",
            &conf.to_string_lossy(),
        ],
        &[],
    )?;
    let local = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), HTTP_PORT);
    wait_until(Duration::from_secs(10), || {
        if !nginx.is_running() {
            bail!(
                "nginx exited: {}",
                process_output(&nginx, lab.log_dir().join("nginx-error.log").as_path())
            );
        }
        Ok(ns
            .run_in_thread(|| load::http_get(local, Duration::from_secs(1)))?
            .is_ok())
    })
    .context("nginx on the backend did not answer")?;
    processes.push(nginx);

    Ok(Backends {
        _processes: processes,
    })
}

/// A minimal nginx: a fixed body from memory (`return`, no file system in the request path),
/// no access log, everything it writes kept in the lab's log directory, and keep-alive
/// connections that are never closed by the server during a run (the default closes them after
/// 1000 requests, which would turn the keep-alive test partly into a new-connection one).
fn write_nginx_conf(dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    let d = dir.display();
    let conf = format!(
        r#"# Written by cargo xtask bench.
daemon off;
master_process on;
worker_processes 2;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    client_body_temp_path {d}/nginx-body;
    proxy_temp_path {d}/nginx-proxy;
    fastcgi_temp_path {d}/nginx-fastcgi;
    uwsgi_temp_path {d}/nginx-uwsgi;
    scgi_temp_path {d}/nginx-scgi;
    keepalive_requests 100000000;
    keepalive_timeout 120s;
    server {{
        listen {HTTP_PORT} backlog=4096;
        listen [::]:{HTTP_PORT} backlog=4096;
        location / {{
            default_type text/plain;
            return 200 "{body}";
        }}
    }}
}}
"#,
        body = HTTP_BODY.escape_default(),
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Waits until `process` prints `needle`, failing at once (with its exit status and output) if
/// it exits first.
/// `iperf3 --server` on [`IPERF_PORT`] in `ns`, once it listens.
pub fn start_iperf_server(ns: &NetNs) -> anyhow::Result<LabProcess> {
    let iperf = ns.spawn(
        "iperf3-server",
        // --forceflush: its stdout is a pipe, and the ready line would sit in a buffer.
        &[
            "iperf3",
            "--server",
            "--forceflush",
            "--port",
            &IPERF_PORT.to_string(),
        ],
        &[],
    )?;
    wait_ready(&iperf, "Server listening", Duration::from_secs(10))?;
    Ok(iperf)
}

pub fn wait_ready(process: &LabProcess, needle: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if process.output_so_far().contains(needle) {
            return Ok(());
        }
        if !process.is_running() {
            let status = process
                .wait_exit(Duration::from_secs(1))
                .map_or_else(|e| e.to_string(), |s| s.to_string());
            bail!(
                "`{}` exited ({status}) before printing `{needle}`; its output:\n{}",
                process.name(),
                process.output_so_far()
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "`{}` did not print `{needle}` within {timeout:?}; its output:\n{}",
                process.name(),
                process.output_so_far()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `ready` every 50 ms until it returns true, fails, or `timeout` passes.
pub fn wait_until(
    timeout: Duration,
    mut ready: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if ready()? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A process's captured output plus the tail of a log file it writes, for error messages.
pub fn process_output(process: &LabProcess, log: &Path) -> String {
    let file = std::fs::read_to_string(log).unwrap_or_default();
    let tail: Vec<&str> = file.lines().rev().take(20).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    format!("{}{}", process.output_so_far(), tail.join("\n"))
}

/// `exec_bounded` for a load generator of the round-trip and HTTP tests: started while the lab
/// is held on the path's CPU (`Lab::pinned` moves only processes already running), it starts
/// there too.
pub fn exec_on_path_cpu(ns: &NetNs, limit: Duration, argv: &[&str]) -> anyhow::Result<String> {
    let cpu = PATH_CPU.to_string();
    let mut full = vec!["taskset", "--cpu-list", &cpu];
    full.extend_from_slice(argv);
    exec_bounded(ns, limit, &full)
}

/// Runs `argv` in `ns` under coreutils' `timeout`, so that a broken path fails the step instead
/// of hanging the run; a non-zero exit is an error carrying the tool's output.
pub fn exec_bounded(ns: &NetNs, limit: Duration, argv: &[&str]) -> anyhow::Result<String> {
    let secs = limit.as_secs().max(1).to_string();
    let mut full = vec!["timeout", "--kill-after=5", &secs];
    full.extend_from_slice(argv);
    let out = ns
        .exec(&full)
        .with_context(|| format!("running {}", argv.join(" ")))?;
    if !out.success() {
        let code = out.status.code();
        let why = if code == Some(124) {
            format!("timed out after {secs} s")
        } else {
            format!("exit {code:?}")
        };
        bail!(
            "`{}` failed ({why}): {}{}",
            argv.join(" "),
            out.stderr.trim(),
            // Some tools (iperf3 -J) report their errors on stdout.
            if out.stdout.len() < 4000 {
                format!(" {}", out.stdout.trim())
            } else {
                String::new()
            }
        );
    }
    Ok(out.stdout)
}
