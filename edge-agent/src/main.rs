//! `edge-agent`: the edgeProxy daemon and its operator commands.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use edge_agent::{
    agent::Agent,
    bpffs::PinDir,
    config::{AgentConfig, ForwardHook, XdpMode},
    counters, dataplane, flows,
};
use edge_common::{names, FlowKey, FlowValue};

#[derive(Parser)]
#[command(
    name = "edge-agent",
    version,
    about = "edgeProxy agent: eBPF/XDP edge data plane"
)]
struct Cli {
    /// Configuration file (TOML); `EDGEPROXY_*` environment variables override it.
    #[arg(long, global = true, env = "EDGEPROXY_CONFIG")]
    config: Option<PathBuf>,
    /// Root of the pinned objects on bpffs (default /sys/fs/bpf/edgeproxy).
    #[arg(long, global = true)]
    bpffs_root: Option<PathBuf>,
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load, attach and pin the data plane, apply the configured services, then run until
    /// SIGINT/SIGTERM (SIGHUP re-reads the config). The data plane stays attached after the agent
    /// exits; the next agent adopts it.
    Run {
        /// Public interface to attach the XDP program to.
        #[arg(long)]
        iface: Option<String>,
        /// XDP attach mode.
        #[arg(long)]
        xdp_mode: Option<XdpMode>,
        /// Hook of the client -> backend translation: auto (TC on veth, XDP elsewhere), xdp, tc.
        #[arg(long)]
        forward_hook: Option<ForwardHook>,
        /// Remove every pinned object (maps and flows included) before loading.
        #[arg(long)]
        reset: bool,
        /// Log the kernel programs' debug records (new flows, refused SYNs, segments and
        /// replies without a flow) under target `edge_ebpf`; config `bpf_debug_log`.
        #[arg(long)]
        bpf_debug_log: bool,
    },
    /// Print the data plane's counters from the pinned maps (works without a running agent).
    Status {
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// List the connections in the flow table (from the pinned map).
    Flows {
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
        /// Show at most this many connections.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Every backend of the state: region, limits, health, eligibility in the kernel, live
    /// flows, and its share of each table of its service (by client countries).
    Backends {
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// How a client is steered, from what the running data plane holds: its country and class,
    /// its affinity binding, and the backends a new connection from it can get to a VIP.
    Explain {
        /// The client's address.
        client: std::net::IpAddr,
        /// The service, as VIP:PORT (`[v6]:port` for IPv6).
        #[arg(long)]
        vip: std::net::SocketAddr,
        /// The client's source port: name the one backend a new connection gets.
        #[arg(long)]
        port: Option<u16>,
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Every pinned map: what it holds, its key and value, and the bpftool command to dump it.
    Maps {
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Import a v1 routing.db into the state database (`state.database` / EDGEPROXY_DB_PATH).
    ImportV1 {
        /// The v1 routing.db (opened read-only).
        path: PathBuf,
        /// VIP of each v1 app: `app=ip:port` (repeatable).
        #[arg(long = "vip", required = true)]
        vips: Vec<String>,
        /// A /96 whose low 32 bits take v1's IPv4 overlay addresses (v2's overlay is IPv6).
        #[arg(long)]
        ipv4_prefix: Option<ipnet::Ipv6Net>,
    },
    /// Run as a backend host: join the 6PN mesh from the state (no data plane) until SIGTERM.
    Host,
    /// This host's WireGuard (6PN).
    Wg {
        #[command(subcommand)]
        command: WgCommand,
    },
    /// Drain this POP: routes are announced with the graceful-shutdown community (RFC 8326) and
    /// the configured prepend, then withdrawn after `bgp.drain_delay_secs`. Lasts until
    /// `undrain` (or a reboot).
    Drain,
    /// End a drain: routes are announced normally again.
    Undrain,
    /// Detach the data plane and remove every pinned object.
    Detach,
    /// Register the process beside this sidecar as a backend, heartbeat, and deregister on
    /// SIGTERM or SIGINT.
    Register {
        /// The agent's registration API.
        #[arg(long, default_value = "http://[::1]:7070")]
        api: hyper::Uri,
        /// The deployment's token.
        #[arg(long, env = "EDGEPROXY_REGISTER_TOKEN", hide_env_values = true)]
        token: String,
        /// The service this process serves.
        #[arg(long)]
        app: String,
        /// Its port.
        #[arg(long)]
        port: u16,
        /// This host's overlay address (or a `.internal` name).
        #[arg(long)]
        address: String,
        #[arg(long, env = "EDGEPROXY_REGION")]
        region: String,
        /// ISO 3166-1 alpha-2 country of this host.
        #[arg(long)]
        country: Option<String>,
        /// Its id; default `<app>-<hostname>-<port>`.
        #[arg(long)]
        id: Option<String>,
        #[arg(long, default_value_t = 1)]
        weight: u32,
        /// Check it with `GET <path>` instead of the service's check.
        #[arg(long)]
        health_path: Option<String>,
        #[arg(long, default_value_t = 10)]
        heartbeat_secs: u32,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_json);
    let mut config = load_config(cli.config.as_deref())?;
    if let Some(root) = cli.bpffs_root {
        config.bpffs_root = root;
    }
    let pins = PinDir::new(&config.bpffs_root);
    match cli.command {
        Command::Run {
            iface,
            xdp_mode,
            forward_hook,
            reset,
            bpf_debug_log,
        } => {
            if let Some(iface) = iface {
                config.iface = Some(iface);
            }
            config.bpf_debug_log |= bpf_debug_log;
            if let Some(mode) = xdp_mode {
                config.xdp_mode = mode;
            }
            if let Some(hook) = forward_hook {
                config.forward_hook = hook;
            }
            run(config, cli.config, &pins, reset)
        }
        Command::Status { output } => status(&pins, output),
        Command::Flows { output, limit } => list_flows(&config, &pins, output, limit),
        Command::Backends { output } => {
            let rows = edge_agent::report::backends(&config, &pins)?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
                Output::Table => edge_agent::report::print_table(&rows),
            }
            Ok(())
        }
        Command::Explain {
            client,
            vip,
            port,
            output,
        } => {
            let explained = edge_agent::explain::explain(&pins, client, vip, port)?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&explained)?),
                Output::Table => edge_agent::explain::print(&explained),
            }
            Ok(())
        }
        Command::ImportV1 {
            path,
            vips,
            ipv4_prefix,
        } => import_v1(&config, &path, &vips, ipv4_prefix),
        Command::Register {
            api,
            token,
            app,
            port,
            address,
            region,
            country,
            id,
            weight,
            health_path,
            heartbeat_secs,
        } => {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_default();
            let sidecar = edge_agent::register::client::Sidecar {
                api,
                token,
                id: id.unwrap_or_else(|| format!("{app}-{host}-{port}")),
                app,
                region,
                country,
                address,
                port,
                weight,
                health_path,
                heartbeat_secs,
            };
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?
                .block_on(sidecar.run())
        }
        Command::Maps { output } => {
            let rows = edge_agent::pinned_maps::rows(&pins);
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
                Output::Table => edge_agent::pinned_maps::print_table(&rows),
            }
            Ok(())
        }
        Command::Host => edge_agent::sixpn::host::run(config),
        Command::Wg {
            command: WgCommand::Show { output },
        } => wg_show(&pins, output),
        Command::Wg {
            command: WgCommand::RotateKey,
        } => rotate_key(&config),
        Command::Wg {
            command: WgCommand::Down,
        } => {
            let ifname = &config.sixpn.ifname;
            if edge_agent::sixpn::node::down(ifname)? {
                println!("{ifname} deleted");
            } else {
                println!("no interface {ifname}");
            }
            Ok(())
        }
        Command::Drain => {
            let since = edge_agent::bgp::drain::start(&pins).context("starting the drain")?;
            println!(
                "draining since {since} (unix): graceful-shutdown community now, withdraw after {} s",
                config.bgp.drain_delay_secs
            );
            Ok(())
        }
        Command::Undrain => {
            if edge_agent::bgp::drain::stop(&pins).context("ending the drain")? {
                println!("undrained: routes are announced normally again");
            } else {
                println!("not draining");
            }
            Ok(())
        }
        Command::Detach => {
            if dataplane::detach(&pins).context("detaching")? {
                println!("detached; removed {}", pins.root().display());
            } else {
                println!("nothing pinned at {}", pins.root().display());
            }
            Ok(())
        }
    }
}

