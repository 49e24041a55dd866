//! The `bpf(2)` call itself, for the commands aya 0.14 has no wrapper for (the batch map
//! operations; the tests' maps of another agent's shape). `BPF_PROG_TEST_RUN` is aya's
//! `TestRun`.

use std::{io, mem::size_of};

/// Runs `bpf(cmd, attr, sizeof attr)`. `A` is the command's part of `union bpf_attr`, `repr(C)`;
/// the kernel zero-extends it to its own size, so trailing fields may be left out. Returns what
/// the kernel returned: a new file descriptor for the commands that create one, else 0.
///
/// # Safety
/// Every pointer `attr` carries must be valid for what the command reads or writes there.
pub unsafe fn bpf<A>(cmd: libc::c_long, attr: &mut A) -> io::Result<i64> {
    // SAFETY: `attr` is a live, writable value of its own size; the caller vouches for the
    // buffers it points at.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut A, size_of::<A>()) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}
