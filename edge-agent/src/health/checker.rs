//! Runs the active checks: one task per backend, at most `concurrency` probes in flight, each
//! first fired at a random point of its interval and later ones jittered, so that thousands of
//! checks spread evenly instead of firing together. Results go to the agent over a channel.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{
    sync::{mpsc, Notify, Semaphore},
    task::JoinHandle,
};

use super::{
    probe::{probe, Target},
    spec::Timing,
    tracker::Outcome,
};

/// One finished check.
#[derive(Debug)]
pub struct CheckResult {
    pub backend_id: String,
    /// The timing the check ran with (its rise and fall apply).
    pub timing: Timing,
    pub outcome: Outcome,
    pub at: Instant,
}

struct Running {
    target: Target,
    timing: Timing,
    task: JoinHandle<()>,
    /// Wakes the task for an immediate check (a passive signal).
    now: Arc<Notify>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub struct Checker {
    running: HashMap<String, Running>,
    results: mpsc::UnboundedSender<CheckResult>,
    limit: Arc<Semaphore>,
    commands: Arc<BTreeMap<String, Vec<String>>>,
    jitter_percent: u32,
}

impl Checker {
    /// Must be called inside a tokio runtime, which runs the checks.
    pub fn new(
        concurrency: usize,
        jitter_percent: u32,
        commands: BTreeMap<String, Vec<String>>,
    ) -> (Self, mpsc::UnboundedReceiver<CheckResult>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Checker {
                running: HashMap::new(),
                results: tx,
                limit: Arc::new(Semaphore::new(concurrency.max(1))),
                commands: Arc::new(commands),
                jitter_percent,
            },
            rx,
        )
    }

    /// Checks exactly `targets` from now on: new ones start, changed ones restart, others stop.
    /// Unchanged ones keep their rhythm.
    pub fn set_targets(&mut self, targets: Vec<(Target, Timing)>) {
        let wanted: HashMap<String, (Target, Timing)> = targets
            .into_iter()
            .map(|(t, timing)| (t.backend_id.clone(), (t, timing)))
            .collect();
        self.running.retain(|id, r| {
            wanted
                .get(id)
                .is_some_and(|(t, timing)| *t == r.target && *timing == r.timing)
        });
        for (id, (target, timing)) in wanted {
            if self.running.contains_key(&id) {
                continue;
            }
            let now = Arc::new(Notify::new());
            let task = tokio::spawn(check_loop(
                target.clone(),
                timing,
                self.jitter_percent,
                Arc::clone(&self.limit),
                Arc::clone(&self.commands),
                Arc::clone(&now),
                self.results.clone(),
            ));
            self.running.insert(
                id,
                Running {
                    target,
                    timing,
                    task,
                    now,
                },
            );
        }
    }

    /// Checks `backend_id` at once (its next check is rescheduled from then).
    pub fn check_now(&self, backend_id: &str) {
        if let Some(r) = self.running.get(backend_id) {
            r.now.notify_one();
        }
    }

    pub fn len(&self) -> usize {
        self.running.len()
    }

    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }
}

fn jittered(interval: Duration, percent: u32) -> Duration {
    let spread = interval.as_micros() as u64 * u64::from(percent) / 100;
    if spread == 0 {
        return interval;
    }
    interval - Duration::from_micros(spread / 2) + Duration::from_micros(fastrand::u64(0..spread))
}

async fn check_loop(
    target: Target,
    timing: Timing,
    jitter_percent: u32,
    limit: Arc<Semaphore>,
    commands: Arc<BTreeMap<String, Vec<String>>>,
    now: Arc<Notify>,
    results: mpsc::UnboundedSender<CheckResult>,
) {
    let first = Duration::from_micros(fastrand::u64(0..=timing.interval.as_micros() as u64));
    tokio::select! {
        () = tokio::time::sleep(first) => {}
        () = now.notified() => {}
    }
    loop {
        let outcome = {
            let Ok(_permit) = limit.acquire().await else {
                return;
            };
            match probe(&target, timing.timeout, &commands).await {
                Ok(rtt) => Outcome::Pass { rtt },
                Err(error) => Outcome::Fail { error },
            }
        };
        let result = CheckResult {
            backend_id: target.backend_id.clone(),
            timing,
            outcome,
            at: Instant::now(),
        };
        if results.send(result).is_err() {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(jittered(timing.interval, jitter_percent)) => {}
            () = now.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::CheckSpec;

    #[tokio::test]
    async fn targets_are_checked_and_replaced() -> std::io::Result<()> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let up = listener.local_addr()?;
        let down = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let timing = Timing {
            interval: Duration::from_millis(50),
            timeout: Duration::from_millis(50),
            rise: 1,
            fall: 1,
        };
        let target = |id: &str, addr| Target {
            backend_id: id.into(),
            addr,
            spec: CheckSpec::tcp(),
        };
        let (mut checker, mut rx) = Checker::new(4, 10, BTreeMap::new());
        checker.set_targets(vec![
            (target("up", up), timing),
            (target("down", down), timing),
        ]);
        assert_eq!(checker.len(), 2);
        let mut seen: HashMap<String, (u32, u32)> = HashMap::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while seen.values().map(|(p, f)| p + f).sum::<u32>() < 10 && Instant::now() < deadline {
            let Some(r) = rx.recv().await else { break };
            let e = seen.entry(r.backend_id).or_default();
            match r.outcome {
                Outcome::Pass { .. } => e.0 += 1,
                Outcome::Fail { .. } => e.1 += 1,
            }
        }
        assert!(
            seen.get("up").is_some_and(|(p, f)| *p > 0 && *f == 0),
            "{seen:?}"
        );
        assert!(
            seen.get("down").is_some_and(|(p, f)| *p == 0 && *f > 0),
            "{seen:?}"
        );

        checker.set_targets(vec![(target("up", up), timing)]);
        assert_eq!(checker.len(), 1);
        while rx.try_recv().is_ok() {}
        tokio::time::sleep(Duration::from_millis(200)).await;
        while let Ok(r) = rx.try_recv() {
            assert_eq!(r.backend_id, "up", "a removed target is no longer checked");
        }
        drop(listener);
        Ok(())
    }

    #[test]
    fn jitter_stays_within_its_share() {
        let i = Duration::from_millis(1000);
        for _ in 0..1000 {
            let j = jittered(i, 10);
            assert!(
                j >= Duration::from_millis(950) && j < Duration::from_millis(1050),
                "{j:?}"
            );
        }
        assert_eq!(jittered(i, 0), i);
    }
}