#[derive(Subcommand)]
enum WgCommand {
    /// The implementation in use, this host's address and key, and each peer: endpoint,
    /// allowed IPs, last handshake, bytes (from the running agent).
    Show {
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Make a new key, then publish its public half: the running agent switches to it when
    /// the state shows it, as every peer does, so only one handshake is lost.
    RotateKey,
    /// Delete the 6PN interface (it stays up when the agent stops, as the data plane does).
    Down,
}

fn wg_show(pins: &PinDir, output: Output) -> anyhow::Result<()> {
    let doc = std::fs::read(pins.agent_status_file())
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .map(|a| a["sixpn"].clone())
        .filter(|s| !s.is_null())
        .context("no running agent with [sixpn] enabled (its status file says nothing of 6PN)")?;
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&doc)?),
        Output::Table => print_sixpn(&doc),
    }
    Ok(())
}

fn print_sixpn(s: &serde_json::Value) {
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_owned();
    println!(
        "6PN {} ({}): address {}, public key {}, port {}",
        text(&s["ifname"]),
        text(&s["implementation"]),
        text(&s["address"]),
        text(&s["public_key"]),
        s["listen_port"]
    );
    for p in s["problems"].as_array().into_iter().flatten() {
        println!("  left out: {}", text(p));
    }
    println!(
        "  {:<46} {:<40} {:>14} {:>12} {:>12}  allowed IPs",
        "peer", "endpoint", "handshake", "rx bytes", "tx bytes"
    );
    for p in s["peers"].as_array().into_iter().flatten() {
        let handshake = p["last_handshake_secs_ago"]
            .as_f64()
            .map_or_else(|| "never".to_owned(), |a| format!("{a:.0} s ago"));
        let ips: Vec<String> = p["allowed_ips"]
            .as_array()
            .into_iter()
            .flatten()
            .map(text)
            .collect();
        println!(
            "  {:<46} {:<40} {:>14} {:>12} {:>12}  {}",
            text(&p["public_key"]),
            text(&p["endpoint"]),
            handshake,
            p["rx_bytes"].as_u64().unwrap_or(0),
            p["tx_bytes"].as_u64().unwrap_or(0),
            ips.join(", ")
        );
    }
}

