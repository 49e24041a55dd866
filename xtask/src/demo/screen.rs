//! The one screen (ratatui): POPs and their BGP sessions, the routers' choice, clients ->
//! POP -> backend with country and tier, backends with every POP's health and flows, the 6PN
//! mesh, `.internal` DNS answers, and the acts with their timings.

use std::time::Instant;

use ratatui::{
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Cell, Paragraph, Row, Table},
    Frame,
};
use serde_json::Value;

use super::{
    events::{Event, KEYS},
    observe::Observed,
    plan::{self, members, sixpn_addr, BACKENDS, CLIENTS, ISPS, POPS, SIXPN_PREFIX, VIP, VIP_PORT},
    probe::{Outcome, Seen},
    state::unix_now,
};

/// The screen's size in text mode, and the smallest that shows every part.
pub const WIDTH: u16 = 150;
pub const HEIGHT: u16 = 56;

/// Everything a frame is drawn from.
pub struct Model<'a> {
    pub run_id: &'a str,
    pub started: Instant,
    pub world_up_secs: f64,
    pub state_source: &'a str,
    pub seen: &'a Seen,
    pub observed: &'a Observed,
    pub events: &'a [Event],
    pub backend_running: Vec<bool>,
    pub pop_running: Vec<bool>,
    pub drained: Vec<bool>,
    pub message: &'a str,
}

const GOOD: Style = Style::new().fg(Color::Green);
const BAD: Style = Style::new().fg(Color::Red);
const WARN: Style = Style::new().fg(Color::Yellow);
const HEAD: Style = Style::new().add_modifier(Modifier::BOLD);

pub fn draw(frame: &mut Frame, m: &Model) {
    let [head, pops, clients, backends, mesh, dns, events, keys] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Length(POPS.len() as u16 + ISPS.len() as u16 + 3),
        Constraint::Length(CLIENTS.len() as u16 + 3),
        Constraint::Length(BACKENDS.len() as u16 + 3),
        Constraint::Length(members().len() as u16 + 3),
        Constraint::Length(super::observe::DNS_NAMES.len() as u16 + 2),
        Constraint::Min(4),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    frame.render_widget(header(m), head);
    draw_pops(frame, pops, m);
    frame.render_widget(clients_table(m), clients);
    frame.render_widget(backends_table(m), backends);
    frame.render_widget(mesh_table(m), mesh);
    frame.render_widget(dns_panel(m), dns);
    frame.render_widget(events_panel(m), events);
    frame.render_widget(
        Paragraph::new(Line::from(vec![
            Span::styled(KEYS, HEAD),
            Span::raw("   "),
            Span::styled(m.message.to_owned(), WARN),
        ])),
        keys,
    );
}

fn header(m: &Model) -> Paragraph<'static> {
    Paragraph::new(vec![
        Line::from(vec![
            Span::styled("edgeProxy v2 lab ", HEAD),
            Span::raw(format!(
                "{} | up {:.0} s, ready in {:.1} s | anycast {VIP}:{VIP_PORT} from {} POPs | state: {} | 6PN {SIXPN_PREFIX}",
                m.run_id,
                m.started.elapsed().as_secs_f64(),
                m.world_up_secs,
                POPS.len(),
                m.state_source,
            )),
        ]),
        Line::from(
            "every client connects every 0.2 s; the backend greets with its name and the POP it came through; health checks every 250 ms (fast profile)",
        ),
    ])
}

fn block(title: &str) -> Block<'static> {
    Block::bordered().title(Span::styled(format!(" {title} "), HEAD))
}

fn age(secs: f64) -> String {
    if secs < 10.0 {
        format!("{secs:.1}s")
    } else if secs < 120.0 {
        format!("{secs:.0}s")
    } else {
        format!("{:.0}m", secs / 60.0)
    }
}

