//! Line (a), the baseline: wireguard-go between two hosts set up by hand with `wg` and `ip`, as
//! the agents would set it up, with no agent and no data plane.

use std::{net::IpAddr, path::PathBuf, process::Command, time::Duration};

use anyhow::{bail, Context as _};
use edge_tests::{Lab, LabProcess};

use super::{
    alive,
    measure::{measure_or_record, wait_ping},
    results::{Line, Results},
    run_with_input,
    topology::{Member, HA, HB, KEEPALIVE_SECS, WG_MTU, WG_PORT},
    Ctx,
};
use crate::bench::lab::wait_until;

/// A (private, public) key pair from `wg genkey` and `wg pubkey`.
fn wg_keypair() -> anyhow::Result<(String, String)> {
    let private = Command::new("wg")
        .arg("genkey")
        .output()
        .context("running wg genkey")?;
    if !private.status.success() {
        bail!(
            "wg genkey failed: {}",
            String::from_utf8_lossy(&private.stderr)
        );
    }
    let public = run_with_input(Command::new("wg").arg("pubkey"), &private.stdout)?;
    if !public.status.success() {
        bail!(
            "wg pubkey failed: {}",
            String::from_utf8_lossy(&public.stderr)
        );
    }
    Ok((
        String::from_utf8_lossy(&private.stdout).trim().to_owned(),
        String::from_utf8_lossy(&public.stdout).trim().to_owned(),
    ))
}

/// wireguard-go in `m`'s namespace on `ifname`, as the agent starts it (foreground, userspace
/// preferred); returns once its UAPI socket exists.
fn start_wireguard_go(lab: &Lab, m: &Member, ifname: &str) -> anyhow::Result<LabProcess> {
    let p = lab.ns(m.ns).spawn(
        &format!("wireguard-go-{}", m.ns),
        &["wireguard-go", "-f", ifname],
        &[("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1")],
    )?;
    let socket = PathBuf::from(format!("/var/run/wireguard/{ifname}.sock"));
    wait_until(Duration::from_secs(10), || {
        alive(&p)?;
        Ok(socket.exists())
    })
    .with_context(|| format!("waiting for {}", socket.display()))?;
    Ok(p)
}

pub(super) fn plain_wireguard(ctx: &Ctx<'_>, results: &mut Results) -> anyhow::Result<()> {
    let lab = ctx.lab;
    let members = [&HA, &HB];
    let mut keys = Vec::new();
    for m in members {
        let (private, public) = wg_keypair()?;
        let path = lab.log_dir().join(format!("plain-{}.key", m.ns));
        std::fs::write(&path, format!("{private}\n"))
            .with_context(|| format!("writing {}", path.display()))?;
        keys.push((path, public));
    }
    let mut devices = Vec::new();
    for (i, m) in members.iter().enumerate() {
        let ifname = lab.wg_ifname(u16::try_from(i)?);
        devices.push(start_wireguard_go(lab, m, &ifname)?);
        let other = members[1 - i];
        let key = keys[i].0.to_string_lossy().into_owned();
        let (keepalive, port) = (KEEPALIVE_SECS.to_string(), WG_PORT.to_string());
        let ns = lab.ns(m.ns);
        ns.exec_ok(&[
            "wg",
            "set",
            &ifname,
            "private-key",
            &key,
            "listen-port",
            &port,
            "peer",
            &keys[1 - i].1,
            "endpoint",
            &other.endpoint(),
            "allowed-ips",
            &other.prefix(),
            "persistent-keepalive",
            &keepalive,
        ])?;
        // As the agent does: the whole deployment on-link, WireGuard's allowed IPs pick the peer.
        ns.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{}/48", m.addr()),
            "dev",
            &ifname,
            "nodad",
        ])?;
        ns.ip(&[
            "link",
            "set",
            "dev",
            &ifname,
            "mtu",
            &WG_MTU.to_string(),
            "up",
        ])?;
    }
    println!("bench: overlay: plain WireGuard between ha and hb up (wg, ip)");
    wait_ping(lab.ns(HA.ns), HB.addr())?;
    let running = || {
        devices.iter().try_for_each(alive)?;
        alive(ctx.iperf)
    };
    measure_or_record(
        ctx,
        results,
        Line::PlainWg,
        lab.ns(HA.ns),
        IpAddr::V6(HB.addr()),
        &running,
    );
    // wireguard-go deletes its device and socket on SIGTERM (the next phase waits for that).
    drop(devices);
    Ok(())
}

pub(super) fn wireguard_go_version() -> Option<String> {
    let out = Command::new("wireguard-go")
        .arg("--version")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().next().map(|l| l.trim().to_owned())
}
