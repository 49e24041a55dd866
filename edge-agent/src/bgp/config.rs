//! The `[bgp]` section of the agent's config: this POP's speaker, what it adds to its routes, and
//! the peers it may talk to (nobody else).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BgpConfig {
    /// This POP's AS number (4-octet allowed); required when there are peers.
    pub asn: u32,
    /// The BGP identifier; defaults to the first IPv4 peer session's local address.
    pub router_id: Option<Ipv4Addr>,
    /// The hold time this speaker proposes (0, or 3 and more); the session uses the smaller of
    /// the two sides'.
    pub hold_time_secs: u16,
    /// First wait before reconnecting after a failed attempt; it doubles up to
    /// `connect_retry_max_secs`, and starts again once a session was established.
    pub connect_retry_secs: u64,
    pub connect_retry_max_secs: u64,
    /// For this long after an Established session ends, every reconnect waits only
    /// `connect_retry_secs`: the peer is often in an idle hold of its own then (GoBGP: 5 s),
    /// and a wait doubled through it came back seconds after the peer was ready.
    pub connect_retry_fast_secs: u64,
    /// On SIGTERM, the wait between the last withdraws and the Cease that closes each session,
    /// so that routers act on the withdraws before the session goes (at most 2,000).
    pub shutdown_pause_ms: u64,
    /// Graceful restart (RFC 4724) as the restarting speaker: the restart time offered to the
    /// peers (at most 4095 s), 0 for off. Peers that help keep this POP's routes for this long
    /// after the session drops without a NOTIFICATION (a killed or crashed agent), while the
    /// pinned data plane goes on forwarding.
    pub graceful_restart_secs: u16,
    /// Where passive peers connect (port 179 unless given).
    pub listen: Vec<SocketAddr>,
    /// A VIP withdrawn because it could not be served is announced again only after it has
    /// been servable this long: a flapping backend does not flap the route.
    pub hold_down_ms: u64,
    /// After `edge-agent drain`, routes stay announced with the graceful-shutdown community and
    /// `drain_prepend` for this long (so routers move traffic away first), then are withdrawn.
    pub drain_delay_secs: u64,
    pub drain_prepend: u8,
    /// Added to every route: `["65001:100"]`.
    pub communities: Vec<String>,
    pub med: Option<u32>,
    /// Extra copies of this AS on every route (a backup POP announces with a longer path).
    pub prepend: u8,
    /// VIPs inside one of these are announced as it instead of one by one; it is announced
    /// while any VIP inside it is.
    pub aggregates: Vec<IpNet>,
    pub peers: Vec<PeerConfig>,
}

