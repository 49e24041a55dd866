//! Per-packet cost of the BPF programs: `edge-agent`'s `prog` benchmark (`BPF_PROG_TEST_RUN`,
//! each program beside the parse-and-pass baseline measured in the same run), and its `control`
//! benchmark (state change to kernel latency, country database load time and memory). It lives with
//! the agent because it loads the agent's own object and map contents; xtask cannot depend on
//! the agent (building it needs the toolchain `setup` installs).

use crate::shell;

pub fn run() -> anyhow::Result<()> {
    let object = build_programs()?;
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
                .env("EDGE_EBPF_OBJECT", &object)
                .args([
                    "bench",
                    "--quiet",
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

/// Builds the kernel programs once for every `cargo bench` of this run, as the agent's build
/// script would (aya-build's command: nightly, `build-std=core`, BTF kept), into their own
/// target directory so that runs after this one find it built; returns the object. Each bench
/// then embeds this object (`EDGE_EBPF_OBJECT`, see edge-agent/build.rs) instead of building
/// the programs again in the bench profile's OUT_DIR.
fn build_programs() -> anyhow::Result<std::path::PathBuf> {
    let target_dir = shell::target_dir().join("ebpf");
    // aya-build's flags: the arch cfg the programs read, debug info and BTF for bpftool.
    let rustflags = [
        format!("--cfg=bpf_target_arch=\"{}\"", std::env::consts::ARCH),
        "-Cdebuginfo=2".to_owned(),
        "-Clink-arg=--btf".to_owned(),
    ]
    .join("\x1f");
    println!("building the kernel programs once for the benchmarks ...");
    shell::run(
        std::process::Command::new("rustup")
            .args(["run", "nightly", "cargo", "build", "--quiet"])
            .args(["--package", "edge-ebpf", "--bins", "--release"])
            .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
            .arg("--target-dir")
            .arg(&target_dir)
            .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
            // The stable toolchain's, set by the outer cargo: the nightly one must build these.
            .env_remove("RUSTC")
            .env_remove("RUSTC_WORKSPACE_WRAPPER")
            .env_remove("CARGO"),
    )?;
    let object = target_dir.join("bpfel-unknown-none/release/edge-ebpf");
    anyhow::ensure!(
        object.exists(),
        "{} is missing after the build",
        object.display()
    );
    Ok(object)
}
