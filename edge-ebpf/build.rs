//! The eBPF binary is linked by `bpf-linker`, which cargo does not know about: rebuild when it
//! changes, and say how to get it when it is missing.
fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(err) => println!(
            "cargo:warning=bpf-linker not found on PATH ({err}); run `cargo xtask setup` first"
        ),
    }
}
