//! Kernel WireGuard through generic netlink, and the choice between it and the userspace
//! implementation.
//!
//! [`KernelWg`] configures a `wireguard` link with `WG_CMD_SET_DEVICE` and reads it back with
//! `WG_CMD_GET_DEVICE` (include/uapi/linux/wireguard.h), taking and returning the same
//! [`DeviceConfig`] and [`DeviceState`] as [`super::uapi::Uapi`], so a caller can hold either.
//! [`Implementation::detect`] says which one this kernel allows: the kernel's when a link of kind
//! `wireguard` can be created, wireguard-go otherwise.

use std::{
    fmt,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, SystemTime},
};

use ipnet::IpNet;
use netlink_packet_core::{
    Emitable, NetlinkMessage, NLA_HEADER_SIZE, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_generic::{
    ctrl::{nlas::GenlCtrlAttrs, GenlCtrl, GenlCtrlCmd},
    GenlFamily, GenlMessage,
};
use netlink_packet_wireguard::{
    WireguardAddressFamily, WireguardAllowedIp, WireguardAllowedIpAttr, WireguardAttribute,
    WireguardCmd, WireguardDeviceFlags, WireguardMessage, WireguardPeer, WireguardPeerAttribute,
    WireguardPeerFlags, WireguardTimeSpec,
};
use netlink_sys::protocols::NETLINK_GENERIC;

use super::uapi::{DeviceConfig, DeviceState, PeerConfig, PeerState};
pub use crate::netlink::socket::NetlinkError;
use crate::{
    netlink::{
        link::NetlinkLink,
        socket::{valid_ifname, NlSocket},
    },
    sixpn::keys::{PrivateKey, PublicKey},
};

/// The most bytes one `WG_CMD_SET_DEVICE` message gets before the rest of the peers go into the
/// next: what wg(8) uses (`MNL_SOCKET_BUFFER_SIZE`, a 4 KiB page). The hard limit is the 16-bit
/// length of the `WGDEVICE_A_PEERS` attribute, 64 KiB, which a few hundred peers would exceed.
pub const MESSAGE_LIMIT: usize = 4096;

/// `struct nlmsghdr` and `struct genlmsghdr`, ahead of the attributes.
const HEADERS_LEN: usize = 16 + 4;

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("the kernel has no `wireguard` generic netlink family (no WireGuard module)")]
    NoFamily,
    #[error("{ifname:?} is not an interface name (1 to 15 bytes, no '/', ':' or whitespace)")]
    BadName { ifname: String },
    #[error("{what} does not fit in a {limit}-byte netlink message")]
    TooBig { what: String, limit: usize },
    #[error("the private key could not be encoded")]
    BadKey,
    #[error("{ifname}: unexpected WG_CMD_GET_DEVICE answer: {why}")]
    BadAnswer { ifname: String, why: String },
}

/// A kernel WireGuard link, configured over generic netlink in the network namespace of the
/// thread that opened it (whichever thread then uses it). Not `Sync`, like its socket.
///
/// A configuration that needs several messages (see [`MESSAGE_LIMIT`]) is applied one message at
/// a time, as wg(8) applies it: if one fails, those before it stay applied.
#[derive(Debug)]
pub struct KernelWg {
    ifname: String,
    family: u16,
    socket: NlSocket,
}

impl KernelWg {
    /// Opens generic netlink and looks up the `wireguard` family; [`KernelError::NoFamily`] where
    /// the kernel has no WireGuard. The link itself is created apart
    /// ([`NetlinkLink::create_wireguard`]).
    pub fn open(ifname: &str) -> Result<Self, KernelError> {
        check_name(ifname)?;
        let socket = NlSocket::open(NETLINK_GENERIC)?;
        let family = family_id(&socket)?;
        Ok(Self {
            ifname: ifname.to_owned(),
            family,
            socket,
        })
    }

    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// The id the kernel gave the `wireguard` generic netlink family.
    pub fn family_id(&self) -> u16 {
        self.family
    }

    pub fn set(&self, config: &DeviceConfig) -> Result<(), KernelError> {
        let messages = set_device_messages(&self.ifname, self.family, config)?;
        let count = messages.len();
        for (i, bytes) in messages.into_iter().enumerate() {
            let op = format!("WG_CMD_SET_DEVICE on {} ({}/{count})", self.ifname, i + 1);
            self.socket
                .request::<GenlMessage<WireguardMessage>>(&op, bytes)?;
        }
        Ok(())
    }

    pub fn get(&self) -> Result<DeviceState, KernelError> {
        let op = format!("WG_CMD_GET_DEVICE on {}", self.ifname);
        let answers = self.socket.request::<GenlMessage<WireguardMessage>>(
            &op,
            get_device_message(&self.ifname, self.family)?,
        )?;
        device_state(answers.into_iter().map(|answer| answer.payload)).map_err(|why| {
            KernelError::BadAnswer {
                ifname: self.ifname.clone(),
                why,
            }
        })
    }
}

/// Which WireGuard implementation the 6PN runs on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Implementation {
    /// The kernel's: `wireguard` links configured by [`KernelWg`].
    Kernel,
    /// wireguard-go ([`super::userspace::WireguardGo`]) over its UAPI socket; `reason` says why the kernel's
    /// cannot be used.
    Userspace { reason: String },
}

/// Probe links of one process get distinct names, in case two threads detect at once.
static PROBES: AtomicU32 = AtomicU32::new(0);

