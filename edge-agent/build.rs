//! Builds the kernel programs (`edge-ebpf`, nightly, bpfel-unknown-none, BTF kept) so that a plain
//! `cargo build` of the agent embeds a current object. `cargo xtask setup` installs what it needs.
use anyhow::Context as _;

/// A prebuilt object to embed instead of building one. `cargo xtask bench` builds the programs
/// once per run and hands the object to each `cargo bench`: the bench profile has its own
/// OUT_DIR, where aya-build would otherwise build them (and `core`) from scratch, printing the
/// nested cargo's output as warnings.
const PREBUILT: &str = "EDGE_EBPF_OBJECT";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed={PREBUILT}");
    if let Some(object) = std::env::var_os(PREBUILT) {
        println!("cargo:rerun-if-changed={}", object.to_string_lossy());
        let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").context("OUT_DIR not set")?);
        std::fs::copy(&object, out.join("edge-ebpf")).with_context(|| {
            format!(
                "copying {PREBUILT}={} into OUT_DIR",
                object.to_string_lossy()
            )
        })?;
        return Ok(());
    }
    let ebpf_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../edge-ebpf");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "edge-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context("building the eBPF programs failed; `cargo xtask setup` installs nightly rust-src and bpf-linker")
}
