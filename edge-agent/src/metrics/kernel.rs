//! The data plane's own figures for `/metrics`, read from the pinned maps at each scrape:
//! frames by class and verdict, and per service, per backend and per drop reason. Kept apart
//! from the agent's figures because they need no running agent, only the pins.

use super::{AgentView, Scrape};
use crate::{dataplane::maps::counters, dataplane::pins::PinDir};

/// Every kernel family; none when the maps are missing (the data plane detached).
pub(super) fn families(out: &Scrape, pins: &PinDir, view: &AgentView) -> prometheus::Result<()> {
    // The maps may be missing (data plane detached): the agent's own figures still count.
    if let Ok(snapshot) = counters::open_pinned(pins).and_then(|m| counters::snapshot(&m)) {
        let labels = |c: &counters::ClassCounters| {
            vec![c.ip.to_string(), c.proto.to_string(), c.verdict.to_string()]
        };
        let classes = ["ip", "proto", "verdict"];
        out.counters(
            "edgeproxy_packets_total",
            "Frames seen by the XDP program, by class and verdict",
            &classes,
            snapshot
                .classes
                .iter()
                .map(|c| (labels(c), c.packets))
                .collect(),
        )?;
        out.counters(
            "edgeproxy_bytes_total",
            "Bytes of the frames seen by the XDP program, by class and verdict",
            &classes,
            snapshot
                .classes
                .iter()
                .map(|c| (labels(c), c.bytes))
                .collect(),
        )?;
    }
    if let Ok(nat) = counters::nat_report(pins) {
        let service = |vip: &str| view.services.get(vip).cloned().unwrap_or_default();
        let per_service = |f: &dyn Fn(&counters::ServiceRow) -> u64| {
            nat.services
                .iter()
                .map(|s| (vec![service(&s.vip), s.vip.clone()], f(s)))
                .collect::<Vec<_>>()
        };
        let svc = ["service", "vip"];
        out.counters(
            "edgeproxy_service_packets_total",
            "Client-to-backend packets of a service",
            &svc,
            per_service(&|s| s.packets),
        )?;
        out.counters(
            "edgeproxy_service_bytes_total",
            "Client-to-backend bytes of a service",
            &svc,
            per_service(&|s| s.bytes),
        )?;
        out.counters(
            "edgeproxy_service_new_flows_total",
            "Connections a service accepted",
            &svc,
            per_service(&|s| s.new_flows),
        )?;
        out.counters(
            "edgeproxy_service_no_backend_total",
            "SYNs dropped for want of an eligible backend",
            &svc,
            per_service(&|s| s.no_backend),
        )?;
        let per_backend = |f: &dyn Fn(&counters::BackendRow) -> u64| {
            nat.backends
                .iter()
                .map(|b| (vec![b.addr.clone()], f(b)))
                .collect::<Vec<_>>()
        };
        let directed = |to: &dyn Fn(&counters::BackendRow) -> u64,
                        from: &dyn Fn(&counters::BackendRow) -> u64| {
            nat.backends
                .iter()
                .flat_map(|b| {
                    [
                        (vec![b.addr.clone(), "to".to_owned()], to(b)),
                        (vec![b.addr.clone(), "from".to_owned()], from(b)),
                    ]
                })
                .collect::<Vec<_>>()
        };
        out.counters(
            "edgeproxy_backend_packets_total",
            "Packets to and from a backend",
            &["addr", "direction"],
            directed(&|b| b.packets_to, &|b| b.packets_from),
        )?;
        out.counters(
            "edgeproxy_backend_bytes_total",
            "Bytes to and from a backend",
            &["addr", "direction"],
            directed(&|b| b.bytes_to, &|b| b.bytes_from),
        )?;
        for (name, help, f) in [
            (
                "edgeproxy_backend_new_flows_total",
                "Connections given to a backend",
                &(|b: &counters::BackendRow| b.new_flows) as &dyn Fn(&counters::BackendRow) -> u64,
            ),
            (
                "edgeproxy_backend_resets_total",
                "RSTs a backend sent",
                &|b| b.resets_from,
            ),
            (
                "edgeproxy_backend_syn_acks_total",
                "Connections a backend answered with a SYN-ACK",
                &|b| b.syn_acks,
            ),
            (
                "edgeproxy_backend_refused_total",
                "Connections a backend refused (a RST before any SYN-ACK)",
                &|b| b.refused,
            ),
        ] {
            out.counters(name, help, &["addr"], per_backend(f))?;
        }
        let as_f64 = |v: Vec<(Vec<String>, u64)>| {
            v.into_iter()
                .map(|(l, v)| (l, v as f64))
                .collect::<Vec<_>>()
        };
        out.gauges(
            "edgeproxy_backend_active_flows",
            "Live connections of a backend in the flow table",
            &["addr"],
            as_f64(per_backend(&|b| b.active_flows)),
        )?;
        out.gauges(
            "edgeproxy_backend_eligible",
            "1 if the kernel may give the backend new flows",
            &["addr"],
            as_f64(per_backend(&|b| u64::from(b.eligible))),
        )?;
        let d = &nat.drops;
        out.counters(
            "edgeproxy_drops_total",
            "Packets for services that were dropped or not translated, by reason",
            &["reason"],
            [
                ("no_backend", d.no_backend),
                ("port_exhausted", d.port_exhausted),
                ("flow_insert", d.flow_insert),
                ("unsupported", d.unsupported),
                ("resize_failed", d.resize_failed),
                ("redirect_failed", d.redirect_failed),
                ("no_flow", d.no_flow),
                ("out_of_window", d.out_of_window),
                ("recovered", d.recovered),
                ("displaced", d.displaced),
                ("recovery_missed", d.recovery_missed),
                ("icmp_no_flow", d.icmp_no_flow),
                ("icmp_bad_quote", d.icmp_bad_quote),
                ("icmp_out_of_window", d.icmp_out_of_window),
                ("icmp_rate_limited", d.icmp_rate_limited),
                ("icmp_untranslatable", d.icmp_untranslatable),
            ]
            .into_iter()
            .map(|(reason, v)| (vec![reason.to_owned()], v))
            .collect(),
        )?;
        out.counters(
            "edgeproxy_icmp_translated_total",
            "ICMP errors about live flows translated and delivered, by destination (refusals are \
             in edgeproxy_drops_total)",
            &["to"],
            vec![
                (vec!["backend".to_owned()], d.icmp_to_backend),
                (vec!["client".to_owned()], d.icmp_to_client),
            ],
        )?;
        out.gauges(
            "edgeproxy_flow_table_entries",
            "Flow table entries (each connection takes two)",
            &[],
            vec![(vec![], nat.flow_entries as f64)],
        )?;
        out.gauges(
            "edgeproxy_flow_table_capacity",
            "Flow table size",
            &[],
            vec![(vec![], f64::from(nat.flow_capacity))],
        )?;
        out.gauges(
            "edgeproxy_half_open_entries",
            "Entries of connections whose client has not completed the handshake (a SYN flood \
             fills this table, not the flow table)",
            &[],
            vec![(vec![], nat.half_open_entries as f64)],
        )?;
    }
    Ok(())
}
