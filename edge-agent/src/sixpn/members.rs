//! Who is in the 6PN mesh, from control-plane rows alone: the deployment's /48 (`settings`
//! `sixpn.prefix`), each region's number (fixed ones, or `sixpn.region.<region>`), and every
//! `pops` row with a host number and a public key. From them, the peers one member must have,
//! and the smallest change that brings a device from the peers it has to those.

use std::{
    collections::BTreeMap,
    net::{Ipv6Addr, SocketAddr},
};

use ipnet::{IpNet, Ipv6Net};

use super::{
    keys::PublicKey,
    plan::{Deployment, RegionNumbers},
    wireguard::uapi::{PeerConfig, PeerState},
};
use crate::model::{HostRole, Snapshot};

pub const PREFIX_KEY: &str = "sixpn.prefix";
pub const REGION_KEY_PREFIX: &str = "sixpn.region.";

/// One member of the mesh, as the rows describe it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub id: String,
    pub role: HostRole,
    pub public_key: PublicKey,
    pub endpoint: Option<SocketAddr>,
    /// Its /96: what it owns and what its peers route to it.
    pub prefix: Ipv6Net,
    pub addr: Ipv6Addr,
    /// Its v1 IPv4 overlay address, routed to it beside the /96 while the transition lasts.
    pub ipv4: Option<std::net::Ipv4Addr>,
}

/// The mesh as the state describes it, and the rows that could not join it (and why).
#[derive(Clone, Debug, Default)]
pub struct Mesh {
    pub deployment: Option<Deployment>,
    pub members: Vec<Member>,
    pub problems: Vec<(String, String)>,
}

impl Mesh {
    pub fn from_snapshot(snap: &Snapshot) -> Mesh {
        let mut mesh = Mesh::default();
        let deployment = match snap.settings.get(PREFIX_KEY) {
            None => {
                mesh.problems
                    .push((PREFIX_KEY.into(), "no 6PN prefix in state yet".into()));
                return mesh;
            }
            Some(text) => match text.parse::<Deployment>() {
                Ok(d) => d,
                Err(e) => {
                    mesh.problems.push((PREFIX_KEY.into(), e.to_string()));
                    return mesh;
                }
            },
        };
        mesh.deployment = Some(deployment);
        let mut regions = RegionNumbers::default();
        for (key, value) in &snap.settings {
            let Some(region) = key.strip_prefix(REGION_KEY_PREFIX) else {
                continue;
            };
            let stored = value
                .parse::<u8>()
                .map_err(|e| e.to_string())
                .and_then(|n| regions.insert(region, n).map_err(|e| e.to_string()));
            if let Err(e) = stored {
                mesh.problems.push((key.clone(), e));
            }
        }
        for pop in &snap.pops {
            if pop.host_number == 0 {
                continue;
            }
            let Some(key) = &pop.public_key else {
                mesh.problems
                    .push((pop.id.clone(), "no public key published yet".into()));
                continue;
            };
            let joined = key
                .parse::<PublicKey>()
                .map_err(|e| format!("public key: {e}"))
                .and_then(|public_key| {
                    let region = regions
                        .get(pop.region.as_str())
                        .ok_or_else(|| format!("region {} has no 6PN number", pop.region))?;
                    let endpoint = pop
                        .endpoint
                        .as_deref()
                        .map(|e| {
                            e.parse::<SocketAddr>()
                                .map_err(|_| format!("endpoint {e:?} is not address:port"))
                        })
                        .transpose()?;
                    Ok(Member {
                        id: pop.id.clone(),
                        role: pop.role,
                        public_key,
                        endpoint,
                        prefix: deployment.host_prefix(region, pop.host_number),
                        addr: deployment.host_addr(region, pop.host_number),
                        ipv4: pop.overlay_ipv4,
                    })
                });
            match joined {
                Ok(m) => mesh.members.push(m),
                Err(e) => mesh.problems.push((pop.id.clone(), e)),
            }
        }
        mesh
    }

    pub fn member(&self, id: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }

    /// The peers `self_id` must have: every other member (one with this member's own key is
    /// a stale row of it and left out).
    pub fn peers_of(&self, self_id: &str, keepalive: u16) -> BTreeMap<PublicKey, PeerConfig> {
        let own_key = self.member(self_id).map(|m| m.public_key);
        self.members
            .iter()
            .filter(|m| m.id != self_id && Some(m.public_key) != own_key)
            .map(|m| {
                let mut allowed = vec![IpNet::V6(m.prefix)];
                allowed.extend(m.ipv4.map(|v4| IpNet::V4(v4.into())));
                let mut peer = PeerConfig::new(m.public_key, m.endpoint, allowed);
                peer.persistent_keepalive = Some(keepalive);
                (m.public_key, peer)
            })
            .collect()
    }
}

