//! `edge-agent host`: a backend host's agent. No data plane: it joins the 6PN mesh from the
//! state (publishing its row, reconciling its peers on every change) until SIGTERM.

use std::{sync::Arc, time::Duration};

use anyhow::{bail, Context as _};
use tracing::{info, warn};

use crate::sixpn::node::Node;
use crate::{
    config::AgentConfig, dataplane::pins::PinDir, model::HostRole, state::write, state::StateStore,
};

pub fn run(config: AgentConfig) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let store: Option<Arc<dyn StateStore>> = crate::agent::open_source(&config, &runtime)?;
    let Some(store) = store else {
        bail!("host role: the mesh comes from the state; set state.database or state.source = \"corrosion\"");
    };
    if !config.sixpn.enabled {
        bail!("host role: [sixpn] enabled = true is needed (the host only joins the 6PN)");
    }
    let id = config
        .sixpn
        .id
        .clone()
        .unwrap_or_else(|| config.pop_id.clone());
    let mut node = Node::start(&config.sixpn, &id, &config.region, HostRole::Host)
        .context("starting the 6PN device")?;
    let pins = PinDir::new(&config.bpffs_root);
    let status_file = pins.agent_status_file();
    // Removes the status file however this ends.
    let _status = pins.status_file_guard();
    runtime.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
        let mut changes = store.changes().context("watching the state")?;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut first = true;
        // Read again only when the state changed (this agent's own row writes included: the
        // watch sees every commit); the tick reconciles against what was read, for what
        // changes without a state change (a peer answering, after which keepalives start).
        let mut snap = None;
        loop {
            if snap.is_none() {
                match store.snapshot() {
                    Ok((read, _)) => snap = Some(read),
                    Err(error) => {
                        warn!(%error, "reading the state failed; the mesh stays as it is")
                    }
                }
            }
            if let Some(snap) = &snap {
                apply(&*store, &mut node, snap);
            }
            write_status(&status_file, &node);
            if first {
                println!("edge-agent host ready");
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
                first = false;
            }
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = sigterm.recv() => break,
                () = changes.changed() => snap = None,
                _ = tick.tick() => {}
            }
        }
        anyhow::Ok(())
    })?;
    info!("host agent stopping; the 6PN device stays up (`edge-agent wg down` removes it)");
    Ok(())
}

/// Reconciles the peers, and publishes this host's row if the state does not say it yet.
/// Reconciling comes first: it takes a key that `wg rotate-key` published, so that the row
/// compared next already names it (the other way round, the old key would be published back).
pub fn apply(store: &dyn StateStore, node: &mut Node, snap: &crate::model::Snapshot) {
    if let Err(error) = node.reconcile(snap) {
        warn!(%error, "6PN: reconciling the mesh");
    }
    if let Some(row) = node.own_row(snap) {
        match write::upsert_pop(&row, crate::model::unix_now()).and_then(|s| store.execute(&s)) {
            Ok(()) => info!(id = %row.id, "6PN: published this host's row"),
            Err(error) => warn!(%error, "6PN: publishing this host's row"),
        }
    }
}

fn write_status(path: &std::path::Path, node: &Node) {
    let doc = super::status::AgentStatus {
        pid: std::process::id(),
        role: Some(HostRole::Host),
        written_at: crate::model::unix_now(),
        pop: None,
        sixpn: Some(node.status()),
    };
    if let Err(error) = doc.write_to(path) {
        warn!(%error, "writing the host status");
    }
}
