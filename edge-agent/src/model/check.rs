//! What a health check is, as state and config write it: its kind (TCP, HTTP, gRPC, a named
//! command) and the timing it asks for. Data of the state like the rows that carry it; `health`
//! runs the checks.
//!
//! A service's check lives in its row (`services.health_check`, JSON), a backend may override it
//! (`backends.health_check`); an empty column means "the agent's default check", a TCP connect.
//! A command check only names a command: what it runs is the agent's own config.

use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};

/// One check, as written in state (JSON) or config (TOML): `{"type": "http", "path":
/// "/health", "expect": "200-399", "port": 8081, "interval_ms": 1000, "timeout_ms": 500,
/// "rise": 2, "fall": 3}`; every field but `type` is optional.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawCheck", into = "RawCheck")]
pub struct CheckSpec {
    pub kind: CheckKind,
    /// Port to check; defaults to the backend's port.
    pub port: Option<u16>,
    pub interval_ms: Option<u64>,
    pub timeout_ms: Option<u64>,
    /// Consecutive successes that bring a down backend back.
    pub rise: Option<u32>,
    /// Consecutive failures that take a backend down.
    pub fall: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum CheckKind {
    /// A TCP connect.
    Tcp,
    /// `GET path`; the status must fall in `expect` (`"200-399"`, `"200"`).
    Http { path: String, expect: String },
    /// `grpc.health.v1.Health/Check` for `service` ("" asks about the whole server).
    Grpc { service: String },
    /// A command from the agent's `[health.commands]`, by name: exit status 0 passes.
    Command { name: String },
}

/// The written form: one flat object, so that an unknown or misplaced field is refused.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCheck {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expect: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    interval_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rise: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fall: Option<u32>,
}

impl TryFrom<RawCheck> for CheckSpec {
    type Error = String;

    fn try_from(raw: RawCheck) -> Result<Self, String> {
        let misplaced = |field: &str, present: bool| {
            if present {
                Err(format!("{field} does not apply to a {} check", raw.kind))
            } else {
                Ok(())
            }
        };
        let kind = match raw.kind.as_str() {
            "tcp" | "http" | "grpc" | "command" => {
                if raw.kind != "http" {
                    misplaced("path", raw.path.is_some())?;
                    misplaced("expect", raw.expect.is_some())?;
                }
                if raw.kind != "grpc" {
                    misplaced("service", raw.service.is_some())?;
                }
                if raw.kind != "command" {
                    misplaced("name", raw.name.is_some())?;
                }
                match raw.kind.as_str() {
                    "tcp" => CheckKind::Tcp,
                    "http" => CheckKind::Http {
                        path: raw.path.clone().unwrap_or_else(|| "/".to_owned()),
                        expect: raw.expect.clone().unwrap_or_else(|| "200-399".to_owned()),
                    },
                    "grpc" => CheckKind::Grpc {
                        service: raw.service.clone().unwrap_or_default(),
                    },
                    _ => CheckKind::Command {
                        name: raw
                            .name
                            .clone()
                            .ok_or("a command check needs the name of a [health.commands] entry")?,
                    },
                }
            }
            other => {
                return Err(format!(
                    "type {other:?} is not one of tcp, http, grpc, command"
                ))
            }
        };
        let spec = CheckSpec {
            kind,
            port: raw.port,
            interval_ms: raw.interval_ms,
            timeout_ms: raw.timeout_ms,
            rise: raw.rise,
            fall: raw.fall,
        };
        spec.validate()?;
        Ok(spec)
    }
}

impl From<CheckSpec> for RawCheck {
    fn from(spec: CheckSpec) -> Self {
        let mut raw = RawCheck {
            kind: spec.kind_name().to_owned(),
            port: spec.port,
            interval_ms: spec.interval_ms,
            timeout_ms: spec.timeout_ms,
            rise: spec.rise,
            fall: spec.fall,
            ..RawCheck::default()
        };
        match spec.kind {
            CheckKind::Tcp => {}
            CheckKind::Http { path, expect } => {
                raw.path = Some(path);
                raw.expect = Some(expect);
            }
            CheckKind::Grpc { service } => raw.service = Some(service),
            CheckKind::Command { name } => raw.name = Some(name),
        }
        raw
    }
}

impl CheckSpec {
    pub const fn tcp() -> Self {
        CheckSpec {
            kind: CheckKind::Tcp,
            port: None,
            interval_ms: None,
            timeout_ms: None,
            rise: None,
            fall: None,
        }
    }