impl Implementation {
    /// Creates a throwaway link of kind `wireguard`, checks that the `wireguard` generic netlink
    /// family exists, and deletes the link again. Creating the link is the test that counts: it
    /// is what loads the module where modules can be loaded, and what fails (EOPNOTSUPP) where
    /// the kernel has no WireGuard. Acts in the calling thread's network namespace and needs
    /// CAP_NET_ADMIN there; anything that fails means userspace.
    pub fn detect() -> Self {
        let userspace = |reason: String| Self::Userspace { reason };
        let link = match NetlinkLink::open() {
            Ok(link) => link,
            Err(e) => return userspace(format!("rtnetlink is unavailable: {e}")),
        };
        let mut created = None;
        // EEXIST only if a probe of a crashed process with the same pid left its link behind.
        for _ in 0..3 {
            let name = probe_name();
            match link.create_wireguard(&name) {
                Ok(()) => {
                    created = Some(name);
                    break;
                }
                Err(e) if e.errno() == Some(libc::EEXIST) => continue,
                Err(e) => {
                    return userspace(format!("the kernel cannot create a `wireguard` link: {e}"))
                }
            }
        }
        let Some(name) = created else {
            return userspace("every probe link name was taken".to_owned());
        };
        let family = NlSocket::open(NETLINK_GENERIC)
            .map_err(KernelError::from)
            .and_then(|socket| family_id(&socket));
        if let Err(e) = link.delete(&name) {
            tracing::warn!(ifname = %name, error = %e, "the WireGuard probe link could not be deleted");
        }
        match family {
            Ok(_) => Self::Kernel,
            Err(e) => userspace(format!(
                "a `wireguard` link can be created, but configuring it cannot: {e}"
            )),
        }
    }
}

impl fmt::Display for Implementation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Kernel => f.write_str("kernel WireGuard"),
            Self::Userspace { reason } => write!(f, "userspace WireGuard (wireguard-go): {reason}"),
        }
    }
}

/// `6pnprobe` and up to 7 hex digits: the pid (22 bits at most on Linux) and a counter, within
/// the 15 bytes of an interface name.
fn probe_name() -> String {
    let n = PROBES.fetch_add(1, Ordering::Relaxed);
    format!(
        "6pnprobe{:x}",
        (std::process::id() | (n << 22)) & 0x0fff_ffff
    )
}

fn check_name(ifname: &str) -> Result<(), KernelError> {
    if valid_ifname(ifname) {
        Ok(())
    } else {
        Err(KernelError::BadName {
            ifname: ifname.to_owned(),
        })
    }
}

/// Asks the generic netlink controller for the id of the `wireguard` family, which the kernel
/// assigns when the module registers it.
fn family_id(socket: &NlSocket) -> Result<u16, KernelError> {
    let mut message = NetlinkMessage::from(GenlMessage::from_payload(GenlCtrl {
        cmd: GenlCtrlCmd::GetFamily,
        nlas: vec![GenlCtrlAttrs::FamilyName(
            WireguardMessage::family_name().to_owned(),
        )],
    }));
    message.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    let answers = match socket.request_message("look up the wireguard netlink family", message) {
        Err(e) if e.errno() == Some(libc::ENOENT) => return Err(KernelError::NoFamily),
        other => other?,
    };
    answers
        .iter()
        .flat_map(|answer| &answer.payload.nlas)
        .find_map(|nla| match nla {
            GenlCtrlAttrs::FamilyId(id) => Some(*id),
            _ => None,
        })
        .ok_or(KernelError::NoFamily)
}

fn serialize(
    family_id: u16,
    flags: u16,
    cmd: WireguardCmd,
    attributes: Vec<WireguardAttribute>,
) -> Vec<u8> {
    let mut genl = GenlMessage::from_payload(WireguardMessage { cmd, attributes });
    genl.set_resolved_family_id(family_id);
    let mut message = NetlinkMessage::from(genl);
    message.header.flags = flags;
    message.finalize();
    let mut bytes = vec![0; message.buffer_len()];
    message.serialize(&mut bytes);
    bytes
}

/// The `WG_CMD_GET_DEVICE` request for `ifname`: a dump, the only way the kernel serves it.
pub fn get_device_message(ifname: &str, family_id: u16) -> Result<Vec<u8>, KernelError> {
    check_name(ifname)?;
    Ok(serialize(
        family_id,
        NLM_F_REQUEST | NLM_F_DUMP,
        WireguardCmd::GetDevice,
        vec![WireguardAttribute::IfName(ifname.to_owned())],
    ))
}

/// The `WG_CMD_SET_DEVICE` messages that apply `config` to `ifname`, each within
/// [`MESSAGE_LIMIT`] bytes (sequence numbers are left 0; the socket sets them).
pub fn set_device_messages(
    ifname: &str,
    family_id: u16,
    config: &DeviceConfig,
) -> Result<Vec<Vec<u8>>, KernelError> {
    set_device_messages_within(ifname, family_id, config, MESSAGE_LIMIT)
}

/// [`set_device_messages`] with messages of at most `limit` bytes, split as wg(8) splits them:
/// the device's own attributes (private key, port, `REPLACE_PEERS`) go in the first message only,
/// so that a later one does not remove the peers the earlier ones added. Peers fill each message
/// in order; a peer whose allowed IPs do not fit continues in the next message under its public
/// key alone, with the rest of its allowed IPs and no flags, so they add to those already set.
pub fn set_device_messages_within(
    ifname: &str,
    family_id: u16,
    config: &DeviceConfig,
    limit: usize,
) -> Result<Vec<Vec<u8>>, KernelError> {
    check_name(ifname)?;
    let mut device = vec![WireguardAttribute::IfName(ifname.to_owned())];
    if let Some(key) = &config.private_key {
        device.push(WireguardAttribute::PrivateKey(private_key_bytes(key)?));
    }
    if let Some(port) = config.listen_port {
        device.push(WireguardAttribute::ListenPort(port));
    }
    if config.replace_peers {
        device.push(WireguardAttribute::Flags(
            WireguardDeviceFlags::ReplacePeers,
        ));
    }
    let mut packer = Packer::new(ifname, family_id, device, limit);
    if !packer.fits(0) {
        return Err(KernelError::TooBig {
            what: "the device's attributes".to_owned(),
            limit,
        });
    }
    for peer in &config.peers {
        packer.add_peer(peer)?;
    }
    Ok(packer.finish())
}