fn draw_pops(frame: &mut Frame, area: Rect, m: &Model) {
    let mut header = vec!["POP", "CITY", "REGION", "AGENT"];
    let peer_heads: Vec<String> = ISPS.iter().map(|i| format!("BGP {}", i.ns)).collect();
    header.extend(peer_heads.iter().map(String::as_str));
    header.extend(["VIP", "FLOWS live / total"]);
    let mut rows = Vec::new();
    for (p, pop) in POPS.iter().enumerate() {
        let status = m.observed.status.get(p).and_then(Option::as_ref);
        let bgp = status.map(|s| &s["agent"]["bgp"]);
        let agent = if !m.pop_running[p] {
            Cell::from(Span::styled("KILLED", BAD))
        } else if m.drained[p] {
            Cell::from(Span::styled("draining", WARN))
        } else if status.is_some_and(|s| s["agent_running"] == true) {
            Cell::from(Span::styled("running", GOOD))
        } else {
            Cell::from(Span::styled("starting", WARN))
        };
        let mut cells = vec![
            Cell::from(pop.id),
            Cell::from(pop.city),
            Cell::from(pop.region),
            agent,
        ];
        for isp in &ISPS {
            cells.push(session_cell(bgp, isp.ix));
        }
        let vip = bgp
            .and_then(|b| b["vips"].as_array())
            .and_then(|v| v.first())
            .map_or_else(
                || Cell::from(Span::styled("-", BAD)),
                |v| {
                    if v["announced"] == true {
                        Cell::from(Span::styled("announced", GOOD))
                    } else {
                        Cell::from(Span::styled(
                            format!("withdrawn: {}", v["reason"].as_str().unwrap_or("?")),
                            BAD,
                        ))
                    }
                },
            );
        cells.push(vip);
        let flows: u64 = m
            .observed
            .backends
            .get(p)
            .into_iter()
            .flatten()
            .filter_map(|r| r["active_flows"].as_u64())
            .sum();
        let new_flows: u64 = status
            .and_then(|s| s["backends"].as_array())
            .into_iter()
            .flatten()
            .filter_map(|b| b["new_flows"].as_u64())
            .sum();
        cells.push(Cell::from(format!("{flows} / {new_flows}")));
        rows.push(Row::new(cells));
    }
    let mut isp_lines = Vec::new();
    for (j, isp) in ISPS.iter().enumerate() {
        let (route, since) = m.seen.routes[j];
        let to = route.map_or_else(
            || Span::styled("no route to the VIP", BAD),
            |p| {
                let style = if p == isp.near_pop { GOOD } else { WARN };
                Span::styled(
                    format!(
                        "-> {} ({})",
                        POPS[p].id,
                        if p == isp.near_pop {
                            "nearest, LOCAL_PREF 200"
                        } else {
                            "farther, LOCAL_PREF 100"
                        }
                    ),
                    style,
                )
            },
        );
        isp_lines.push(Line::from(vec![
            Span::styled(format!("{} (AS{}, BIRD) ", isp.name, isp.asn), HEAD),
            Span::raw(format!("routes VIP {VIP} ")),
            to,
            Span::raw(format!(" for {}", age(since.elapsed().as_secs_f64()))),
        ]));
    }
    let widths = [
        Constraint::Length(16),
        Constraint::Length(16),
        Constraint::Length(7),
        Constraint::Length(9),
        Constraint::Length(20),
        Constraint::Length(20),
        Constraint::Length(32),
        Constraint::Min(18),
    ];
    let table = Table::new(rows, widths).header(Row::new(header).style(HEAD));
    let outer = block(
        "POPs: BGP sessions with both ISPs' routers (BFD 300 ms x 3), and the routers' choice",
    );
    let inner = outer.inner(area);
    frame.render_widget(outer, area);
    let [top, bottom] = Layout::vertical([
        Constraint::Length(POPS.len() as u16 + 1),
        Constraint::Min(1),
    ])
    .areas(inner);
    frame.render_widget(table, top);
    frame.render_widget(Paragraph::new(isp_lines), bottom);
}

/// One BGP session's state and uptime, from the POP's status.
fn session_cell(bgp: Option<&Value>, peer: &str) -> Cell<'static> {
    let Some(s) = bgp.and_then(|b| b["sessions"].as_array()).and_then(|ss| {
        ss.iter()
            .find(|s| s["peer"].as_str().is_some_and(|p| p.starts_with(peer)))
    }) else {
        return Cell::from(Span::styled("-", BAD));
    };
    let state = s["state"].as_str().unwrap_or("?").to_owned();
    let uptime = s["established_at"]
        .as_i64()
        .map(|t| format!(" {}", age((unix_now() - t) as f64)))
        .unwrap_or_default();
    let style = if state == "Established" { GOOD } else { WARN };
    Cell::from(Span::styled(format!("{state}{uptime}"), style))
}

