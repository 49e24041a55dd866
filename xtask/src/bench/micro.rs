//! Per-packet cost of the BPF programs: `edge-agent`'s `prog` benchmark (`BPF_PROG_TEST_RUN`,
//! each program beside the parse-and-pass baseline measured in the same run), and its `control`
//! benchmark (state change to kernel latency, country database load time and memory). It lives with
//! the agent because it loads the agent's own object and map contents; xtask cannot depend on
//! the agent (building it needs the toolchain `setup` installs).

use crate::shell;

pub fn run() -> anyhow::Result<()> {
    let sections = [
        ("prog", "Per packet, through BPF_PROG_TEST_RUN"),
        (
            "control",
            "Control plane: state change to kernel maps, country database load",
        ),
        (
            "services",
            "The agent's services: internal. DNS queries, registration API requests",
        ),
        ("bgp", "The BGP decoder under 1,000,000 mutated messages"),
        (
            "sweep",
            "The agent's flow sweeper over a full flow table: time and peak heap",
        ),
    ];
    for (bench, title) in sections {
        let json = shell::workspace_root().join(format!("target/bench/{bench}.json"));
        if let Some(dir) = json.parent() {
            std::fs::create_dir_all(dir)?;
        }
        println!("\n{title} (release build):");
        shell::run(
            shell::cargo()
                .args([
                    "bench",
                    "--package",
                    "edge-agent",
                    "--bench",
                    bench,
                    "--",
                    "--json",
                ])
                .arg(&json),
        )?;
        println!("(written to {})", json.display());
    }
    Ok(())
}
