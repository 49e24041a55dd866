//! The requests [`super::KernelWg`] sends: `WG_CMD_GET_DEVICE`, and `WG_CMD_SET_DEVICE` split
//! into messages of a bounded size as wg(8) splits them (include/uapi/linux/wireguard.h). Kept
//! apart from the socket so that their bytes can be checked without a kernel.

use ipnet::IpNet;
use netlink_packet_core::{Emitable, NLA_HEADER_SIZE, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_wireguard::{
    WireguardAddressFamily, WireguardAllowedIp, WireguardAllowedIpAttr, WireguardAttribute,
    WireguardCmd, WireguardDeviceFlags, WireguardMessage, WireguardPeer, WireguardPeerAttribute,
    WireguardPeerFlags,
};

use super::{check_name, KernelError};
use crate::{
    netlink::generic,
    sixpn::{
        keys::{PrivateKey, PublicKey},
        wireguard::uapi::{DeviceConfig, PeerConfig},
    },
};

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a test fails loudly on any error")]
mod layout;
#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a test fails loudly on any error")]
mod tests;

/// The most bytes one `WG_CMD_SET_DEVICE` message gets before the rest of the peers go into the
/// next: what wg(8) uses (`MNL_SOCKET_BUFFER_SIZE`, a 4 KiB page). The hard limit is the 16-bit
/// length of the `WGDEVICE_A_PEERS` attribute, 64 KiB, which a few hundred peers would exceed.
pub const MESSAGE_LIMIT: usize = 4096;

/// `struct nlmsghdr` and `struct genlmsghdr`, ahead of the attributes.
const HEADERS_LEN: usize = 16 + 4;

/// `attributes` as one `cmd` request to the `wireguard` family, numbered `family_id` here.
fn serialize(
    family_id: u16,
    flags: u16,
    cmd: WireguardCmd,
    attributes: Vec<WireguardAttribute>,
) -> Vec<u8> {
    generic::request(family_id, flags, WireguardMessage { cmd, attributes })
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

pub(super) fn allowed_ip(net: &IpNet) -> WireguardAllowedIp {
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
