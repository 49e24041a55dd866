//! `cargo xtask container`: the agent's image, built with podman from `scratch`: the release
//! binary plus the shared libraries `ldd` names (no base image can be pulled here).

use std::{path::Path, process::Command};

use anyhow::{bail, Context as _};

use crate::shell;

pub const IMAGE: &str = "localhost/edge-agent:dev";

/// Copies `file` into `root` at the same path.
fn copy_into(root: &Path, file: &Path) -> anyhow::Result<()> {
    let relative = file.strip_prefix("/").unwrap_or(file);
    let target = root.join(relative);
    if let Some(dir) = target.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // Through symlinks: the image needs the bytes under the name the loader asks for.
    std::fs::copy(file, &target)
        .with_context(|| format!("copying {} into the image", file.display()))?;
    Ok(())
}

/// The absolute paths of the libraries (and the loader) `binary` needs, from `ldd`.
fn libraries(binary: &Path) -> anyhow::Result<Vec<String>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd")?;
    if !out.status.success() {
        bail!(
            "ldd {}: {}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
            let path = l.split("=>").last()?.split_whitespace().next()?;
            path.starts_with('/').then(|| path.to_owned())
        })
        .collect())
}

/// Builds the image around `agent`, or around a fresh release build when none is given.
pub fn run(agent: Option<&Path>) -> anyhow::Result<()> {
    let agent = match agent {
        Some(path) => path.to_path_buf(),
        None => {
            shell::run(shell::cargo().args(["build", "--release", "--package", "edge-agent"]))?;
            shell::target_dir().join("release").join("edge-agent")
        }
    };
    let context = shell::target_dir().join("container");
    let root = context.join("rootfs");
    if root.exists() {
        std::fs::remove_dir_all(&root)?;
    }
    let bin = root.join("usr/local/bin");
    std::fs::create_dir_all(&bin)?;
    std::fs::copy(&agent, bin.join("edge-agent")).context("copying the agent")?;
    for lib in libraries(&agent)? {
        copy_into(&root, Path::new(&lib))?;
    }
    // Mount points and the places the agent writes.
    for dir in [
        "etc/edgeproxy",
        "var/lib/edgeproxy",
        "run/edgeproxy",
        "sys/fs/bpf",
        "tmp",
    ] {
        std::fs::create_dir_all(root.join(dir))?;
    }
    std::fs::write(root.join("etc/hostname"), "edge-agent\n")?;
    let file = shell::workspace_root().join("Containerfile");
    let previous = image_id();
    shell::run(
        Command::new("podman")
            .args(["--runtime", "runc", "build", "-t", IMAGE, "-f"])
            .arg(&file)
            .arg(&context),
    )?;
    println!("built {IMAGE}");
    // The image the tag named before is left untagged by the build: remove it, or every test
    // run leaves some 200 MB behind (120 such images had filled 22 GB of a development
    // machine). One a container still uses stays.
    if let Some(old) = previous.filter(|old| image_id().as_ref() != Some(old)) {
        let removed = Command::new("podman")
            .args(["image", "rm", &old])
            .output()
            .is_ok_and(|out| out.status.success());
        if !removed {
            println!("note: the previous {IMAGE} ({old}) is still in use; left in place");
        }
    }
    Ok(())
}

/// The id of the image `IMAGE` names, if there is one.
fn image_id() -> Option<String> {
    let out = Command::new("podman")
        .args(["image", "inspect", "--format", "{{.Id}}", IMAGE])
        .output()
        .ok()?;
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !id.is_empty()).then_some(id)
}
