//! When to try again after a session fails, and why not simply doubling.

use std::time::Duration;

use tokio::time::Instant;

/// The wait before each reconnect (RFC 4271 §8 leaves the ConnectRetryTimer to the
/// implementation): doubling from `base` to `max`, except for `fast` after an Established
/// session ended, when every wait is `base`. A peer that just reset a session often refuses
/// connections for an idle hold of its own (GoBGP: 5 s); doubling through it (1, 2, 4 s) came
/// back at 7 s, where waiting `base` each time comes back within `base` of the peer being ready.
#[derive(Clone, Debug)]
pub struct Retry {
    base: Duration,
    max: Duration,
    fast: Duration,
    next: Duration,
    fast_until: Option<Instant>,
}

impl Retry {
    pub fn new(base: Duration, max: Duration, fast: Duration) -> Self {
        Retry {
            base,
            max: max.max(base),
            fast,
            next: base,
            fast_until: None,
        }
    }

    /// An Established session ended at `now`.
    pub fn session_ended(&mut self, now: Instant) {
        self.next = self.base;
        self.fast_until = Some(now + self.fast);
    }

    /// How long to wait before the attempt that follows a failure at `now`.
    pub fn next(&mut self, now: Instant) -> Duration {
        if self.fast_until.is_some_and(|until| now < until) {
            return self.base;
        }
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_stay_short_through_a_peer_idle_hold_then_double() {
        let s = Duration::from_secs;
        let mut r = Retry::new(s(1), s(30), s(20));
        let t0 = Instant::now();
        // Never established: doubling from the start.
        let first: Vec<u64> = (0..6).map(|_| r.next(t0).as_secs()).collect();
        assert_eq!(first, vec![1, 2, 4, 8, 16, 30], "before any session");
        // A session ends: 1 s waits for the fast window (a 5 s idle hold costs at most 1 s).
        r.session_ended(t0);
        let mut at = t0;
        let mut waits = Vec::new();
        while at < t0 + s(25) {
            let w = r.next(at);
            waits.push(w.as_secs());
            at += w;
        }
        assert!(
            waits[..20].iter().all(|&w| w == 1),
            "expected 1 s waits for the first 20 s after a session ended, saw {waits:?}"
        );
        assert_eq!(&waits[20..], &[1, 2, 4], "then doubling again: {waits:?}");
    }
}
