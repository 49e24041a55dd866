//! Balancing decisions computed in user space, without the kernel: who may take a service's new
//! flows per client country (`plan`) and the Maglev tables that spread them (`maglev`).

pub mod maglev;
pub mod plan;