/// Writes a new key beside the old one, moves it in place, and publishes its public half in
/// this host's row.
fn rotate_key(config: &AgentConfig) -> anyhow::Result<()> {
    use edge_agent::sixpn::PrivateKey;
    let sixpn = &config.sixpn;
    let id = sixpn.id.clone().unwrap_or_else(|| config.pop_id.clone());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let store = edge_agent::agent::open_source(config, &runtime)?
        .context("rotating the key needs the state (state.database or Corrosion)")?;
    let (snap, _) = store.snapshot().context("reading the state")?;
    let mut row = snap
        .pops
        .iter()
        .find(|p| p.id == id)
        .cloned()
        .with_context(|| format!("no row {id} in pops: is the agent running?"))?;
    let key = PrivateKey::generate();
    let staged = sixpn.key_file.with_extension("new");
    let _ = std::fs::remove_file(&staged);
    key.store(&staged).context("writing the new key")?;
    std::fs::rename(&staged, &sixpn.key_file).context("moving the new key in place")?;
    row.public_key = Some(key.public_key().to_string());
    store
        .execute(&edge_agent::state::write::upsert_pop(
            &row,
            edge_agent::model::unix_now(),
        )?)
        .context("publishing the new public key")?;
    println!("new public key {} published for {id}", key.public_key());
    Ok(())
}

fn load_config(path: Option<&std::path::Path>) -> anyhow::Result<AgentConfig> {
    AgentConfig::load(path, |var| std::env::var(var).ok()).context("loading configuration")
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("EDGEPROXY_LOG")
        // hickory-server logs every DNS query at info: only its warnings by default.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,hickory_server=warn"));
    use tracing_subscriber::{layer::SubscriberExt as _, util::SubscriberInitExt as _};
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal, not in files and pipes.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // Repeated warnings (a peer can cause one per packet) are counted, not all written.
    let (limit, reporter) =
        edge_agent::log_limit::layer(edge_agent::log_limit::BURST, edge_agent::log_limit::WINDOW);
    if json {
        builder.json().finish().with(limit).init();
    } else {
        builder.finish().with(limit).init();
    }
    if let Err(error) = reporter.spawn() {
        tracing::warn!(%error, "starting the log limit's reporter");
    }
}