fn clients_table(m: &Model) -> Table<'static> {
    let rows = CLIENTS.iter().enumerate().map(|(c, client)| {
        let seen = &m.seen.clients[c];
        let near = ISPS[client.isp].near_pop;
        let mut cells = vec![
            Cell::from(client.addr),
            Cell::from(client.country),
            Cell::from(client.region),
            Cell::from(ISPS[client.isp].ns),
        ];
        match &seen.last {
            Some((at, Outcome::Ok { backend, pop, rtt })) => {
                let pop_cell = match pop {
                    Some(p) if *p == near => Span::styled(POPS[*p].id, GOOD),
                    Some(p) => Span::styled(POPS[*p].id, WARN),
                    None => Span::styled("?", BAD),
                };
                let tier = BACKENDS
                    .iter()
                    .find(|b| b.id == backend)
                    .zip(*pop)
                    .map(|(b, p)| plan::tier(client, b, POPS[p].region));
                let (tier_text, style) = match tier {
                    Some(0) => ("0 same country".to_owned(), GOOD),
                    Some(1) => ("1 same region".to_owned(), GOOD),
                    Some(2) => ("2 POP's region".to_owned(), WARN),
                    Some(t) => (format!("{t} anywhere"), WARN),
                    None => ("?".to_owned(), BAD),
                };
                cells.extend([
                    Cell::from(pop_cell),
                    Cell::from(backend.clone()),
                    Cell::from(Span::styled(tier_text, style)),
                    Cell::from(format!("{:.1}", rtt.as_secs_f64() * 1000.0)),
                    Cell::from(Span::styled(
                        format!("ok {} ago", age(at.elapsed().as_secs_f64())),
                        GOOD,
                    )),
                ]);
            }
            Some((at, Outcome::Failed(e))) => {
                cells.extend([
                    Cell::from("-"),
                    Cell::from("-"),
                    Cell::from("-"),
                    Cell::from("-"),
                    Cell::from(Span::styled(
                        format!("FAILED {} ago: {e}", age(at.elapsed().as_secs_f64())),
                        BAD,
                    )),
                ]);
            }
            None => cells.push(Cell::from("waiting for the first probe")),
        }
        cells.push(Cell::from(format!("{}/{}", seen.ok, seen.failed)));
        Row::new(cells)
    });
    let widths = [
        Constraint::Length(11),
        Constraint::Length(3),
        Constraint::Length(7),
        Constraint::Length(6),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(15),
        Constraint::Length(7),
        Constraint::Length(34),
        Constraint::Min(10),
    ];
    Table::new(rows, widths)
        .header(
            Row::new([
                "CLIENT", "CC", "REGION", "ISP", "POP", "BACKEND", "TIER", "RTT ms", "LAST",
                "OK/FAIL",
            ])
            .style(HEAD),
        )
        .block(block(
            "Clients -> POP -> backend (the backend's greeting says which POP carried it)",
        ))
}

fn backends_table(m: &Model) -> Table<'static> {
    let mut header = vec![
        "BACKEND".to_owned(),
        "REGION".to_owned(),
        "CC".to_owned(),
        "6PN ADDRESS".to_owned(),
        "PROCESS".to_owned(),
    ];
    for pop in &POPS {
        header.push(format!("{}: HEALTH", pop.id));
        header.push("CHECKED".to_owned());
        header.push("FLOWS".to_owned());
    }
    let rows = BACKENDS.iter().enumerate().map(|(b, backend)| {
        let mut cells = vec![
            Cell::from(backend.id),
            Cell::from(backend.region),
            Cell::from(backend.country),
            Cell::from(format!(
                "[{}]:{}",
                sixpn_addr(backend.region, backend.host_number),
                plan::BACKEND_PORT
            )),
            if m.backend_running[b] {
                Cell::from(Span::styled("running", GOOD))
            } else {
                Cell::from(Span::styled("KILLED", BAD))
            },
        ];
        for p in 0..POPS.len() {
            let report = m.observed.report_of(p, backend.id);
            let health = m.observed.health_of(p, backend.id);
            let status = health.map_or("-", |h| h.status.as_str());
            let style = match status {
                "up" => GOOD,
                "down" => BAD,
                _ => WARN,
            };
            let rtt = health
                .and_then(|h| h.rtt_us)
                .map(|us| format!(" {:.1}ms", us as f64 / 1000.0))
                .unwrap_or_default();
            let checked = health.filter(|h| h.checked_at > 0).map_or_else(
                || "never".to_owned(),
                |h| format!("{} ago", age((unix_now() - h.checked_at) as f64)),
            );
            let flows = report
                .and_then(|r| r["active_flows"].as_u64())
                .map_or_else(|| "-".to_owned(), |n| n.to_string());
            cells.push(Cell::from(Span::styled(format!("{status}{rtt}"), style)));
            cells.push(Cell::from(checked));
            cells.push(Cell::from(flows));
        }
        Row::new(cells)
    });
    let mut widths = vec![
        Constraint::Length(8),
        Constraint::Length(7),
        Constraint::Length(3),
        Constraint::Length(34),
        Constraint::Length(8),
    ];
    for _ in &POPS {
        widths.extend([
            Constraint::Length(16),
            Constraint::Length(9),
            Constraint::Length(6),
        ]);
    }
    Table::new(rows, widths)
        .header(Row::new(header).style(HEAD))
        .block(block(
            "Backends: each POP's health view (written to the shared state) and live flows",
        ))
}

