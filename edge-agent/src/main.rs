//! `edge-agent`: the edgeProxy daemon and its operator commands.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use edge_agent::{
    agent::Agent,
    cli::{self, Output},
    config::{AgentConfig, ForwardHook, XdpMode},
    dataplane::{pins::PinDir, programs},
};

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
        Command::Status { output } => cli::status::run(&pins, output),
        Command::Flows { output, limit } => cli::flows::run(&config, &pins, output, limit),
        Command::Backends { output } => {
            let rows = cli::backends::backends(&config, &pins)?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
                Output::Table => cli::backends::print_table(&rows),
            }
            Ok(())
        }
        Command::Explain {
            client,
            vip,
            port,
            output,
        } => {
            let explained = cli::explain::explain(&pins, client, vip, port)?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&explained)?),
                Output::Table => cli::explain::print(&explained),
            }
            Ok(())
        }
        Command::ImportV1 {
            path,
            vips,
            ipv4_prefix,
        } => cli::import_v1::run(&config, &path, &vips, ipv4_prefix),
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
            let rows = cli::maps::rows(&pins);
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
                Output::Table => cli::maps::print_table(&rows),
            }
            Ok(())
        }
        Command::Host => edge_agent::agent::host::run(config),
        Command::Wg {
            command: WgCommand::Show { output },
        } => cli::wg::show(&pins, output),
        Command::Wg {
            command: WgCommand::RotateKey,
        } => cli::wg::rotate_key(&config),
        Command::Wg {
            command: WgCommand::Down,
        } => cli::wg::down(&config),
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
            if programs::detach(&pins).context("detaching")? {
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
    let (limit, reporter) = edge_agent::process::log_limit::layer(
        edge_agent::process::log_limit::BURST,
        edge_agent::process::log_limit::WINDOW,
    );
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
