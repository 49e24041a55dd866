//! The Prometheus endpoint (`GET /metrics` on `[metrics] listen`): the data plane's counters,
//! read from the pinned maps at each scrape, and what the agent knows (health, state source),
//! as it last published it.
//!
//! The `prometheus` crate encodes it in the classic text format (0.0.4), which every scraper
//! and `promtool check metrics` read; prometheus-client's OpenMetrics text was tried first, and
//! promtool reads its counter families as help-less ones. Each scrape fills a fresh registry
//! with the values read: the figures live in the kernel and the agent, not in the registry.
//!
//! Kernel counters are labelled by what the kernel knows: a backend's overlay endpoint
//! (`addr`); `edgeproxy_backend_info{backend,service,addr}` joins them to state's ids.

use std::{collections::BTreeMap, net::SocketAddr, sync::Mutex};

use prometheus::{Encoder as _, GaugeVec, IntCounterVec, Opts, Registry, TextEncoder};
use serde::{Deserialize, Serialize};

use crate::{dataplane::maps::counters, dataplane::pins::PinDir};

/// The `[metrics]` section of the agent's config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Where `/metrics` is served; none: off.
    pub listen: Option<SocketAddr>,
    /// Connections, timeouts (`[metrics.limits]`; see `crate::listen`).
    pub limits: crate::listen::ConnLimits<crate::listen::MetricsDefaults>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 9469))),
            limits: crate::listen::ConnLimits::default(),
        }
    }
}

/// One backend as the agent sees it.
#[derive(Clone, Debug, Default)]
pub struct BackendView {
    pub service: String,
    /// `[addr]:port`, as the kernel counters are labelled.
    pub addr: String,
    pub status: &'static str,
    pub rtt_seconds: Option<f64>,
    pub checks: u64,
    pub failures: u64,
}

/// What the agent publishes for scrapes (once a second).
#[derive(Clone, Debug, Default)]
pub struct AgentView {
    pub backends: BTreeMap<String, BackendView>,
    /// `vip:port` -> service id.
    pub services: BTreeMap<String, String>,
    pub state_source: String,
    pub state_stale_seconds: Option<f64>,
    pub rejected_rows: u64,
    pub health_checks: u64,
    pub health_transitions: u64,
    pub start_time_seconds: f64,
    /// BGP sessions and VIPs, when the speaker runs.
    pub bgp_sessions: Vec<crate::bgp::session::PeerStatus>,
    pub bgp_vips: Vec<crate::bgp::routes::VipState>,
    pub bgp_bfd_dropped: BTreeMap<&'static str, u64>,
    /// The country database the tries hold.
    pub geo: crate::geo::GeoInForce,
}

/// One scrape's registry, filled family by family.
struct Scrape {
    registry: Registry,
}

impl Scrape {
    fn counters(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
        samples: Vec<(Vec<String>, u64)>,
    ) -> prometheus::Result<()> {
        let family = IntCounterVec::new(Opts::new(name, help), labels)?;
        for (values, v) in samples {
            let values: Vec<&str> = values.iter().map(String::as_str).collect();
            family.get_metric_with_label_values(&values)?.inc_by(v);
        }
        self.registry.register(Box::new(family))
    }

    fn gauges(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
        samples: Vec<(Vec<String>, f64)>,
    ) -> prometheus::Result<()> {
        let family = GaugeVec::new(Opts::new(name, help), labels)?;
        for (values, v) in samples {
            let values: Vec<&str> = values.iter().map(String::as_str).collect();
            family.get_metric_with_label_values(&values)?.set(v);
        }
        self.registry.register(Box::new(family))
    }
}