/// `PrivateKey` shows its bytes only as hex, and this module does not widen its API for that.
fn private_key_bytes(key: &PrivateKey) -> Result<[u8; 32], KernelError> {
    PublicKey::from_hex(&key.to_hex())
        .map(|bytes| *bytes.as_bytes())
        .ok_or(KernelError::BadKey)
}

fn peer_head(peer: &PeerConfig) -> Vec<WireguardPeerAttribute> {
    let mut head = vec![WireguardPeerAttribute::PublicKey(
        *peer.public_key.as_bytes(),
    )];
    if peer.remove {
        // As on the UAPI: a peer being removed needs nothing else.
        head.push(WireguardPeerAttribute::Flags(WireguardPeerFlags::RemoveMe));
        return head;
    }
    if peer.replace_allowed_ips {
        head.push(WireguardPeerAttribute::Flags(
            WireguardPeerFlags::ReplaceAllowedIps,
        ));
    }
    if let Some(endpoint) = peer.endpoint {
        head.push(WireguardPeerAttribute::Endpoint(endpoint));
    }
    if let Some(interval) = peer.persistent_keepalive {
        head.push(WireguardPeerAttribute::PersistentKeepalive(interval));
    }
    head
}

fn allowed_ip(net: &IpNet) -> WireguardAllowedIp {
    WireguardAllowedIp(vec![
        WireguardAllowedIpAttr::Family(match net {
            IpNet::V4(_) => WireguardAddressFamily::Ipv4,
            IpNet::V6(_) => WireguardAddressFamily::Ipv6,
        }),
        WireguardAllowedIpAttr::IpAddr(net.addr()),
        WireguardAllowedIpAttr::Cidr(net.prefix_len()),
    ])
}

/// Fills `WG_CMD_SET_DEVICE` messages up to a byte limit.
struct Packer<'a> {
    ifname: &'a str,
    family_id: u16,
    limit: usize,
    device: Vec<WireguardAttribute>,
    peers: Vec<WireguardPeer>,
    used: usize,
    messages: Vec<Vec<u8>>,
}

impl<'a> Packer<'a> {
    fn new(ifname: &'a str, family_id: u16, device: Vec<WireguardAttribute>, limit: usize) -> Self {
        let mut packer = Self {
            ifname,
            family_id,
            limit,
            device,
            peers: Vec::new(),
            used: 0,
            messages: Vec::new(),
        };
        packer.used = packer.base_len();
        packer
    }

    /// The headers, the device's attributes and the `WGDEVICE_A_PEERS` nest's own header.
    fn base_len(&self) -> usize {
        HEADERS_LEN + self.device.as_slice().buffer_len() + NLA_HEADER_SIZE
    }

    fn fits(&self, more: usize) -> bool {
        self.used + more <= self.limit
    }

    /// Nothing but the interface name yet: flushing would not make room.
    fn is_empty(&self) -> bool {
        self.peers.is_empty() && self.device.len() == 1
    }

    fn add_peer(&mut self, peer: &PeerConfig) -> Result<(), KernelError> {
        let ips: Vec<WireguardAllowedIp> = if peer.remove {
            Vec::new()
        } else {
            peer.allowed_ips.iter().map(allowed_ip).collect()
        };
        let mut rest = ips.as_slice();
        let mut head = peer_head(peer);
        loop {
            let mut len = NLA_HEADER_SIZE
                + head.as_slice().buffer_len()
                + if rest.is_empty() { 0 } else { NLA_HEADER_SIZE };
            let mut taken = 0;
            while let Some(ip) = rest.get(taken) {
                if !self.fits(len + ip.buffer_len()) {
                    break;
                }
                len += ip.buffer_len();
                taken += 1;
            }
            if !self.fits(len) || (taken == 0 && !rest.is_empty()) {
                if self.is_empty() {
                    return Err(KernelError::TooBig {
                        what: format!("peer {} with one allowed IP", peer.public_key),
                        limit: self.limit,
                    });
                }
                self.flush();
                continue;
            }
            let (sent, left) = rest.split_at(taken);
            let mut attributes = head;
            if !sent.is_empty() {
                attributes.push(WireguardPeerAttribute::AllowedIps(sent.to_vec()));
            }
            let peer_nla = WireguardPeer(attributes);
            self.used += peer_nla.buffer_len();
            self.peers.push(peer_nla);
            rest = left;
            if rest.is_empty() {
                return Ok(());
            }
            self.flush();
            head = vec![WireguardPeerAttribute::PublicKey(
                *peer.public_key.as_bytes(),
            )];
        }
    }

    fn flush(&mut self) {
        let mut attributes = std::mem::replace(
            &mut self.device,
            vec![WireguardAttribute::IfName(self.ifname.to_owned())],
        );
        if !self.peers.is_empty() {
            attributes.push(WireguardAttribute::Peers(std::mem::take(&mut self.peers)));
        }
        self.messages.push(serialize(
            self.family_id,
            NLM_F_REQUEST | NLM_F_ACK,
            WireguardCmd::SetDevice,
            attributes,
        ));
        self.used = self.base_len();
    }

    fn finish(mut self) -> Vec<Vec<u8>> {
        if !self.is_empty() || self.messages.is_empty() {
            self.flush();
        }
        self.messages
    }
}

/// The device as the messages of a `WG_CMD_GET_DEVICE` dump describe it.
fn device_state(
    messages: impl IntoIterator<Item = WireguardMessage>,
) -> Result<DeviceState, String> {
    let mut state = DeviceState::default();
    let mut private = None;
    for message in messages {
        for attribute in message.attributes {
            match attribute {
                WireguardAttribute::PublicKey(key) => {
                    state.public_key = Some(PublicKey::from_bytes(key))
                }
                WireguardAttribute::PrivateKey(key) => private = Some(key),
                // 0 until a port is set or chosen; wireguard-go then omits it from `get=1`.
                WireguardAttribute::ListenPort(port) => {
                    state.listen_port = (port != 0).then_some(port)
                }
                WireguardAttribute::Peers(peers) => {
                    for peer in peers {
                        add_peer_state(&mut state.peers, peer)?;
                    }
                }
                _ => {}
            }
        }
    }
    if state.public_key.is_none() {
        state.public_key = private.map(|key| PrivateKey::from_bytes(key).public_key());
    }
    Ok(state)
}

