//! `edge-agent flows`: the flow tables (established and half-open) read from the pins, newest
//! first, each flow with its client's country.

use edge_common::{names, FlowKey, FlowValue};

use super::Output;
use crate::{
    config::AgentConfig,
    dataplane::{maps::flows, pins::PinDir},
};

pub fn run(
    config: &AgentConfig,
    pins: &PinDir,
    output: Output,
    limit: usize,
) -> anyhow::Result<()> {
    let open = |name| -> anyhow::Result<aya::maps::HashMap<_, FlowKey, FlowValue>> {
        Ok(aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(
            pins.open_map(name)?,
        ))?)
    };
    let now = flows::monotonic_ns();
    let (report, mut listing) = flows::sweep(
        &open(names::FLOWS)?,
        flows::Table::Established,
        &config.flows,
        now,
        flows::Sweep::List,
    )?;
    let (half_open, half_listing) = flows::sweep(
        &open(names::HALF_OPEN)?,
        flows::Table::HalfOpen,
        &config.flows,
        now,
        flows::Sweep::List,
    )?;
    listing.extend(half_listing);
    listing.sort_by(|a, b| a.idle_secs.total_cmp(&b.idle_secs));
    listing.truncate(limit);
    flows::classify(&mut listing, pins);
    match output {
        Output::Json => {
            let doc = serde_json::json!({
                "summary": report,
                "half_open": half_open,
                "flows": listing,
            });
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
        Output::Table => {
            println!(
                "{} entries, {} connections; by state: {:?}; half-open: {} connections",
                report.entries, report.connections, report.by_state, half_open.connections
            );
            println!(
                "{:<46} {:<3} {:<46} {:<46} {:<11} {:>8} {:>8}",
                "CLIENT", "CC", "VIP", "BACKEND", "STATE", "IDLE s", "PKTS IN"
            );
            for f in &listing {
                println!(
                    "{:<46} {:<3} {:<46} {:<46} {:<11} {:>8.1} {:>8}",
                    f.client,
                    f.country.as_deref().unwrap_or("-"),
                    f.vip,
                    f.backend,
                    format!("{:?}", f.state),
                    f.idle_secs,
                    f.packets_in
                );
            }
        }
    }
    Ok(())
}