/// Reads everything and renders `/metrics` (blocking: bpf syscalls and a flow table walk).
pub fn render(pins: &PinDir, view: &Mutex<AgentView>) -> prometheus::Result<String> {
    let view = view.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let out = Scrape {
        registry: Registry::new(),
    };
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
    out.gauges(
        "edgeproxy_backend_info",
        "A backend of state and the overlay endpoint its kernel counters are labelled by",
        &["backend", "service", "addr"],
        view.backends
            .iter()
            .map(|(id, b)| (vec![id.clone(), b.service.clone(), b.addr.clone()], 1.0))
            .collect(),
    )?;
    out.gauges(
        "edgeproxy_backend_health",
        "1 for the backend's health status in this POP's view (unknown, up, degraded, down)",
        &["backend", "status"],
        view.backends
            .iter()
            .flat_map(|(id, b)| {
                ["unknown", "up", "degraded", "down"].map(|status| {
                    (
                        vec![id.clone(), status.to_owned()],
                        f64::from(u8::from(b.status == status)),
                    )
                })
            })
            .collect(),
    )?;
    out.gauges(
        "edgeproxy_backend_check_rtt_seconds",
        "Smoothed round-trip time of the backend's health checks",
        &["backend"],
        view.backends
            .iter()
            .filter_map(|(id, b)| Some((vec![id.clone()], b.rtt_seconds?)))
            .collect(),
    )?;
    out.counters(
        "edgeproxy_backend_checks_total",
        "Health checks of the backend",
        &["backend"],
        view.backends
            .iter()
            .map(|(id, b)| (vec![id.clone()], b.checks))
            .collect(),
    )?;
    out.counters(
        "edgeproxy_backend_check_failures_total",
        "Failed health checks of the backend",
        &["backend"],
        view.backends
            .iter()
            .map(|(id, b)| (vec![id.clone()], b.failures))
            .collect(),
    )?;
    out.counters(
        "edgeproxy_health_transitions_total",
        "Backend health status changes",
        &[],
        vec![(vec![], view.health_transitions)],
    )?;
    out.gauges(
        "edgeproxy_state_source_info",
        "Where the agent reads its state",
        &["source"],
        vec![(vec![view.state_source.clone()], 1.0)],
    )?;
    if let Some(stale) = view.state_stale_seconds {
        out.gauges(
            "edgeproxy_state_staleness_seconds",
            "How far behind the state may be (0 while known current)",
            &[],
            vec![(vec![], stale)],
        )?;
    }
    let geo = &view.geo;
    let source = serde_json::to_value(&geo.source)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    out.gauges(
        "edgeproxy_geo_database_info",
        "The country database in force: where from (file, pinned by a previous agent, none), its path and type",
        &["source", "path", "database_type"],
        vec![(
            vec![
                source,
                geo.path.clone().unwrap_or_default(),
                geo.database_type.clone().unwrap_or_default(),
            ],
            1.0,
        )],
    )?;
    out.gauges(
        "edgeproxy_geo_networks",
        "Networks in the geo tries",
        &[],
        vec![(vec![], geo.networks as f64)],
    )?;
    out.gauges(
        "edgeproxy_geo_countries",
        "Countries with a class of their own",
        &[],
        vec![(vec![], geo.countries as f64)],
    )?;
    out.gauges(
        "edgeproxy_geo_loaded_timestamp_seconds",
        "When the database in force was put in force",
        &[],
        vec![(vec![], geo.since as f64)],
    )?;
    if let Some(epoch) = geo.build_epoch {
        out.gauges(
            "edgeproxy_geo_build_timestamp_seconds",
            "The build time a MaxMind DB's metadata gives",
            &[],
            vec![(vec![], epoch as f64)],
        )?;
    }
    out.gauges(
        "edgeproxy_geo_refused",
        "1 while the last database file offered was refused (the one in force stays)",
        &[],
        vec![(vec![], if geo.refused.is_some() { 1.0 } else { 0.0 })],
    )?;
    out.counters(
        "edgeproxy_state_rejected_rows_total",
        "State rows rejected since start",
        &[],
        vec![(vec![], view.rejected_rows)],
    )?;
    let (sent, failed) = crate::dataplane::backend_reset::totals();
    out.counters(
        "edgeproxy_drain_resets_total",
        "RSTs the agent sent to backends for connections it ended (drain timeout), by result",
        &["result"],
        vec![
            (vec!["sent".to_owned()], sent),
            (vec!["failed".to_owned()], failed),
        ],
    )?;
    bgp(&out, &view)?;
    listeners(&out)?;
    out.gauges(
        "edgeproxy_agent_start_time_seconds",
        "When the agent started (Unix time)",
        &[],
        vec![(vec![], view.start_time_seconds)],
    )?;
    let mut text = Vec::new();
    TextEncoder::new().encode(&out.registry.gather(), &mut text)?;
    String::from_utf8(text).map_err(|e| prometheus::Error::Msg(e.to_string()))
}