fn add_peer_state(peers: &mut Vec<PeerState>, peer: WireguardPeer) -> Result<(), String> {
    let public_key = peer
        .iter()
        .find_map(|attribute| match attribute {
            WireguardPeerAttribute::PublicKey(key) => Some(PublicKey::from_bytes(*key)),
            _ => None,
        })
        .ok_or("a peer without a public key")?;
    // A peer whose allowed IPs overflow one message continues in the next under the same key;
    // wg(8) merges it with the last peer the same way.
    let mut state = peers
        .pop_if(|last| last.public_key == public_key)
        .unwrap_or(PeerState {
            public_key,
            endpoint: None,
            allowed_ips: Vec::new(),
            last_handshake: None,
            rx_bytes: 0,
            tx_bytes: 0,
            persistent_keepalive: 0,
        });
    for attribute in peer.0 {
        match attribute {
            WireguardPeerAttribute::Endpoint(endpoint) => state.endpoint = Some(endpoint),
            WireguardPeerAttribute::PersistentKeepalive(interval) => {
                state.persistent_keepalive = interval
            }
            WireguardPeerAttribute::LastHandshake(time) => {
                state.last_handshake = handshake_time(time)
            }
            WireguardPeerAttribute::RxBytes(bytes) => state.rx_bytes = bytes,
            WireguardPeerAttribute::TxBytes(bytes) => state.tx_bytes = bytes,
            WireguardPeerAttribute::AllowedIps(ips) => {
                for ip in ips {
                    state.allowed_ips.push(allowed_net(&ip)?);
                }
            }
            _ => {}
        }
    }
    peers.push(state);
    Ok(())
}

/// `None` before the first handshake, which the kernel reports as 0.
fn handshake_time(time: WireguardTimeSpec) -> Option<SystemTime> {
    if time.seconds == 0 && time.nano_seconds == 0 {
        return None;
    }
    let seconds = u64::try_from(time.seconds).ok()?;
    let nanos = u32::try_from(time.nano_seconds)
        .ok()
        .filter(|nanos| *nanos < 1_000_000_000)?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::new(seconds, nanos))
}

