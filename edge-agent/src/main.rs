//! `edge-agent`: the edgeProxy daemon and its operator commands.

use std::{path::PathBuf, time::Duration};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand, ValueEnum};
use edge_agent::{
    bpffs::PinDir,
    config::{AgentConfig, XdpMode},
    counters,
    dataplane::{self, Attach, MapSizes},
    flows, netdev,
    services::{PopSettings, Reconciler},
};
use edge_common::{names, FlowKey, FlowValue};
use tracing::{debug, info, warn};

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
        /// Remove every pinned object (maps and flows included) before loading.
        #[arg(long)]
        reset: bool,
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
    /// Detach the data plane and remove every pinned object.
    Detach,
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
            reset,
        } => {
            if let Some(iface) = iface {
                config.iface = Some(iface);
            }
            if let Some(mode) = xdp_mode {
                config.xdp_mode = mode;
            }
            run(config, cli.config, &pins, reset)
        }
        Command::Status { output } => status(&pins, output),
        Command::Flows { output, limit } => list_flows(&config, &pins, output, limit),
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

fn load_config(path: Option<&std::path::Path>) -> anyhow::Result<AgentConfig> {
    AgentConfig::load(path, |var| std::env::var(var).ok()).context("loading configuration")
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("EDGEPROXY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// This POP's settings for the kernel, from the config and the interfaces.
fn pop_settings(config: &AgentConfig, public_iface: &str) -> anyhow::Result<Option<PopSettings>> {
    let Some(overlay_iface) = config.overlay.iface.as_deref() else {
        return Ok(None);
    };
    let Some(overlay_addr) = config.overlay.addr else {
        bail!("overlay.iface is set but overlay.addr (this POP's overlay address) is not");
    };
    if config.overlay.mtu < 1280 {
        bail!(
            "overlay.mtu {} is below IPv6's minimum of 1280",
            config.overlay.mtu
        );
    }
    if config.overlay.port_min == 0 || config.overlay.port_min > config.overlay.port_max {
        bail!(
            "overlay port range {}-{} is empty or starts at 0",
            config.overlay.port_min,
            config.overlay.port_max
        );
    }
    let public_ifindex = netdev::ifindex(public_iface)
        .with_context(|| format!("interface {public_iface} does not exist"))?;
    Ok(Some(PopSettings {
        overlay_addr,
        // IPv6 (40) and TCP (20) headers inside the overlay MTU.
        mss_clamp: config.overlay.mtu - 60,
        port_min: config.overlay.port_min,
        port_max: config.overlay.port_max,
        public_ifindex,
        overlay_l2_len: netdev::l2_header_len(overlay_iface),
    }))
}

fn run(
    mut config: AgentConfig,
    config_path: Option<PathBuf>,
    pins: &PinDir,
    reset: bool,
) -> anyhow::Result<()> {
    let Some(iface) = config.iface.clone() else {
        bail!("no interface to attach to: pass --iface, set EDGEPROXY_IFACE, or `iface` in the config");
    };
    if !edge_agent::maglev::is_prime(config.maglev.table_size) {
        bail!(
            "maglev.table_size {} is not prime (next prime: {})",
            config.maglev.table_size,
            edge_agent::maglev::next_prime(config.maglev.table_size)
        );
    }
    let pop = pop_settings(&config, &iface)?;
    let sizes = MapSizes {
        flows: config.flows.max_entries,
        maglev: 2 * config.maglev.max_services * config.maglev.table_size,
    };
    let attach = Attach {
        public_iface: &iface,
        overlay_iface: config.overlay.iface.as_deref(),
        xdp_mode: config.xdp_mode,
        reset,
        sizes,
    };
    let mut dataplane = dataplane::start(pins, &attach)
        .with_context(|| format!("starting the data plane on {iface}"))?;
    info!(iface, xdp = ?dataplane.xdp, tc = ?dataplane.tc, root = %pins.root().display(), "data plane running");

    let mut reconciler = match &pop {
        Some(pop) => {
            let mut reconciler = Reconciler::recover(
                &mut dataplane.ebpf,
                config.maglev.table_size,
                config.maglev.max_services,
            )?;
            let applied = reconciler.apply(&mut dataplane.ebpf, pop, &config.services)?;
            info!(
                services = applied.services,
                backends = applied.backends,
                tables_swapped = applied.tables_swapped,
                rejected = applied.rejected.len(),
                "services applied"
            );
            Some(reconciler)
        }
        None => {
            if !config.services.is_empty() {
                warn!(
                    "services are configured but no overlay: counting only, nothing is translated"
                );
            }
            None
        }
    };

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
        let mut sighup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
        let mut sweep = tokio::time::interval(Duration::from_secs(config.flows.sweep_interval_secs.max(1)));
        let mut stats_log = tokio::time::interval(Duration::from_secs(config.stats_log_secs.max(1)));
        println!("edge-agent ready");
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return anyhow::Ok(()),
                _ = sigterm.recv() => return anyhow::Ok(()),
                _ = sighup.recv() => {
                    match load_config(config_path.as_deref()) {
                        Ok(new) => {
                            if let (Some(reconciler), Some(pop)) = (reconciler.as_mut(), pop.as_ref()) {
                                match reconciler.apply(&mut dataplane.ebpf, pop, &new.services) {
                                    Ok(applied) => info!(services = applied.services, tables_swapped = applied.tables_swapped, rejected = applied.rejected.len(), "config reloaded"),
                                    Err(error) => warn!(%error, "applying reloaded config; the previous state stays"),
                                }
                            }
                            config.services = new.services;
                        }
                        Err(error) => warn!(error = %format!("{error:#}"), "reloading config failed; keeping the current one"),
                    }
                }
                _ = sweep.tick(), if pop.is_some() => {
                    if let Err(error) = sweep_flows(&mut dataplane.ebpf, &config) {
                        warn!(%error, "sweeping the flow table");
                    }
                }
                _ = stats_log.tick(), if config.stats_log_secs > 0 => {
                    match counters::open_pinned(pins).and_then(|map| counters::snapshot(&map)) {
                        Ok(snapshot) => info!(packets = snapshot.total_packets(), "counters"),
                        Err(error) => warn!(%error, "reading counters"),
                    }
                }
            }
        }
    })?;
    info!("agent stopping; the data plane stays attached (`edge-agent detach` removes it)");
    Ok(())
}

