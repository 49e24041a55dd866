//! The edgeProxy agent as a library: the binary (`main.rs`) is a thin CLI over these modules, and
//! the tests use them directly.

pub mod bpffs;
pub mod config;
pub mod counters;
pub mod dataplane;
pub mod object;
pub mod test_run;