fn allowed_net(ip: &WireguardAllowedIp) -> Result<IpNet, String> {
    let addr = ip.iter().find_map(|attribute| match attribute {
        WireguardAllowedIpAttr::IpAddr(addr) => Some(*addr),
        _ => None,
    });
    let cidr = ip.iter().find_map(|attribute| match attribute {
        WireguardAllowedIpAttr::Cidr(cidr) => Some(*cidr),
        _ => None,
    });
    match (addr, cidr) {
        (Some(addr), Some(cidr)) => {
            IpNet::new(addr, cidr).map_err(|_| format!("allowed IP {addr}/{cidr}"))
        }
        _ => Err(format!("an allowed IP without address or mask: {ip:?}")),
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a test fails loudly on any error")]
mod tests {
    use std::{
        io,
        net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
        process::Command,
    };

    use ipnet::{Ipv4Net, Ipv6Net};

    use super::*;

    // The layout under test, copied from include/uapi/linux/wireguard.h rather than taken from
    // the crate that writes the messages.
    const WG_CMD_GET_DEVICE: u8 = 0;
    const WG_CMD_SET_DEVICE: u8 = 1;
    const WG_GENL_VERSION: u8 = 1;
    const WGDEVICE_A_IFNAME: u16 = 2;
    const WGDEVICE_A_PRIVATE_KEY: u16 = 3;
    const WGDEVICE_A_FLAGS: u16 = 5;
    const WGDEVICE_A_LISTEN_PORT: u16 = 6;
    const WGDEVICE_A_PEERS: u16 = 8;
    const WGDEVICE_F_REPLACE_PEERS: u32 = 1;
    const WGPEER_A_PUBLIC_KEY: u16 = 1;
    const WGPEER_A_FLAGS: u16 = 3;
    const WGPEER_A_ENDPOINT: u16 = 4;
    const WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL: u16 = 5;
    const WGPEER_A_ALLOWEDIPS: u16 = 9;
    const WGPEER_F_REMOVE_ME: u32 = 1;
    const WGPEER_F_REPLACE_ALLOWEDIPS: u32 = 2;
    const WGALLOWEDIP_A_FAMILY: u16 = 1;
    const WGALLOWEDIP_A_IPADDR: u16 = 2;
    const WGALLOWEDIP_A_CIDR_MASK: u16 = 3;
    // include/uapi/linux/netlink.h and linux/socket.h.
    const NLA_F_NESTED: u16 = 1 << 15;
    const NLA_F_NET_BYTEORDER: u16 = 1 << 14;
    const REQUEST: u16 = 0x1;
    const ACK: u16 = 0x4;
    const DUMP: u16 = 0x300;
    const AF_INET: u16 = 2;
    const AF_INET6: u16 = 10;

    /// Any id: the kernel assigns the family's at run time.
    const FAMILY: u16 = 0x1d;
    const IFNAME: &str = "wg-6pn";

    fn key(byte: u8) -> PublicKey {
        PublicKey::from_bytes([byte; 32])
    }

    /// One netlink attribute as the kernel's `nla_for_each_attr` sees it.
    struct Attr<'a> {
        kind: u16,
        nested: bool,
        value: &'a [u8],
    }

    /// Walks a run of attributes: `nla_len` (u16, header included), `nla_type` (u16, flags in the
    /// top bits), the value, zero padding to 4 bytes.
    fn attrs(mut bytes: &[u8]) -> Vec<Attr<'_>> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            assert!(bytes.len() >= 4, "{} trailing bytes", bytes.len());
            let len = usize::from(u16::from_ne_bytes([bytes[0], bytes[1]]));
            let kind = u16::from_ne_bytes([bytes[2], bytes[3]]);
            assert!(
                (4..=bytes.len()).contains(&len),
                "nla_len {len} with {} bytes left",
                bytes.len()
            );
            assert_eq!(kind & NLA_F_NET_BYTEORDER, 0, "attribute {kind:#x}");
            let padded = (len + 3) & !3;
            assert!(padded <= bytes.len(), "attribute {kind:#x} is not padded");
            assert!(
                bytes[len..padded].iter().all(|&b| b == 0),
                "attribute {kind:#x} is padded with non-zero bytes"
            );
            out.push(Attr {
                kind: kind & !NLA_F_NESTED,
                nested: kind & NLA_F_NESTED != 0,
                value: &bytes[4..len],
            });
            bytes = &bytes[padded..];
        }
        out
    }

    fn u16_of(value: &[u8]) -> u16 {
        u16::from_ne_bytes(value.try_into().unwrap())
    }

    fn u32_of(value: &[u8]) -> u32 {
        u32::from_ne_bytes(value.try_into().unwrap())
    }

    /// Checks `struct nlmsghdr` and `struct genlmsghdr`; returns the flags, the command and the
    /// attributes.
    fn message(bytes: &[u8]) -> (u16, u8, &[u8]) {
        assert!(bytes.len() >= 20, "a {}-byte message", bytes.len());
        assert_eq!(u32_of(&bytes[0..4]) as usize, bytes.len(), "nlmsg_len");
        assert_eq!(bytes.len() % 4, 0, "message length");
        assert_eq!(u16_of(&bytes[4..6]), FAMILY, "nlmsg_type is the family id");
        assert_eq!(bytes[17], WG_GENL_VERSION, "genlmsghdr version");
        assert_eq!(&bytes[18..20], [0, 0], "genlmsghdr reserved");
        (u16_of(&bytes[6..8]), bytes[16], &bytes[20..])
    }

    #[derive(Debug, Default, PartialEq)]
    struct Peer {
        key: [u8; 32],
        flags: Option<u32>,
        endpoint: Option<SocketAddr>,
        keepalive: Option<u16>,
        allowed: Vec<IpNet>,
        has_allowed_ips: bool,
    }

    #[derive(Debug, Default)]
    struct SetDevice {
        ifname: String,
        private_key: Option<[u8; 32]>,
        flags: Option<u32>,
        listen_port: Option<u16>,
        peers: Vec<Peer>,
    }

    fn decode_set(bytes: &[u8]) -> SetDevice {
        let (flags, cmd, body) = message(bytes);
        assert_eq!(flags, REQUEST | ACK, "nlmsg_flags");
        assert_eq!(cmd, WG_CMD_SET_DEVICE);
        let mut device = SetDevice::default();
        let mut seen = Vec::new();
        for attr in attrs(body) {
            assert!(
                !seen.contains(&attr.kind),
                "device attribute {} twice",
                attr.kind
            );
            seen.push(attr.kind);
            assert_eq!(
                attr.nested,
                attr.kind == WGDEVICE_A_PEERS,
                "NLA_F_NESTED on device attribute {}",
                attr.kind
            );
            match attr.kind {
                WGDEVICE_A_IFNAME => {
                    let (name, nul) = attr.value.split_at(attr.value.len() - 1);
                    assert_eq!(nul, [0], "the name is NUL-terminated");
                    device.ifname = String::from_utf8(name.to_vec()).unwrap();
                }
                WGDEVICE_A_PRIVATE_KEY => device.private_key = Some(attr.value.try_into().unwrap()),
                WGDEVICE_A_FLAGS => device.flags = Some(u32_of(attr.value)),
                WGDEVICE_A_LISTEN_PORT => device.listen_port = Some(u16_of(attr.value)),
                WGDEVICE_A_PEERS => {
                    device.peers = attrs(attr.value).iter().map(decode_peer).collect()
                }
                other => panic!("unexpected device attribute {other}"),
            }
        }
        device
    }

    fn decode_peer(nest: &Attr<'_>) -> Peer {
        // wg(8) numbers these nests 0, 1, ...; the kernel looks only at the nesting.
        assert!(nest.nested, "a peer that is not a nested attribute");
        let mut peer = Peer::default();
        for attr in attrs(nest.value) {
            assert_eq!(
                attr.nested,
                attr.kind == WGPEER_A_ALLOWEDIPS,
                "NLA_F_NESTED on peer attribute {}",
                attr.kind
            );
            match attr.kind {
                WGPEER_A_PUBLIC_KEY => peer.key = attr.value.try_into().unwrap(),
                WGPEER_A_FLAGS => peer.flags = Some(u32_of(attr.value)),
                WGPEER_A_ENDPOINT => peer.endpoint = Some(sockaddr(attr.value)),
                WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL => peer.keepalive = Some(u16_of(attr.value)),
                WGPEER_A_ALLOWEDIPS => {
                    peer.has_allowed_ips = true;
                    peer.allowed
                        .extend(attrs(attr.value).iter().map(decode_allowed_ip));
                }
                other => panic!("unexpected peer attribute {other}"),
            }
        }
        peer
    }

    fn decode_allowed_ip(nest: &Attr<'_>) -> IpNet {
        assert!(nest.nested, "an allowed IP that is not a nested attribute");
        let (mut family, mut addr, mut cidr) = (None, None, None);
        for attr in attrs(nest.value) {
            assert!(!attr.nested);
            match attr.kind {
                WGALLOWEDIP_A_FAMILY => family = Some(u16_of(attr.value)),
                WGALLOWEDIP_A_IPADDR => {
                    addr = Some(match attr.value.len() {
                        4 => IpAddr::from(<[u8; 4]>::try_from(attr.value).unwrap()),
                        16 => IpAddr::from(<[u8; 16]>::try_from(attr.value).unwrap()),
                        n => panic!("a {n}-byte address"),
                    })
                }
                WGALLOWEDIP_A_CIDR_MASK => {
                    assert_eq!(attr.value.len(), 1, "the mask is a u8");
                    cidr = Some(attr.value[0]);
                }
                other => panic!("unexpected allowed IP attribute {other}"),
            }
        }
        let (family, addr, cidr) = (family.unwrap(), addr.unwrap(), cidr.unwrap());
        let expected = if addr.is_ipv4() { AF_INET } else { AF_INET6 };
        assert_eq!(family, expected, "the family of {addr}");
        IpNet::new(addr, cidr).unwrap()
    }

    /// `struct sockaddr_in` (16 bytes) or `struct sockaddr_in6` (28 bytes): the family in host
    /// order, the port in network order.
    fn sockaddr(value: &[u8]) -> SocketAddr {
        let family = u16_of(&value[0..2]);
        let port = u16::from_be_bytes([value[2], value[3]]);
        match (family, value.len()) {
            (AF_INET, 16) => {
                assert_eq!(&value[8..], [0; 8], "sin_zero");
                let ip = <[u8; 4]>::try_from(&value[4..8]).unwrap();
                SocketAddr::new(IpAddr::from(ip), port)
            }
            (AF_INET6, 28) => {
                assert_eq!(&value[4..8], [0; 4], "sin6_flowinfo");
                assert_eq!(&value[24..28], [0; 4], "sin6_scope_id");
                let ip = <[u8; 16]>::try_from(&value[8..24]).unwrap();
                SocketAddr::new(IpAddr::from(ip), port)
            }
            other => panic!("an endpoint of (family, length) {other:?}"),
        }
    }

    fn net(text: &str) -> IpNet {
        text.parse().unwrap()
    }

    #[test]
    fn set_device_message_has_the_kernels_layout() {
        let mut first = PeerConfig::new(
            key(0xab),
            Some("[fd00::2]:51820".parse().unwrap()),
            vec![net("fd5e:a1c0:7b3d:100:0:2::/96"), net("10.50.0.2/32")],
        );
        first.persistent_keepalive = Some(25);
        let second = PeerConfig::new(
            key(0xcd),
            Some("192.0.2.7:51821".parse().unwrap()),
            vec![net("fd5e:a1c0:7b3d:300:0:c::/96")],
        );
        // Removing a peer sends its key and the flag alone, whatever else is filled in.
        let gone = PeerConfig {
            remove: true,
            persistent_keepalive: Some(25),
            ..PeerConfig::new(
                key(0xef),
                Some("192.0.2.8:1".parse().unwrap()),
                vec![net("10.0.0.0/8")],
            )
        };
        let config = DeviceConfig {
            private_key: Some(PrivateKey::from_bytes([0x11; 32])),
            listen_port: Some(51820),
            replace_peers: true,
            peers: vec![first, second, gone],
        };
        let messages = set_device_messages(IFNAME, FAMILY, &config).unwrap();
        assert_eq!(messages.len(), 1, "three peers fit in one message");
        let device = decode_set(&messages[0]);
        assert_eq!(device.ifname, IFNAME);
        assert_eq!(device.private_key, Some([0x11; 32]));
        assert_eq!(device.flags, Some(WGDEVICE_F_REPLACE_PEERS));
        assert_eq!(device.listen_port, Some(51820));
        let expected = vec![
            Peer {
                key: [0xab; 32],
                flags: Some(WGPEER_F_REPLACE_ALLOWEDIPS),
                endpoint: Some("[fd00::2]:51820".parse().unwrap()),
                keepalive: Some(25),
                allowed: vec![net("fd5e:a1c0:7b3d:100:0:2::/96"), net("10.50.0.2/32")],
                has_allowed_ips: true,
            },
            Peer {
                key: [0xcd; 32],
                flags: Some(WGPEER_F_REPLACE_ALLOWEDIPS),
                endpoint: Some("192.0.2.7:51821".parse().unwrap()),
                keepalive: None,
                allowed: vec![net("fd5e:a1c0:7b3d:300:0:c::/96")],
                has_allowed_ips: true,
            },
            Peer {
                key: [0xef; 32],
                flags: Some(WGPEER_F_REMOVE_ME),
                ..Peer::default()
            },
        ];
        assert_eq!(device.peers, expected);
    }

    #[test]
    fn only_what_is_set_is_sent() {
        let messages = set_device_messages(IFNAME, FAMILY, &DeviceConfig::default()).unwrap();
        assert_eq!(messages.len(), 1);
        let device = decode_set(&messages[0]);
        assert_eq!(device.ifname, IFNAME);
        assert_eq!(
            (device.private_key, device.flags, device.listen_port),
            (None, None, None)
        );
        assert!(device.peers.is_empty());

        // Replacing the peers by none: the flag and no WGDEVICE_A_PEERS, which removes them all.
        let clear = DeviceConfig {
            replace_peers: true,
            ..DeviceConfig::default()
        };
        let messages = set_device_messages(IFNAME, FAMILY, &clear).unwrap();
        let device = decode_set(&messages[0]);
        assert_eq!(device.flags, Some(WGDEVICE_F_REPLACE_PEERS));
        assert!(device.peers.is_empty());

        // Keeping a peer's allowed IPs: no flags at all, and no WGPEER_A_ALLOWEDIPS.
        let keep = DeviceConfig {
            peers: vec![PeerConfig {
                replace_allowed_ips: false,
                ..PeerConfig::new(key(1), None, vec![])
            }],
            ..DeviceConfig::default()
        };
        let device = decode_set(&set_device_messages(IFNAME, FAMILY, &keep).unwrap()[0]);
        assert_eq!(
            device.peers,
            vec![Peer {
                key: [1; 32],
                ..Peer::default()
            }]
        );
    }

    /// 300 ordinary peers and one with 1000 allowed IPs, about 37 KiB of attributes.
    fn large_config() -> DeviceConfig {
        let mut peers: Vec<PeerConfig> = (0..300u16)
            .map(|i| {
                let mut bytes = [0u8; 32];
                bytes[..2].copy_from_slice(&i.to_be_bytes());
                PeerConfig::new(
                    PublicKey::from_bytes(bytes),
                    Some(SocketAddr::new(
                        Ipv6Addr::new(0xfd00, 0x50, 0, 0, 0, 0, 0, i + 1).into(),
                        51820,
                    )),
                    vec![
                        IpNet::V6(
                            Ipv6Net::new(Ipv6Addr::new(0xfd5e, 1, 2, 0x100, 0, i, 0, 0), 96)
                                .unwrap(),
                        ),
                        IpNet::V4(Ipv4Net::from(Ipv4Addr::new(
                            10,
                            50,
                            (i >> 8) as u8,
                            i as u8,
                        ))),
                    ],
                )
            })
            .collect();
        let mut big = PeerConfig::new(
            key(0xbb),
            Some("[fd00::bb]:51820".parse().unwrap()),
            (0..1000u32)
                .map(|i| {
                    IpNet::V4(Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 + (i << 8)), 24).unwrap())
                })
                .collect(),
        );
        big.persistent_keepalive = Some(25);
        peers.insert(150, big);
        DeviceConfig {
            private_key: Some(PrivateKey::from_bytes([0x11; 32])),
            listen_port: Some(51820),
            replace_peers: true,
            peers,
        }
    }

    #[test]
    fn large_configurations_are_split_like_wg_splits_them() {
        let config = large_config();
        let messages = set_device_messages(IFNAME, FAMILY, &config).unwrap();
        assert!(messages.len() > 5, "only {} messages", messages.len());
        for (i, bytes) in messages.iter().enumerate() {
            assert!(
                bytes.len() <= MESSAGE_LIMIT,
                "message {i} has {} bytes",
                bytes.len()
            );
        }
        let decoded: Vec<SetDevice> = messages.iter().map(|bytes| decode_set(bytes)).collect();
        // The device's own attributes come first and once: REPLACE_PEERS in a later message
        // would remove the peers the earlier ones added.
        assert_eq!(decoded[0].private_key, Some([0x11; 32]));
        assert_eq!(decoded[0].flags, Some(WGDEVICE_F_REPLACE_PEERS));
        assert_eq!(decoded[0].listen_port, Some(51820));
        for later in &decoded[1..] {
            assert_eq!(later.ifname, IFNAME);
            assert_eq!(
                (later.private_key, later.flags, later.listen_port),
                (None, None, None)
            );
        }

        let mut merged: Vec<Peer> = Vec::new();
        let mut parts_of_big = 0;
        for (i, peer) in decoded.into_iter().flat_map(|d| d.peers).enumerate() {
            if peer.key == [0xbb; 32] {
                parts_of_big += 1;
            }
            match merged.last_mut() {
                Some(last) if last.key == peer.key => {
                    // A continuation repeats nothing: REPLACE_ALLOWEDIPS again would drop the
                    // allowed IPs the previous message added.
                    assert_eq!(
                        (peer.flags, peer.endpoint, peer.keepalive),
                        (None, None, None),
                        "continuation {i}"
                    );
                    last.allowed.extend(peer.allowed);
                }
                _ => merged.push(peer),
            }
        }
        assert!(
            parts_of_big >= 5,
            "the big peer came in {parts_of_big} parts"
        );
        assert_eq!(merged.len(), config.peers.len());
        for (got, want) in merged.iter().zip(&config.peers) {
            assert_eq!(got.key, *want.public_key.as_bytes());
            assert_eq!(got.flags, Some(WGPEER_F_REPLACE_ALLOWEDIPS));
            assert_eq!(got.endpoint, want.endpoint);
            assert_eq!(got.keepalive, want.persistent_keepalive);
            assert_eq!(got.allowed, want.allowed_ips, "peer {}", want.public_key);
        }
    }

    #[test]
    fn limits_too_small_and_bad_names_are_errors() {
        let one = DeviceConfig {
            peers: vec![PeerConfig::new(
                key(1),
                Some("[fd00::2]:51820".parse().unwrap()),
                vec![net("fd5e:a1c0:7b3d:100:0:2::/96")],
            )],
            ..DeviceConfig::default()
        };
        assert!(matches!(
            set_device_messages_within(IFNAME, FAMILY, &one, 100),
            Err(KernelError::TooBig { limit: 100, .. })
        ));
        assert!(matches!(
            set_device_messages_within(IFNAME, FAMILY, &one, 30),
            Err(KernelError::TooBig { .. })
        ));
        for bad in ["", "sixteen-chars-16", "wg/0"] {
            assert!(matches!(
                set_device_messages(bad, FAMILY, &one),
                Err(KernelError::BadName { .. })
            ));
            assert!(matches!(
                get_device_message(bad, FAMILY),
                Err(KernelError::BadName { .. })
            ));
        }
    }

    #[test]
    fn get_device_is_a_dump_of_one_interface() {
        let bytes = get_device_message(IFNAME, FAMILY).unwrap();
        let (flags, cmd, body) = message(&bytes);
        assert_eq!(flags, REQUEST | DUMP);
        assert_eq!(cmd, WG_CMD_GET_DEVICE);
        let attributes = attrs(body);
        assert_eq!(attributes.len(), 1);
        assert_eq!(attributes[0].kind, WGDEVICE_A_IFNAME);
        assert_eq!(attributes[0].value, b"wg-6pn\0");
    }

    /// What the kernel answers for the device the UAPI test describes, its first peer's allowed
    /// IPs split across two messages: the same `DeviceState` comes out of both.
    #[test]
    fn get_answers_read_as_the_uapi_reads_its_own() {
        let private = PrivateKey::from_bytes([0x22; 32]);
        let first = WireguardMessage {
            cmd: WireguardCmd::GetDevice,
            attributes: vec![
                WireguardAttribute::IfIndex(4),
                WireguardAttribute::IfName(IFNAME.to_owned()),
                WireguardAttribute::PrivateKey([0x22; 32]),
                WireguardAttribute::PublicKey(*private.public_key().as_bytes()),
                WireguardAttribute::ListenPort(51820),
                WireguardAttribute::Peers(vec![WireguardPeer(vec![
                    WireguardPeerAttribute::PublicKey([0xab; 32]),
                    WireguardPeerAttribute::Endpoint("[fd00::2]:51820".parse().unwrap()),
                    WireguardPeerAttribute::LastHandshake(WireguardTimeSpec {
                        seconds: 1_700_000_000,
                        nano_seconds: 5,
                    }),
                    WireguardPeerAttribute::RxBytes(5678),
                    WireguardPeerAttribute::TxBytes(1234),
                    WireguardPeerAttribute::PersistentKeepalive(25),
                    WireguardPeerAttribute::ProtocolVersion(1),
                    WireguardPeerAttribute::AllowedIps(vec![allowed_ip(&net(
                        "fd5e:a1c0:7b3d:100:0:2::/96",
                    ))]),
                ])]),
            ],
        };
        let second = WireguardMessage {
            cmd: WireguardCmd::GetDevice,
            attributes: vec![
                WireguardAttribute::IfIndex(4),
                WireguardAttribute::IfName(IFNAME.to_owned()),
                WireguardAttribute::Peers(vec![
                    WireguardPeer(vec![
                        WireguardPeerAttribute::PublicKey([0xab; 32]),
                        WireguardPeerAttribute::AllowedIps(vec![allowed_ip(&net("10.50.0.2/32"))]),
                    ]),
                    WireguardPeer(vec![
                        WireguardPeerAttribute::PublicKey([0xcd; 32]),
                        WireguardPeerAttribute::LastHandshake(WireguardTimeSpec::default()),
                        WireguardPeerAttribute::RxBytes(0),
                        WireguardPeerAttribute::TxBytes(0),
                    ]),
                ]),
            ],
        };
        let kernel = device_state([first, second]).unwrap();

        let text = format!(
            "private_key={}\nlisten_port=51820\n\
             public_key={}\nprotocol_version=1\nendpoint=[fd00::2]:51820\n\
             last_handshake_time_sec=1700000000\nlast_handshake_time_nsec=5\n\
             tx_bytes=1234\nrx_bytes=5678\npersistent_keepalive_interval=25\n\
             allowed_ip=fd5e:a1c0:7b3d:100:0:2::/96\nallowed_ip=10.50.0.2/32\n\
             public_key={}\nlast_handshake_time_sec=0\nlast_handshake_time_nsec=0\n\
             tx_bytes=0\nrx_bytes=0",
            private.to_hex(),
            "ab".repeat(32),
            "cd".repeat(32),
        );
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        assert_eq!(kernel, DeviceState::parse(&lines).unwrap());
        assert_eq!(kernel.peers.len(), 2, "the continued peer was not merged");
    }

    #[test]
    fn get_answers_without_a_public_key_or_with_a_bad_mask_are_errors() {
        let answer = |peer: WireguardPeer| WireguardMessage {
            cmd: WireguardCmd::GetDevice,
            attributes: vec![WireguardAttribute::Peers(vec![peer])],
        };
        let keyless = WireguardPeer(vec![WireguardPeerAttribute::RxBytes(1)]);
        assert!(device_state([answer(keyless)]).is_err());
        let bad_mask = WireguardPeer(vec![
            WireguardPeerAttribute::PublicKey([1; 32]),
            WireguardPeerAttribute::AllowedIps(vec![WireguardAllowedIp(vec![
                WireguardAllowedIpAttr::Family(WireguardAddressFamily::Ipv4),
                WireguardAllowedIpAttr::IpAddr("10.0.0.0".parse().unwrap()),
                WireguardAllowedIpAttr::Cidr(33),
            ])]),
        ]);
        assert!(device_state([answer(bad_mask)]).is_err());
        // A device without a key yet, and port 0: nothing to report, as wireguard-go reports it.
        let bare = device_state([WireguardMessage {
            cmd: WireguardCmd::GetDevice,
            attributes: vec![WireguardAttribute::ListenPort(0)],
        }])
        .unwrap();
        assert_eq!(bare, DeviceState::default());
    }

    /// Runs `detect` in a network namespace of its own (a thread that unshared it, so nothing can
    /// be left on the host), checks it against `ip link add ... type wireguard` there, and checks
    /// that the probe link is gone.
    #[test]
    fn detect_agrees_with_ip_and_leaves_no_link() {
        // SAFETY: geteuid(2) has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: creating links needs root");
            return;
        }
        let (detected, links, oracle) = std::thread::spawn(|| {
            // SAFETY: moves only this new thread into a new network namespace, which goes away
            // with it; processes it spawns start in that namespace too.
            let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "unshare: {}", io::Error::last_os_error());
            let detected = Implementation::detect();
            let links = Command::new("ip")
                .args(["-o", "link", "show"])
                .output()
                .unwrap();
            let oracle = Command::new("ip")
                .args(["link", "add", "6pn-oracle", "type", "wireguard"])
                .output()
                .unwrap();
            (
                detected,
                String::from_utf8_lossy(&links.stdout).into_owned(),
                oracle,
            )
        })
        .join()
        .unwrap();
        let names: Vec<&str> = links
            .lines()
            .filter_map(|line| line.split(": ").nth(1))
            .collect();
        assert_eq!(names, ["lo"], "links after detect:\n{links}");
        let oracle_stderr = String::from_utf8_lossy(&oracle.stderr);
        match (&detected, oracle.status.success()) {
            (Implementation::Kernel, true) => {}
            (Implementation::Userspace { reason }, false) => {
                assert!(
                    reason.contains("wireguard"),
                    "the reason does not say what failed: {reason}"
                );
                eprintln!("{detected}; ip link add said: {}", oracle_stderr.trim());
                // Without the module there is no generic netlink family either.
                assert!(matches!(KernelWg::open(IFNAME), Err(KernelError::NoFamily)));
            }
            _ => panic!(
                "detect says {detected}, but `ip link add type wireguard` {}: {oracle_stderr}",
                if oracle.status.success() {
                    "worked"
                } else {
                    "failed"
                }
            ),
        }
    }
}