fn sweep_flows(ebpf: &mut aya::Ebpf, config: &AgentConfig) -> anyhow::Result<()> {
    let map = ebpf.map_mut(names::FLOWS).context("FLOWS map missing")?;
    let mut flows: aya::maps::HashMap<_, FlowKey, FlowValue> = aya::maps::HashMap::try_from(map)?;
    let (report, _) = flows::sweep(&mut flows, &config.flows, flows::monotonic_ns(), true)?;
    debug!(
        entries = report.entries,
        connections = report.connections,
        expired = report.expired,
        "flow table swept"
    );
    Ok(())
}

fn status(pins: &PinDir, output: Output) -> anyhow::Result<()> {
    let map = counters::open_pinned(pins)?;
    let snapshot = counters::snapshot(&map)?;
    let nat = counters::nat_report(pins)?;
    let attached = pins.attached_ifaces();
    match output {
        Output::Json => {
            let doc = serde_json::json!({
                "bpffs_root": pins.root(),
                "attached": attached,
                "counters": snapshot.classes,
                "services": nat.services,
                "backends": nat.backends,
                "drops": nat.drops,
            });
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
        Output::Table => {
            if attached.is_empty() {
                println!("XDP: not attached (maps at {})", pins.root().display());
            } else {
                println!(
                    "XDP: attached to {} (pins at {})",
                    attached.join(", "),
                    pins.root().display()
                );
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

fn list_flows(
    config: &AgentConfig,
    pins: &PinDir,
    output: Output,
    limit: usize,
) -> anyhow::Result<()> {
    let path = pins.map(names::FLOWS);
    let data = aya::maps::MapData::from_pin(&path)
        .with_context(|| format!("opening {}; is the data plane loaded?", path.display()))?;
    let mut map: aya::maps::HashMap<_, FlowKey, FlowValue> =
        aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(data))?;
    let (report, mut listing) =
        flows::sweep(&mut map, &config.flows, flows::monotonic_ns(), false)?;
    listing.sort_by(|a, b| a.idle_secs.total_cmp(&b.idle_secs));
    listing.truncate(limit);
    match output {
        Output::Json => {
            let doc = serde_json::json!({ "summary": report, "flows": listing });
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
        Output::Table => {
            println!(
                "{} entries, {} connections; by state: {:?}",
                report.entries, report.connections, report.by_state
            );
            println!(
                "{:<46} {:<46} {:<46} {:<11} {:>8} {:>8}",
                "CLIENT", "VIP", "BACKEND", "STATE", "IDLE s", "PKTS IN"
            );
            for f in &listing {
                println!(
                    "{:<46} {:<46} {:<46} {:<11} {:>8.1} {:>8}",
                    f.client,
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
