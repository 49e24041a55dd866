//! `cargo xtask setup`: every step checks first and acts only when needed, so it is idempotent
//! and fast on a machine that is already set up. A step that cannot be done says how to fix it.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _};

use crate::shell;

/// Debian packages the lab and tests use, with the command each provides (for the message).
const PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "ip"),
    ("util-linux", "nsenter"),
    ("ethtool", "ethtool: tx checksum offload off on lab veths"),
    ("bpftool", "bpftool: inspecting programs and maps"),
    ("wireguard-tools", "wg"),
    (
        "wireguard-go",
        "userspace WireGuard (no kernel module here)",
    ),
    ("bird2", "BGP router of the lab"),
    (
        "frr",
        "the other BGP router of the anycast labs (zebra, bgpd, bfdd, vtysh)",
    ),
    ("iperf3", "throughput in the lab and benchmarks"),
    ("socat", "TCP clients and servers in the lab"),
    ("iputils-ping", "ping"),
    ("procps", "ps, sysctl"),
    (
        "sqlite3",
        "the sqlite3 CLI operators (and a state test) write routing.db with",
    ),
    ("nftables", "nft: the kernel-NAT baseline of the benchmark, and the routers of pmtu_lab that send no ICMP errors"),
    ("haproxy", "the HAProxy baseline of the benchmark"),
    ("nginx", "the benchmark's HTTP backend"),
    ("wrk", "HTTP load in the benchmark"),
    ("bind9-dnsutils", "dig: querying the agent's DNS in the lab"),
    ("curl", "calling the registration API in the lab"),
    ("prometheus", "promtool: checking the agent's /metrics"),
    ("bird2", "the BGP router the anycast lab peers with"),
    ("podman", "the agent's container image and its test"),
    (
        "runc",
        "podman's runtime here (crun refuses this machine's cgroup layout)",
    ),
];

/// bpf-linker release known to build against the nightly's LLVM here (see ../shared/TOOLCHAIN.md).
const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn run() -> anyhow::Result<()> {
    step("running as root", check_root)?;
    step("bpffs mounted at /sys/fs/bpf", mount_bpffs)?;
    step("Debian packages", install_packages)?;
    step("nightly toolchain with rust-src", nightly_rust_src)?;
    step("bpf-linker built against the nightly's LLVM", bpf_linker)?;
    Ok(())
}

fn step(what: &str, f: impl FnOnce() -> anyhow::Result<String>) -> anyhow::Result<()> {
    println!("setup: {what} ...");
    let outcome = f().with_context(|| format!("setup step failed: {what}"))?;
    println!("setup: {what}: {outcome}");
    Ok(())
}

fn check_root() -> anyhow::Result<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the lab and the data plane need root (CAP_BPF, CAP_NET_ADMIN, namespaces): run as root, e.g. `sudo -E cargo xtask ...`");
    }
    Ok("yes".into())
}

fn mount_bpffs() -> anyhow::Result<String> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.contains(" bpf "))
    {
        return Ok("already mounted".into());
    }
    shell::run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
        .context("mount -t bpf bpf /sys/fs/bpf failed; the kernel needs CONFIG_BPF_SYSCALL")?;
    Ok("mounted".into())
}

fn is_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn install_packages() -> anyhow::Result<String> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .map(|(p, _)| *p)
        .filter(|p| !is_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok("all installed".into());
    }
    for (package, why) in PACKAGES.iter().filter(|(p, _)| missing.contains(p)) {
        println!("setup:   missing {package} ({why})");
    }
    let install = |args: &[&str]| {
        let mut cmd = Command::new("apt-get");
        cmd.args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null());
        shell::run(&mut cmd)
    };
    // A stale package index 404s on security updates: refresh it before installing.
    install(&["update", "-q"]).context("apt-get update failed; check the Debian mirror")?;
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(&missing);
    install(&args).context("apt-get install failed; install the packages above by hand")?;
    Ok(format!("installed {}", missing.join(" ")))
}

