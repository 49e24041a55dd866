//! This host's place in the 6PN mesh, kept by the agent: its WireGuard device (kernel when the
//! `wireguard` link kind exists, else wireguard-go), its key, its address, its row in the
//! state, and its peers reconciled from the rows on every state change.

use std::{
    net::Ipv6Addr,
    path::PathBuf,
    time::{Duration, SystemTime},
};

use ipnet::{IpNet, Ipv6Net};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::{
    keys::{PrivateKey, PublicKey},
    members::{changes, Mesh},
    wireguard::{
        choice::Implementation,
        kernel::{KernelError, KernelWg},
        uapi::{DeviceConfig, DeviceState, Uapi},
        userspace::{self, DEFAULT_MTU},
    },
};
use crate::model::{HostRole, Pop, Region, Snapshot};
use crate::netlink::link::{LinkError, NetlinkLink};

/// The `[sixpn]` section of the agent's config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SixpnConfig {
    pub enabled: bool,
    /// This member's `pops` row; defaults to the agent's `pop_id`.
    pub id: Option<String>,
    /// Its number in its region (assigned by whoever adds hosts; 1 and up).
    pub host_number: u32,
    /// The WireGuard interface. wireguard-go's sockets share one directory for every network
    /// namespace, so the name must be unique on the machine.
    pub ifname: String,
    pub listen_port: u16,
    /// `address:port` others reach this host at, published in its row.
    pub endpoint: Option<String>,
    pub key_file: PathBuf,
    pub keepalive_secs: u16,
    pub mtu: u32,
    /// This host's v1 IPv4 overlay address with v1's on-link prefix (`10.50.1.1/16`), kept on
    /// the same tunnel during the transition; published so that peers route it here.
    pub ipv4: Option<ipnet::Ipv4Net>,
}

