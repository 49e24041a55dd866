//! The POP lab used by the end-to-end tests and by `cargo xtask run`: a client namespace with
//! IPv4 and IPv6 addresses, a POP with the data plane on its public `eth0` and the overlay on
//! `ovl0`, a hub routing the overlay, and IPv6-only backends behind it.
//!
//! ```text
//! client --eth0-- pop (XDP eth0, TC ovl0) --ovl0-- hub --b1-- be1 [fd00:ee:1:1::2]
//!                 VIPs on lo                           --b2-- be2 [fd00:ee:1:2::2] ...
//! ```

use std::{path::Path, time::Duration};

use crate::{
    agent_config::{AgentConfig, Service},
    bpffs_pin_dir, Lab, LabProcess, Result, Topology,
};

pub const VIP4: &str = "198.18.0.10";
pub const VIP6: &str = "2001:db8:ff::10";
/// The POP's overlay address: the source backends see.
pub const OVERLAY: &str = "fd00:ee::1";
/// The /96 IPv4 clients are translated into when a config sets `overlay.snat_prefix`.
pub const SNAT_PREFIX: &str = "fd00:ee:ff::/96";
pub const CLIENT4: &str = "10.0.1.2";
pub const CLIENT6: &str = "2001:db8:1::2";
/// The echo port the backends listen on.
pub const BACKEND_PORT: u16 = 7007;
pub const TABLE_SIZE: u32 = 4099;

/// The overlay address of backend `n` (1-based).
pub fn backend_addr(n: usize) -> String {
    format!("fd00:ee:1:{n}::2")
}

/// The topology with `backends` backend namespaces `be1`...
pub fn topology(label: &str, backends: usize) -> Topology {
    let mut t = Topology::new(label)
        .ns("client")
        .ns("pop")
        .ns("hub")
        .veth(("client", "eth0"), ("pop", "eth0"))
        .veth(("pop", "ovl0"), ("hub", "up"))
        // What a wire delivers: full checksums into the XDP program (see TOOLCHAIN.md).
        .tx_checksum_off("client", "eth0")
        .sysctl("pop", "net.ipv4.ip_forward", "1")
        .sysctl("pop", "net.ipv6.conf.all.forwarding", "1")
        .sysctl("hub", "net.ipv6.conf.all.forwarding", "1")
        .addr("client", "eth0", &format!("{CLIENT4}/24"))
        .addr("client", "eth0", &format!("{CLIENT6}/64"))
        .addr("pop", "eth0", "10.0.1.1/24")
        .addr("pop", "eth0", "2001:db8:1::1/64")
        // The VIPs are local to the POP: a non-SYN packet with no flow reaches the kernel,
        // which answers with a RST.
        .addr("pop", "lo", &format!("{VIP4}/32"))
        .addr("pop", "lo", &format!("{VIP6}/128"))
        .addr("pop", "ovl0", &format!("{OVERLAY}/64"))
        .addr("hub", "up", "fd00:ee::fe/64")
        // The POP's SNAT /96 (`overlay.snat_prefix`), for configs that use it.
        .route("hub", "fd00:ee:ff::/96", OVERLAY)
        .route("client", "default", "10.0.1.1")
        .route("client", "default", "2001:db8:1::1")
        .route("pop", "fd00:ee:1::/48", "fd00:ee::fe");
    for n in 1..=backends {
        let (ns, port) = (format!("be{n}"), format!("b{n}"));
        t = t
            .ns(&ns)
            .veth(("hub", &port), (&ns, "eth0"))
            .addr("hub", &port, &format!("fd00:ee:1:{n}::1/64"))
            .addr(&ns, "eth0", &format!("{}/64", backend_addr(n)))
            .route(&ns, "default", &format!("fd00:ee:1:{n}::1"));
    }
    t
}

/// An agent configuration serving echo on both VIPs (port 7) from `backends` backends.
pub fn agent_config(backends: usize) -> AgentConfig {
    let echo = |name: &str, vip: &str| {
        (1..=backends).fold(Service::new(name, vip, 7), |service, n| {
            service.backend(&format!("be{n}"), &backend_addr(n), BACKEND_PORT)
        })
    };
    AgentConfig::pop()
        .overlay("ovl0", OVERLAY)
        .max_flows(65_536)
        .table_size(TABLE_SIZE)
        .max_services(8)
        // Spread every connection by its 5-tuple; tests of client affinity set their own TTL.
        .affinity_ttl_secs(0)
        .service(echo("echo4", VIP4))
        .service(echo("echo6", VIP6))
}