impl Default for BgpConfig {
    fn default() -> Self {
        BgpConfig {
            asn: 0,
            router_id: None,
            hold_time_secs: 90,
            connect_retry_secs: 1,
            connect_retry_max_secs: 30,
            connect_retry_fast_secs: 20,
            shutdown_pause_ms: 300,
            graceful_restart_secs: 0,
            listen: Vec::new(),
            hold_down_ms: 5_000,
            drain_delay_secs: 30,
            drain_prepend: 3,
            communities: Vec::new(),
            med: None,
            prepend: 0,
            aggregates: Vec::new(),
            peers: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PeerConfig {
    pub address: IpAddr,
    pub asn: u32,
    pub port: u16,
    /// Wait for the peer to connect (to `[bgp] listen`) instead of connecting.
    pub passive: bool,
    /// Local address to connect from.
    pub local_address: Option<IpAddr>,
    /// TCP-MD5 (RFC 2385) key, or a file holding it.
    pub password: Option<String>,
    pub password_file: Option<PathBuf>,
    /// Next hops for the family the session's transport is not: an IPv4 session carries IPv6
    /// routes only with `next_hop_v6`, and the other way round.
    pub next_hop_v4: Option<Ipv4Addr>,
    pub next_hop_v6: Option<Ipv6Addr>,
    pub hold_time_secs: Option<u16>,
    /// LOCAL_PREF on an internal session (the peer's `asn` is `bgp.asn`: iBGP, e.g. to a route
    /// reflector); 100 unless given. Not allowed on external sessions, which never carry it
    /// (RFC 4271 §5.1.5).
    pub local_pref: Option<u32>,
    /// BFD with this peer (RFC 5880/5881): `bfd = true` (300 ms x 3) or a `[bgp.peers.bfd]`
    /// table with `min_tx_ms`, `min_rx_ms` (down to 100) and `multiplier`. When an Up session
    /// goes down, the BGP session is closed as on hold timer expiry.
    pub bfd: Option<super::bfd::config::BfdSetting>,
}

/// The longest `shutdown_pause_ms`: the agent waits 3 s for its sessions to close on SIGTERM.
pub const MAX_SHUTDOWN_PAUSE_MS: u64 = 2_000;

/// LOCAL_PREF sent on internal sessions unless `local_pref` says otherwise (the value routers
/// assume when it is missing).
pub const DEFAULT_LOCAL_PREF: u32 = 100;

impl Default for PeerConfig {
    fn default() -> Self {
        PeerConfig {
            address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            asn: 0,
            port: 179,
            passive: false,
            local_address: None,
            password: None,
            password_file: None,
            next_hop_v4: None,
            next_hop_v6: None,
            hold_time_secs: None,
            local_pref: None,
            bfd: None,
        }
    }
}

impl PeerConfig {
    /// The TCP-MD5 key, if one is configured.
    pub fn md5_key(&self) -> Result<Option<Vec<u8>>, String> {
        let key = match (&self.password, &self.password_file) {
            (Some(p), _) => p.as_bytes().to_vec(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|e| format!("reading {}: {e}", path.display()))?
                .trim_end_matches(['\r', '\n'])
                .as_bytes()
                .to_vec(),
            (None, None) => return Ok(None),
        };
        if key.is_empty() || key.len() > super::md5::MAX_KEY_LEN {
            return Err(format!(
                "peer {}: a TCP-MD5 key has 1 to {} bytes",
                self.address,
                super::md5::MAX_KEY_LEN
            ));
        }
        Ok(Some(key))
    }
}

impl BgpConfig {
    /// What is wrong with this section, if anything (checked when the config loads).
    pub fn validate(&self) -> Result<(), String> {
        if self.peers.is_empty() {
            return Ok(());
        }
        if self.asn == 0 {
            return Err("bgp.asn is required when bgp.peers are set".into());
        }
        if self.hold_time_secs != 0 && self.hold_time_secs < 3 {
            return Err("bgp.hold_time_secs must be 0 or at least 3 (RFC 4271)".into());
        }
        if self.shutdown_pause_ms > MAX_SHUTDOWN_PAUSE_MS {
            return Err(format!(
                "bgp.shutdown_pause_ms must be at most {MAX_SHUTDOWN_PAUSE_MS} (the agent gives \
                 its sessions 3 s to close)"
            ));
        }
        if self.graceful_restart_secs > super::open::MAX_RESTART_TIME {
            return Err(format!(
                "bgp.graceful_restart_secs must be at most {} (12 bits, RFC 4724 §3)",
                super::open::MAX_RESTART_TIME
            ));
        }
        self.communities()?;
        let mut seen = std::collections::HashSet::new();
        for peer in &self.peers {
            if peer.asn == 0 {
                return Err(format!("bgp peer {}: asn is required", peer.address));
            }
            if !seen.insert(peer.address) {
                return Err(format!("bgp peer {} is listed twice", peer.address));
            }
            if let Some(h) = peer.hold_time_secs {
                if h != 0 && h < 3 {
                    return Err(format!(
                        "bgp peer {}: hold_time_secs must be 0 or >= 3",
                        peer.address
                    ));
                }
            }
            if peer.local_pref.is_some() && peer.asn != self.asn {
                return Err(format!(
                    "bgp peer {}: local_pref is only for internal peers (asn = bgp.asn); \
                     LOCAL_PREF is never sent to another AS (RFC 4271 §5.1.5)",
                    peer.address
                ));
            }
            peer.md5_key()?;
            if let Some(bfd) = peer
                .bfd
                .as_ref()
                .and_then(super::bfd::config::BfdSetting::config)
            {
                bfd.validate()
                    .map_err(|e| format!("bgp peer {}: {e}", peer.address))?;
            }
        }
        if self.peers.iter().any(|p| p.passive) && self.listen.is_empty() {
            return Err("bgp: passive peers need bgp.listen".into());
        }
        Ok(())
    }

    /// The configured communities as (AS, value) pairs.
    pub fn communities(&self) -> Result<Vec<(u16, u16)>, String> {
        self.communities
            .iter()
            .map(|c| {
                let (a, v) = c
                    .split_once(':')
                    .ok_or_else(|| format!("bgp community {c:?}: expected ASN:VALUE"))?;
                let parse = |x: &str| {
                    x.trim()
                        .parse::<u16>()
                        .map_err(|e| format!("bgp community {c:?}: {e}"))
                };
                Ok((parse(a)?, parse(v)?))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(r: Result<(), String>) -> String {
        r.err().unwrap_or_default()
    }

    #[test]
    fn peers_need_an_asn_and_sane_timers() -> Result<(), Box<dyn std::error::Error>> {
        let mut c = BgpConfig {
            peers: vec![PeerConfig {
                address: "10.0.0.1".parse()?,
                asn: 65000,
                ..PeerConfig::default()
            }],
            ..BgpConfig::default()
        };
        assert!(err(c.validate()).contains("bgp.asn"));
        c.asn = 65001;
        c.validate()?;
        c.hold_time_secs = 2;
        assert!(err(c.validate()).contains("hold_time"));
        c.hold_time_secs = 9;
        c.communities = vec!["65001:x".into()];
        assert!(err(c.validate()).contains("65001:x"));
        c.communities = vec!["65001:7".into()];
        assert_eq!(c.communities()?, vec![(65001, 7)]);
        c.peers[0].local_pref = Some(200);
        assert!(
            err(c.validate()).contains("local_pref"),
            "local_pref on an eBGP peer must be refused"
        );
        c.peers[0].asn = 65001;
        c.validate()?;
        c.peers[0].passive = true;
        assert!(err(c.validate()).contains("listen"));
        Ok(())
    }
}
