//! `cargo xtask test`: setup, format, import-cycle and lint checks, then every test, then a check
//! that the lab left nothing behind. `.ci/run` calls exactly this.

use std::{path::Path, process::Command};

use anyhow::{bail, Context as _};

use crate::{cycles, setup, shell};

pub fn run(cargo_args: &[String]) -> anyhow::Result<()> {
    setup::run()?;
    shell::run(shell::cargo().args(["fmt", "--all", "--", "--check"]))
        .context("formatting differs: run `cargo fmt --all`")?;
    // Before the lints and the builds: it reads the sources only, and a cycle is a layout error.
    cycles::check(&cycles::default_src())?;
    shell::run(shell::cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    // The kernel crate only builds for the BPF target, with nightly's build-std.
    shell::run(
        Command::new("rustup")
            .args([
                "run",
                "nightly",
                "cargo",
                "clippy",
                "--package",
                "edge-ebpf",
                "--release",
            ])
            .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
            .args(["--", "-D", "warnings"])
            .env_remove("RUSTC")
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("CARGO"),
    )?;
    let agent = shell::build_agent(true)?;
    let xtask = std::env::current_exe().context("locating the xtask binary")?;

    // Lab agents create it for their status files; a suite that found none leaves none.
    let agent_dir = Path::new(edge_tests::AGENT_RUN_DIR);
    let had_agent_dir = agent_dir.exists();
    let before = edge_tests::find_leftovers(None);
    if !before.is_empty() {
        println!("note: an earlier run left lab objects behind; removing them first:\n{before}");
        edge_tests::clean_all().context("cleaning earlier lab leftovers")?;
    }
    shell::run(
        shell::cargo()
            .args(["test", "--workspace", "--exclude", "edge-ebpf"])
            .args(cargo_args)
            .env("EDGE_AGENT_BIN", &agent)
            .env("EDGE_XTASK_BIN", &xtask),
    )?;
    // Corrosion is in no registry: its lab test runs only against a binary the user names.
    match std::env::var_os("CORROSION_BIN") {
        Some(bin) => {
            println!("CORROSION_BIN={}: running the Corrosion lab", bin.to_string_lossy());
            shell::run(
                shell::cargo()
                    .args(["test", "-p", "edge-tests", "--test", "e2e", "corrosion_lab"])
                    .args(cargo_args)
                    .args(["--", "--ignored"])
                    .env("EDGE_AGENT_BIN", &agent)
                    .env("EDGE_XTASK_BIN", &xtask),
            )?;
        }
        None => println!(
            "skipped: corrosion_lab::three_pops_replicate_through_corrosion (CORROSION_BIN is not set; \
             Corrosion is in no package registry, see docs/corrosion.md)"
        ),
    }
    let left = edge_tests::find_leftovers(None);
    if !left.is_empty() {
        bail!("the test suite left lab objects behind (`cargo xtask lab clean` removes them):\n{left}");
    }
    if !had_agent_dir {
        // Fails, and so keeps it, unless empty: a real agent started meanwhile keeps its file.
        let _ = std::fs::remove_dir(agent_dir);
    }
    println!("all tests passed; the lab left nothing behind");
    Ok(())
}