/// An agent of this lab whose services and backends come from the state database `db`:
/// region `eu`, the overlay on `ovl0`, 65536 flows, 8 services.
pub fn state_agent_config(db: &Path) -> AgentConfig {
    AgentConfig::pop()
        .region("eu")
        .overlay("ovl0", OVERLAY)
        .max_flows(65_536)
        .max_services(8)
        .state_database(db)
}

/// Starts `echo_server` (the `echo-server` binary) in every backend namespace.
pub fn start_backends(lab: &Lab, backends: usize, echo_server: &Path) -> Result<Vec<LabProcess>> {
    let server = echo_server.to_string_lossy();
    let listen = format!("[::]:{BACKEND_PORT}");
    let mut servers = Vec::new();
    for n in 1..=backends {
        let process = lab
            .ns(&format!("be{n}"))
            .spawn("echo-server", &[&server, &listen], &[])?;
        process.wait_for_output("echo-server ready", Duration::from_secs(10))?;
        servers.push(process);
    }
    Ok(servers)
}

/// Writes `config` to the lab's log directory and starts `agent` in the POP with it, pinning
/// under the POP's own bpffs directory; returns once the agent is ready.
pub fn start_agent(
    lab: &Lab,
    agent: &Path,
    config: &str,
    extra_args: &[&str],
) -> Result<LabProcess> {
    start_agent_under(lab, &[], agent, config, extra_args)
}

/// [`start_agent`] through `wrapper`, a command that runs the agent after it (for example
/// `prlimit --nofile=N:N --`, to give the agent the limits a deployment gives it). The wrapper
/// must exec the agent, so that the process is the agent's.
pub fn start_agent_under(
    lab: &Lab,
    wrapper: &[&str],
    agent: &Path,
    config: &str,
    extra_args: &[&str],
) -> Result<LabProcess> {
    let path = lab.log_dir().join("agent.toml");
    std::fs::write(&path, config).map_err(|e| crate::LabError::io_path("write", &path, e))?;
    let pins = bpffs_pin_dir(lab.ns("pop").name());
    let (agent, pins, path) = (
        agent.to_string_lossy(),
        pins.to_string_lossy(),
        path.to_string_lossy(),
    );
    let mut argv = wrapper.to_vec();
    argv.extend([&*agent, "--bpffs-root", &*pins, "--config", &*path, "run"]);
    argv.extend_from_slice(extra_args);
    let process = lab.ns("pop").spawn("agent", &argv, &[])?;
    process.wait_for_output("edge-agent ready", Duration::from_secs(30))?;
    Ok(process)
}

/// Starts `echo_load` (the `echo-load` binary) in the client namespace against both VIPs with
/// `connections` connections of up to `max_bytes` each, held open `hold_secs` and, with
/// `recheck`, echoed once more after the hold.
pub fn spawn_echo_load(
    lab: &Lab,
    echo_load: &Path,
    connections: u32,
    max_bytes: u32,
    hold_secs: u32,
    recheck: bool,
) -> Result<LabProcess> {
    spawn_echo_load_until(
        lab,
        echo_load,
        connections,
        max_bytes,
        hold_secs,
        None,
        recheck,
    )
}

/// `spawn_echo_load`, whose hold ends early once `go_file` exists.
pub fn spawn_echo_load_until(
    lab: &Lab,
    echo_load: &Path,
    connections: u32,
    max_bytes: u32,
    hold_secs: u32,
    go_file: Option<&Path>,
    recheck: bool,
) -> Result<LabProcess> {
    let (bin, v4, v6) = (
        echo_load.to_string_lossy(),
        format!("{VIP4}:7"),
        format!("[{VIP6}]:7"),
    );
    let (connections, max_bytes, hold) = (
        connections.to_string(),
        max_bytes.to_string(),
        hold_secs.to_string(),
    );
    let mut argv = vec![
        &*bin,
        "--target",
        &v4,
        "--target",
        &v6,
        "--connections",
        &connections,
        "--max-bytes",
        &max_bytes,
        "--hold-secs",
        &hold,
    ];
    let go = go_file.map(|f| f.to_string_lossy().into_owned());
    if let Some(go) = &go {
        argv.extend(["--go-file", go.as_str()]);
    }
    if recheck {
        argv.push("--recheck");
    }
    lab.ns("client").spawn("echo-load", &argv, &[])
}
