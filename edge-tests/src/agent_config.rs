//! The agent's configuration file for the labs, typed. The end-to-end tests and `cargo xtask`
//! build an [`AgentConfig`] and write it with `toml` instead of formatting TOML by hand, so a
//! lab names each setting once and a misspelt key fails to compile rather than being found by
//! the agent's `deny_unknown_fields` at start-up.
//!
//! It holds the settings the labs use, not all the agent has, under the agent's own names
//! (`edge_agent::config::AgentConfig`; the unit test below parses a full one with it). What is
//! not set is left out of the file, so the agent's default applies.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::Serialize;

use crate::Result;

/// An agent's configuration file. Start from [`AgentConfig::pop`] (or `default()` for a host
/// without a data plane) and add settings.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AgentConfig {
    pub iface: Option<String>,
    pub stats_log_secs: Option<u64>,
    pub region: Option<String>,
    pub pop_id: Option<String>,
    pub overlay: Option<Overlay>,
    pub flows: Option<Flows>,
    pub maglev: Option<Maglev>,
    pub affinity: Option<Affinity>,
    pub dns: Option<Dns>,
    pub health: Option<Health>,
    pub geo: Option<Geo>,
    pub state: Option<State>,
    pub register: Option<Register>,
    pub metrics: Option<Metrics>,
    pub sixpn: Option<Sixpn>,
    pub bgp: Option<Bgp>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<Service>,
}

/// `[overlay]`: the interface and address the POP reaches its backends from.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Overlay {
    pub iface: Option<String>,
    pub addr: Option<String>,
    pub mtu: Option<u16>,
    pub snat_prefix: Option<String>,
}

/// `[flows]`: the flow table.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Flows {
    pub max_entries: Option<u32>,
    pub closed_timeout_secs: Option<u64>,
    pub sweep_interval_secs: Option<u64>,
    pub drain_timeout_secs: Option<u64>,
}

/// `[maglev]`: the balancing tables.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Maglev {
    pub table_size: Option<u32>,
    pub max_services: Option<u32>,
}

/// `[affinity]`: client affinity.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Affinity {
    pub ttl_secs: Option<u64>,
}

/// `[dns]`: the agent's DNS server.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Dns {
    pub enabled: Option<bool>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub listen: Vec<String>,
    pub on_overlay: Option<bool>,
}

impl Dns {
    /// No DNS server.
    pub fn off() -> Self {
        Dns {
            enabled: Some(false),
            ..Dns::default()
        }
    }
}

/// `[health]`: the active checks, the passive detection and the named check commands.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Health {
    pub enabled: Option<bool>,
    pub profile: Option<String>,
    pub interval_ms: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub fall: Option<u32>,
    pub rise: Option<u32>,
    pub write_interval_secs: Option<u64>,
    pub passive: Option<Passive>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub commands: BTreeMap<String, Vec<String>>,
}

impl Health {
    /// No health checks.
    pub fn off() -> Self {
        Health {
            enabled: Some(false),
            ..Health::default()
        }
    }

    /// The checks of `profile` (e.g. `fast`).
    pub fn profile(profile: &str) -> Self {
        Health {
            profile: Some(profile.to_owned()),
            ..Health::default()
        }
    }

    /// Checks every `interval_ms`, each given `timeout_ms`.
    pub fn every(interval_ms: u64, timeout_ms: u64) -> Self {
        Health {
            interval_ms: Some(interval_ms),
            timeout_ms: Some(timeout_ms),
            ..Health::default()
        }
    }
}

/// `[health.passive]`: backends taken out by the SYNs they leave unanswered.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Passive {
    pub enabled: Option<bool>,
    pub interval_ms: Option<u64>,
    pub syn_deadline_ms: Option<u64>,
}

/// `[geo]`: the country database.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Geo {
    pub database: Option<PathBuf>,
}

