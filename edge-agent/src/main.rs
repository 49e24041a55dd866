//! `edge-agent`: the edgeProxy daemon and its operator commands.

use std::{path::PathBuf, time::Duration};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand, ValueEnum};
use edge_agent::{
    bpffs::PinDir,
    config::{AgentConfig, XdpMode},
    counters, dataplane,
};
use tracing::{info, warn};

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
    /// Load, attach and pin the data plane, then run until SIGINT/SIGTERM. The data plane stays
    /// attached after the agent exits; the next agent adopts it.
    Run {
        /// Public interface to attach the XDP program to.
        #[arg(long)]
        iface: Option<String>,
        /// XDP attach mode.
        #[arg(long)]
        xdp_mode: Option<XdpMode>,
        /// Remove every pinned object (maps included) before loading.
        #[arg(long)]
        reset: bool,
    },
    /// Print the data plane's counters from the pinned maps (works without a running agent).
    Status {
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
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
    let mut config = AgentConfig::load(cli.config.as_deref(), |var| std::env::var(var).ok())
        .context("loading configuration")?;
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
            run(&config, &pins, reset)
        }
        Command::Status { output } => status(&pins, output),
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

fn run(config: &AgentConfig, pins: &PinDir, reset: bool) -> anyhow::Result<()> {
    let Some(iface) = config.iface.as_deref() else {
        bail!("no interface to attach to: pass --iface, set EDGEPROXY_IFACE, or `iface` in the config");
    };
    let dataplane = dataplane::start(pins, iface, config.xdp_mode, reset)
        .with_context(|| format!("starting the data plane on {iface}"))?;
    info!(iface, attachment = ?dataplane.attachment, root = %pins.root().display(), "data plane running");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(config, pins))?;
    info!("agent stopping; the data plane stays attached (`edge-agent detach` removes it)");
    drop(dataplane);
    Ok(())
}

/// Runs until SIGINT or SIGTERM, logging counter summaries.
async fn serve(config: &AgentConfig, pins: &PinDir) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let period = Duration::from_secs(config.stats_log_secs.max(1));
    let mut ticker = tokio::time::interval(period);
    ticker.tick().await;
    println!("edge-agent ready");
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = sigterm.recv() => return Ok(()),
            _ = ticker.tick(), if config.stats_log_secs > 0 => {
                match counters::open_pinned(pins).and_then(|map| counters::snapshot(&map)) {
                    Ok(snapshot) => info!(packets = snapshot.total_packets(), "counters"),
                    Err(error) => warn!(%error, "reading counters"),
                }
            }
        }
    }
}

fn status(pins: &PinDir, output: Output) -> anyhow::Result<()> {
    let map = counters::open_pinned(pins)?;
    let snapshot = counters::snapshot(&map)?;
    let attached = pins.attached_ifaces();
    match output {
        Output::Json => {
            let doc = serde_json::json!({
                "bpffs_root": pins.root(),
                "attached": attached,
                "counters": snapshot.classes,
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
        }
    }
    Ok(())
}
