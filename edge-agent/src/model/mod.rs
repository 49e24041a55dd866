//! The control-plane state as the agent uses it, whatever its source (config file, SQLite file,
//! Corrosion): validated values only. Sources turn rows into these and reject what does not fit.

mod check;

use std::{fmt, net::IpAddr, net::Ipv6Addr, str::FromStr};

use serde::{Deserialize, Serialize};

pub use self::check::{parse_status_range, CheckKind, CheckSpec};

/// An ISO 3166-1 alpha-2 country code, upper case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Country([u8; 2]);

impl Country {
    pub fn code(&self) -> &str {
        // The constructor admits ASCII letters only.
        std::str::from_utf8(&self.0).unwrap_or("??")
    }

    pub const fn bytes(&self) -> [u8; 2] {
        self.0
    }
}

impl FromStr for Country {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.as_bytes() {
            [a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
                Ok(Country([a.to_ascii_uppercase(), b.to_ascii_uppercase()]))
            }
            _ => Err(format!("{s:?} is not an ISO 3166-1 alpha-2 country code")),
        }
    }
}

impl TryFrom<String> for Country {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Country> for String {
    fn from(c: Country) -> Self {
        c.code().to_owned()
    }
}

impl fmt::Display for Country {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A region id (`sa`, `us`, `eu`, `ap`, ...): short, lower case, letters, digits and dashes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Region(String);

impl Region {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Region {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = !s.is_empty()
            && s.len() <= 16
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok {
            Ok(Region(s.to_owned()))
        } else {
            Err(format!(
                "{s:?} is not a region id (1-16 lower-case letters, digits, dashes)"
            ))
        }
    }
}

impl TryFrom<String> for Region {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Region> for String {
    fn from(r: Region) -> Self {
        r.0
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a backend listens: an overlay address, or a `.internal` name the agent resolves from
/// its own state.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendAddr {
    Ip(Ipv6Addr),
    Name(String),
}

/// A service clients reach at `vip:port` (TCP).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    /// Stable id (the primary key in state); backends refer to it.
    pub id: String,
    pub vip: IpAddr,
    pub port: u16,
    /// The health check of its backends; `None`: the agent's default.
    pub check: Option<CheckSpec>,
}

/// A backend of a service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backend {
    pub id: String,
    /// The service (its id) this backend serves.
    pub service: String,
    pub region: Region,
    pub country: Country,
    pub addr: BackendAddr,
    pub port: u16,
    /// Relative share of new flows, 1..=1000; 0 takes the backend out of new flows.
    pub weight: u32,
    /// Live connections above which the backend gets a shrinking share (v1's soft limit).
    pub soft_limit: u32,
    /// Live connections at which the backend gets no new flows.
    pub hard_limit: u32,
    /// No new flows; existing ones go on.
    pub draining: bool,
    pub enabled: bool,
    /// Overrides the service's health check.
    pub check: Option<CheckSpec>,
    /// Set for a backend that registered itself: it leaves the pool when its heartbeats stop.
    pub lease: Option<Lease>,
}

/// A self-registered backend's lease on its place in the pool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Unix seconds of the last heartbeat (or the registration).
    pub renewed_at: i64,
    /// The heartbeat interval the backend promised.
    pub interval_secs: u32,
    /// The POP whose API accepted the registration or its latest heartbeat (the `lease_pop`
    /// column): the one agent that deletes the row once the lease has run out, so that POPs
    /// reading the same rows do not all race to. Empty when not recorded (a registration from
    /// before the column): any POP deletes those, long after they ran out.
    #[serde(default)]
    pub pop: String,
}

impl Lease {
    /// Heartbeats a backend may miss before it leaves the pool.
    pub const MISSED: i64 = 3;

    /// When the lease runs out: three intervals after the last heartbeat.
    pub fn expires_at(&self) -> i64 {
        self.renewed_at
            .saturating_add(Self::MISSED * i64::from(self.interval_secs))
    }

