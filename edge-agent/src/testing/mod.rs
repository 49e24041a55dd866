//! Fixtures of the tests, benchmarks and labs, behind the `test-support` feature (off by
//! default) so that the agent's binary carries none of them. The crate's own integration tests
//! and benchmarks turn the feature on through their dev-dependency on the crate itself, the lab
//! crate (`edge-tests`) through its dev-dependency.
//!
//! - [`mmdb_writer`]: MaxMind DB country databases with chosen prefixes, so that no licensed
//!   database is shipped.
//! - [`bgp_fuzz`]: mutated BGP messages and the answer RFC 4271 asks for each.
//! - [`lab_pop`]: the POP the packet tests and benchmarks run.
//! - [`test_run`]: a frame through a loaded program (`BPF_PROG_TEST_RUN`), the frame out
//!   included.

pub mod bgp_fuzz;
mod test_run;

use std::{net::Ipv6Addr, time::Duration};

pub use test_run::{test_run, FrameProgram, FrameRun};

use crate::dataplane::maps::services::PopSettings;

pub mod mmdb_writer {
    //! The MaxMind DB writer. It lives in `geo`, beside the loader whose normalization and
    //! de-duplication it shares, and is reached from here.

    pub use crate::geo::writer::{encode_country_mmdb, write_country_mmdb, MmdbSummary};
}

/// The POP the packet tests and benchmarks run: overlay address `fd00:ee::1`, MSS clamp 1360,
/// source ports 10000-60000, Ethernet on the overlay, no client affinity, no SNAT prefix. A case
/// that needs other settings changes them with `..lab_pop()`.
pub fn lab_pop() -> PopSettings {
    PopSettings {
        overlay_addr: Ipv6Addr::new(0xfd00, 0xee, 0, 0, 0, 0, 0, 1),
        mss_clamp: 1360,
        port_min: 10_000,
        port_max: 60_000,
        public_ifindex: 1,
        overlay_l2_len: 14,
        affinity_ttl: Duration::ZERO,
        snat_prefix: None,
    }
}
