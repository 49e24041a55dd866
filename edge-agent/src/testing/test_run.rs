//! A frame through a loaded program by `BPF_PROG_TEST_RUN`, and the frame it leaves. aya's
//! [`TestRun`] makes the call; what it leaves to its caller, and what every frame-in, frame-out
//! test needs, is an output buffer with room for a frame the program grows, cut to the size the
//! kernel reports.

use std::time::Duration;

use aya::programs::{ProgramError, TestRun, TestRunOptions, TestRunResult};

/// Room for programs that grow the frame (`bpf_xdp_adjust_head` with a negative delta).
const HEADROOM: usize = 256;

/// What one test run returned.
#[derive(Clone, Debug)]
pub struct FrameRun {
    /// The program's return value (an XDP or a TC action).
    pub retval: u32,
    /// The frame after the program ran.
    pub data_out: Vec<u8>,
    /// Mean time per run, as the kernel measured it.
    pub duration: Duration,
}

/// The programs aya runs on a frame: XDP and TC (`SchedClassifier`) among them.
pub trait FrameProgram:
    for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult>
{
}

impl<P> FrameProgram for P where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult>
{
}

/// Runs `program` (loaded) on `frame` `repeat` times (at least once).
pub fn test_run(
    program: &impl FrameProgram,
    frame: &[u8],
    repeat: u32,
) -> Result<FrameRun, ProgramError> {
    let mut out = vec![0u8; frame.len() + HEADROOM];
    let result = program.test_run(TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        repeat: repeat.max(1),
        ..TestRunOptions::default()
    })?;
    out.truncate(result.data_size_out as usize);
    Ok(FrameRun {
        retval: result.return_value,
        data_out: out,
        duration: result.duration,
    })
}