    pub fn expired(&self, now_unix: i64) -> bool {
        now_unix > self.expires_at()
    }
}

impl Backend {
    /// Whether the backend may be given new flows and be named in DNS, leaving health and
    /// load aside: enabled, not draining, weighted, and registered with a live lease (if it
    /// registered at all).
    pub fn in_pool(&self, now_unix: i64) -> bool {
        self.enabled
            && !self.draining
            && self.weight > 0
            && !self.lease.as_ref().is_some_and(|l| l.expired(now_unix))
    }
}

/// An id as a DNS label (lower case; other characters than letters and digits become `-`,
/// dashes at either end go, at most 63 characters), or `None` if nothing usable is left. Ids
/// that differ only in case or punctuation (`e4b1`, `E4B1`, `e4_b1`...) have one label, so one
/// name in the `internal.` zone: the validator lets only one of them in.
pub fn dns_label(id: &str) -> Option<String> {
    let mut out: String = id
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() {
                c
            } else {
                '-'
            }
        })
        .collect();
    out = out.trim_matches('-').to_owned();
    out.truncate(63);
    // A cut may leave a dash at the end, which no label has.
    out.truncate(out.trim_end_matches('-').len());
    (!out.is_empty()).then_some(out)
}

/// Unix seconds now: the clock every timestamp in state uses.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A POP (or host) of the deployment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pop {
    pub id: String,
    pub region: Region,
    pub overlay_addr: Option<Ipv6Addr>,
    pub public_key: Option<String>,
    pub endpoint: Option<String>,
    pub role: HostRole,
    /// Its number in its region for 6PN addresses; 0: not in the mesh.
    pub host_number: u32,
    /// Its v1 IPv4 overlay address, during the transition.
    pub overlay_ipv4: Option<std::net::Ipv4Addr>,
}

/// What a member of the deployment runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostRole {
    /// The data plane, and the overlay.
    #[default]
    Pop,
    /// A backend host: the overlay only.
    Host,
}

impl HostRole {
    pub fn as_str(self) -> &'static str {
        match self {
            HostRole::Pop => "pop",
            HostRole::Host => "host",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    Unknown,
    Up,
    /// Serving, but slow or erroring: loses weight before it is marked down.
    Degraded,
    Down,
}

/// One POP's view of one backend's health.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Health {
    pub pop_id: String,
    pub backend_id: String,
    pub status: HealthStatus,
    /// Smoothed round-trip time in microseconds, when measured.
    pub rtt_us: Option<u32>,
    /// Unix seconds.
    pub checked_at: i64,
    /// Why the status is what it is: the last failure, or the degradation rule that applies.
    pub reason: String,
}

/// A consistent view of the whole state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub services: Vec<Service>,
    pub backends: Vec<Backend>,
    pub pops: Vec<Pop>,
    pub health: Vec<Health>,
    /// The `settings` table (`sixpn.prefix`, ...).
    pub settings: std::collections::BTreeMap<String, String>,
    /// The lease of every registration row by backend id, the rows rejected included (a
    /// registration that lost a conflict, or that no longer parses, still has to be deleted
    /// when its lease runs out; else it stays, and conflicts, forever).
    #[serde(default)]
    pub leases: std::collections::BTreeMap<String, Lease>,
}

/// A row a source could not turn into state, and why; the source counts and logs these.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RejectedRow {
    pub table: &'static str,
    /// The row's key as far as it could be read.
    pub key: String,
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_runs_out_after_three_missed_heartbeats() {
        let lease = Lease {
            renewed_at: 1000,
            interval_secs: 10,
            pop: "pop1".into(),
        };
        assert!(!lease.expired(1030), "three intervals: still in");
        assert!(lease.expired(1031));
        let mut b = Backend {
            id: "b".into(),
            service: "web".into(),
            region: "sa".parse().unwrap_or_else(|e: String| panic!("{e}")),
            country: "BR".parse().unwrap_or_else(|e: String| panic!("{e}")),
            addr: BackendAddr::Ip(Ipv6Addr::LOCALHOST),
            port: 80,
            weight: 1,
            soft_limit: 1,
            hard_limit: 1,
            draining: false,
            enabled: true,
            check: None,
            lease: Some(lease),
        };
        assert!(b.in_pool(1030));
        assert!(!b.in_pool(1031));
        b.lease = None;
        assert!(b.in_pool(i64::MAX), "a row typed in never expires");
        b.weight = 0;
        assert!(!b.in_pool(0));
    }
}
