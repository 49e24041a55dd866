//! Per-packet cost of the BPF programs.

/// PLACEHOLDER: will hold the `BPF_PROG_TEST_RUN` per-packet section of `cargo xtask bench`
/// (DESIGN.md, "Performance method"): each data-plane program run >= 1e6 times on prepared
/// frames (established flow, SYN), reported as a ratio to a minimal parse-and-pass program
/// measured in the same run. Another engineer fills it in; the end-to-end section calls it
/// after its own table and fails the bench if it fails.
pub fn run() -> anyhow::Result<()> {
    Ok(())
}
