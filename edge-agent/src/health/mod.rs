//! Health checks: active probes (TCP, HTTP, gRPC, named commands) with HAProxy-style rise/fall
//! hysteresis and smoothed RTT, passive signals read from the data plane's per-backend counters,
//! and the scheduler that runs thousands of checks with bounded concurrency.
//!
//! How the signals combine (also in docs/operations.md):
//! - A backend starts `unknown` (eligible). `fall` consecutive failures make it `down` (no new
//!   flows); `rise` consecutive successes bring a `down` one back `up`. A single failure only
//!   counts towards `fall`, as in HAProxy: a check lost to a busy moment moves no flows.
//! - `degraded` (a quarter of its share) holds while the backend failed `degrade.error_percent` of its last
//!   `degrade.window` checks, or its smoothed RTT is above `degrade.rtt_ms`.
//! - Inside a geo tier, backends are weighed by smoothed RTT against the fastest of the tier
//!   (halved per doubling, down to an eighth): a slow backend loses share before it fails.
//! - Passive: a backend that refuses connections (answers a SYN with a RST), or leaves new
//!   flows without any answer for `passive.syn_deadline_ms`, becomes suspect and is checked at
//!   once; a suspect backend whose check fails goes down on that one failure instead of
//!   waiting for `fall`. Passive signals alone never take a backend down: a client's abandoned
//!   SYN must not be able to.

pub mod checker;
pub mod monitor;
pub mod passive;
pub mod probe;
pub mod spec;
pub mod tracker;
pub mod writer;

pub use self::spec::{HealthConfig, Profile, Timing};
// Their path before `model` took them, still used by the registration API, the CLI and the e2e
// tests.
pub use crate::model::{CheckKind, CheckSpec};
