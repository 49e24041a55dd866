//! Receive hashing the way a NIC does it, for the benchmark lab.
//!
//! A TCP socket stamps every packet it sends with a hash drawn at random per connection
//! (`sk_txhash`), and a veth hands that hash to its peer with the packet. With RPS on the lab's
//! veths, the CPU that receives a flow is then picked by that random number, not by the
//! packet: the four streams of one iperf3 run landed on one CPU in some rounds and spread over
//! both in others, and the run's throughput moved by a third with it (`cargo xtask bench`
//! notes each round's per-CPU softirq shares). No wire carries such a hash: a real NIC computes
//! its receive hash (RSS) from the packet's own addresses and ports. A small TC program on the
//! sending ends of the lab's wires forgets the socket's hash (`bpf_set_hash_invalid`), so the
//! receiving veth hashes the flow's tuple, and the same connections land on the same CPUs
//! whichever balancer is under test.

use std::os::fd::{FromRawFd as _, OwnedFd};

use crate::{Lab, LabError, Result};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_TCX_EGRESS: u32 = 47;
const BPF_FUNC_SET_HASH_INVALID: i32 = 41;

/// One eBPF instruction as the kernel reads it: opcode, registers, offset, immediate.
const fn insn(code: u8, regs: u8, off: i16, imm: i32) -> u64 {
    (code as u64) | ((regs as u64) << 8) | ((off as u16 as u64) << 16) | ((imm as u32 as u64) << 32)
}

/// `bpf_set_hash_invalid(skb); return TCX_NEXT;` (the context is already in r1; TCX_NEXT = -1
/// lets any other program on the hook run, and passes the packet if none does).
const PROGRAM: [u64; 3] = [
    insn(0x85, 0, 0, BPF_FUNC_SET_HASH_INVALID), // call
    insn(0xb7, 0, 0, -1),                        // r0 = -1
    insn(0x95, 0, 0, 0),                         // exit
];

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
    relative_fd: u32,
    _pad: u32,
    expected_revision: u64,
}

/// bpf(2) with `attr`, a bpf_attr prefix: the kernel reads only the size passed (a shorter attr
/// is zero-extended) and may write results back into it.
fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T, what: &str) -> Result<libc::c_long> {
    // SAFETY: `attr` is a live, initialised value of the size passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr).cast::<libc::c_void>(),
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if rc < 0 {
        return Err(LabError::io(
            what.to_owned(),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(rc)
}

/// A bpf(2) command that returns a new descriptor.
fn bpf_fd<T>(cmd: libc::c_long, attr: &mut T, what: &str) -> Result<OwnedFd> {
    let fd = sys_bpf(cmd, attr, what)?;
    // SAFETY: a non-negative return of these commands is a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The attached programs; dropping this detaches them (as does removing the namespaces).
#[derive(Debug)]
pub struct WireHash {
    _links: Vec<OwnedFd>,
}

/// Makes the veths that receive from `senders` (namespace label, interface) hash each packet's
/// own tuple, as a NIC's RSS does, instead of reusing the sending socket's random hash.
pub fn hash_like_a_nic(lab: &Lab, senders: &[(&str, &str)]) -> Result<WireHash> {
    let license = c"GPL";
    let mut load = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_SCHED_CLS,
        insn_cnt: PROGRAM.len() as u32,
        insns: PROGRAM.as_ptr() as u64,
        license: license.as_ptr() as u64,
        ..ProgLoadAttr::default()
    };
    load.prog_name[..9].copy_from_slice(b"wire_hash");
    let prog = bpf_fd(BPF_PROG_LOAD, &mut load, "loading the wire-hash program")?;
    let prog_fd = std::os::fd::AsRawFd::as_raw_fd(&prog) as u32;
    let mut links = Vec::new();
    for &(ns, ifname) in senders {
        let mut attr = LinkCreateAttr {
            prog_fd,
            target_ifindex: lab.ifindex(ns, ifname)?,
            attach_type: BPF_TCX_EGRESS,
            ..LinkCreateAttr::default()
        };
        // The ifindex names the interface in the calling thread's namespace.
        let link = lab.ns(ns).run_in_thread(|| {
            bpf_fd(
                BPF_LINK_CREATE,
                &mut attr,
                &format!("attaching the wire-hash program to {ifname} in {ns}"),
            )
        })??;
        links.push(link);
    }
    Ok(WireHash { _links: links })
}

/// How many programs run on the egress of `ifname` in `ns` (BPF_PROG_QUERY of its TCX hook).
#[cfg(test)]
pub(crate) fn egress_programs(lab: &Lab, ns: &str, ifname: &str) -> Result<u32> {
    #[repr(C)]
    #[derive(Default)]
    struct QueryAttr {
        target_ifindex: u32,
        attach_type: u32,
        query_flags: u32,
        attach_flags: u32,
        prog_ids: u64,
        prog_cnt: u32,
    }
    const BPF_PROG_QUERY: libc::c_long = 16;
    let mut attr = QueryAttr {
        target_ifindex: lab.ifindex(ns, ifname)?,
        attach_type: BPF_TCX_EGRESS,
        ..QueryAttr::default()
    };
    lab.ns(ns).run_in_thread(|| {
        // With no id buffer the kernel only writes the count back.
        sys_bpf(
            BPF_PROG_QUERY,
            &mut attr,
            &format!("querying the egress programs of {ifname} in {ns}"),
        )
    })??;
    Ok(attr.prog_cnt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instructions_encode_as_the_kernel_reads_them() {
        // call 41: opcode 0x85, imm 41 in the high word.
        assert_eq!(PROGRAM[0], 0x85 | (41 << 32));
        // r0 = -1: the immediate's 32 bits, sign-extended by the kernel.
        assert_eq!(PROGRAM[1], 0xb7 | (0xffff_ffff << 32));
        assert_eq!(PROGRAM[2], 0x95);
    }
}
