//! Passive health signals from the data plane's per-backend counters (`BACKEND_STATS`): the
//! kernel counts new flows, SYN-ACKs and refusals (a RST instead of a SYN-ACK) once per flow;
//! the agent reads them every `passive.interval_ms` and turns their movement into suspicions.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

/// One backend's cumulative counters, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sample {
    pub new_flows: u64,
    pub syn_acks: u64,
    pub refused: u64,
}

#[derive(Clone, Copy, Debug, Default)]
struct Watch {
    last: Sample,
    /// When new flows started to go unanswered (no SYN-ACK or RST since).
    unanswered_since: Option<Instant>,
    unanswered: u64,
}

/// Why a backend became suspect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Signal {
    Refused(u64),
    Unanswered { flows: u64, for_ms: u128 },
}

impl std::fmt::Display for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Signal::Refused(n) => write!(f, "refused {n} new connection(s) with a RST"),
            Signal::Unanswered { flows, for_ms } => {
                write!(
                    f,
                    "{flows} new connection(s) without any answer for {for_ms} ms"
                )
            }
        }
    }
}

/// Keyed by the kernel's backend id.
#[derive(Debug, Default)]
pub struct Passive {
    watches: HashMap<u32, Watch>,
}

impl Passive {
    /// Feeds one reading of every backend's counters; returns the backends that became
    /// suspect. Backends missing from `samples` are forgotten.
    pub fn observe(
        &mut self,
        samples: &HashMap<u32, Sample>,
        deadline: Duration,
        now: Instant,
    ) -> Vec<(u32, Signal)> {
        self.watches.retain(|id, _| samples.contains_key(id));
        let mut signals = Vec::new();
        for (&id, &sample) in samples {
            let Some(w) = self.watches.get_mut(&id) else {
                // First sight: a baseline, nothing to compare with yet.
                self.watches.insert(
                    id,
                    Watch {
                        last: sample,
                        ..Watch::default()
                    },
                );
                continue;
            };
            // Counters only grow; a smaller one means the slot was reset (map recreated).
            let delta = |now: u64, before: u64| now.saturating_sub(before);
            let new_flows = delta(sample.new_flows, w.last.new_flows);
            let answered = delta(sample.syn_acks, w.last.syn_acks);
            let refused = delta(sample.refused, w.last.refused);
            w.last = sample;
            if refused > 0 {
                signals.push((id, Signal::Refused(refused)));
            }
            if answered + refused > 0 {
                w.unanswered_since = None;
                w.unanswered = 0;
            } else if new_flows > 0 {
                w.unanswered_since.get_or_insert(now);
                w.unanswered += new_flows;
            }
            if let Some(since) = w.unanswered_since {
                let waited = now.saturating_duration_since(since);
                if waited >= deadline {
                    signals.push((
                        id,
                        Signal::Unanswered {
                            flows: w.unanswered,
                            for_ms: waited.as_millis(),
                        },
                    ));
                    // Re-armed by the next unanswered flow: one signal per episode.
                    w.unanswered_since = None;
                    w.unanswered = 0;
                }
            }
        }
        signals.sort_by_key(|(id, _)| *id);
        signals
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(samples: &[(u32, u64, u64, u64)]) -> HashMap<u32, Sample> {
        samples
            .iter()
            .map(|&(id, new_flows, syn_acks, refused)| {
                (
                    id,
                    Sample {
                        new_flows,
                        syn_acks,
                        refused,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn unanswered_syns_past_the_deadline_make_a_backend_suspect() {
        let mut p = Passive::default();
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let deadline = Duration::from_millis(300);
        assert!(p
            .observe(&at(&[(1, 10, 10, 0), (2, 5, 5, 0)]), deadline, t0)
            .is_empty());
        // Backend 1 keeps answering; backend 2 stops.
        assert!(p
            .observe(&at(&[(1, 12, 11, 0), (2, 7, 5, 0)]), deadline, ms(100))
            .is_empty());
        assert!(p
            .observe(&at(&[(1, 14, 13, 0), (2, 8, 5, 0)]), deadline, ms(200))
            .is_empty());
        let s = p.observe(&at(&[(1, 15, 15, 0), (2, 9, 5, 0)]), deadline, ms(400));
        assert_eq!(
            s,
            vec![(
                2,
                Signal::Unanswered {
                    flows: 4,
                    for_ms: 300
                }
            )],
            "one signal, after the deadline"
        );
        assert!(p
            .observe(&at(&[(1, 15, 15, 0), (2, 9, 5, 0)]), deadline, ms(800))
            .is_empty());
    }

    #[test]
    fn a_slow_answer_is_not_a_missing_one() {
        let mut p = Passive::default();
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let deadline = Duration::from_millis(300);
        p.observe(&at(&[(1, 0, 0, 0)]), deadline, t0);
        for step in 1..20u64 {
            // Every poll sends one flow and gets the previous one answered.
            let s = p.observe(&at(&[(1, step, step - 1, 0)]), deadline, ms(step * 100));
            assert!(s.is_empty(), "step {step}: {s:?}");
        }
    }

    #[test]
    fn refusals_signal_at_once_and_resets_are_tolerated() {
        let mut p = Passive::default();
        let t0 = Instant::now();
        let deadline = Duration::from_secs(1);
        p.observe(&at(&[(3, 100, 100, 0)]), deadline, t0);
        let s = p.observe(&at(&[(3, 102, 100, 2)]), deadline, t0 + deadline / 10);
        assert_eq!(s, vec![(3, Signal::Refused(2))]);
        // The slot is reused after a restart: counters start over, no bogus signal.
        let s = p.observe(&at(&[(3, 1, 1, 0)]), deadline, t0 + deadline / 5);
        assert!(s.is_empty(), "{s:?}");
    }
}
