//! `BPF_PROG_TEST_RUN` for packet tests and benchmarks: a frame in, the verdict and the frame
//! out, without any topology. aya 0.14 has no wrapper, so this is the `bpf(2)` call itself.

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::programs::ProgramFd;
use thiserror::Error;

use crate::dataplane::maps::services::PopSettings;

const BPF_PROG_TEST_RUN: libc::c_long = 10;
/// Room for programs that grow the frame (`bpf_xdp_adjust_head` with a negative delta).
const HEADROOM: usize = 256;

/// The POP the packet tests and benchmarks run: overlay address `fd00:ee::1`, MSS clamp 1360,
/// source ports 10000-60000, Ethernet on the overlay, no client affinity, no SNAT prefix. A case
/// that needs other settings changes them with `..lab_pop()`.
pub fn lab_pop() -> PopSettings {
    PopSettings {
        overlay_addr: std::net::Ipv6Addr::new(0xfd00, 0xee, 0, 0, 0, 0, 0, 1),
        mss_clamp: 1360,
        port_min: 10_000,
        port_max: 60_000,
        public_ifindex: 1,
        overlay_l2_len: 14,
        affinity_ttl: std::time::Duration::ZERO,
        snat_prefix: None,
    }
}

#[derive(Debug, Error)]
pub enum TestRunError {
    #[error("BPF_PROG_TEST_RUN: {0}")]
    Syscall(#[source] io::Error),
    #[error("frame of {0} bytes is too large for a test run")]
    TooLarge(usize),
}

/// The test-run part of `union bpf_attr` (include/uapi/linux/bpf.h); the kernel zero-extends
/// the attribute to its own size, so the fields after `batch_size` may be left out.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// What one test run returned.
#[derive(Clone, Debug)]
pub struct TestRunOutput {
    /// The program's return value (an XDP action for XDP programs).
    pub retval: u32,
    /// The frame after the program ran.
    pub data_out: Vec<u8>,
    /// Mean nanoseconds per run, as the kernel measured it.
    pub duration_ns: u32,
}

/// Runs `prog` on `frame` `repeat` times (at least once).
pub fn test_run(
    prog: &ProgramFd,
    frame: &[u8],
    repeat: u32,
) -> Result<TestRunOutput, TestRunError> {
    let data_size_in =
        u32::try_from(frame.len()).map_err(|_| TestRunError::TooLarge(frame.len()))?;
    let mut out = vec![0u8; frame.len() + HEADROOM];
    let mut attr = TestRunAttr {
        prog_fd: prog.as_fd().as_raw_fd() as u32,
        data_size_in,
        data_size_out: out.len() as u32,
        data_in: frame.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat: repeat.max(1),
        ..Default::default()
    };
    // SAFETY: the in/out buffers outlive the call and their sizes are given.
    unsafe { crate::dataplane::syscall::bpf(BPF_PROG_TEST_RUN, &mut attr) }
        .map_err(TestRunError::Syscall)?;
    out.truncate(attr.data_size_out as usize);
    Ok(TestRunOutput {
        retval: attr.retval,
        data_out: out,
        duration_ns: attr.duration,
    })
}