/// The peer changes that turn `current` into `desired`: new and changed peers (their allowed
/// IPs replaced), removed ones. Peers that stay as they are are not touched, so their sessions
/// go on.
pub fn changes(
    current: &[PeerState],
    desired: &BTreeMap<PublicKey, PeerConfig>,
) -> Vec<PeerConfig> {
    let mut out = Vec::new();
    for state in current {
        if !desired.contains_key(&state.public_key) {
            out.push(PeerConfig {
                public_key: state.public_key,
                remove: true,
                endpoint: None,
                replace_allowed_ips: false,
                allowed_ips: Vec::new(),
                persistent_keepalive: None,
            });
        }
    }
    for (key, want) in desired {
        let same = current
            .iter()
            .find(|s| s.public_key == *key)
            .is_some_and(|s| {
                let mut have = s.allowed_ips.clone();
                let mut wanted = want.allowed_ips.clone();
                have.sort();
                wanted.sort();
                // A roaming peer's endpoint is learnt from its packets: only a configured one
                // that differs is a change.
                have == wanted
                    && (want.endpoint.is_none() || want.endpoint == s.endpoint)
                    && want.persistent_keepalive.unwrap_or(0) == s.persistent_keepalive
            });
        if !same {
            out.push(want.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::{Pop, Region},
        sixpn::PrivateKey,
    };
    use std::str::FromStr as _;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn pop(id: &str, region: &str, n: u32, key: &PublicKey, endpoint: &str) -> TestResult2 {
        Ok(Pop {
            id: id.into(),
            region: Region::from_str(region)?,
            overlay_addr: None,
            public_key: Some(key.to_string()),
            endpoint: Some(endpoint.into()),
            role: HostRole::Host,
            host_number: n,
            overlay_ipv4: None,
        })
    }
    type TestResult2 = Result<Pop, Box<dyn std::error::Error>>;

    #[test]
    fn rows_make_the_mesh_and_one_change_touches_one_peer() -> TestResult {
        let keys: Vec<PublicKey> = (0..4)
            .map(|_| PrivateKey::generate().public_key())
            .collect();
        let mut snap = Snapshot::default();
        snap.settings
            .insert(PREFIX_KEY.into(), "fd5e:a1c0:7b3d::/48".into());
        snap.pops = vec![
            pop("pop-sa", "sa", 1, &keys[0], "192.0.2.1:51820")?,
            pop("host-us", "us", 7, &keys[1], "192.0.2.2:51820")?,
            // Dual stack: its v1 address rides the same tunnel.
            Pop {
                overlay_ipv4: Some("10.50.3.12".parse()?),
                ..pop("host-eu", "eu", 12, &keys[2], "[2001:db8::3]:51820")?
            },
            // Not in the mesh: no number.
            Pop {
                host_number: 0,
                ..pop("old", "eu", 0, &keys[3], "192.0.2.9:1")?
            },
        ];
        let mesh = Mesh::from_snapshot(&snap);
        assert!(mesh.problems.is_empty(), "{:?}", mesh.problems);
        assert_eq!(mesh.members.len(), 3);
        let us = mesh.member("host-us").ok_or("no host-us")?;
        assert_eq!(us.addr, "fd5e:a1c0:7b3d:200:0:7:0:1".parse::<Ipv6Addr>()?);
        let peers = mesh.peers_of("pop-sa", 25);
        assert_eq!(peers.len(), 2);
        assert_eq!(
            peers[&keys[2]].allowed_ips,
            vec![
                "fd5e:a1c0:7b3d:300:0:c::/96".parse::<IpNet>()?,
                "10.50.3.12/32".parse()?
            ]
        );

        // Applied, then host-us leaves: only its removal is sent.
        let applied: Vec<PeerState> = peers
            .values()
            .map(|p| PeerState {
                public_key: p.public_key,
                endpoint: p.endpoint,
                allowed_ips: p.allowed_ips.clone(),
                last_handshake: None,
                rx_bytes: 0,
                tx_bytes: 0,
                persistent_keepalive: 25,
            })
            .collect();
        assert!(changes(&applied, &peers).is_empty(), "nothing to do");
        snap.pops.retain(|p| p.id != "host-us");
        let after = Mesh::from_snapshot(&snap).peers_of("pop-sa", 25);
        let delta = changes(&applied, &after);
        assert_eq!(delta.len(), 1);
        assert!(delta[0].remove && delta[0].public_key == keys[1]);
        Ok(())
    }

    #[test]
    fn bad_rows_are_reported_and_left_out() -> TestResult {
        let key = PrivateKey::generate().public_key();
        let mut snap = Snapshot::default();
        assert_eq!(Mesh::from_snapshot(&snap).problems.len(), 1, "no prefix");
        snap.settings
            .insert(PREFIX_KEY.into(), "fd5e:a1c0:7b3d::/48".into());
        snap.settings
            .insert(format!("{REGION_KEY_PREFIX}af"), "16".into());
        snap.settings
            .insert(format!("{REGION_KEY_PREFIX}me"), "not-a-number".into());
        snap.pops = vec![
            pop("a", "af", 3, &key, "192.0.2.1:51820")?,
            pop("b", "me", 3, &key, "192.0.2.1:51820")?,
            pop("c", "sa", 3, &key, "somewhere:51820")?,
        ];
        let mesh = Mesh::from_snapshot(&snap);
        assert_eq!(mesh.members.len(), 1);
        assert_eq!(
            mesh.members[0].addr,
            "fd5e:a1c0:7b3d:1000:0:3:0:1".parse::<Ipv6Addr>()?
        );
        let ids: Vec<&str> = mesh.problems.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(ids, vec!["sixpn.region.me", "b", "c"]);
        Ok(())
    }
}
