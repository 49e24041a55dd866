//! Empty on purpose: `edge-agent` has a build-dependency on this package so that cargo rebuilds
//! the agent when the kernel programs change; the programs themselves are the `edge-ebpf` binary.
#![no_std]
