//! One BFD session in asynchronous mode (RFC 5880 §6.8): the state variables, what a received
//! Control packet does to them (§6.8.6), the detection time (§6.8.4) and what is sent (§6.8.7).
//! Pure apart from the instants it is handed, so it is tested without sockets or sleeping.
//!
//! Not implemented: Demand mode and the Echo function (this speaker never sets D and asks for
//! no echo), authentication (refused in `packet`). The C bit is always clear: the session runs
//! in the agent's process and shares its fate (see `bfd/mod.rs`).

use std::time::Duration;

use tokio::time::Instant;

use super::packet::{diag, Control, State};

/// §6.8.3: while the session is not Up, the Desired Min TX Interval is at least 1 s.
const SLOW_TX_US: u32 = 1_000_000;

/// The configured timers, in microseconds as on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    pub min_tx_us: u32,
    pub min_rx_us: u32,
    pub multiplier: u8,
}

/// A state change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Change {
    pub from: State,
    pub to: State,
    pub diag: u8,
}

/// What a received packet asks of the caller.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Received {
    /// The peer polled: answer at once with the F bit (§6.8.7).
    pub reply_final: bool,
    pub change: Option<Change>,
}

#[derive(Clone, Debug)]
pub struct Machine {
    timing: Timing,
    pub state: State,
    pub diag: u8,
    pub my_disc: u32,
    pub remote_disc: u32,
    pub remote_state: State,
    /// The peer's Required Min RX Interval (µs); 1 until it says (§6.8.1).
    pub remote_min_rx: u32,
    pub remote_desired_tx: u32,
    pub remote_mult: u8,
    /// The peer's C bit as last seen.
    pub remote_cpi: bool,
    /// The Desired Min TX Interval this side advertises now (µs).
    desired_tx: u32,
    /// A Poll Sequence is running (§6.5): P on every packet until an F comes back.
    polling: bool,
    /// When the session goes Down unless a packet arrives first.
    deadline: Option<Instant>,
}

impl Machine {
    pub fn new(timing: Timing, my_disc: u32) -> Machine {
        Machine {
            timing,
            state: State::Down,
            diag: diag::NONE,
            my_disc,
            remote_disc: 0,
            remote_state: State::Down,
            remote_min_rx: 1,
            remote_desired_tx: 0,
            remote_mult: 0,
            remote_cpi: false,
            desired_tx: SLOW_TX_US,
            polling: false,
            deadline: None,
        }
    }

    /// The interval between periodic packets before jitter (§6.8.7), none while the peer asks
    /// for none (Required Min RX 0).
    pub fn tx_interval(&self) -> Option<Duration> {
        (self.remote_min_rx > 0)
            .then(|| Duration::from_micros(u64::from(self.desired_tx.max(self.remote_min_rx))))
    }

    /// The peer's transmit interval as agreed: the larger of what this side can receive and
    /// what the peer wants to send.
    pub fn rx_interval(&self) -> Duration {
        Duration::from_micros(u64::from(self.timing.min_rx_us.max(self.remote_desired_tx)))
    }

    /// §6.8.4, asynchronous mode: the peer's multiplier times the agreed receive interval.
    pub fn detection_time(&self) -> Duration {
        self.rx_interval() * u32::from(self.remote_mult.max(1))
    }

    /// The next periodic transmission after one at `now`, jittered as §6.8.7 says (75-100%,
    /// at most 90% with a multiplier of 1); `jitter` is a draw in 0..=1.
    pub fn next_tx(&self, now: Instant, jitter: f64) -> Option<Instant> {
        let interval = self.tx_interval()?;
        let top = if self.timing.multiplier == 1 {
            0.90
        } else {
            1.0
        };
        let factor = 0.75 + (top - 0.75) * jitter.clamp(0.0, 1.0);
        Some(now + interval.mul_f64(factor))
    }

    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The Control packet to send now (`final_`: the answer to a Poll, which carries no P).
    pub fn packet(&self, final_: bool) -> Control {
        Control {
            diag: self.diag,
            state: self.state,
            poll: self.polling && !final_,
            final_,
            cpi: false,
            demand: false,
            detect_mult: self.timing.multiplier,
            my_disc: self.my_disc,
            your_disc: self.remote_disc,
            desired_min_tx: self.desired_tx,
            required_min_rx: self.timing.min_rx_us,
            required_min_echo_rx: 0,
        }
    }