fn run(
    config: AgentConfig,
    config_path: Option<PathBuf>,
    pins: &PinDir,
    reset: bool,
) -> anyhow::Result<()> {
    Agent::start(config, config_path, pins.clone(), reset)?.run()
}

fn import_v1(
    config: &AgentConfig,
    path: &std::path::Path,
    vips: &[String],
    ipv4_prefix: Option<ipnet::Ipv6Net>,
) -> anyhow::Result<()> {
    use edge_agent::state::{import_v1, ImportOptions, Ipv4Overlay, SqliteState};
    let Some(db) = &config.state.database else {
        anyhow::bail!("no state database to import into: set state.database or EDGEPROXY_DB_PATH");
    };
    let options = ImportOptions {
        pop_id: config.pop_id.clone(),
        vips: edge_agent::state::import_v1::parse_vips(vips.iter().map(String::as_str))
            .map_err(|e| anyhow::anyhow!("{e}"))?,
        ipv4: ipv4_prefix.map_or(Ipv4Overlay::Reject, Ipv4Overlay::Prefix96),
    };
    let state = SqliteState::open(db)?;
    let report = import_v1(path, &state, &options)?;
    println!(
        "imported {} backends into {}; skipped {}",
        report.imported.len(),
        db.display(),
        report.skipped.len()
    );
    for row in &report.skipped {
        println!("  skipped {}: {}", row.id, row.reason);
    }
    Ok(())
}

