//! Backend auto-registration: the agent's HTTP API (`api`), the sidecar that calls it
//! (`client`, `edge-agent register`), and the deletion of registrations whose lease ran out
//! (`reaper`).

pub mod api;
pub mod client;
pub mod reaper;

use std::{net::SocketAddr, path::PathBuf};

use serde::{Deserialize, Serialize};

/// The `[register]` section of the agent's config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegisterConfig {
    /// Where the API listens; empty: no API. It writes through the state database, so it
    /// needs `state.database`.
    pub listen: Vec<SocketAddr>,
    /// The deployment's bearer token (`EDGEPROXY_REGISTER_TOKEN`), or a file holding it.
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    /// The heartbeat interval of registrations that do not name one.
    pub heartbeat_secs: u32,
    /// Connections, timeouts (`[register.limits]`, per listening address; see
    /// `crate::listen`).
    pub limits: crate::listen::ConnLimits<crate::listen::ApiDefaults>,
}

impl Default for RegisterConfig {
    fn default() -> Self {
        RegisterConfig {
            listen: Vec::new(),
            token: None,
            token_file: None,
            heartbeat_secs: 10,
            limits: crate::listen::ConnLimits::default(),
        }
    }
}

impl RegisterConfig {
    /// The token, from the config or its file; `None` if neither is set.
    pub fn token(&self) -> Result<Option<String>, String> {
        if let Some(t) = &self.token {
            return Ok(Some(t.trim().to_owned()));
        }
        let Some(path) = &self.token_file else {
            return Ok(None);
        };
        let t = std::fs::read_to_string(path)
            .map_err(|e| format!("register.token_file {}: {e}", path.display()))?;
        Ok(Some(t.trim().to_owned()))
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.listen.is_empty() {
            return Ok(());
        }
        self.limits.validate("register.limits")?;
        match self.token()? {
            Some(t) if t.len() >= 16 => {}
            Some(_) => return Err("register.token must be at least 16 characters".to_owned()),
            None => {
                return Err(
                    "register.listen is set but no token (register.token, register.token_file or EDGEPROXY_REGISTER_TOKEN)"
                        .to_owned(),
                )
            }
        }
        if self.heartbeat_secs == 0 {
            return Err("register.heartbeat_secs must be at least 1".to_owned());
        }
        Ok(())
    }
}
