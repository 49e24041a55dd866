//! Per-packet cost of the BPF programs: `edge-agent`'s `prog` benchmark (`BPF_PROG_TEST_RUN`,
//! each program beside the parse-and-pass baseline measured in the same run), and its `control`
//! benchmark (state change to kernel latency, country database load time and memory). It lives with
//! the agent because it loads the agent's own object and map contents; xtask cannot depend on
//! the agent (building it needs the toolchain `setup` installs).

use crate::shell;

pub fn run() -> anyhow::Result<()> {
    let json = shell::workspace_root().join("target/bench/prog.json");
    if let Some(dir) = json.parent() {
        std::fs::create_dir_all(dir)?;
    }
    println!("\nPer packet, through BPF_PROG_TEST_RUN (release build):");
    shell::run(
        shell::cargo()
            .args([
                "bench",
                "--package",
                "edge-agent",
                "--bench",
                "prog",
                "--",
                "--json",
            ])
            .arg(&json),
    )?;
    println!("(written to {})", json.display());

    let json = shell::workspace_root().join("target/bench/control.json");
    println!(
        "\nControl plane: state change to kernel maps, country database load (release build):"
    );
    shell::run(
        shell::cargo()
            .args([
                "bench",
                "--package",
                "edge-agent",
                "--bench",
                "control",
                "--",
                "--json",
            ])
            .arg(&json),
    )?;
    println!("(written to {})", json.display());
    Ok(())
}
