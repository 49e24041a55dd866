//! The agents' own view, read the way an operator reads it: `edge-agent status`, `backends`
//! and `wg show` as JSON, the shared state's `health` rows, and `dig` against a POP's
//! `.internal` DNS.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::{
    plan::{members, POPS},
    state::{self, HealthRow},
    world::World,
};

/// Names asked of each POP's DNS, with the record type.
pub const DNS_NAMES: [(&str, &str); 4] = [
    ("web.services.internal", "AAAA"),
    ("regions.web.services.internal", "TXT"),
    ("sa.pops.internal", "AAAA"),
    ("br.instances.internal", "AAAA"),
];

#[derive(Default)]
pub struct Observed {
    /// Per POP: `status --output json` (None while its agent is down).
    pub status: Vec<Option<Value>>,
    /// Per POP: `backends --output json` rows.
    pub backends: Vec<Vec<Value>>,
    /// Per 6PN member: its `sixpn` status (a POP's from its status, a host's from `wg show`).
    pub mesh: Vec<Option<Value>>,
    /// Per name of `DNS_NAMES`, as the first live POP answers it: (POP id, answer).
    pub dns: Vec<(String, String)>,
    pub health: Vec<HealthRow>,
    pub errors: Vec<String>,
    slow_at: Option<Instant>,
    mesh_at: Option<Instant>,
    dns_at: Option<Instant>,
}

impl Observed {
    /// Refreshes what is due: the state's health rows every call (cheap, and what events are
    /// timed by), the agents' reports every second, the mesh every 2 s, DNS every 3 s.
    pub fn refresh(&mut self, world: &World) {
        self.errors.clear();
        match state::health(&world.db) {
            Ok(rows) => self.health = rows,
            Err(e) => self.errors.push(format!("health rows: {e:#}")),
        }
        let due = |at: Option<Instant>, every: Duration| at.is_none_or(|t| t.elapsed() >= every);
        if due(self.slow_at, Duration::from_secs(1)) {
            self.slow_at = Some(Instant::now());
            self.status.clear();
            self.backends.clear();
            for (i, pop) in POPS.iter().enumerate() {
                let alive = world.pop_agents[i].is_some();
                self.status.push(
                    alive
                        .then(|| self.json(world, pop.ns, &["status"]))
                        .flatten(),
                );
                let rows = alive
                    .then(|| self.json(world, pop.ns, &["backends"]))
                    .flatten();
                self.backends
                    .push(rows.and_then(|r| r.as_array().cloned()).unwrap_or_default());
            }
        }
        if due(self.mesh_at, Duration::from_secs(2)) {
            self.mesh_at = Some(Instant::now());
            self.mesh = members()
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    if m.pop {
                        self.status
                            .get(i)
                            .and_then(Option::as_ref)
                            .map(|s| s["agent"]["sixpn"].clone())
                    } else {
                        self.json(world, m.ns, &["wg", "show"])
                    }
                })
                .collect();
        }
        if due(self.dns_at, Duration::from_secs(3)) {
            self.dns_at = Some(Instant::now());
            self.dns = DNS_NAMES
                .iter()
                .map(|(name, kind)| ask_dns(world, name, kind))
                .collect();
        }
    }

    fn json(&self, world: &World, ns: &str, args: &[&str]) -> Option<Value> {
        let mut argv = args.to_vec();
        argv.extend(["--output", "json"]);
        let out = world.cli(ns, &argv).ok()?;
        serde_json::from_str(&out).ok()
    }

    /// POP `pop`'s health row of `backend`.
    pub fn health_of(&self, pop: usize, backend: &str) -> Option<&HealthRow> {
        self.health
            .iter()
            .find(|h| h.pop_id == POPS[pop].id && h.backend_id == backend)
    }

    /// POP `pop`'s `backends` report row of `backend`.
    pub fn report_of(&self, pop: usize, backend: &str) -> Option<&Value> {
        self.backends
            .get(pop)?
            .iter()
            .find(|r| r["id"].as_str() == Some(backend))
    }
}

/// `dig` in the first live POP's namespace against its own DNS listener.
fn ask_dns(world: &World, name: &str, kind: &str) -> (String, String) {
    let Some(i) = world.pop_agents.iter().position(Option::is_some) else {
        return ("-".to_owned(), "no POP running".to_owned());
    };
    let out = world.lab.ns(POPS[i].ns).exec(&[
        "dig",
        "+short",
        "+time=1",
        "+tries=1",
        "@127.0.0.1",
        name,
        kind,
    ]);
    let answer = match out {
        Ok(o) if o.success() => {
            let lines: Vec<&str> = o.stdout.lines().map(str::trim).collect();
            if lines.is_empty() {
                "(no records)".to_owned()
            } else {
                lines.join("  ")
            }
        }
        Ok(o) => format!("dig failed: {}", o.stdout.trim()),
        Err(e) => format!("dig: {e}"),
    };
    (POPS[i].id.to_owned(), answer)
}
