//! The kernel programs' debug records (aya-log), drained into the agent's own log when
//! `bpf_debug_log` is on. aya-log emits them through the `log` crate; tracing-subscriber's
//! `log` bridge (installed with the subscriber) turns them into events with target `edge_ebpf`.

use std::panic::AssertUnwindSafe;

use aya::Ebpf;
use aya_log::EbpfLogger;
use tokio::io::{unix::AsyncFd, Interest};
use tracing::{info, warn};

/// Takes aya-log's ring buffer out of `ebpf` and drains it on the current tokio runtime for as
/// long as the runtime lives. A logger that cannot start is a warning, not a failure: the data
/// plane works the same without it.
pub fn start(ebpf: &mut Ebpf) {
    let logger = match EbpfLogger::init(ebpf) {
        Ok(logger) => logger,
        Err(error) => {
            warn!(%error, "BPF debug log unavailable; the data plane runs without it");
            return;
        }
    };
    // SAFETY: the logger owns the ring buffer's map fd, which stays open and the same for as
    // long as the logger lives, and the logger is moved into the `AsyncFd`.
    let registered = unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) };
    let mut ring = match registered {
        Ok(ring) => ring,
        Err(error) => {
            warn!(%error, "BPF debug log unavailable: polling its ring buffer");
            return;
        }
    };
    info!("BPF debug log on: records from the kernel programs appear with target edge_ebpf");
    tokio::spawn(async move {
        loop {
            let mut guard = match ring.readable_mut().await {
                Ok(guard) => guard,
                Err(error) => {
                    warn!(%error, "BPF debug log stopped: polling its ring buffer");
                    return;
                }
            };
            // aya-log panics on a record it cannot decode: stop logging, keep the agent.
            let logger = guard.get_inner_mut();
            if std::panic::catch_unwind(AssertUnwindSafe(|| logger.flush())).is_err() {
                warn!("BPF debug log stopped: a record could not be decoded");
                return;
            }
            guard.clear_ready();
        }
    });
}