    fn set_state(&mut self, to: State, diag: u8) -> Option<Change> {
        if to == self.state {
            return None;
        }
        let from = self.state;
        self.state = to;
        self.diag = diag;
        // §6.8.3: the fast rate only while Up; a change of it starts a Poll Sequence.
        let desired = if to == State::Up {
            self.timing.min_tx_us
        } else {
            self.timing.min_tx_us.max(SLOW_TX_US)
        };
        if desired != self.desired_tx {
            self.desired_tx = desired;
            self.polling = true;
        }
        Some(Change { from, to, diag })
    }

    /// A packet that passed `Control::parse` and the socket's checks arrived at `now`
    /// (§6.8.6, from "set bfd.RemoteDiscr" on).
    pub fn receive(&mut self, c: &Control, now: Instant) -> Received {
        self.remote_disc = c.my_disc;
        self.remote_state = c.state;
        self.remote_min_rx = c.required_min_rx;
        self.remote_desired_tx = c.desired_min_tx;
        self.remote_mult = c.detect_mult;
        self.remote_cpi = c.cpi;
        if c.final_ {
            self.polling = false;
        }
        self.deadline = Some(now + self.detection_time());
        let change = match (self.state, c.state) {
            (State::AdminDown, _) => None,
            (State::Down | State::Init | State::Up, State::AdminDown) => {
                if self.state == State::Down {
                    None
                } else {
                    self.set_state(State::Down, diag::NEIGHBOR_DOWN)
                }
            }
            (State::Down, State::Down) => self.set_state(State::Init, diag::NONE),
            (State::Down, State::Init) | (State::Init, State::Init | State::Up) => {
                self.set_state(State::Up, diag::NONE)
            }
            (State::Up, State::Down) => self.set_state(State::Down, diag::NEIGHBOR_DOWN),
            _ => None,
        };
        Received {
            reply_final: c.poll,
            change,
        }
    }

    /// The detection time passed at `now` without a packet: Down (§6.8.4), and the peer's
    /// discriminator forgotten (§6.8.1), so that its next session is accepted from scratch.
    pub fn expire(&mut self, now: Instant) -> Option<Change> {
        if self.deadline.is_none_or(|d| now < d) {
            return None;
        }
        self.deadline = None;
        self.remote_disc = 0;
        self.remote_state = State::Down;
        self.remote_min_rx = 1;
        self.remote_desired_tx = 0;
        match self.state {
            State::Init | State::Up => self.set_state(State::Down, diag::DETECTION_TIME_EXPIRED),
            _ => None,
        }
    }

