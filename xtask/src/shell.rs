//! Running commands with their command line printed, and locating the workspace's binaries.

use std::{
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace_root().join("target"), PathBuf::from)
}

/// Runs `cmd` from the workspace root, printing it first; fails with its exit status.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    cmd.current_dir(workspace_root());
    println!("$ {}", display(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("starting {}", display(cmd)))?;
    if !status.success() {
        bail!("{} failed: {status}", display(cmd));
    }
    Ok(())
}

pub fn display(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Builds `edge-agent` (which builds and embeds the kernel programs) and the lab's helper
/// binaries (`edge-tests`: echo-server, echo-load, ...), and returns the agent's path.
pub fn build_agent(build: bool) -> anyhow::Result<PathBuf> {
    if build {
        run(cargo().args([
            "build",
            "--package",
            "edge-agent",
            "--package",
            "edge-tests",
            "--bins",
        ]))?;
    }
    debug_bin("edge-agent")
}

/// A binary of the debug build, which must exist.
pub fn debug_bin(name: &str) -> anyhow::Result<PathBuf> {
    let path = target_dir().join("debug").join(name);
    if !path.exists() {
        bail!(
            "{} is missing; run `cargo xtask run` without --no-setup",
            path.display()
        );
    }
    Ok(path)
}

/// Replaces this process with `edge-agent run <args>`, so signals reach the agent directly.
pub fn exec_agent(agent: &Path, args: &[String]) -> anyhow::Result<()> {
    let mut cmd = Command::new(agent);
    cmd.arg("run").args(args);
    println!("$ {}", display(&cmd));
    Err(cmd.exec()).with_context(|| format!("executing {}", agent.display()))
}
