//! One backend's health as this POP sees it: rise/fall hysteresis over check results, the
//! smoothed RTT, the recent error rate, and passive suspicion.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use serde::Serialize;

use super::spec::{DegradeConfig, Timing};
use crate::model::HealthStatus;

/// Checks before the RTT is weighed at all. Until then the estimate is the fastest of them, not
/// the first: a first probe slowed by a busy start-up (a cold connection, a loaded machine) would
/// otherwise halve a backend's share and move its flows in the POP's first seconds.
pub const RTT_WARMUP: u32 = 4;

/// A status change, to be logged once and counted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub from: HealthStatus,
    pub to: HealthStatus,
    pub reason: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Tracker {
    pub status: HealthStatus,
    /// Why the status is what it is ("" when up and quiet).
    pub reason: String,
    ok_streak: u32,
    fail_streak: u32,
    /// Smoothed RTT (TCP's SRTT: 7/8 old + 1/8 new), microseconds.
    pub srtt_us: Option<u32>,
    /// The RTT the balancer weighs: none until `RTT_WARMUP` checks passed; then follows
    /// `srtt_us` only when it moves by half and by more than 1 ms, so that jitter does not
    /// rebuild Maglev tables every second.
    pub weighed_rtt_us: Option<u32>,
    /// RTT samples taken (passed checks), up to `RTT_WARMUP`.
    rtt_samples: u32,
    /// The last `window` results, true for a failure.
    #[serde(skip)]
    recent: VecDeque<bool>,
    /// A passive signal fired and no check has passed since.
    pub suspect: bool,
    #[serde(skip)]
    pub last_check: Option<Instant>,
    pub checks: u64,
    pub failures: u64,
    pub transitions: u64,
}

/// One check's outcome.
#[derive(Clone, Debug)]
pub enum Outcome {
    Pass { rtt: Duration },
    Fail { error: String },
}

impl Tracker {
    pub fn new(status: HealthStatus, srtt_us: Option<u32>) -> Self {
        Tracker {
            status,
            reason: String::new(),
            ok_streak: 0,
            fail_streak: 0,
            srtt_us,
            weighed_rtt_us: srtt_us,
            // An RTT carried over (this POP's health row) is a warmed-up one.
            rtt_samples: if srtt_us.is_some() { RTT_WARMUP } else { 0 },
            recent: VecDeque::new(),
            suspect: false,
            last_check: None,
            checks: 0,
            failures: 0,
            transitions: 0,
        }
    }

    /// Records a check result; returns the transition it causes, if any.
    pub fn record(
        &mut self,
        outcome: &Outcome,
        timing: &Timing,
        degrade: &DegradeConfig,
        now: Instant,
    ) -> Option<Transition> {
        self.checks += 1;
        self.last_check = Some(now);
        let failed = matches!(outcome, Outcome::Fail { .. });
        self.recent.push_back(failed);
        while self.recent.len() > degrade.window.max(1) {
            self.recent.pop_front();
        }
        let (to, reason) = match outcome {
            Outcome::Pass { rtt } => {
                self.ok_streak += 1;
                self.fail_streak = 0;
                self.suspect = false;
                let sample = rtt.as_micros().min(u128::from(u32::MAX)) as u32;
                self.srtt_us = Some(match self.srtt_us {
                    Some(old) if self.rtt_samples >= RTT_WARMUP => {
                        ((u64::from(old) * 7 + u64::from(sample)) / 8) as u32
                    }
                    Some(old) => old.min(sample),
                    None => sample,
                });
                self.rtt_samples = (self.rtt_samples + 1).min(RTT_WARMUP);
                if self.status == HealthStatus::Down && self.ok_streak < timing.rise {
                    (HealthStatus::Down, self.reason.clone())
                } else {
                    match self.degraded_by(degrade) {
                        Some(reason) => (HealthStatus::Degraded, reason),
                        None => (HealthStatus::Up, String::new()),
                    }
                }
            }
            Outcome::Fail { error } => {
                self.failures += 1;
                self.fail_streak += 1;
                self.ok_streak = 0;
                if self.status == HealthStatus::Down || self.fail_streak >= timing.fall {
                    (
                        HealthStatus::Down,
                        format!("{} consecutive checks failed: {error}", self.fail_streak),
                    )
                } else if self.suspect {
                    (
                        HealthStatus::Down,
                        format!("suspect (passive signal) and its check failed: {error}"),
                    )
                } else {
                    // One failure only counts towards `fall` (as in HAProxy): a check lost to a
                    // busy moment must not move flows. The error rate degrades.
                    match self.degraded_by(degrade) {
                        Some(reason) => (HealthStatus::Degraded, format!("{reason}: {error}")),
                        None => (
                            self.status,
                            format!(
                                "{} of {} checks failed: {error}",
                                self.fail_streak, timing.fall
                            ),
                        ),
                    }
                }
            }
        };
        self.reason = reason;
        self.set(to)
    }