    /// Parses a `health_check` column: empty means none (the agent's default).
    pub fn parse_column(text: &str) -> Result<Option<Self>, String> {
        if text.trim().is_empty() {
            return Ok(None);
        }
        serde_json::from_str(text)
            .map(Some)
            .map_err(|e| format!("health_check {text:?} is not a valid check: {e}"))
    }

    /// The column's text for `spec`.
    pub fn column(spec: Option<&Self>) -> String {
        spec.and_then(|s| serde_json::to_string(s).ok())
            .unwrap_or_default()
    }

    /// What serde cannot check.
    pub fn validate(&self) -> Result<(), String> {
        if self.port == Some(0) {
            return Err("health_check port 0 is out of range 1..=65535".to_owned());
        }
        for (name, v, max) in [
            ("interval_ms", self.interval_ms, 3_600_000),
            ("timeout_ms", self.timeout_ms, 600_000),
        ] {
            if let Some(v) = v {
                if v < 10 || v > max {
                    return Err(format!(
                        "health_check {name} {v} is out of range 10..={max}"
                    ));
                }
            }
        }
        for (name, v) in [("rise", self.rise), ("fall", self.fall)] {
            if let Some(v) = v {
                if !(1..=100).contains(&v) {
                    return Err(format!("health_check {name} {v} is out of range 1..=100"));
                }
            }
        }
        match &self.kind {
            CheckKind::Http { path, expect } => {
                if !path.starts_with('/') || path.bytes().any(|b| b.is_ascii_control() || b == b' ')
                {
                    return Err(format!(
                        "health_check path {path:?} must start with / and hold no spaces or control characters"
                    ));
                }
                parse_status_range(expect)?;
            }
            CheckKind::Command { name } if name.is_empty() => {
                return Err("health_check command name is empty".to_owned());
            }
            _ => {}
        }
        Ok(())
    }

    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            CheckKind::Tcp => "tcp",
            CheckKind::Http { .. } => "http",
            CheckKind::Grpc { .. } => "grpc",
            CheckKind::Command { .. } => "command",
        }
    }
}

/// `"200"` or `"200-399"`.
pub fn parse_status_range(s: &str) -> Result<RangeInclusive<u16>, String> {
    let bad = || format!("health_check expect {s:?} is not a status or a range like 200-399");
    let (lo, hi) = s.split_once('-').unwrap_or((s, s));
    let lo: u16 = lo.trim().parse().map_err(|_| bad())?;
    let hi: u16 = hi.trim().parse().map_err(|_| bad())?;
    if !(100..=599).contains(&lo) || !(lo..=599).contains(&hi) {
        return Err(bad());
    }
    Ok(lo..=hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_parse_and_round_trip() {
        assert_eq!(CheckSpec::parse_column(""), Ok(None));
        let http = CheckSpec::parse_column(r#"{"type":"http","path":"/health","interval_ms":500}"#)
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("a check"));
        assert_eq!(
            http.kind,
            CheckKind::Http {
                path: "/health".into(),
                expect: "200-399".into()
            }
        );
        assert_eq!(http.interval_ms, Some(500));
        let text = CheckSpec::column(Some(&http));
        assert_eq!(CheckSpec::parse_column(&text), Ok(Some(http)));
        let grpc = CheckSpec::parse_column(r#"{"type":"grpc"}"#).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            grpc.map(|g| g.kind),
            Some(CheckKind::Grpc { service }) if service.is_empty()
        ));
    }

    #[test]
    fn bad_columns_say_why() {
        for (text, needle) in [
            ("{", "not a valid check"),
            (r#"{"type":"ftp"}"#, "not one of"),
            (r#"{"type":"tcp","path":"/"}"#, "does not apply"),
            (r#"{"type":"tcp","port":0}"#, "port 0"),
            (r#"{"type":"tcp","interval_ms":1}"#, "interval_ms 1"),
            (r#"{"type":"tcp","fall":0}"#, "fall 0"),
            (r#"{"type":"http","path":"health"}"#, "must start with /"),
            (r#"{"type":"http","expect":"2xx"}"#, "expect"),
            (r#"{"type":"http","expect":"399-200"}"#, "expect"),
            (r#"{"type":"command","name":""}"#, "empty"),
            (r#"{"type":"tcp","bogus":1}"#, "not a valid check"),
        ] {
            let err = CheckSpec::parse_column(text).err().unwrap_or_default();
            assert!(err.contains(needle), "{text}: {err:?}");
        }
    }
}