    /// An administrative stop (the agent exiting): AdminDown is what the peer is told.
    pub fn admin_down(&mut self) {
        let _ = self.set_state(State::AdminDown, diag::ADMIN_DOWN);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: Timing = Timing {
        min_tx_us: 100_000,
        min_rx_us: 100_000,
        multiplier: 3,
    };

    /// Two machines talking: what `from` sends, `to` receives.
    fn deliver(from: &Machine, to: &mut Machine, now: Instant) -> Received {
        let sent = from.packet(false);
        // Through the wire format, as a peer would see it.
        let parsed = Control::parse(&sent.encode());
        match parsed {
            Ok(c) => to.receive(&c, now),
            Err(e) => panic!("our own packet fails to parse: {e}"),
        }
    }

    #[test]
    fn three_way_handshake_then_fast_timers_then_detection() {
        let t0 = Instant::now();
        let (mut a, mut b) = (Machine::new(FAST, 11), Machine::new(FAST, 22));
        assert_eq!(
            a.tx_interval(),
            Some(Duration::from_secs(1)),
            "slow while Down"
        );
        let r = deliver(&a, &mut b, t0);
        assert_eq!(r.change.map(|c| c.to), Some(State::Init));
        let r = deliver(&b, &mut a, t0);
        assert_eq!(
            r.change.map(|c| c.to),
            Some(State::Up),
            "Down + peer Init -> Up"
        );
        let r = deliver(&a, &mut b, t0);
        assert_eq!(
            r.change.map(|c| c.to),
            Some(State::Up),
            "Init + peer Up -> Up"
        );
        assert_eq!((a.remote_disc, b.remote_disc), (22, 11));
        // Up: both poll for the faster rate; the answers end the polls.
        let pa = a.packet(false);
        assert!(pa.poll && pa.desired_min_tx == 100_000, "{pa:?}");
        let r = b.receive(&pa, t0);
        assert!(r.reply_final);
        let fin = b.packet(true);
        assert!(fin.final_ && !fin.poll);
        a.receive(&fin, t0);
        assert!(!a.packet(false).poll, "the F ended the Poll Sequence");
        deliver(&b, &mut a, t0);
        assert_eq!(a.tx_interval(), Some(Duration::from_millis(100)));
        assert_eq!(a.detection_time(), Duration::from_millis(300));
        // Jitter stays within 75-100%.
        for j in [0.0, 0.5, 1.0] {
            let next = a.next_tx(t0, j).map(|n| n - t0);
            assert!(
                next.is_some_and(
                    |n| n >= Duration::from_millis(75) && n <= Duration::from_millis(100)
                ),
                "{next:?}"
            );
        }
        // Silence for the detection time: Down, diag 1, the peer's discriminator forgotten.
        assert_eq!(a.expire(t0 + Duration::from_millis(299)), None);
        let c = a.expire(t0 + Duration::from_millis(300));
        assert_eq!(
            c,
            Some(Change {
                from: State::Up,
                to: State::Down,
                diag: diag::DETECTION_TIME_EXPIRED
            })
        );
        assert_eq!(a.remote_disc, 0);
        assert_eq!(a.tx_interval(), Some(Duration::from_secs(1)), "slow again");
    }

    #[test]
    fn a_peer_that_says_down_or_admin_down_takes_the_session_down() {
        let t0 = Instant::now();
        for peer_says in [State::Down, State::AdminDown] {
            let (mut a, mut b) = (Machine::new(FAST, 1), Machine::new(FAST, 2));
            deliver(&a, &mut b, t0);
            deliver(&b, &mut a, t0);
            deliver(&a, &mut b, t0);
            assert_eq!((a.state, b.state), (State::Up, State::Up));
            let mut c = b.packet(false);
            c.state = peer_says;
            let r = a.receive(&c, t0);
            assert_eq!(
                r.change,
                Some(Change {
                    from: State::Up,
                    to: State::Down,
                    diag: diag::NEIGHBOR_DOWN
                }),
                "{peer_says:?}"
            );
        }
    }

    #[test]
    fn the_slower_side_sets_the_pace() {
        let t0 = Instant::now();
        let slow = Timing {
            min_tx_us: 300_000,
            min_rx_us: 500_000,
            multiplier: 5,
        };
        let (mut a, mut b) = (Machine::new(FAST, 1), Machine::new(slow, 2));
        deliver(&a, &mut b, t0);
        deliver(&b, &mut a, t0);
        deliver(&a, &mut b, t0);
        deliver(&b, &mut a, t0);
        // a sends no faster than b can receive; a expects b's packets every 300 ms, times 5.
        assert_eq!(a.tx_interval(), Some(Duration::from_millis(500)));
        assert_eq!(a.detection_time(), Duration::from_millis(1500));
        assert_eq!(b.detection_time(), Duration::from_millis(500 * 3));
    }
}
