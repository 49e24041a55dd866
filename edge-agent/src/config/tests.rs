//! Loading: defaults, overrides, errors that say what is wrong, and the servers' own defaults
//! kept in a partial `limits` table.

use super::*;

fn no_env(_: &str) -> Option<String> {
    None
}

#[test]
fn empty_file_gives_defaults_and_env_overrides() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("edge-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("agent.toml");
    std::fs::write(&file, "")?;
    assert_eq!(
        AgentConfig::load(Some(&file), no_env)?,
        AgentConfig::default()
    );

    std::fs::write(
        &file,
        "iface = \"eth1\"\nxdp_mode = \"skb\"\nforward_hook = \"tc\"\nbpf_debug_log = true\n",
    )?;
    let config = AgentConfig::load(Some(&file), |var| {
        (var == "EDGEPROXY_BPFFS_ROOT").then(|| "/sys/fs/bpf/other".to_owned())
    })?;
    assert_eq!(config.iface.as_deref(), Some("eth1"));
    assert_eq!(config.xdp_mode, XdpMode::Skb);
    assert_eq!(config.forward_hook, ForwardHook::Tc);
    assert!(config.bpf_debug_log);
    assert_eq!(config.bpffs_root, PathBuf::from("/sys/fs/bpf/other"));
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[test]
fn bad_input_is_a_clear_error() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("edge-config-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("agent.toml");
    std::fs::write(&file, "[health]\nconcurrency = 0\n")?;
    let err = AgentConfig::load(Some(&file), no_env)
        .err()
        .map(|e| e.to_string());
    assert!(
        err.as_deref().is_some_and(|e| e.contains("concurrency")),
        "{err:?}"
    );
    std::fs::write(&file, "[health.default_check]\ntype = \"smtp\"\n")?;
    let err = AgentConfig::load(Some(&file), no_env)
        .err()
        .map(|e| e.to_string());
    assert!(
        err.as_deref().is_some_and(|e| e.contains("smtp")),
        "{err:?}"
    );
    std::fs::write(&file, "ifface = \"eth1\"\n")?;
    let err = AgentConfig::load(Some(&file), no_env)
        .err()
        .map(|e| e.to_string());
    assert!(
        err.as_deref()
            .is_some_and(|e| e.contains("unknown field `ifface`")),
        "expected an unknown-field error, got {err:?}"
    );
    let missing = AgentConfig::load(Some(&dir.join("missing.toml")), no_env);
    assert!(
        matches!(missing, Err(ConfigError::Read { .. })),
        "{missing:?}"
    );
    let bad_env = AgentConfig::load(None, |var| {
        (var == "EDGEPROXY_XDP_MODE").then(|| "turbo".to_owned())
    });
    assert!(
        matches!(bad_env, Err(ConfigError::Env { .. })),
        "{bad_env:?}"
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[test]
fn a_partial_limits_table_keeps_the_server_s_own_defaults() -> Result<(), String> {
    let metrics: crate::metrics::MetricsConfig =
        toml::from_str("[limits]\nheader_timeout_ms = 1000\n").map_err(|e| e.to_string())?;
    assert_eq!(
        (
            metrics.limits.max_connections,
            metrics.limits.header_timeout_ms
        ),
        (64, 1000),
        "expected /metrics' own cap beside the value given"
    );
    let dns = crate::dns::DnsConfig::default();
    assert_eq!(dns.tcp_limits.max_connections, 128);
    let zero: Result<crate::register::RegisterConfig, _> =
        toml::from_str("[limits]\nmax_per_source = 0\n");
    let zero = zero.map_err(|e| e.to_string())?;
    assert!(
        zero.limits.validate("register.limits").is_err(),
        "expected a share of 0 refused"
    );
    Ok(())
}