    /// Moves `weighed_rtt_us` to the smoothed RTT if it moved enough; true if it did.
    pub fn reweigh(&mut self) -> bool {
        let moved = match (self.srtt_us, self.weighed_rtt_us) {
            (Some(_), None) => self.rtt_samples >= RTT_WARMUP,
            (Some(srtt), Some(weighed)) => {
                let diff = srtt.abs_diff(weighed);
                diff > 1000 && diff.saturating_mul(2) > weighed
            }
            (None, _) => false,
        };
        if moved {
            self.weighed_rtt_us = self.srtt_us;
        }
        moved
    }

    /// A passive signal: the backend is suspect until a check passes.
    pub fn suspect(&mut self, why: &str) {
        self.suspect = true;
        if self.status != HealthStatus::Down {
            self.reason = format!("suspect: {why}");
        }
    }

    fn degraded_by(&self, degrade: &DegradeConfig) -> Option<String> {
        let failed = self.recent.iter().filter(|f| **f).count();
        if degrade.error_percent > 0
            && !self.recent.is_empty()
            && failed * 100 >= self.recent.len() * degrade.error_percent as usize
        {
            return Some(format!(
                "{failed} of the last {} checks failed",
                self.recent.len()
            ));
        }
        match self.srtt_us {
            Some(srtt) if degrade.rtt_ms > 0 && u64::from(srtt) > degrade.rtt_ms * 1000 => {
                Some(format!(
                    "smoothed RTT {} ms is above {} ms",
                    srtt / 1000,
                    degrade.rtt_ms
                ))
            }
            _ => None,
        }
    }