fn mesh_table(m: &Model) -> Table<'static> {
    let rows = members().into_iter().enumerate().map(|(i, member)| {
        let status = m.observed.mesh.get(i).and_then(Option::as_ref);
        let mut cells = vec![
            Cell::from(member.id.clone()),
            Cell::from(if member.pop { "POP" } else { "host" }),
            Cell::from(member.region),
            Cell::from(sixpn_addr(member.region, member.host_number)),
        ];
        match status {
            Some(s) => {
                let peers = s["peers"].as_array().cloned().unwrap_or_default();
                let ages: Vec<f64> = peers
                    .iter()
                    .filter_map(|p| p["last_handshake_secs_ago"].as_f64())
                    .collect();
                // WireGuard handshakes only where traffic flows (POPs to hosts), and again
                // every 2 minutes while it does.
                let fresh = ages.iter().filter(|a| **a < 180.0).count();
                let style = if fresh > 0 { GOOD } else { WARN };
                let (rx, tx) = peers.iter().fold((0, 0), |(rx, tx), p| {
                    (
                        rx + p["rx_bytes"].as_u64().unwrap_or(0),
                        tx + p["tx_bytes"].as_u64().unwrap_or(0),
                    )
                });
                let newest = ages
                    .iter()
                    .copied()
                    .reduce(f64::min)
                    .map_or_else(|| "-".to_owned(), age);
                let oldest = ages
                    .iter()
                    .copied()
                    .reduce(f64::max)
                    .map_or_else(|| "-".to_owned(), age);
                cells.extend([
                    Cell::from(implementation(s["implementation"].as_str().unwrap_or("?"))),
                    Cell::from(Span::styled(
                        format!("{} peers, {fresh} live", peers.len()),
                        style,
                    )),
                    Cell::from(format!("{newest} / {oldest}")),
                    Cell::from(format!("{} / {}", kib(rx), kib(tx))),
                ]);
            }
            None => cells.push(Cell::from(Span::styled("no status (agent down?)", BAD))),
        }
        Row::new(cells)
    });
    let widths = [
        Constraint::Length(10),
        Constraint::Length(5),
        Constraint::Length(7),
        Constraint::Length(28),
        Constraint::Length(22),
        Constraint::Length(16),
        Constraint::Length(18),
        Constraint::Min(20),
    ];
    Table::new(rows, widths)
        .header(
            Row::new([
                "MEMBER",
                "ROLE",
                "REGION",
                "6PN ADDRESS",
                "WIREGUARD",
                "PEERS",
                "HANDSHAKE new/old",
                "RX / TX",
            ])
            .style(HEAD),
        )
        .block(block(
            "6PN mesh: WireGuard peers the agents keep from the pops rows",
        ))
}

/// The WireGuard in use, short: the agent says why at length (`edge-agent wg show`).
fn implementation(text: &str) -> String {
    if text.contains("wireguard-go") {
        "userspace wireguard-go".to_owned()
    } else {
        text.split(" (").next().unwrap_or(text).to_owned()
    }
}

fn kib(bytes: u64) -> String {
    format!("{:.0} KiB", bytes as f64 / 1024.0)
}

fn dns_panel(m: &Model) -> Paragraph<'static> {
    let lines: Vec<Line> = super::observe::DNS_NAMES
        .iter()
        .zip(m.observed.dns.iter())
        .map(|((name, kind), (pop, answer))| {
            Line::from(vec![
                Span::styled(format!("{name} {kind}"), HEAD),
                Span::raw(format!(" @{pop}: {answer}")),
            ])
        })
        .collect();
    Paragraph::new(lines).block(block(
        ".internal DNS, answered by a POP from the same state",
    ))
}

fn events_panel(m: &Model) -> Paragraph<'static> {
    let mut lines: Vec<Line> = m
        .events
        .iter()
        .rev()
        .map(|e| {
            let style = if e.error.is_some() {
                BAD
            } else if e.done() {
                GOOD
            } else {
                WARN
            };
            Line::from(Span::styled(e.summary(), style))
        })
        .collect();
    for e in &m.observed.errors {
        lines.push(Line::from(Span::styled(e.clone(), BAD)));
    }
    if lines.is_empty() {
        lines.push(Line::from(
            "no acts yet: press a key below; each act's consequences are timed here",
        ));
    }
    Paragraph::new(lines).block(block("Acts and what they took (newest first)"))
}

/// A drawn buffer as plain text lines (text mode and the screenshot).
pub fn buffer_text(buffer: &ratatui::buffer::Buffer) -> String {
    let width = usize::from(buffer.area.width);
    let mut out = String::new();
    for row in buffer.content.chunks(width.max(1)) {
        let line: String = row.iter().map(|c| c.symbol()).collect();
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
