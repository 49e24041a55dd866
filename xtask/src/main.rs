//! `cargo xtask`: set up the machine, run the lab, run the tests. No product logic lives here.

mod bench;
mod container;
mod cycles;
mod demo;
#[cfg(test)]
mod layout;
mod setup;
mod shell;
mod test;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "edgeProxy build, lab and test tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install everything the build and the lab need (idempotent; `run` and `test` call it).
    Setup,
    /// Without arguments: the v2 edge in one lab (two POPs in anycast, the 6PN mesh, shared
    /// state, health, DNS) on one screen, with keys that break and restore it (docs/demo.md);
    /// `q` or Ctrl-C removes it. With arguments after `--`: run `edge-agent run <args>` here.
    Run {
        /// Skip `setup` and the build (the test suite uses this after doing both).
        #[arg(long, hide = true)]
        no_setup: bool,
        /// Stop the lab by itself after this many seconds.
        #[arg(long)]
        duration: Option<u64>,
        /// Arguments for `edge-agent run` on the host.
        #[arg(last = true)]
        agent_args: Vec<String>,
    },
    /// Setup, format and lint checks, unit tests, BPF packet tests and lab tests.
    Test {
        /// Extra arguments for `cargo test` (a test name filter, for example).
        #[arg(last = true)]
        cargo_args: Vec<String>,
    },
    /// End-to-end benchmark: plain routing, nftables DNAT, HAProxy, a tokio proxy and edgeProxy
    /// in the same lab, one after the other; prints a table of ratios to plain routing and
    /// writes it to target/bench/e2e.json, with a chart of it in target/bench/e2e.svg.
    Bench(bench::BenchArgs),
    /// Fail if modules of the agent's library import each other in a cycle: among the crate
    /// root's children, or among the children of any folder module (`test` runs it too).
    Cycles(cycles::CyclesArgs),
    /// Build the agent's container image with podman (`localhost/edge-agent:dev`).
    Container {
        /// Skip `setup` (the test suite uses this after doing it).
        #[arg(long, hide = true)]
        no_setup: bool,
        /// Put this agent binary in the image instead of building the release one (the test
        /// suite passes the one it built, so as not to compile beside running labs).
        #[arg(long)]
        agent: Option<std::path::PathBuf>,
    },
    /// Lab housekeeping.
    Lab {
        #[command(subcommand)]
        command: LabCommand,
    },
}

#[derive(Subcommand)]
enum LabCommand {
    /// Remove every namespace, interface, socket, process and pin a killed lab run left behind.
    Clean,
    /// List what a killed lab run left behind, without removing it.
    Leftovers,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Setup => setup::run(),
        Command::Run {
            no_setup,
            duration,
            agent_args,
        } => {
            if !no_setup {
                setup::run()?;
            }
            let agent = shell::build_agent(!no_setup)?;
            if agent_args.is_empty() {
                demo::run(&agent, duration.map(std::time::Duration::from_secs))
            } else {
                shell::exec_agent(&agent, &agent_args)
            }
        }
        Command::Test { cargo_args } => test::run(&cargo_args),
        Command::Bench(args) => bench::run(args),
        Command::Cycles(args) => cycles::run(args),
        Command::Container { no_setup, agent } => {
            if !no_setup {
                setup::run()?;
            }
            container::run(agent.as_deref())
        }
        Command::Lab { command } => match command {
            LabCommand::Clean => {
                let removed = edge_tests::clean_all().context("cleaning lab leftovers")?;
                if removed.is_empty() {
                    println!("nothing left behind by lab runs");
                } else {
                    println!("removed:\n{removed}");
                }
                Ok(())
            }
            LabCommand::Leftovers => {
                let found = edge_tests::find_leftovers(None);
                if found.is_empty() {
                    println!("nothing left behind by lab runs");
                } else {
                    println!("{found}");
                }
                Ok(())
            }
        },
    }
}