fn status(pins: &PinDir, output: Output) -> anyhow::Result<()> {
    let map = counters::open_pinned(pins)?;
    let snapshot = counters::snapshot(&map)?;
    let nat = counters::nat_report(pins)?;
    let attached = pins.attached_ifaces();
    // What only the running agent knows; written every second, so an old file means no agent.
    let agent = std::fs::read(pins.agent_status_file())
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
    let age = agent
        .as_ref()
        .and_then(|a| a["written_at"].as_i64())
        .map(|at| edge_agent::model::unix_now() - at);
    let running = age.is_some_and(|a| a <= 5);
    match output {
        Output::Json => {
            let doc = serde_json::json!({
                "agent_running": running,
                "agent": agent,
                "bpffs_root": pins.root(),
                "attached": attached
                    .iter()
                    .map(|(iface, hook)| serde_json::json!({"iface": iface, "hook": hook}))
                    .collect::<Vec<_>>(),
                "counters": snapshot.classes,
                "services": nat.services,
                "backends": nat.backends,
                "drops": nat.drops,
            });
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
        Output::Table => {
            if attached.is_empty() {
                println!(
                    "data plane: not attached (maps at {})",
                    pins.root().display()
                );
            } else {
                let on: Vec<String> = attached
                    .iter()
                    .map(|(iface, hook)| format!("{iface} ({})", hook.to_uppercase()))
                    .collect();
                println!(
                    "data plane: attached to {} (pins at {})",
                    on.join(", "),
                    pins.root().display()
                );
            }
            match (&agent, running) {
                (Some(a), true) => {
                    let stale = a["state"]["stale_secs"].as_f64().map_or_else(
                        || "never read yet".to_owned(),
                        |s| format!("{s:.1} s stale"),
                    );
                    println!(
                        "agent: pid {}, state from {} ({stale}), {} backends checked",
                        a["pid"],
                        a["state"]["source"].as_str().unwrap_or("?"),
                        a["health"]["checking"]
                    );
                }
                (_, false) => println!(
                    "agent: not running{}",
                    age.map_or_else(String::new, |a| format!(" (last status {a} s ago)"))
                ),
                (None, true) => {}
            }
            if running {
                if let Some(bgp) = agent.as_ref().map(|a| &a["bgp"]).filter(|b| !b.is_null()) {
                    print_bgp(bgp);
                }
                if let Some(sixpn) = agent.as_ref().map(|a| &a["sixpn"]).filter(|s| !s.is_null()) {
                    print_sixpn(sixpn);
                    println!();
                }
            }
            print!("{snapshot}");
            if !nat.services.is_empty() || !nat.backends.is_empty() {
                println!();
                print!("{nat}");
            }
        }
    }
    Ok(())
}

/// The BGP part of `edge-agent status`: each session, then each VIP and why it is (not)
/// announced.
fn print_bgp(bgp: &serde_json::Value) {
    if let Some(since) = bgp["draining_since"].as_i64() {
        println!(
            "BGP: draining since {} s ago",
            edge_agent::model::unix_now() - since
        );
    }
    println!(
        "{:<40} {:>10} {:<12} {:>10} {:>9} {:>9}  last error",
        "BGP peer", "AS", "state", "uptime", "announced", "received"
    );
    let now = edge_agent::model::unix_now();
    for s in bgp["sessions"].as_array().into_iter().flatten() {
        let uptime = s["established_at"]
            .as_i64()
            .map_or_else(|| "-".to_owned(), |t| format!("{} s", now - t));
        // serde_json's numbers ignore widths: print them as strings.
        let num =
            |v: &serde_json::Value| v.as_u64().map_or_else(|| "?".to_owned(), |n| n.to_string());
        println!(
            "{:<40} {:>10} {:<12} {:>10} {:>9} {:>9}  {}",
            s["peer"].as_str().unwrap_or("?"),
            num(&s["asn"]),
            s["state"].as_str().unwrap_or("?"),
            uptime,
            num(&s["prefixes_announced"]),
            num(&s["prefixes_received"]),
            s["last_error"].as_str().unwrap_or("-"),
        );
    }
    for v in bgp["vips"].as_array().into_iter().flatten() {
        println!(
            "  VIP {:<39} as {:<43} {}: {}",
            v["vip"].as_str().unwrap_or("?"),
            v["prefix"].as_str().unwrap_or("?"),
            if v["announced"].as_bool() == Some(true) {
                "announced"
            } else {
                "withdrawn"
            },
            v["reason"].as_str().unwrap_or("?"),
        );
    }
    println!();
}

fn list_flows(
    config: &AgentConfig,
    pins: &PinDir,
    output: Output,
    limit: usize,
) -> anyhow::Result<()> {
    let open = |name| -> anyhow::Result<aya::maps::HashMap<_, FlowKey, FlowValue>> {
        Ok(aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(
            pins.open_map(name)?,
        ))?)
    };
    let now = flows::monotonic_ns();
    let (report, mut listing) = flows::sweep(
        &open(names::FLOWS)?,
        flows::Table::Established,
        &config.flows,
        now,
        flows::Sweep::List,
    )?;
    let (half_open, half_listing) = flows::sweep(
        &open(names::HALF_OPEN)?,
        flows::Table::HalfOpen,
        &config.flows,
        now,
        flows::Sweep::List,
    )?;
    listing.extend(half_listing);
    listing.sort_by(|a, b| a.idle_secs.total_cmp(&b.idle_secs));
    listing.truncate(limit);
    flows::classify(&mut listing, pins);
    match output {
        Output::Json => {
            let doc = serde_json::json!({
                "summary": report,
                "half_open": half_open,
                "flows": listing,
            });
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
        Output::Table => {
            println!(
                "{} entries, {} connections; by state: {:?}; half-open: {} connections",
                report.entries, report.connections, report.by_state, half_open.connections
            );
            println!(
                "{:<46} {:<3} {:<46} {:<46} {:<11} {:>8} {:>8}",
                "CLIENT", "CC", "VIP", "BACKEND", "STATE", "IDLE s", "PKTS IN"
            );
            for f in &listing {
                println!(
                    "{:<46} {:<3} {:<46} {:<46} {:<11} {:>8.1} {:>8}",
                    f.client,
                    f.country.as_deref().unwrap_or("-"),
                    f.vip,
                    f.backend,
                    format!("{:?}", f.state),
                    f.idle_secs,
                    f.packets_in
                );
            }
        }
    }
    Ok(())
}
