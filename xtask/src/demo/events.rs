//! Acts on the running world and how long their consequences took, as the screen reports
//! them: each act starts a clock, and each consequence (route withdrawn, health down, clients
//! moved) is timed the first time the samplers and the agents' reports show it.

use std::time::{Duration, Instant};

use super::{
    observe::Observed,
    plan::{self, BACKENDS, CLIENTS, ISPS, POPS},
    probe::{Outcome, Seen},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    KillBackend(usize),
    KillPop(usize),
    DrainPop(usize),
    Restore,
}

impl Act {
    /// A terminal key: 1-4 kill a backend, k/K kill POP sa/eu, d/D drain it, r restores.
    pub fn from_key(c: char) -> Option<Act> {
        match c {
            '1'..='4' => c
                .to_digit(10)
                .map(|d| Act::KillBackend(d as usize - 1))
                .filter(|a| matches!(a, Act::KillBackend(i) if *i < BACKENDS.len())),
            'k' => Some(Act::KillPop(0)),
            'K' => Some(Act::KillPop(1)),
            'd' => Some(Act::DrainPop(0)),
            'D' => Some(Act::DrainPop(1)),
            'r' => Some(Act::Restore),
            _ => None,
        }
    }

    /// A command line (text mode, read from stdin): `kill-backend br`, `kill-pop pop-sa`,
    /// `drain-pop pop-eu`, `restore`.
    pub fn parse(line: &str) -> Result<Act, String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let pop = |name: &str| {
            POPS.iter()
                .position(|p| p.id == name || p.region == name)
                .ok_or_else(|| format!("no POP {name}"))
        };
        match words.as_slice() {
            ["kill-backend", id] => BACKENDS
                .iter()
                .position(|b| b.id == *id)
                .map(Act::KillBackend)
                .ok_or_else(|| format!("no backend {id}")),
            ["kill-pop", p] => pop(p).map(Act::KillPop),
            ["drain-pop", p] => pop(p).map(Act::DrainPop),
            ["restore"] => Ok(Act::Restore),
            _ => Err(format!("unknown command {line:?}; {COMMANDS}")),
        }
    }

    pub fn describe(self) -> String {
        match self {
            Act::KillBackend(i) => format!("kill backend {}", BACKENDS[i].id),
            Act::KillPop(i) => format!("kill POP {}", POPS[i].id),
            Act::DrainPop(i) => format!("drain POP {}", POPS[i].id),
            Act::Restore => "restore".to_owned(),
        }
    }
}

pub const KEYS: &str = "keys: 1-4 kill backend br/us/de/jp | k/K kill POP sa/eu | d/D drain POP sa/eu | r restore | q quit";
pub const COMMANDS: &str =
    "commands: kill-backend ID | kill-pop POP | drain-pop POP | restore (POP: pop-sa, pop-eu)";

/// One consequence of an act, and how long after the act it was first seen.
pub struct Mark {
    pub what: &'static str,
    pub took: Option<Duration>,
}

pub struct Event {
    pub act: Act,
    pub at: Instant,
    pub wall: String,
    pub marks: Vec<Mark>,
    /// Probes that failed while the event was open.
    pub lost: u64,
    failed_before: u64,
    pub error: Option<String>,
}

impl Event {
    pub fn new(act: Act, seen: &Seen) -> Event {
        let marks = match act {
            Act::KillPop(_) | Act::DrainPop(_) => vec!["route withdrawn", "clients moved"],
            Act::KillBackend(_) => vec!["health down", "clients moved"],
            Act::Restore => vec!["routes home", "clients home"],
        };
        Event {
            act,
            at: Instant::now(),
            wall: wall_clock(),
            marks: marks
                .into_iter()
                .map(|what| Mark { what, took: None })
                .collect(),
            lost: 0,
            failed_before: failed(seen),
            error: None,
        }
    }

    pub fn done(&self) -> bool {
        self.error.is_some() || self.marks.iter().all(|m| m.took.is_some())
    }

    /// Times every consequence that holds now and was not timed yet; returns the marks it
    /// timed.
    pub fn update(&mut self, seen: &Seen, observed: &Observed) -> Vec<usize> {
        if self.done() {
            return Vec::new();
        }
        self.lost = failed(seen) - self.failed_before;
        let mut timed = Vec::new();
        for k in 0..self.marks.len() {
            if self.marks[k].took.is_some() {
                continue;
            }
            if let Some(when) = self.holds(k, seen, observed) {
                self.marks[k].took = Some(when.saturating_duration_since(self.at));
                timed.push(k);
            }
        }
        timed
    }