/// `[state]`: where services and backends come from.
#[derive(Clone, Debug, Default, Serialize)]
pub struct State {
    pub source: Option<String>,
    pub database: Option<PathBuf>,
    pub corrosion: Option<Corrosion>,
}

/// `[state.corrosion]`: a Corrosion node's API.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Corrosion {
    pub api: Option<String>,
    pub max_backoff_ms: Option<u64>,
}

/// `[register]`: the registration API.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Register {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub listen: Vec<String>,
    pub token: Option<String>,
}

/// `[metrics]`, with nothing set: the agent's defaults.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Metrics {}

/// `[sixpn]`: this node's place in the WireGuard mesh.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Sixpn {
    pub enabled: Option<bool>,
    pub id: Option<String>,
    pub host_number: Option<u32>,
    pub ifname: Option<String>,
    pub listen_port: Option<u16>,
    pub endpoint: Option<String>,
    pub key_file: Option<PathBuf>,
    pub keepalive_secs: Option<u64>,
    pub ipv4: Option<String>,
}

/// `[bgp]`: the speaker and its peers.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Bgp {
    pub asn: Option<u32>,
    pub graceful_restart_secs: Option<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<BgpPeer>,
}

/// `[[bgp.peers]]`: one router.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BgpPeer {
    pub address: String,
    pub asn: u32,
    pub next_hop_v6: Option<String>,
}

/// `[[services]]`: a service and its backends, given in the file.
#[derive(Clone, Debug, Serialize)]
pub struct Service {
    pub name: String,
    pub vip: String,
    pub port: u16,
    pub backends: Vec<ServiceBackend>,
}

impl Service {
    /// `name` on `vip`:`port`, no backend yet.
    pub fn new(name: &str, vip: &str, port: u16) -> Self {
        Service {
            name: name.to_owned(),
            vip: vip.to_owned(),
            port,
            backends: Vec::new(),
        }
    }

    /// With backend `name` at `addr`:`port`.
    #[must_use]
    pub fn backend(mut self, name: &str, addr: &str, port: u16) -> Self {
        self.backends.push(ServiceBackend {
            name: name.to_owned(),
            addr: addr.to_owned(),
            port,
            weight: None,
            soft_limit: None,
            hard_limit: None,
        });
        self
    }
}

/// One backend of a [`Service`].
#[derive(Clone, Debug, Serialize)]
pub struct ServiceBackend {
    pub name: String,
    pub addr: String,
    pub port: u16,
    pub weight: Option<u32>,
    pub soft_limit: Option<u32>,
    pub hard_limit: Option<u32>,
}

impl AgentConfig {
    /// A POP's agent in a lab: the data plane on the POP's `eth0`, no periodic stats lines
    /// (they would flood the captured output).
    pub fn pop() -> Self {
        AgentConfig {
            iface: Some("eth0".to_owned()),
            stats_log_secs: Some(0),
            ..AgentConfig::default()
        }
    }

    /// The file's text.
    pub fn to_toml(&self) -> Result<String> {
        Ok(toml::to_string(self)?)
    }

    #[must_use]
    pub fn stats_log_secs(mut self, secs: u64) -> Self {
        self.stats_log_secs = Some(secs);
        self
    }

    #[must_use]
    pub fn region(mut self, region: &str) -> Self {
        self.region = Some(region.to_owned());
        self
    }

    #[must_use]
    pub fn pop_id(mut self, pop_id: &str) -> Self {
        self.pop_id = Some(pop_id.to_owned());
        self
    }

    /// The overlay on `iface`, with `addr` as the POP's address on it.
    #[must_use]
    pub fn overlay(mut self, iface: &str, addr: &str) -> Self {
        let overlay = self.overlay.get_or_insert_with(Overlay::default);
        overlay.iface = Some(iface.to_owned());
        overlay.addr = Some(addr.to_owned());
        self
    }

    #[must_use]
    pub fn overlay_mtu(mut self, mtu: u16) -> Self {
        self.overlay.get_or_insert_with(Overlay::default).mtu = Some(mtu);
        self
    }

