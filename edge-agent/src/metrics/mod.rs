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

mod bgp;
mod kernel;
mod process;

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc};

use prometheus::{Encoder as _, GaugeVec, IntCounterVec, Opts, Registry, TextEncoder};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::dataplane::pins::PinDir;

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

/// What the agent publishes for scrapes (once a second, on a watch channel).
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
pub fn render(pins: &PinDir, view: &AgentView) -> prometheus::Result<String> {
    let out = Scrape {
        registry: Registry::new(),
    };
    kernel::families(&out, pins, view)?;
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
    bgp::families(&out, view)?;
    process::families(&out)?;
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

/// Scrapes rendered at once. A render walks the flow table on a blocking thread: without a
/// bound, concurrent scrapes would each hold a thread and a copy of the figures.
const RENDERS_IN_FLIGHT: usize = 2;

/// The `/metrics` endpoint; `view` is what the agent last published of itself.
pub fn router(pins: PinDir, view: watch::Receiver<Arc<AgentView>>) -> axum::Router {
    use axum::response::IntoResponse as _;
    let renders = Arc::new(tokio::sync::Semaphore::new(RENDERS_IN_FLIGHT));
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let (pins, view, renders) = (
                pins.clone(),
                Arc::clone(&view.borrow()),
                Arc::clone(&renders),
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
