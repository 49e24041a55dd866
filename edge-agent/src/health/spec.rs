//! How a health check runs: its timing, and the profiles and `[health]` settings the timing
//! defaults come from. What a check is (`CheckSpec`) is data of the state, in `model`.
//!
//! Commands are only ever named in state: what a name runs is in the agent's own config
//! (`[health.commands]`), because state replicates between POPs and must not be able to make
//! every agent run an arbitrary program.

use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, Serialize};

use crate::model::{CheckKind, CheckSpec};

/// The timing a check runs with, once defaults are filled in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
}

/// Named sets of timing defaults.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// The roadmap's: TCP every 5 s, HTTP and gRPC every 10 s; 2 s timeout; rise 2, fall 3.
    #[default]
    Default,
    /// For labs and latency-critical services: every check every 250 ms, 250 ms timeout,
    /// rise 2, fall 3: a dead backend is out within about 1 s.
    Fast,
}

/// The `[health]` section of the agent's config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    /// Active checks on or off (passive signals follow them: they only trigger checks).
    pub enabled: bool,
    pub profile: Profile,
    /// Overrides of the profile for every check (a check's own fields override these).
    pub interval_ms: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub rise: Option<u32>,
    pub fall: Option<u32>,
    /// Each check is delayed by a random part of this share of its interval, so that
    /// thousands of checks do not fire in the same instant.
    pub jitter_percent: u32,
    /// Checks in flight at once.
    pub concurrency: usize,
    /// The check of services whose row names none.
    pub default_check: CheckSpec,
    /// Named commands that checks may run: `name = ["/path/to/program", "arg", ...]`. The
    /// program gets `EDGEPROXY_CHECK_ADDR`, `EDGEPROXY_CHECK_PORT` and `EDGEPROXY_BACKEND_ID`.
    pub commands: BTreeMap<String, Vec<String>>,
    /// Passive signals from the data plane's counters.
    pub passive: PassiveConfig,
    /// Soft degradation thresholds.
    pub degrade: DegradeConfig,
    /// Seconds between refreshes of this POP's health rows (transitions are written at once).
    pub write_interval_secs: u64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            enabled: true,
            profile: Profile::Default,
            interval_ms: None,
            timeout_ms: None,
            rise: None,
            fall: None,
            jitter_percent: 10,
            concurrency: 256,
            default_check: CheckSpec::tcp(),
            commands: BTreeMap::new(),
            passive: PassiveConfig::default(),
            degrade: DegradeConfig::default(),
            write_interval_secs: 10,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PassiveConfig {
    pub enabled: bool,
    /// How often the per-backend counters are read.
    pub interval_ms: u64,
    /// New flows to a backend that get neither a SYN-ACK nor a RST for this long make it
    /// suspect.
    pub syn_deadline_ms: u64,
}

impl Default for PassiveConfig {
    fn default() -> Self {
        PassiveConfig {
            enabled: true,
            interval_ms: 250,
            syn_deadline_ms: 1000,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DegradeConfig {
    /// A backend whose smoothed RTT is above this is degraded; 0 turns the rule off (RTT then
    /// only weighs backends against each other).
    pub rtt_ms: u64,
    /// A backend that failed at least this percentage of its last `window` checks is degraded.
    pub error_percent: u32,
    pub window: usize,
}

impl Default for DegradeConfig {
    fn default() -> Self {
        DegradeConfig {
            rtt_ms: 0,
            error_percent: 20,
            window: 10,
        }
    }
}

impl HealthConfig {
    /// The timing of `spec`: its own fields, else the config's overrides, else the profile.
    pub fn timing(&self, spec: &CheckSpec) -> Timing {
        let (interval, timeout) = match (self.profile, &spec.kind) {
            (Profile::Fast, _) => (250, 250),
            (Profile::Default, CheckKind::Tcp | CheckKind::Command { .. }) => (5_000, 2_000),
            (Profile::Default, CheckKind::Http { .. } | CheckKind::Grpc { .. }) => (10_000, 2_000),
        };
        let interval = spec.interval_ms.or(self.interval_ms).unwrap_or(interval);
        // A backend's checks run one after another (the next waits for the last), so a
        // timeout longer than the interval would stretch the time between checks, and with
        // it how long `fall` failures take; capped, a check starts at least every two intervals.
        let timeout = spec
            .timeout_ms
            .or(self.timeout_ms)
            .unwrap_or(timeout)
            .min(interval);
        Timing {
            interval: Duration::from_millis(interval),
            timeout: Duration::from_millis(timeout),
            rise: spec.rise.or(self.rise).unwrap_or(2).max(1),
            fall: spec.fall.or(self.fall).unwrap_or(3).max(1),
        }
    }

    /// The check `backend` gets: its own, else its service's, else the default.
    pub fn check_of(
        &self,
        backend: &crate::model::Backend,
        state: &crate::model::Snapshot,
    ) -> CheckSpec {
        backend
            .check
            .clone()
            .or_else(|| {
                state
                    .services
                    .iter()
                    .find(|s| s.id == backend.service)
                    .and_then(|s| s.check.clone())
            })
            .unwrap_or_else(|| self.default_check.clone())
    }

    pub fn validate(&self) -> Result<(), String> {
        self.default_check.validate()?;
        if self.concurrency == 0 {
            return Err("health.concurrency must be at least 1".to_owned());
        }
        if self.jitter_percent > 100 {
            return Err("health.jitter_percent must be 0..=100".to_owned());
        }
        for (name, argv) in &self.commands {
            if argv.is_empty() {
                return Err(format!("health.commands.{name} is empty"));
            }
        }
        if self.degrade.error_percent > 100 {
            return Err("health.degrade.error_percent must be 0..=100".to_owned());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::parse_status_range;

    #[test]
    fn timing_comes_from_the_check_then_the_config_then_the_profile() {
        let mut config = HealthConfig::default();
        let tcp = CheckSpec::tcp();
        let t = config.timing(&tcp);
        assert_eq!((t.interval.as_millis(), t.rise, t.fall), (5000, 2, 3));
        let http = CheckSpec {
            kind: CheckKind::Http {
                path: "/".into(),
                expect: "200".into(),
            },
            ..CheckSpec::tcp()
        };
        assert_eq!(config.timing(&http).interval.as_millis(), 10_000);
        config.profile = Profile::Fast;
        assert_eq!(config.timing(&http).interval.as_millis(), 250);
        config.fall = Some(5);
        assert_eq!(config.timing(&http).fall, 5);
        let own = CheckSpec {
            fall: Some(1),
            interval_ms: Some(100),
            timeout_ms: Some(1000),
            ..http
        };
        let t = config.timing(&own);
        assert_eq!(
            (t.fall, t.interval.as_millis(), t.timeout.as_millis()),
            (1, 100, 100),
            "a timeout never exceeds the interval"
        );
        assert_eq!(parse_status_range("200"), Ok(200..=200));
        assert_eq!(parse_status_range("200-299"), Ok(200..=299));
    }
}
