//! Builds the kernel programs (`edge-ebpf`, nightly, bpfel-unknown-none, BTF kept) so that a plain
//! `cargo build` of the agent embeds a current object. `cargo xtask setup` installs what it needs.
use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
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
