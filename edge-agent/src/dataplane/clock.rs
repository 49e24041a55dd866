//! The data plane's clock, calibrated. The kernel programs stamp flows with `bpf_jiffies64`
//! (a single load; the CLOCK_MONOTONIC_COARSE helper costs about 14 ns of every packet) and
//! turn it into nanoseconds with the tick length and offset measured here, so that their stamps
//! and the agent's `flows::monotonic_ns` are one clock. The `edge_clock` program reads both
//! kernel clocks at one instant; `BPF_PROG_TEST_RUN` (aya's [`TestRun`]) runs it on demand.

use std::{
    thread,
    time::{Duration, Instant},
};

use aya::{
    programs::{ProgramError, TestRun as _, TestRunOptions},
    Ebpf,
};
use edge_common::names;
use thiserror::Error;

use crate::{dataplane::programs, dataplane::programs::DataPlaneError};

/// The tick rates Linux is built with (`CONFIG_HZ` choices on x86 and arm64).
const KNOWN_HZ: [u64; 4] = [100, 250, 300, 1000];
/// Ticks to measure over: the two clocks are stepped at the same tick, but a sample can fall
/// between the steps, so the measured rate may be off by one tick in this many; 25 keeps it
/// within 4%, well inside the 17% between 250 and 300 Hz.
const MIN_TICKS: u64 = 25;
/// Longest wait for `MIN_TICKS` ticks: a quarter second at 100 Hz.
const PATIENCE: Duration = Duration::from_secs(2);

#[derive(Debug, Error)]
pub enum ClockError {
    #[error("the clock program: {0}")]
    Program(#[from] DataPlaneError),
    #[error("running the clock program: {0}")]
    Run(#[source] ProgramError),
    #[error("the clock program returned {0} bytes, not 16")]
    Short(usize),
    #[error("jiffies advanced {ticks} in {PATIENCE:?}: no usable kernel tick")]
    Stalled { ticks: u64 },
    #[error("kernel tick rate measured at {measured:.1} Hz, not one of {KNOWN_HZ:?}")]
    UnknownHz { measured: f64 },
}

/// `now_ns = jiffies * ns_per_jiffy + offset_ns` (wrapping), as the kernel programs compute
/// it (`PopConfig::ns_per_jiffy`, `clock_offset_ns`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelClock {
    pub ns_per_jiffy: u32,
    pub offset_ns: u64,
}

impl KernelClock {
    /// CLOCK_MONOTONIC_COARSE nanoseconds at `jiffies`.
    pub fn ns_at(&self, jiffies: u64) -> u64 {
        jiffies
            .wrapping_mul(u64::from(self.ns_per_jiffy))
            .wrapping_add(self.offset_ns)
    }
}

/// One reading of both kernel clocks.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub jiffies: u64,
    pub coarse_ns: u64,
}

/// Reads both kernel clocks at one instant through the clock program.
pub fn sample(ebpf: &mut Ebpf) -> Result<Sample, ClockError> {
    let program = programs::xdp_program(ebpf, names::XDP_CLOCK)?;
    // The program writes over the frame in place, so the frame out is the frame's size.
    let mut frame = [0u8; 64];
    let run = program
        .test_run(TestRunOptions {
            data_in: Some(&[0u8; 64]),
            data_out: Some(&mut frame),
            ..TestRunOptions::default()
        })
        .map_err(ClockError::Run)?;
    let out = frame.get(..run.data_size_out as usize).unwrap_or(&frame);
    let word = |at: usize| {
        out.get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_ne_bytes)
            .ok_or(ClockError::Short(out.len()))
    };
    Ok(Sample {
        jiffies: word(0)?,
        coarse_ns: word(8)?,
    })
}

/// Measures the kernel's tick rate over `MIN_TICKS` ticks (a tenth of a second at 250 Hz) and
/// anchors jiffies to CLOCK_MONOTONIC_COARSE.
pub fn calibrate(ebpf: &mut Ebpf) -> Result<KernelClock, ClockError> {
    let first = sample(ebpf)?;
    let started = Instant::now();
    loop {
        thread::sleep(Duration::from_millis(2));
        let last = sample(ebpf)?;
        let ticks = last.jiffies.wrapping_sub(first.jiffies);
        if ticks >= MIN_TICKS {
            let tick_ns = last.coarse_ns.wrapping_sub(first.coarse_ns) as f64 / ticks as f64;
            return from_samples(tick_ns, last);
        }
        if started.elapsed() > PATIENCE {
            return Err(ClockError::Stalled { ticks });
        }
    }
}

/// The clock for a measured tick length, anchored at `at`.
pub fn from_samples(tick_ns: f64, at: Sample) -> Result<KernelClock, ClockError> {
    let measured = 1e9 / tick_ns;
    let hz = KNOWN_HZ
        .into_iter()
        .find(|&hz| (measured / hz as f64 - 1.0).abs() < 0.05)
        .ok_or(ClockError::UnknownHz { measured })?;
    // The kernel's own TICK_NSEC (include/vdso/jiffies.h), which jiffies advance by.
    let ns_per_jiffy = ((1_000_000_000 + hz / 2) / hz) as u32;
    Ok(KernelClock {
        ns_per_jiffy,
        offset_ns: at
            .coarse_ns
            .wrapping_sub(at.jiffies.wrapping_mul(u64::from(ns_per_jiffy))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_measured_rate_snaps_to_the_kernel_tick_it_is_near() -> Result<(), ClockError> {
        let at = Sample {
            jiffies: 4_300_000_000,
            coarse_ns: 55_000_000_000,
        };
        for (tick_ns, ns_per_jiffy) in [
            (4_150_000.0, 4_000_000),
            (3_900_000.0, 4_000_000),
            (3_333_333.0, 3_333_333),
            (1_020_000.0, 1_000_000),
            (10_000_000.0, 10_000_000),
        ] {
            let clock = from_samples(tick_ns, at)?;
            assert_eq!(clock.ns_per_jiffy, ns_per_jiffy, "tick of {tick_ns} ns");
            assert_eq!(clock.ns_at(at.jiffies), at.coarse_ns);
            assert_eq!(
                clock.ns_at(at.jiffies + 1000),
                at.coarse_ns + 1000 * u64::from(ns_per_jiffy)
            );
        }
        Ok(())
    }

    #[test]
    fn a_rate_between_known_ones_is_refused() {
        let at = Sample {
            jiffies: 1,
            coarse_ns: 1,
        };
        assert!(matches!(
            from_samples(1e9 / 275.0, at),
            Err(ClockError::UnknownHz { .. })
        ));
        assert!(matches!(
            from_samples(1e9 / 500.0, at),
            Err(ClockError::UnknownHz { .. })
        ));
    }
}
