//! What the kernel reads in the messages of [`super`], decoded by [`super::layout`]: the
//! device's and each peer's attributes, and how a large configuration is split.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::{layout::*, *};

const IFNAME: &str = "wg-6pn";

fn key(byte: u8) -> PublicKey {
    PublicKey::from_bytes([byte; 32])
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
                        Ipv6Net::new(Ipv6Addr::new(0xfd5e, 1, 2, 0x100, 0, i, 0, 0), 96).unwrap(),
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
            .map(|i| IpNet::V4(Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 + (i << 8)), 24).unwrap()))
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
