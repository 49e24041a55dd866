//! How much each listener may hold: the `limits` tables of the servers' config sections, and
//! the limits a gate applies once the file budget has had its say.

use std::{marker::PhantomData, time::Duration};

use serde::{Deserialize, Serialize};

/// The limits of one kind of listener (`[register.limits]`, `[metrics.limits]`,
/// `[dns.tcp_limits]`); each listening address has its own. `D` gives the default connection
/// cap, the only default that differs between the servers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, bound = "")]
pub struct ConnLimits<D: Defaults> {
    /// Connections open at once (default: 512 for the registration API, 64 for `/metrics`,
    /// 128 for DNS over TCP). When full, a newcomer from a source with less than the biggest
    /// holder takes the place of an idle connection of that holder; others are refused (see
    /// the module documentation). Lowered at start if the file limit cannot hold every
    /// listener's cap (see `docs/operations.md`).
    pub max_connections: u32,
    /// Connections open at once from one IPv4 address or IPv6 /64; more are refused.
    pub max_per_source: u32,
    /// A request's head (HTTP) or a whole query (DNS) must arrive within this after the
    /// connection opens or the previous answer; otherwise the connection is closed. This is
    /// also how long a kept-alive connection may sit idle.
    pub header_timeout_ms: u64,
    /// HTTP: the whole request, body included, and its answer; past it the answer is 408.
    pub request_timeout_ms: u64,
    #[serde(skip)]
    defaults: PhantomData<D>,
}

/// The defaults of one server's [`ConnLimits`].
pub trait Defaults {
    const MAX_CONNECTIONS: u32;
}

/// The registration API: sidecars connect for a request at a time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiDefaults {}
impl Defaults for ApiDefaults {
    const MAX_CONNECTIONS: u32 = 512;
}

/// `/metrics`: a scraper or two and an operator's curl.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetricsDefaults {}
impl Defaults for MetricsDefaults {
    const MAX_CONNECTIONS: u32 = 64;
}

/// DNS over TCP: truncated answers retried by resolvers; a connection may buffer a 64 KiB
/// message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DnsTcpDefaults {}
impl Defaults for DnsTcpDefaults {
    const MAX_CONNECTIONS: u32 = 128;
}

impl<D: Defaults> Default for ConnLimits<D> {
    fn default() -> Self {
        ConnLimits {
            max_connections: D::MAX_CONNECTIONS,
            max_per_source: 32,
            header_timeout_ms: 5_000,
            request_timeout_ms: 10_000,
            defaults: PhantomData,
        }
    }
}

impl<D: Defaults> ConnLimits<D> {
    pub fn validate(&self, section: &str) -> Result<(), String> {
        if self.max_connections == 0 || self.max_per_source == 0 {
            return Err(format!(
                "{section}: max_connections and max_per_source must be at least 1"
            ));
        }
        if self.header_timeout_ms == 0 || self.request_timeout_ms == 0 {
            return Err(format!(
                "{section}: header_timeout_ms and request_timeout_ms must be at least 1"
            ));
        }
        Ok(())
    }

    /// The limits a gate applies, as configured.
    pub fn limits(&self) -> Limits {
        self.with_cap(self.max_connections)
    }

    /// The limits a gate applies, with the connection cap the file budget allows.
    pub fn with_cap(&self, max_connections: u32) -> Limits {
        Limits {
            max_connections: max_connections.max(1) as usize,
            max_per_source: self.max_per_source.max(1) as usize,
            header_timeout: Duration::from_millis(self.header_timeout_ms.max(1)),
            request_timeout: Duration::from_millis(self.request_timeout_ms.max(1)),
        }
    }
}

/// What a gate and its server enforce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub max_per_source: usize,
    pub header_timeout: Duration,
    pub request_timeout: Duration,
}
