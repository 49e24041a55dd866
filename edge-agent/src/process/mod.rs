//! The agent as a process: a rate limit on repeated log lines and giving freed heap back, so that
//! what an outsider sends can neither flood the logs nor grow the process for good.

pub mod log_limit;
pub mod memory;
