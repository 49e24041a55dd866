//! Everything that touches the kernel's side of the data plane: the embedded object, its programs
//! loaded, attached and pinned, the bpffs layout, and the maps read and written. Nothing above
//! this layer makes a `bpf(2)` call; `syscall` is the one place that makes one by hand.

pub mod backend_reset;
pub mod batch;
pub mod clock;
pub mod log;
pub mod maps;
pub mod netdev;
pub mod object;
pub mod pins;
pub mod programs;
pub mod syscall;
