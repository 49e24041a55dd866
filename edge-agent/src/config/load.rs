//! Reading the configuration: the file, then the environment, then every section checked.

use std::path::{Path, PathBuf};

use super::{AgentConfig, ConfigError};

impl AgentConfig {
    /// Reads `path` if given (a missing or invalid file is an error), then applies the
    /// environment `env` (a function so that tests need not touch the process environment).
    pub fn load(
        path: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut config = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.into(),
                    source,
                })?;
                toml::from_str(&text).map_err(|source| ConfigError::Parse {
                    path: path.into(),
                    source: Box::new(source),
                })?
            }
            None => AgentConfig::default(),
        };
        if let Some(iface) = env("EDGEPROXY_IFACE") {
            config.iface = Some(iface);
        }
        if let Some(root) = env("EDGEPROXY_BPFFS_ROOT") {
            config.bpffs_root = root.into();
        }
        if let Some(mode) = env("EDGEPROXY_XDP_MODE") {
            config.xdp_mode = mode.parse().map_err(|reason| ConfigError::Env {
                var: "EDGEPROXY_XDP_MODE",
                value: mode.clone(),
                reason,
            })?;
        }
        if let Some(hook) = env("EDGEPROXY_FORWARD_HOOK") {
            config.forward_hook = hook.parse().map_err(|reason| ConfigError::Env {
                var: "EDGEPROXY_FORWARD_HOOK",
                value: hook.clone(),
                reason,
            })?;
        }
        if let Some(region) = env("EDGEPROXY_REGION") {
            config.region = region.parse().map_err(|reason| ConfigError::Env {
                var: "EDGEPROXY_REGION",
                value: region.clone(),
                reason,
            })?;
        }
        if let Some(path) = env("EDGEPROXY_DB_PATH") {
            config.state.database = Some(path.into());
        }
        if let Some(path) = env("EDGEPROXY_GEOIP_PATH") {
            config.geo.database = Some(path.into());
        }
        for (var, field) in [
            ("EDGEPROXY_BINDING_TTL_SECS", &mut config.affinity.ttl_secs),
            (
                "EDGEPROXY_BINDING_GC_INTERVAL_SECS",
                &mut config.affinity.gc_interval_secs,
            ),
        ] {
            if let Some(secs) = env(var) {
                *field = secs.parse().map_err(|e| ConfigError::Env {
                    var,
                    value: secs.clone(),
                    reason: format!("{e}"),
                })?;
            }
        }
        if let Some(secs) = env("EDGEPROXY_STATS_LOG_SECS") {
            config.stats_log_secs = secs.parse().map_err(|e| ConfigError::Env {
                var: "EDGEPROXY_STATS_LOG_SECS",
                value: secs.clone(),
                reason: format!("{e}"),
            })?;
        }
        if let Some(token) = env("EDGEPROXY_REGISTER_TOKEN") {
            config.register.token = Some(token);
        }
        config
            .health
            .validate()
            .and_then(|()| config.register.validate())
            .and_then(|()| config.metrics.limits.validate("metrics.limits"))
            .and_then(|()| config.dns.tcp_limits.validate("dns.tcp_limits"))
            .and_then(|()| config.bgp.validate())
            .map_err(|reason| ConfigError::Invalid {
                path: path.map_or_else(|| PathBuf::from("(defaults)"), Path::to_path_buf),
                reason,
            })?;
        Ok(config)
    }
}