impl Default for SixpnConfig {
    fn default() -> Self {
        SixpnConfig {
            enabled: false,
            id: None,
            host_number: 0,
            ifname: "6pn0".into(),
            listen_port: 51820,
            endpoint: None,
            key_file: PathBuf::from("/var/lib/edgeproxy/wireguard.key"),
            keepalive_secs: 25,
            mtu: DEFAULT_MTU,
            ipv4: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("6PN: {0}")]
    Key(#[from] super::KeyError),
    #[error("6PN: {0}")]
    Userspace(#[from] super::UserspaceError),
    #[error("6PN: {0}")]
    Uapi(#[from] super::UapiError),
    #[error("6PN kernel WireGuard: {0}")]
    Kernel(#[from] KernelError),
    #[error("6PN link: {0}")]
    Link(#[from] LinkError),
    #[error("6PN: sixpn.host_number must be 1 or more")]
    NoHostNumber,
}

/// Which WireGuard the device is: the kernel's when a `wireguard` link can be created (as
/// `wg-quick` prefers), else wireguard-go. Either outlives the agent, like the data plane: the
/// next agent adopts it with its peers, so flows over the overlay go on through a restart.
enum Device {
    Kernel(KernelWg),
    Userspace { uapi: Uapi, why: String },
}

impl Device {
    /// The device, and whether an earlier agent's was adopted.
    fn start(ifname: &str, link: &NetlinkLink) -> Result<(Device, bool), NodeError> {
        if let Some(uapi) = userspace::adopt(ifname) {
            let why = "adopted from an earlier agent".to_owned();
            return Ok((Device::Userspace { uapi, why }, true));
        }
        match Implementation::detect() {
            Implementation::Kernel => {
                let existed = link.index(ifname).is_ok();
                if !existed {
                    link.create_wireguard(ifname)?;
                }
                Ok((Device::Kernel(KernelWg::open(ifname)?), existed))
            }
            Implementation::Userspace { reason } => Ok((
                Device::Userspace {
                    uapi: userspace::start_detached(ifname)?,
                    why: reason,
                },
                false,
            )),
        }
    }

    fn implementation(&self) -> String {
        match self {
            Device::Kernel(_) => "kernel (generic netlink)".to_owned(),
            Device::Userspace { why, .. } => {
                format!("userspace (wireguard-go, UAPI socket): {why}")
            }
        }
    }

    fn set(&self, config: &DeviceConfig) -> Result<(), NodeError> {
        match self {
            Device::Kernel(wg) => Ok(wg.set(config)?),
            Device::Userspace { uapi, .. } => Ok(uapi.set(config)?),
        }
    }

    fn get(&self) -> Result<DeviceState, NodeError> {
        match self {
            Device::Kernel(wg) => Ok(wg.get()?),
            Device::Userspace { uapi, .. } => Ok(uapi.get()?),
        }
    }
}

pub struct Node {
    config: SixpnConfig,
    id: String,
    region: Region,
    role: HostRole,
    key: PrivateKey,
    device: Device,
    link: NetlinkLink,
    address: Option<Ipv6Addr>,
    problems: Vec<(String, String)>,
}

impl Node {
    /// Loads (or makes) the key and starts the device; peers come with the first
    /// [`Node::reconcile`].
    pub fn start(
        config: &SixpnConfig,
        id: &str,
        region: &Region,
        role: HostRole,
    ) -> Result<Node, NodeError> {
        if config.host_number == 0 {
            return Err(NodeError::NoHostNumber);
        }
        let (key, created) = PrivateKey::load_or_generate(&config.key_file)?;
        if created {
            info!(path = %config.key_file.display(), "6PN: generated this host's WireGuard key");
        }
        let link = NetlinkLink::open()?;
        let (device, adopted) = Device::start(&config.ifname, &link)?;
        if let Some(v4) = config.ipv4 {
            // Dual stack from the start: v1 users of this host keep reaching it.
            link.add_addr(&config.ifname, IpNet::V4(v4))?;
        }
        // An adopted device keeps its peers (their sessions carry live flows); the first
        // reconcile corrects whatever changed while no agent ran.
        device.set(&DeviceConfig {
            private_key: Some(key.clone()),
            listen_port: Some(config.listen_port),
            replace_peers: !adopted,
            peers: Vec::new(),
        })?;
        link.up(&config.ifname, config.mtu)?;
        info!(ifname = %config.ifname, implementation = %device.implementation(), adopted, public_key = %key.public_key(), "6PN device up");
        Ok(Node {
            config: config.clone(),
            id: id.to_owned(),
            region: region.clone(),
            role,
            key,
            device,
            link,
            address: None,
            problems: Vec::new(),
        })
    }

    pub fn public_key(&self) -> PublicKey {
        self.key.public_key()
    }

    /// The row this host publishes: its key, endpoint and number, keeping what else `current`
    /// says of it. `None` when the state already says exactly this.
    pub fn own_row(&self, snap: &Snapshot) -> Option<Pop> {
        let current = snap.pops.iter().find(|p| p.id == self.id);
        let row = Pop {
            id: self.id.clone(),
            region: self.region.clone(),
            overlay_addr: self.address.or(current.and_then(|p| p.overlay_addr)),
            public_key: Some(self.public_key().to_string()),
            endpoint: self.config.endpoint.clone(),
            role: self.role,
            host_number: self.config.host_number,
            overlay_ipv4: self.config.ipv4.map(|n| n.addr()),
        };
        (current != Some(&row)).then_some(row)
    }

    /// Brings the device to what the rows say: this host's address, a peer per other member.
    /// Only peers that differ are touched.
    pub fn reconcile(&mut self, snap: &Snapshot) -> Result<(), NodeError> {
        self.follow_key_rotation(snap)?;
        let mesh = Mesh::from_snapshot(snap);
        if mesh.problems != self.problems {
            for (what, why) in &mesh.problems {
                warn!(%what, %why, "6PN: left out of the mesh");
            }
            self.problems.clone_from(&mesh.problems);
        }
        if let Some(d) = &mesh.deployment {
            if let Some(me) = mesh.member(&self.id) {
                if self.address != Some(me.addr) {
                    // The whole deployment on-link: WireGuard's allowed IPs pick the peer.
                    let net = Ipv6Net::new(me.addr, 48).unwrap_or(d.prefix());
                    self.link.add_addr(&self.config.ifname, IpNet::V6(net))?;
                    info!(address = %me.addr, "6PN address");
                    self.address = Some(me.addr);
                }
            }
        }
        let mut desired = mesh.peers_of(&self.id, self.config.keepalive_secs);
        let current = self.device.get()?;
        // Keepalives start once a peer has answered. Set when the peer is added, they make both
        // sides open their first handshake at the same moment, and this wireguard-go then left
        // some pairs without a session for over a minute in the lab (never with them deferred).
        for (key, peer) in &mut desired {
            let answered = current
                .peers
                .iter()
                .any(|s| s.public_key == *key && s.last_handshake.is_some());
            if !answered {
                peer.persistent_keepalive = Some(0);
            }
        }
        let delta = changes(&current.peers, &desired);
        if !delta.is_empty() {
            let removed = delta.iter().filter(|p| p.remove).count();
            let added_or_changed = delta.len() - removed;
            self.device.set(&DeviceConfig {
                private_key: None,
                listen_port: None,
                replace_peers: false,
                peers: delta,
            })?;
            info!(
                added_or_changed,
                removed,
                peers = desired.len(),
                "6PN peers reconciled"
            );
        }
        Ok(())
    }

    /// `edge-agent wg rotate-key` wrote a new key file and this host's row: take the new key
    /// once the row names it, so that peers and this device switch together.
    fn follow_key_rotation(&mut self, snap: &Snapshot) -> Result<(), NodeError> {
        let published = snap
            .pops
            .iter()
            .find(|p| p.id == self.id)
            .and_then(|p| p.public_key.as_deref())
            .and_then(|k| k.parse::<PublicKey>().ok());
        let Some(published) = published else {
            return Ok(());
        };
        if published == self.public_key() {
            return Ok(());
        }
        let on_disk = PrivateKey::load(&self.config.key_file)?;
        if on_disk.public_key() != published {
            return Ok(());
        }
        self.device.set(&DeviceConfig {
            private_key: Some(on_disk.clone()),
            listen_port: None,
            replace_peers: false,
            peers: Vec::new(),
        })?;
        info!(public_key = %published, "6PN: key rotated");
        self.key = on_disk;
        Ok(())
    }

    /// For `edge-agent status` and `wg`: the implementation, this host, and each peer.
    pub fn status(&self) -> SixpnStatus {
        let state = self.device.get();
        let now = SystemTime::now();
        let peers = match &state {
            Ok(s) => s
                .peers
                .iter()
                .map(|p| SixpnPeerStatus {
                    public_key: p.public_key.to_string(),
                    endpoint: p.endpoint.map(|e| e.to_string()),
                    allowed_ips: p.allowed_ips.iter().map(ToString::to_string).collect(),
                    last_handshake_secs_ago: p
                        .last_handshake
                        .and_then(|t| now.duration_since(t).ok())
                        .map(|d: Duration| d.as_secs_f64()),
                    rx_bytes: p.rx_bytes,
                    tx_bytes: p.tx_bytes,
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        SixpnStatus {
            implementation: self.device.implementation(),
            ifname: self.config.ifname.clone(),
            id: self.id.clone(),
            address: self.address,
            public_key: self.public_key().to_string(),
            listen_port: self.config.listen_port,
            error: state.err().map(|e| e.to_string()),
            problems: self
                .problems
                .iter()
                .map(|(w, y)| format!("{w}: {y}"))
                .collect(),
            peers,
        }
    }
}

/// This host in the mesh as the status file carries it (`edge-agent status`, `wg show`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SixpnStatus {
    /// Kernel or wireguard-go, and why.
    pub implementation: String,
    pub ifname: String,
    /// This member's row in `pops`.
    pub id: String,
    /// Its 6PN address, once the state gave it one.
    pub address: Option<Ipv6Addr>,
    pub public_key: String,
    pub listen_port: u16,
    /// Why the device could not be read (no peers are listed then).
    pub error: Option<String>,
    /// Rows left out of the mesh, and why.
    pub problems: Vec<String>,
    pub peers: Vec<SixpnPeerStatus>,
}

/// One WireGuard peer as the device reports it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SixpnPeerStatus {
    pub public_key: String,
    pub endpoint: Option<String>,
    pub allowed_ips: Vec<String>,
    /// `None` before the first handshake.
    pub last_handshake_secs_ago: Option<f64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// `edge-agent wg down`: deletes the 6PN interface (wireguard-go exits with it). The agent
/// leaves it up when it stops, as it leaves the data plane attached.
pub fn down(ifname: &str) -> Result<bool, NodeError> {
    let link = NetlinkLink::open()?;
    if link.index(ifname).is_err() {
        return Ok(false);
    }
    link.delete(ifname)?;
    Ok(true)
}
