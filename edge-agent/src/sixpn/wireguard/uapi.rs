//! The cross-platform WireGuard configuration protocol
//! (<https://www.wireguard.com/xplatform/>), spoken on a userspace implementation's UNIX socket:
//! `set=1` and `get=1` requests of `key=value` lines ending with an empty line, answered with
//! `errno=<n>`. Keys travel in hex.

use std::{
    io::{self, BufRead, BufReader, Write},
    net::SocketAddr,
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use ipnet::IpNet;

use crate::sixpn::keys::{PrivateKey, PublicKey};

/// How long one request may take; wireguard-go answers in microseconds, so a stall means a
/// wedged daemon, which must not wedge the agent with it.
const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum UapiError {
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{}: the {request} request failed with errno={errno}", path.display())]
    Errno {
        path: PathBuf,
        request: &'static str,
        errno: i32,
    },
    #[error("{}: unexpected answer line {line:?}", path.display())]
    Parse { path: PathBuf, line: String },
}

/// A device configuration to apply with `set=1`.
#[derive(Clone, Debug, Default)]
pub struct DeviceConfig {
    pub private_key: Option<PrivateKey>,
    pub listen_port: Option<u16>,
    /// Remove every peer not listed here (a full, not incremental, configuration).
    pub replace_peers: bool,
    pub peers: Vec<PeerConfig>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerConfig {
    pub public_key: PublicKey,
    /// Remove this peer; the other fields are ignored.
    pub remove: bool,
    pub endpoint: Option<SocketAddr>,
    /// Replace the peer's allowed IPs by `allowed_ips` rather than adding to them.
    pub replace_allowed_ips: bool,
    pub allowed_ips: Vec<IpNet>,
    /// Seconds; 0 turns keepalives off.
    pub persistent_keepalive: Option<u16>,
}

impl PeerConfig {
    /// A peer whose allowed IPs are exactly `allowed_ips`.
    pub fn new(
        public_key: PublicKey,
        endpoint: Option<SocketAddr>,
        allowed_ips: Vec<IpNet>,
    ) -> Self {
        Self {
            public_key,
            remove: false,
            endpoint,
            replace_allowed_ips: true,
            allowed_ips,
            persistent_keepalive: None,
        }
    }
}

impl DeviceConfig {
    /// The body of the `set=1` request, without its terminating empty line.
    pub fn to_uapi(&self) -> String {
        let mut lines = vec!["set=1".to_owned()];
        if let Some(key) = &self.private_key {
            lines.push(format!("private_key={}", key.to_hex()));
        }
        if let Some(port) = self.listen_port {
            lines.push(format!("listen_port={port}"));
        }
        if self.replace_peers {
            lines.push("replace_peers=true".to_owned());
        }
        for peer in &self.peers {
            lines.push(format!("public_key={}", peer.public_key.to_hex()));
            if peer.remove {
                lines.push("remove=true".to_owned());
                continue;
            }
            if let Some(endpoint) = peer.endpoint {
                lines.push(format!("endpoint={endpoint}"));
            }
            if let Some(interval) = peer.persistent_keepalive {
                lines.push(format!("persistent_keepalive_interval={interval}"));
            }
            if peer.replace_allowed_ips {
                lines.push("replace_allowed_ips=true".to_owned());
            }
            lines.extend(
                peer.allowed_ips
                    .iter()
                    .map(|net| format!("allowed_ip={net}")),
            );
        }
        lines.join("\n") + "\n"
    }
}

/// What `get=1` reports about the device.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceState {
    pub public_key: Option<PublicKey>,
    pub listen_port: Option<u16>,
    pub peers: Vec<PeerState>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerState {
    pub public_key: PublicKey,
    pub endpoint: Option<SocketAddr>,
    pub allowed_ips: Vec<IpNet>,
    /// `None` before the first handshake (the protocol reports 0).
    pub last_handshake: Option<SystemTime>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub persistent_keepalive: u16,
}

impl DeviceState {
    pub fn peer(&self, key: &PublicKey) -> Option<&PeerState> {
        self.peers.iter().find(|peer| peer.public_key == *key)
    }

    /// Parses the answer to `get=1` up to (not including) its `errno=` line. Unknown keys are
    /// skipped: the protocol may grow, and an agent must not fail on a newer daemon.
    pub fn parse(lines: &[String]) -> Result<Self, String> {
        let mut state = DeviceState::default();
        let mut handshake = (0u64, 0u32);
        let finish = |peer: Option<PeerState>, handshake: (u64, u32), peers: &mut Vec<_>| {
            if let Some(mut peer) = peer {
                if handshake != (0, 0) {
                    peer.last_handshake =
                        SystemTime::UNIX_EPOCH.checked_add(Duration::new(handshake.0, handshake.1));
                }
                peers.push(peer);
            }
        };
        let mut peer: Option<PeerState> = None;
        for line in lines {
            let bad = || line.clone();
            let (key, value) = line.split_once('=').ok_or_else(bad)?;
            if key == "public_key" {
                finish(peer.take(), handshake, &mut state.peers);
                handshake = (0, 0);
                peer = Some(PeerState {
                    public_key: PublicKey::from_hex(value).ok_or_else(bad)?,
                    endpoint: None,
                    allowed_ips: Vec::new(),
                    last_handshake: None,
                    rx_bytes: 0,
                    tx_bytes: 0,
                    persistent_keepalive: 0,
                });
                continue;
            }
            let Some(current) = peer.as_mut() else {
                match key {
                    "private_key" => {
                        let private = PublicKey::from_hex(value).ok_or_else(bad)?;
                        state.public_key =
                            Some(PrivateKey::from_bytes(*private.as_bytes()).public_key());
                    }
                    "listen_port" => state.listen_port = Some(value.parse().map_err(|_| bad())?),
                    _ => {}
                }
                continue;
            };
            match key {
                "endpoint" => current.endpoint = Some(value.parse().map_err(|_| bad())?),
                "allowed_ip" => current.allowed_ips.push(value.parse().map_err(|_| bad())?),
                "last_handshake_time_sec" => handshake.0 = value.parse().map_err(|_| bad())?,
                "last_handshake_time_nsec" => handshake.1 = value.parse().map_err(|_| bad())?,
                "rx_bytes" => current.rx_bytes = value.parse().map_err(|_| bad())?,
                "tx_bytes" => current.tx_bytes = value.parse().map_err(|_| bad())?,
                "persistent_keepalive_interval" => {
                    current.persistent_keepalive = value.parse().map_err(|_| bad())?
                }
                _ => {}
            }
        }
        finish(peer, handshake, &mut state.peers);
        Ok(state)
    }
}

/// A userspace WireGuard device's control socket.
#[derive(Clone, Debug)]
pub struct Uapi {
    path: PathBuf,
}

impl Uapi {
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn set(&self, config: &DeviceConfig) -> Result<(), UapiError> {
        self.request("set", &config.to_uapi()).map(drop)
    }

    pub fn get(&self) -> Result<DeviceState, UapiError> {
        let lines = self.request("get", "get=1\n")?;
        DeviceState::parse(&lines).map_err(|line| UapiError::Parse {
            path: self.path.clone(),
            line,
        })
    }

    /// Sends one request and returns the answer's lines before `errno=0`.
    fn request(&self, request: &'static str, body: &str) -> Result<Vec<String>, UapiError> {
        let io = |op| {
            let path = self.path.clone();
            move |source| UapiError::Io { op, path, source }
        };
        let mut stream = UnixStream::connect(&self.path).map_err(io("connect"))?;
        stream
            .set_read_timeout(Some(TIMEOUT))
            .and_then(|()| stream.set_write_timeout(Some(TIMEOUT)))
            .map_err(io("configure"))?;
        stream
            .write_all(format!("{body}\n").as_bytes())
            .map_err(io("write"))?;
        let mut lines = Vec::new();
        for line in BufReader::new(stream).lines() {
            let line = line.map_err(io("read"))?;
            if let Some(errno) = line.strip_prefix("errno=") {
                let errno = errno.parse().map_err(|_| UapiError::Parse {
                    path: self.path.clone(),
                    line: line.clone(),
                })?;
                if errno != 0 {
                    return Err(UapiError::Errno {
                        path: self.path.clone(),
                        request,
                        errno,
                    });
                }
                return Ok(lines);
            }
            lines.push(line);
        }
        Err(io("read")(io::ErrorKind::UnexpectedEof.into()))
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a test fails loudly on any error")]
mod tests {
    use super::*;

    fn key(byte: u8) -> PublicKey {
        PublicKey::from_bytes([byte; 32])
    }

    #[test]
    fn set_request_has_the_documented_layout() {
        let private = PrivateKey::from_bytes([0x11; 32]);
        let mut peer = PeerConfig::new(
            key(0xab),
            Some("[fd00::2]:51820".parse().unwrap()),
            vec!["fd5e:a1c0:7b3d:100:0:2::/96".parse().unwrap()],
        );
        peer.persistent_keepalive = Some(25);
        let config = DeviceConfig {
            private_key: Some(private),
            listen_port: Some(51820),
            replace_peers: true,
            peers: vec![
                peer,
                PeerConfig {
                    remove: true,
                    ..PeerConfig::new(key(0xcd), None, vec![])
                },
            ],
        };
        let expected = format!(
            "set=1\nprivate_key={}\nlisten_port=51820\nreplace_peers=true\n\
             public_key={}\nendpoint=[fd00::2]:51820\npersistent_keepalive_interval=25\n\
             replace_allowed_ips=true\nallowed_ip=fd5e:a1c0:7b3d:100:0:2::/96\n\
             public_key={}\nremove=true\n",
            "11".repeat(32),
            "ab".repeat(32),
            "cd".repeat(32),
        );
        assert_eq!(config.to_uapi(), expected);
    }

    #[test]
    fn get_answer_is_parsed_per_peer() {
        let private = PrivateKey::from_bytes([0x22; 32]);
        let text = format!(
            "private_key={}\nlisten_port=51820\n\
             public_key={}\nprotocol_version=1\nendpoint=[fd00::2]:51820\n\
             last_handshake_time_sec=1700000000\nlast_handshake_time_nsec=5\n\
             tx_bytes=1234\nrx_bytes=5678\npersistent_keepalive_interval=25\n\
             allowed_ip=fd5e:a1c0:7b3d:100:0:2::/96\nallowed_ip=10.50.0.2/32\n\
             public_key={}\nlast_handshake_time_sec=0\nlast_handshake_time_nsec=0\n\
             tx_bytes=0\nrx_bytes=0\nsome_future_key=1",
            private.to_hex(),
            "ab".repeat(32),
            "cd".repeat(32),
        );
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        let state = DeviceState::parse(&lines).unwrap();
        assert_eq!(state.public_key, Some(private.public_key()));
        assert_eq!(state.listen_port, Some(51820));
        assert_eq!(state.peers.len(), 2);
        let first = state.peer(&key(0xab)).unwrap();
        assert_eq!(first.endpoint, Some("[fd00::2]:51820".parse().unwrap()));
        assert_eq!(
            first.last_handshake,
            Some(SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 5))
        );
        assert_eq!((first.rx_bytes, first.tx_bytes), (5678, 1234));
        assert_eq!(first.persistent_keepalive, 25);
        assert_eq!(first.allowed_ips.len(), 2);
        let second = state.peer(&key(0xcd)).unwrap();
        assert_eq!(second.last_handshake, None);
        assert_eq!(second.endpoint, None);
    }

    #[test]
    fn malformed_get_answers_are_errors() {
        for bad in ["listen_port", "public_key=xyz", "listen_port=banana"] {
            assert!(DeviceState::parse(&[bad.to_owned()]).is_err(), "{bad}");
        }
    }
}