/// The agent's own servers (one gate per listening address, `crate::listen`), repeated log
/// lines suppressed, and the process's files and memory: what shows an attack on the agent
/// itself (issue 18).
fn listeners(out: &Scrape) -> prometheus::Result<()> {
    let gates = crate::listen::all_stats();
    let per_gate = |f: &dyn Fn(&crate::listen::GateStats) -> u64| {
        gates
            .iter()
            .map(|g| (vec![g.name.clone()], f(g)))
            .collect::<Vec<_>>()
    };
    let as_f64 = |v: Vec<(Vec<String>, u64)>| {
        v.into_iter()
            .map(|(l, v)| (l, v as f64))
            .collect::<Vec<_>>()
    };
    let listener = ["listener"];
    out.gauges(
        "edgeproxy_listener_connections",
        "Connections open on one of the agent's listeners",
        &listener,
        as_f64(per_gate(&|g| g.open)),
    )?;
    out.gauges(
        "edgeproxy_listener_connections_max",
        "The listener's connection cap (after the open-files budget)",
        &listener,
        as_f64(per_gate(&|g| g.max)),
    )?;
    out.counters(
        "edgeproxy_listener_accepted_total",
        "Connections the listener admitted",
        &listener,
        per_gate(&|g| g.accepted),
    )?;
    out.counters(
        "edgeproxy_listener_refused_total",
        "Connections refused at once: every slot busy (full) or the source at its share (source)",
        &["listener", "reason"],
        gates
            .iter()
            .flat_map(|g| {
                [
                    (vec![g.name.clone(), "full".to_owned()], g.refused_full),
                    (vec![g.name.clone(), "source".to_owned()], g.refused_source),
                ]
            })
            .collect(),
    )?;
    out.counters(
        "edgeproxy_listener_evicted_total",
        "Idle connections closed to make room for a new one",
        &listener,
        per_gate(&|g| g.evicted),
    )?;
    out.counters(
        "edgeproxy_listener_timeouts_total",
        "Connections closed, or requests answered 408, at a header or request timeout",
        &listener,
        per_gate(&|g| g.timeouts),
    )?;
    out.counters(
        "edgeproxy_listener_accept_errors_total",
        "Failed accepts (EMFILE: the process is out of files)",
        &listener,
        per_gate(&|g| g.accept_errors),
    )?;
    out.counters(
        "edgeproxy_log_lines_suppressed_total",
        "Warning and error lines not logged because the same line came too often",
        &[],
        vec![(vec![], crate::process::log_limit::suppressed_total())],
    )?;
    out.gauges(
        "edgeproxy_process_open_fds",
        "Files the agent has open",
        &[],
        vec![(vec![], crate::listen::budget::open_files() as f64)],
    )?;
    if let Ok(limit) = crate::listen::budget::file_limit() {
        out.gauges(
            "edgeproxy_process_max_fds",
            "The agent's open-files limit (soft)",
            &[],
            vec![(vec![], limit.soft as f64)],
        )?;
    }
    if let Some(bytes) = resident_bytes() {
        out.gauges(
            "edgeproxy_process_resident_memory_bytes",
            "The agent's resident memory",
            &[],
            vec![(vec![], bytes as f64)],
        )?;
    }
    Ok(())
}