    /// When mark `k` became true, if it is true now.
    fn holds(&self, k: usize, seen: &Seen, observed: &Observed) -> Option<Instant> {
        match (self.act, k) {
            (Act::KillPop(p) | Act::DrainPop(p), 0) => {
                let away = seen
                    .routes
                    .iter()
                    .all(|(r, _)| r.is_some() && *r != Some(p));
                away.then(|| latest(seen.routes.iter().map(|(_, t)| *t)))?
            }
            (Act::KillBackend(b), 0) => {
                let id = BACKENDS[b].id;
                let live: Vec<usize> = (0..POPS.len())
                    .filter(|&p| observed.status.get(p).is_some_and(Option::is_some))
                    .collect();
                let down = !live.is_empty()
                    && live.iter().all(|&p| {
                        observed
                            .health_of(p, id)
                            .is_some_and(|h| h.status == "down")
                    });
                down.then(Instant::now)
            }
            (Act::KillPop(p) | Act::DrainPop(p), _) => self.all_clients(seen, |_, backend, pop| {
                pop != Some(p) && !backend.is_empty()
            }),
            (Act::KillBackend(b), _) => {
                self.all_clients(seen, |_, backend, _| backend != BACKENDS[b].id)
            }
            (Act::Restore, 0) => {
                let home = seen
                    .routes
                    .iter()
                    .enumerate()
                    .all(|(j, (r, _))| *r == Some(ISPS[j].near_pop));
                home.then(|| latest(seen.routes.iter().map(|(_, t)| *t)))?
            }
            (Act::Restore, _) => self.all_clients(seen, |c, backend, pop| {
                let near = ISPS[CLIENTS[c].isp].near_pop;
                pop == Some(near) && best_backends(c, near).contains(&backend)
            }),
        }
    }

    /// When every client's last probe, made after the act, succeeded and satisfies `ok`
    /// (client index, backend, POP): the latest of those probes.
    fn all_clients(
        &self,
        seen: &Seen,
        ok: impl Fn(usize, &str, Option<usize>) -> bool,
    ) -> Option<Instant> {
        let mut when = self.at;
        for (c, client) in seen.clients.iter().enumerate() {
            match &client.last {
                Some((t, Outcome::Ok { backend, pop, .. }))
                    if *t > self.at && ok(c, backend, *pop) =>
                {
                    when = when.max(*t);
                }
                _ => return None,
            }
        }
        Some(when)
    }

    /// One line: the act and each consequence's time.
    pub fn summary(&self) -> String {
        let mut s = format!("{} {}", self.wall, self.act.describe());
        if let Some(e) = &self.error {
            s.push_str(&format!(": failed: {e}"));
            return s;
        }
        for m in &self.marks {
            match m.took {
                Some(d) => s.push_str(&format!("; {} after {:.2} s", m.what, d.as_secs_f64())),
                None => s.push_str(&format!(
                    "; {} ... ({:.1} s)",
                    m.what,
                    self.at.elapsed().as_secs_f64()
                )),
            }
        }
        s.push_str(&format!("; probes lost: {}", self.lost));
        s
    }
}

fn failed(seen: &Seen) -> u64 {
    seen.clients.iter().map(|c| c.failed).sum()
}

fn latest(times: impl Iterator<Item = Instant>) -> Option<Instant> {
    times.max()
}

/// The backends v1's rules pick for client `c` at POP `pop` with every backend up: those of
/// the lowest tier.
pub fn best_backends(c: usize, pop: usize) -> Vec<&'static str> {
    let client = &CLIENTS[c];
    let tiers: Vec<u8> = BACKENDS
        .iter()
        .map(|b| plan::tier(client, b, POPS[pop].region))
        .collect();
    let best = tiers.iter().copied().min().unwrap_or(3);
    BACKENDS
        .iter()
        .zip(tiers)
        .filter(|(_, t)| *t == best)
        .map(|(b, _)| b.id)
        .collect()
}

/// HH:MM:SS (UTC), for the event log.
pub fn wall_clock() -> String {
    let secs = super::state::unix_now().rem_euclid(86_400);
    format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_and_keys_name_the_same_acts() {
        assert_eq!(Act::parse("kill-pop pop-sa"), Ok(Act::KillPop(0)));
        assert_eq!(Act::parse("drain-pop eu"), Ok(Act::DrainPop(1)));
        assert_eq!(Act::parse("kill-backend jp"), Ok(Act::KillBackend(3)));
        assert_eq!(Act::from_key('4'), Some(Act::KillBackend(3)));
        assert_eq!(Act::from_key('K'), Some(Act::KillPop(1)));
        assert!(Act::parse("kill-pop mars").is_err());
        assert_eq!(Act::from_key('9'), None);
    }

    #[test]
    fn clients_are_expected_on_their_own_country_or_region() {
        // BR at the sa POP: its own country's backend; AU at the eu POP: JP, its region's.
        assert_eq!(best_backends(0, 0), vec!["br"]);
        assert_eq!(best_backends(7, 1), vec!["jp"]);
    }
}
