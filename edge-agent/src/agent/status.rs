//! The running agent's status file: what only the running agent knows (where its state comes
//! from and how stale it is, health checks, the geo database in force, DNS, BGP sessions, 6PN
//! peers), written once a second beside the pins and read back by `edge-agent status` and
//! `edge-agent wg show`.
//!
//! One typed document for the writer and its readers, so that they cannot drift apart. Its JSON
//! is also read as JSON (the e2e tests, operators' scripts, `status --output json`), so the field
//! names and their nesting are fixed: a field added here is added to that format.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::Path,
};

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize};

use crate::{dataplane::pins::PinDir, geo::GeoInForce, model::HostRole, sixpn::node::SixpnStatus};

/// A status older than this (seconds) was left by an agent that is gone (one killed, whose
/// guard could not remove it).
pub const FRESH_SECS: i64 = 5;

/// The whole file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentStatus {
    pub pid: u32,
    /// `host` for `edge-agent host`; absent for a POP's agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<HostRole>,
    /// Unix seconds: an old file means no agent.
    pub written_at: i64,
    /// What a POP's agent knows beyond the mesh; its fields sit at the top level of the file.
    #[serde(flatten)]
    pub pop: Option<PopStatus>,
    /// This host in the 6PN mesh, when `[sixpn]` is enabled.
    pub sixpn: Option<SixpnStatus>,
}

/// What a balancing POP's agent reports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PopStatus {
    pub state: StateStatus,
    /// State rows rejected since start, all sources together.
    pub rejected_rows: u64,
    /// The country database the geo tries hold.
    pub geo: GeoInForce,
    /// `None` while the state was never read.
    pub state_read_secs_ago: Option<f64>,
    pub health: ChecksStatus,
    /// Where the `internal.` zone is served, when DNS is on.
    pub dns: Option<Vec<SocketAddr>>,
    /// The anycast speaker, when BGP peers are configured.
    pub bgp: Option<BgpStatus>,
}

/// Where the state comes from, and how far behind it may be.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StateStatus {
    /// The source's kind and location.
    pub source: String,
    /// `None` before the source was ever heard from.
    pub stale_secs: Option<f64>,
    /// What the source says of itself (Corrosion's subscriptions...); absent for the config
    /// file's services, `null` for a source with nothing to say.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub detail: Option<serde_json::Value>,
}

/// A field that is there, even as `null`, is `Some`: the file keeps the shape it was given.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<serde_json::Value>, D::Error> {
    serde_json::Value::deserialize(d).map(Some)
}

/// This POP's health checks.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChecksStatus {
    /// Backends being checked.
    pub checking: usize,
    /// Checks finished since start.
    pub checks: u64,
    /// Status changes since start.
    pub transitions: u64,
}

/// The BGP speaker: each session, each VIP and why it is (not) announced.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BgpStatus {
    /// Unix seconds, while `edge-agent drain` is in force.
    pub draining_since: Option<i64>,
    pub sessions: Vec<BgpSession>,
    pub vips: Vec<BgpVip>,
    /// BFD packets dropped, by reason.
    pub bfd_dropped: BTreeMap<String, u64>,
}

/// One BGP session. The fields `edge-agent status` prints are typed; the rest of what the
/// speaker reports (graceful restart, BFD, families) is carried as the speaker serialises it,
/// so that the file keeps the speaker's whole report without this struct repeating its types.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BgpSession {
    pub peer: IpAddr,
    pub asn: u32,
    /// The RFC 4271 state (`Established`...).
    pub state: String,
    /// Unix seconds when the session became Established.
    pub established_at: Option<i64>,
    pub prefixes_announced: u64,
    pub prefixes_received: u64,
    pub last_error: Option<String>,
    #[serde(flatten)]
    pub more: serde_json::Map<String, serde_json::Value>,
}

impl BgpSession {
    /// The session as the speaker reports it.
    pub fn of(peer: &crate::bgp::session::PeerStatus) -> Result<Self, serde_json::Error> {
        serde_json::to_value(peer).and_then(serde_json::from_value)
    }
}

/// One VIP: whether it is announced, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BgpVip {
    pub vip: IpAddr,
    pub prefix: IpNet,
    pub announced: bool,
    pub reason: String,
}

impl From<&crate::bgp::routes::VipState> for BgpVip {
    fn from(v: &crate::bgp::routes::VipState) -> Self {
        BgpVip {
            vip: v.vip,
            prefix: v.prefix,
            announced: v.announced,
            reason: v.reason.to_owned(),
        }
    }
}

impl AgentStatus {
    /// The running agent's status, if there is a readable one for the pins at `pins`.
    pub fn read(pins: &PinDir) -> Option<AgentStatus> {
        Self::read_from(&pins.agent_status_file())
    }