    /// IPv4 clients translated into `prefix` (a /96) rather than to the overlay address.
    #[must_use]
    pub fn snat_prefix(mut self, prefix: &str) -> Self {
        self.overlay
            .get_or_insert_with(Overlay::default)
            .snat_prefix = Some(prefix.to_owned());
        self
    }

    #[must_use]
    pub fn max_flows(mut self, entries: u32) -> Self {
        self.flows.get_or_insert_with(Flows::default).max_entries = Some(entries);
        self
    }

    /// How long a closed connection's flow stays listed.
    #[must_use]
    pub fn closed_timeout_secs(mut self, secs: u64) -> Self {
        self.flows
            .get_or_insert_with(Flows::default)
            .closed_timeout_secs = Some(secs);
        self
    }

    #[must_use]
    pub fn sweep_interval_secs(mut self, secs: u64) -> Self {
        self.flows
            .get_or_insert_with(Flows::default)
            .sweep_interval_secs = Some(secs);
        self
    }

    #[must_use]
    pub fn drain_timeout_secs(mut self, secs: u64) -> Self {
        self.flows
            .get_or_insert_with(Flows::default)
            .drain_timeout_secs = Some(secs);
        self
    }

    #[must_use]
    pub fn table_size(mut self, slots: u32) -> Self {
        self.maglev.get_or_insert_with(Maglev::default).table_size = Some(slots);
        self
    }

    #[must_use]
    pub fn max_services(mut self, services: u32) -> Self {
        self.maglev.get_or_insert_with(Maglev::default).max_services = Some(services);
        self
    }

    /// How long a client stays with its backend; 0: every connection is spread by its 5-tuple.
    #[must_use]
    pub fn affinity_ttl_secs(mut self, secs: u64) -> Self {
        self.affinity = Some(Affinity {
            ttl_secs: Some(secs),
        });
        self
    }

    #[must_use]
    pub fn dns(mut self, dns: Dns) -> Self {
        self.dns = Some(dns);
        self
    }

    #[must_use]
    pub fn health(mut self, health: Health) -> Self {
        self.health = Some(health);
        self
    }

    #[must_use]
    pub fn geo_database(mut self, path: &Path) -> Self {
        self.geo = Some(Geo {
            database: Some(path.to_owned()),
        });
        self
    }

    /// Services and backends from the SQLite state database at `path`.
    #[must_use]
    pub fn state_database(mut self, path: &Path) -> Self {
        self.state.get_or_insert_with(State::default).database = Some(path.to_owned());
        self
    }

    /// Services and backends from the Corrosion node whose API is at `api`.
    #[must_use]
    pub fn corrosion_state(mut self, corrosion: Corrosion) -> Self {
        let state = self.state.get_or_insert_with(State::default);
        state.source = Some("corrosion".to_owned());
        state.corrosion = Some(corrosion);
        self
    }

    /// The registration API on `listen`, for callers with `token`.
    #[must_use]
    pub fn register(mut self, listen: &[&str], token: &str) -> Self {
        self.register = Some(Register {
            listen: listen.iter().map(|&l| l.to_owned()).collect(),
            token: Some(token.to_owned()),
        });
        self
    }

    /// The `[metrics]` section, with the agent's defaults.
    #[must_use]
    pub fn metrics(mut self) -> Self {
        self.metrics = Some(Metrics {});
        self
    }

    #[must_use]
    pub fn sixpn(mut self, sixpn: Sixpn) -> Self {
        self.sixpn = Some(sixpn);
        self
    }

    #[must_use]
    pub fn bgp(mut self, bgp: Bgp) -> Self {
        self.bgp = Some(bgp);
        self
    }