fn rustup(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("rustup")
        .args(args)
        .output()
        .context("rustup not found; install it from https://rustup.rs")?;
    if !out.status.success() {
        bail!(
            "rustup {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn nightly_rust_src() -> anyhow::Result<String> {
    let mut did = Vec::new();
    if !rustup(&["toolchain", "list"])?
        .lines()
        .any(|l| l.starts_with("nightly"))
    {
        shell::run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
        did.push("installed nightly");
    }
    if !rustup(&["component", "list", "--toolchain", "nightly", "--installed"])?
        .lines()
        .any(|l| l.starts_with("rust-src"))
    {
        shell::run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
        did.push("added rust-src");
    }
    Ok(if did.is_empty() {
        "present".into()
    } else {
        did.join(", ")
    })
}

/// The folder holding the `libLLVM.so` link bpf-linker was built against. bpf-linker keeps an
/// rpath to it, so it must outlive the build: it lives under the user's data directory.
fn llvm_prefix() -> PathBuf {
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".local/share/edgeproxy/llvm")
}

fn cargo_bin(name: &str) -> PathBuf {
    let cargo_home = std::env::var_os("CARGO_HOME").map_or_else(
        || {
            let home =
                std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
            home.join(".cargo")
        },
        PathBuf::from,
    );
    cargo_home.join("bin").join(name)
}

fn bpf_linker_works(path: &Path) -> bool {
    Command::new(path)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn bpf_linker() -> anyhow::Result<String> {
    let sysroot = Command::new("rustc")
        .args(["+nightly", "--print", "sysroot"])
        .output()
        .context("running rustc +nightly")?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    let version = Command::new("rustc")
        .args(["+nightly", "-vV"])
        .output()
        .context("running rustc +nightly -vV")?;
    let version = String::from_utf8_lossy(&version.stdout).into_owned();
    let llvm_major = version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("rustc +nightly -vV printed no LLVM version")?
        .to_owned();
    let libllvm = std::fs::read_dir(sysroot.join("lib"))
        .with_context(|| format!("listing {}/lib", sysroot.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so.") && n.ends_with("-nightly"))
        })
        .with_context(|| format!("no libLLVM.so.*-nightly in {}/lib", sysroot.display()))?;

    // Re-point the links every time: a nightly update moves the library, and bpf-linker's rpath
    // follows the links, not the library. `libLLVM.so` is what the build links against; the
    // versioned name is the soname the binary asks the loader for (rustup's LD_LIBRARY_PATH
    // hides its absence when rustc runs the linker, but not when anything else does).
    let prefix = llvm_prefix();
    let lib_dir = prefix.join("lib");
    std::fs::create_dir_all(&lib_dir).with_context(|| format!("creating {}", lib_dir.display()))?;
    let soname = libllvm
        .file_name()
        .map(PathBuf::from)
        .context("libLLVM has no file name")?;
    for name in [PathBuf::from("libLLVM.so"), soname] {
        let link = lib_dir.join(name);
        if std::fs::read_link(&link).ok().as_deref() != Some(libllvm.as_path()) {
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(&libllvm, &link)
                .with_context(|| format!("linking {} -> {}", link.display(), libllvm.display()))?;
        }
    }

    let installed = cargo_bin("bpf-linker");
    if bpf_linker_works(&installed) {
        return Ok(format!("{} works", installed.display()));
    }
    println!("setup:   building bpf-linker {BPF_LINKER_VERSION} against LLVM {llvm_major} (about a minute)");
    shell::run(
        shell::cargo()
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
                "--force",
            ])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{llvm_major}"),
            ])
            .env("LLVM_PREFIX", &prefix),
    )
    .context("building bpf-linker failed; see ../shared/TOOLCHAIN.md for the recipe")?;
    if !bpf_linker_works(&installed) {
        bail!("{} was installed but does not run", installed.display());
    }
    Ok(format!("built {}", installed.display()))
}