    pub fn read_from(path: &Path) -> Option<AgentStatus> {
        let bytes = std::fs::read(path).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Replaces the file at `path` (`PinDir::agent_status_file`), never half-written: readers
    /// see the old one or the new one.
    pub fn write_to(&self, path: &Path) -> std::io::Result<()> {
        let doc = serde_json::to_vec(self)?;
        crate::dataplane::pins::write_atomically(path, &doc)
    }

    /// Seconds since it was written.
    pub fn age(&self, now_unix: i64) -> i64 {
        now_unix - self.written_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn pop_status() -> Result<AgentStatus, Box<dyn std::error::Error>> {
        Ok(AgentStatus {
            pid: 42,
            role: None,
            written_at: 1_700_000_000,
            pop: Some(PopStatus {
                state: StateStatus {
                    source: "sqlite /var/lib/edgeproxy/state.db".to_owned(),
                    stale_secs: Some(0.0),
                    detail: Some(serde_json::Value::Null),
                },
                rejected_rows: 3,
                geo: GeoInForce::default(),
                state_read_secs_ago: Some(0.25),
                health: ChecksStatus {
                    checking: 2,
                    checks: 40,
                    transitions: 1,
                },
                dns: Some(vec!["[fd00::1]:53".parse()?]),
                bgp: Some(BgpStatus {
                    draining_since: None,
                    sessions: vec![serde_json::from_value(serde_json::json!({
                        "peer": "10.0.10.1",
                        "asn": 65000,
                        "state": "Established",
                        "established_at": 1_699_999_990,
                        "prefixes_announced": 2,
                        "prefixes_received": 0,
                        "last_error": null,
                        "families": ["ipv4", "ipv6"],
                        "graceful_restart": {"negotiated": true},
                    }))?],
                    vips: vec![BgpVip {
                        vip: "192.0.2.10".parse()?,
                        prefix: "192.0.2.10/32".parse()?,
                        announced: true,
                        reason: "servable".to_owned(),
                    }],
                    bfd_dropped: BTreeMap::from([("detect_mult".to_owned(), 1)]),
                }),
            }),
            sixpn: None,
        })
    }

    #[test]
    fn a_pop_status_round_trips_with_the_field_names_the_readers_use() -> TestResult {
        let status = pop_status()?;
        let json = serde_json::to_value(&status)?;
        // The names the e2e tests and scripts read.
        assert_eq!(json["pid"], 42);
        assert_eq!(json["written_at"], 1_700_000_000);
        assert_eq!(
            json["state"]["source"],
            "sqlite /var/lib/edgeproxy/state.db"
        );
        assert_eq!(json["state"]["stale_secs"], 0.0);
        assert!(json["state"]
            .as_object()
            .is_some_and(|s| s.contains_key("detail")));
        assert_eq!(json["rejected_rows"], 3);
        assert_eq!(json["health"]["checking"], 2);
        assert_eq!(json["geo"]["source"], "none");
        assert_eq!(json["dns"][0], "[fd00::1]:53");
        assert!(json["sixpn"].is_null() && json.get("sixpn").is_some());
        assert!(json.get("role").is_none(), "{json}");
        let session = &json["bgp"]["sessions"][0];
        assert_eq!(session["state"], "Established");
        assert_eq!(session["graceful_restart"]["negotiated"], true);
        assert_eq!(session["families"], serde_json::json!(["ipv4", "ipv6"]));
        assert_eq!(json["bgp"]["vips"][0]["reason"], "servable");
        let back: AgentStatus = serde_json::from_value(json)?;
        assert_eq!(back, status);
        Ok(())
    }

    #[test]
    fn a_host_status_has_no_pop_fields_and_round_trips() -> TestResult {
        let status = AgentStatus {
            pid: 7,
            role: Some(HostRole::Host),
            written_at: 1_700_000_000,
            pop: None,
            sixpn: Some(SixpnStatus {
                ifname: "6pn0".to_owned(),
                listen_port: 51820,
                ..SixpnStatus::default()
            }),
        };
        let json = serde_json::to_value(&status)?;
        let keys: Vec<&String> = json
            .as_object()
            .map(|o| o.keys().collect())
            .unwrap_or_default();
        assert_eq!(keys, ["pid", "role", "sixpn", "written_at"], "{json}");
        assert_eq!(json["role"], "host");
        assert_eq!(json["sixpn"]["listen_port"], 51820);
        let back: AgentStatus = serde_json::from_value(json)?;
        assert_eq!(back, status);
        Ok(())
    }

    #[test]
    fn the_config_file_source_has_no_detail_field() -> TestResult {
        let state = StateStatus {
            source: "the config file's services".to_owned(),
            stale_secs: Some(0.0),
            detail: None,
        };
        let json = serde_json::to_value(&state)?;
        assert_eq!(
            json,
            serde_json::json!({"source": "the config file's services", "stale_secs": 0.0})
        );
        assert_eq!(serde_json::from_value::<StateStatus>(json)?, state);
        Ok(())
    }

    #[test]
    fn the_file_is_written_whole_and_read_back() -> TestResult {
        let dir = std::env::temp_dir().join(format!("edge-status-{}", std::process::id()));
        let path = dir.join("status.json");
        let status = pop_status()?;
        status.write_to(&path)?;
        let back = AgentStatus::read_from(&path);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(back, Some(status));
        assert_eq!(back.map(|s| s.age(1_700_000_003)), Some(3));
        Ok(())
    }
}
