//! Reading the kernel's answer to `WG_CMD_GET_DEVICE` into the same [`DeviceState`] the UAPI
//! socket's `get=1` gives, so that callers compare the two drivers' devices as one.

use std::time::{Duration, SystemTime};

use ipnet::IpNet;
use netlink_packet_wireguard::{
    WireguardAllowedIp, WireguardAllowedIpAttr, WireguardAttribute, WireguardMessage,
    WireguardPeer, WireguardPeerAttribute, WireguardTimeSpec,
};

use crate::sixpn::{
    keys::{PrivateKey, PublicKey},
    wireguard::uapi::{DeviceState, PeerState},
};

/// The device as the messages of a `WG_CMD_GET_DEVICE` dump describe it.
pub(super) fn device_state(
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
    use netlink_packet_wireguard::{WireguardAddressFamily, WireguardCmd};

    use super::*;
    use crate::sixpn::wireguard::kernel::messages::allowed_ip;

    const IFNAME: &str = "wg-6pn";

    fn net(text: &str) -> IpNet {
        text.parse().unwrap()
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
}
