//! `edge-agent import-v1`: v1's routing database into the state file, with what was skipped and why.

use crate::config::AgentConfig;

pub fn run(
    config: &AgentConfig,
    path: &std::path::Path,
    vips: &[String],
    ipv4_prefix: Option<ipnet::Ipv6Net>,
) -> anyhow::Result<()> {
    use crate::state::{import_v1, ImportOptions, Ipv4Overlay, SqliteState};
    let Some(db) = &config.state.database else {
        anyhow::bail!("no state database to import into: set state.database or EDGEPROXY_DB_PATH");
    };
    let options = ImportOptions {
        pop_id: config.pop_id.clone(),
        vips: crate::state::import_v1::parse_vips(vips.iter().map(String::as_str))
            .map_err(|e| anyhow::anyhow!("{e}"))?,
        ipv4: ipv4_prefix.map_or(Ipv4Overlay::Reject, Ipv4Overlay::Prefix96),
    };
    let state = SqliteState::open(db)?;
    let report = import_v1(path, &state, &options)?;
    println!(
        "imported {} backends into {}; skipped {}",
        report.imported.len(),
        db.display(),
        report.skipped.len()
    );
    for row in &report.skipped {
        println!("  skipped {}: {}", row.id, row.reason);
    }
    Ok(())
}