    #[must_use]
    pub fn service(mut self, service: Service) -> Self {
        self.services.push(service);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

    /// Every setting the builder can write, set.
    fn everything() -> AgentConfig {
        AgentConfig::pop()
            .region("eu")
            .pop_id("pop1")
            .overlay("ovl0", "fd00:ee::1")
            .overlay_mtu(1400)
            .snat_prefix("fd00:ee:ff::/96")
            .max_flows(65_536)
            .closed_timeout_secs(2)
            .sweep_interval_secs(1)
            .drain_timeout_secs(2)
            .table_size(4099)
            .max_services(8)
            .affinity_ttl_secs(300)
            .dns(Dns {
                enabled: Some(true),
                listen: vec!["10.0.1.1:53".to_owned()],
                on_overlay: Some(false),
            })
            .health(Health {
                enabled: Some(true),
                profile: Some("fast".to_owned()),
                interval_ms: Some(500),
                timeout_ms: Some(400),
                fall: Some(3),
                rise: Some(1),
                write_interval_secs: Some(1),
                passive: Some(Passive {
                    enabled: Some(true),
                    interval_ms: Some(50),
                    syn_deadline_ms: Some(300),
                }),
                commands: BTreeMap::from([("flag".to_owned(), vec!["/bin/true".to_owned()])]),
            })
            .geo_database(Path::new("/tmp/countries.mmdb"))
            .state_database(Path::new("/tmp/routing.db"))
            .corrosion_state(Corrosion {
                api: Some("http://[fd00::1]:8080".to_owned()),
                max_backoff_ms: Some(500),
            })
            .register(&["[fd00:ee::1]:7070"], "token")
            .metrics()
            .sixpn(Sixpn {
                enabled: Some(true),
                id: Some("pop1".to_owned()),
                host_number: Some(1),
                ifname: Some("wg0".to_owned()),
                listen_port: Some(51_820),
                endpoint: Some("[2001:db8::1]:51820".to_owned()),
                key_file: Some(PathBuf::from("/tmp/pop1.key")),
                keepalive_secs: Some(5),
                ipv4: Some("10.99.0.1/16".to_owned()),
            })
            .bgp(Bgp {
                asn: Some(65_001),
                graceful_restart_secs: Some(30),
                peers: vec![BgpPeer {
                    address: "10.0.10.1".to_owned(),
                    asn: 65_000,
                    next_hop_v6: Some("2001:db8:10::2".to_owned()),
                }],
            })
            .service(Service::new("echo4", "198.18.0.10", 7).backend("be1", "fd00:ee:1:1::2", 7007))
            .service(Service {
                backends: vec![ServiceBackend {
                    name: "be2".to_owned(),
                    addr: "fd00:ee:1:2::2".to_owned(),
                    port: 7007,
                    weight: Some(5),
                    soft_limit: Some(500),
                    hard_limit: Some(1000),
                }],
                ..Service::new("echo6", "2001:db8:ff::10", 7)
            })
    }

    /// Each key is one the agent knows, in the section it belongs to: the agent refuses
    /// unknown keys.
    #[test]
    fn every_setting_is_one_the_agent_reads() -> TestResult {
        let text = everything().to_toml()?;
        let config: edge_agent::config::AgentConfig =
            toml::from_str(&text).map_err(|e| format!("{e}\n{text}"))?;
        assert_eq!(config.iface.as_deref(), Some("eth0"));
        assert_eq!(config.stats_log_secs, 0);
        assert_eq!(config.flows.max_entries, 65_536);
        assert_eq!(config.maglev.table_size, 4099);
        assert_eq!(config.services.len(), 2);
        assert_eq!(config.bgp.peers.len(), 1);
        Ok(())
    }

    /// Settings not given are left out, so that the agent's defaults apply.
    #[test]
    fn unset_settings_are_left_out() -> TestResult {
        let text = AgentConfig::pop().max_services(8).to_toml()?;
        let table: toml::Table = toml::from_str(&text)?;
        let expected: toml::Table =
            toml::from_str("iface = \"eth0\"\nstats_log_secs = 0\n[maglev]\nmax_services = 8\n")?;
        assert_eq!(table, expected, "{text}");
        Ok(())
    }
}