/// VmRSS from /proc/self/status.
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Scrapes rendered at once. A render walks the flow table on a blocking thread: without a
/// bound, concurrent scrapes would each hold a thread and a copy of the figures.
const RENDERS_IN_FLIGHT: usize = 2;

/// The `/metrics` endpoint.
pub fn router(pins: PinDir, view: std::sync::Arc<Mutex<AgentView>>) -> axum::Router {
    use axum::response::IntoResponse as _;
    let renders = std::sync::Arc::new(tokio::sync::Semaphore::new(RENDERS_IN_FLIGHT));
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let (pins, view, renders) = (
                pins.clone(),
                std::sync::Arc::clone(&view),
                std::sync::Arc::clone(&renders),
            );
            async move {
                let Ok(_slot) = renders.acquire().await else {
                    return axum::http::StatusCode::SERVICE_UNAVAILABLE.into_response();
                };
                // Reading the maps is blocking work (bpf syscalls, a flow table walk).
                match tokio::task::spawn_blocking(move || render(&pins, &view)).await {
                    Ok(Ok(text)) => (
                        [(axum::http::header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
                        text,
                    )
                        .into_response(),
                    _ => axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response(),
                }
            }
        }),
    )
}

/// The BGP speaker's sessions (one state gauge per RFC 4271 state, as node_exporter does for
/// systemd units) and whether each VIP is announced.
fn bgp(out: &Scrape, view: &AgentView) -> prometheus::Result<()> {
    use crate::bgp::session::State;
    const STATES: [State; 6] = [
        State::Idle,
        State::Connect,
        State::Active,
        State::OpenSent,
        State::OpenConfirm,
        State::Established,
    ];
    if view.bgp_sessions.is_empty() {
        return Ok(());
    }
    out.gauges(
        "edgeproxy_bgp_session_state",
        "1 for the BGP session's current state",
        &["peer", "state"],
        view.bgp_sessions
            .iter()
            .flat_map(|p| {
                STATES.map(|st| {
                    (
                        vec![p.peer.to_string(), st.as_str().to_owned()],
                        f64::from(u8::from(p.state == st)),
                    )
                })
            })
            .collect(),
    )?;
    out.gauges(
        "edgeproxy_bgp_prefixes_announced",
        "Prefixes announced to the peer",
        &["peer"],
        view.bgp_sessions
            .iter()
            .map(|p| (vec![p.peer.to_string()], p.prefixes_announced as f64))
            .collect(),
    )?;
    out.counters(
        "edgeproxy_bgp_prefixes_received_total",
        "Prefixes the peer announced to this speaker (read, not used)",
        &["peer"],
        view.bgp_sessions
            .iter()
            .map(|p| (vec![p.peer.to_string()], p.prefixes_received))
            .collect(),
    )?;
    out.counters(
        "edgeproxy_bgp_sessions_established_total",
        "Times the session reached Established",
        &["peer"],
        view.bgp_sessions
            .iter()
            .map(|p| (vec![p.peer.to_string()], p.established_count))
            .collect(),
    )?;
    for f in crate::bgp::metrics::families(&view.bgp_sessions, &view.bgp_bfd_dropped) {
        match f.kind {
            crate::bgp::metrics::Kind::Gauge => out.gauges(f.name, f.help, f.labels, f.samples)?,
            crate::bgp::metrics::Kind::Counter => out.counters(
                f.name,
                f.help,
                f.labels,
                f.samples.into_iter().map(|(l, v)| (l, v as u64)).collect(),
            )?,
        }
    }
    out.gauges(
        "edgeproxy_bgp_vip_announced",
        "1 while the VIP is announced",
        &["vip", "prefix"],
        view.bgp_vips
            .iter()
            .map(|v| {
                (
                    vec![v.vip.to_string(), v.prefix.to_string()],
                    f64::from(u8::from(v.announced)),
                )
            })
            .collect(),
    )
}