    fn set(&mut self, to: HealthStatus) -> Option<Transition> {
        if to == self.status {
            return None;
        }
        let from = std::mem::replace(&mut self.status, to);
        self.transitions += 1;
        Some(Transition {
            from,
            to,
            reason: self.reason.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMING: Timing = Timing {
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(100),
        rise: 2,
        fall: 3,
    };

    fn pass(ms: u64) -> Outcome {
        Outcome::Pass {
            rtt: Duration::from_millis(ms),
        }
    }

    fn fail() -> Outcome {
        Outcome::Fail {
            error: "connection refused".into(),
        }
    }

    fn run(t: &mut Tracker, outcomes: &[Outcome], degrade: &DegradeConfig) -> Vec<HealthStatus> {
        let now = Instant::now();
        outcomes
            .iter()
            .map(|o| {
                t.record(o, &TIMING, degrade, now);
                t.status
            })
            .collect()
    }

    #[test]
    fn fall_and_rise_follow_haproxy() {
        use HealthStatus::*;
        let quiet = DegradeConfig {
            error_percent: 0,
            ..DegradeConfig::default()
        };
        let mut t = Tracker::new(Unknown, None);
        assert_eq!(
            run(&mut t, &[pass(1), fail(), fail(), fail(), fail()], &quiet),
            [Up, Up, Up, Down, Down],
            "failures count towards fall; with the error-rate rule off nothing degrades"
        );
        assert!(
            t.reason.contains("4 consecutive checks failed"),
            "{}",
            t.reason
        );
        assert_eq!(
            run(&mut t, &[pass(1), fail(), pass(1), pass(1)], &quiet),
            [Down, Down, Down, Up],
            "rise counts consecutive successes"
        );
        assert_eq!(t.transitions, 3);
        assert_eq!((t.checks, t.failures), (9, 5));
    }

    #[test]
    fn a_failed_check_of_a_suspect_backend_takes_it_down_at_once() {
        let mut t = Tracker::new(HealthStatus::Up, None);
        t.suspect("3 SYNs unanswered");
        let tr = t.record(&fail(), &TIMING, &DegradeConfig::default(), Instant::now());
        assert_eq!(tr.map(|t| t.to), Some(HealthStatus::Down));
        let mut t = Tracker::new(HealthStatus::Up, None);
        t.suspect("refused");
        t.record(&pass(1), &TIMING, &DegradeConfig::default(), Instant::now());
        assert!(!t.suspect, "a passing check clears suspicion");
        t.record(&fail(), &TIMING, &DegradeConfig::default(), Instant::now());
        assert_eq!(t.status, HealthStatus::Degraded);
    }

    #[test]
    fn error_rate_and_rtt_degrade() {
        use HealthStatus::*;
        let degrade = DegradeConfig {
            rtt_ms: 50,
            error_percent: 30,
            window: 10,
        };
        let mut t = Tracker::new(Unknown, None);
        let mut outcomes = vec![fail(), pass(1), pass(1), fail(), pass(1), pass(1)];
        outcomes.extend(std::iter::repeat_with(|| pass(1)).take(8));
        let statuses = run(&mut t, &outcomes, &degrade);
        assert_eq!(statuses[5], Degraded, "2 of 6 failed: {:?}", t.reason);
        assert_eq!(statuses.last(), Some(&Up), "the failures left the window");
        let statuses = run(&mut t, &[pass(400), pass(400), pass(400)], &degrade);
        assert_eq!(statuses.last(), Some(&Degraded), "{}", t.reason);
        assert!(t.reason.contains("RTT"), "{}", t.reason);
        assert!(t.srtt_us.is_some_and(|s| s > 50_000));
    }

    #[test]
    fn a_slow_first_probe_is_not_weighed() {
        let mut t = Tracker::new(HealthStatus::Up, None);
        let quiet = DegradeConfig::default();
        for (i, ms) in [40, 1, 2, 1].into_iter().enumerate() {
            t.record(&pass(ms), &TIMING, &quiet, Instant::now());
            let weighed = t.reweigh();
            assert_eq!(weighed, i + 1 == RTT_WARMUP as usize, "after check {i}");
        }
        assert_eq!(t.weighed_rtt_us, Some(1000), "the fastest of the warm-up");
        // Then the usual smoothing: a slow sample moves the estimate by an eighth.
        t.record(&pass(9), &TIMING, &quiet, Instant::now());
        assert_eq!(t.srtt_us, Some(2000));
    }

    #[test]
    fn an_rtt_carried_over_is_weighed_at_once() {
        let t = Tracker::new(HealthStatus::Up, Some(3000));
        assert_eq!(t.weighed_rtt_us, Some(3000));
        let mut t = t;
        t.record(
            &pass(11),
            &TIMING,
            &DegradeConfig::default(),
            Instant::now(),
        );
        assert_eq!(t.srtt_us, Some(4000), "smoothed, not the warm-up's minimum");
    }

    #[test]
    fn the_weighed_rtt_ignores_jitter() {
        let mut t = Tracker::new(HealthStatus::Up, None);
        let quiet = DegradeConfig::default();
        let mut moves = 0;
        for ms in [1, 1, 2, 1, 1, 2, 1, 1] {
            t.record(&pass(ms), &TIMING, &quiet, Instant::now());
            moves += u32::from(t.reweigh());
        }
        assert_eq!(moves, 1, "only the warm-up's end: {:?}", t.weighed_rtt_us);
        for _ in 0..20 {
            t.record(&pass(30), &TIMING, &quiet, Instant::now());
            t.reweigh();
        }
        assert!(
            t.weighed_rtt_us.is_some_and(|w| w > 20_000),
            "{:?}",
            t.weighed_rtt_us
        );
    }
}
