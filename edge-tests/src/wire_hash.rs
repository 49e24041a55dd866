//! Receive hashing the way a NIC does it, for the benchmark lab.
//!
//! A TCP socket stamps every packet it sends with a hash drawn at random per connection
//! (`sk_txhash`), and a veth hands that hash to its peer with the packet. With RPS on the lab's
//! veths, the CPU that receives a flow is then picked by that random number, not by the
//! packet: the four streams of one iperf3 run landed on one CPU in some rounds and spread over
//! both in others, and the run's throughput moved by a third with it (`cargo xtask bench`
//! notes each round's per-CPU softirq shares). No wire carries such a hash: a real NIC computes
//! its receive hash (RSS) from the packet's own addresses and ports, with a key of its own
//! (Linux drivers draw it at random), and the usual Toeplitz hash is not symmetric: a
//! connection's two directions land on CPUs independently. The kernel's software hash is
//! symmetric and the same in every namespace, so without more a routed connection (plain
//! routing) ran both directions on one CPU where a translated one (its two sides have different
//! tuples) ran them on two: a placement the lab gave one mode and not the other.
//!
//! A small TC program on each sending end of the lab's wires replaces the packet's hash with
//! the kernel's hash of its own tuple mixed with a key of that wire (`bpf_get_hash_recalc`,
//! then `bpf_set_hash`), which the receiving veth's RPS uses: every wire hashes like a NIC of
//! its own, the same way for every mode. The hash also goes into the packet's mark, which the
//! namespace crossing clears (`skb_scrub_packet`), so that a test run of the program can read
//! it.

use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

use crate::{Lab, LabError, Result};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_TCX_EGRESS: u32 = 47;
const BPF_FUNC_GET_HASH_RECALC: i32 = 34;
const BPF_FUNC_SET_HASH: i32 = 48;
/// `__sk_buff.mark`.
const SKB_MARK: i16 = 8;

/// One eBPF instruction as the kernel reads it: opcode, registers (source in the high nibble),
/// offset, immediate.
const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    (code as u64)
        | (((src << 4 | dst) as u64) << 8)
        | ((off as u16 as u64) << 16)
        | ((imm as u32 as u64) << 32)
}

/// Multiplier of the mix (the golden ratio's, odd): every bit of the keyed hash reaches the top
/// bits, which are the ones RPS picks a CPU with.
const MIX: u32 = 0x9e37_79b1;

/// The program for a wire with `key`:
/// `h = bpf_get_hash_recalc(skb) ^ key; h *= MIX; h ^= h >> 16; skb->mark = h;
/// bpf_set_hash(skb, h); return TCX_NEXT;` (TCX_NEXT = -1 lets any other program on the hook
/// run, and passes the packet if none does).
fn program(key: u32) -> [u64; 13] {
    [
        insn(0xbf, 6, 1, 0, 0),                        // r6 = r1 (the skb)
        insn(0x85, 0, 0, 0, BPF_FUNC_GET_HASH_RECALC), // call
        insn(0xa4, 0, 0, 0, key as i32),               // w0 ^= key
        insn(0x24, 0, 0, 0, MIX as i32),               // w0 *= MIX
        insn(0xbc, 1, 0, 0, 0),                        // w1 = w0
        insn(0x74, 1, 0, 0, 16),                       // w1 >>= 16
        insn(0xac, 0, 1, 0, 0),                        // w0 ^= w1
        insn(0x63, 6, 0, SKB_MARK, 0),                 // skb->mark = w0
        insn(0xbc, 2, 0, 0, 0),                        // w2 = w0
        insn(0xbf, 1, 6, 0, 0),                        // r1 = r6
        insn(0x85, 0, 0, 0, BPF_FUNC_SET_HASH),        // call
        insn(0xb7, 0, 0, 0, -1),                       // r0 = -1
        insn(0x95, 0, 0, 0, 0),                        // exit
    ]
}

/// The key of the `index`th wire end: far apart for neighbouring indices.
fn wire_key(index: usize) -> u32 {
    (index as u32 + 1).wrapping_mul(0x85eb_ca6b)
}

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
/// own tuple with a key of the wire, as a NIC's RSS does, instead of reusing the sending
/// socket's random hash. Each sender gets its own key.
pub fn hash_like_a_nic(lab: &Lab, senders: &[(&str, &str)]) -> Result<WireHash> {
    let mut links = Vec::new();
    for (index, &(ns, ifname)) in senders.iter().enumerate() {
        let prog = load(wire_key(index))?;
        let mut attr = LinkCreateAttr {
            prog_fd: prog.as_raw_fd() as u32,
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

/// Loads the program of a wire with `key`.
fn load(key: u32) -> Result<OwnedFd> {
    let license = c"GPL";
    let insns = program(key);
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_SCHED_CLS,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        ..ProgLoadAttr::default()
    };
    attr.prog_name[..9].copy_from_slice(b"wire_hash");
    bpf_fd(BPF_PROG_LOAD, &mut attr, "loading the wire-hash program")
}

/// The hash the program of a wire with `key` gives `frame` (an Ethernet frame), read from the
/// mark of a test run (`BPF_PROG_TEST_RUN`).
#[cfg(test)]
fn test_run(key: u32, frame: &[u8]) -> Result<u32> {
    const BPF_PROG_TEST_RUN: libc::c_long = 10;
    #[repr(C)]
    #[derive(Default)]
    struct TestRunAttr {
        prog_fd: u32,
        retval: u32,
        data_size_in: u32,
        data_size_out: u32,
        data_in: u64,
        data_out: u64,
        repeat: u32,
        duration: u32,
        ctx_size_in: u32,
        ctx_size_out: u32,
        ctx_in: u64,
        ctx_out: u64,
    }
    let prog = load(key)?;
    // A `__sk_buff` and room to spare, 8-byte aligned.
    let mut ctx = [0u64; 32];
    let mut attr = TestRunAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_in: frame.as_ptr() as u64,
        repeat: 1,
        ctx_size_out: std::mem::size_of_val(&ctx) as u32,
        ctx_out: ctx.as_mut_ptr() as u64,
        ..TestRunAttr::default()
    };
    sys_bpf(
        BPF_PROG_TEST_RUN,
        &mut attr,
        "test-running the wire-hash program",
    )?;
    assert_eq!(attr.retval, u32::MAX, "TCX_NEXT");
    // Little-endian: the mark, at an 8-byte boundary, is the low half of its word.
    Ok(ctx[SKB_MARK as usize / 8] as u32)
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
        let p = program(0x1234_5678);
        // r6 = r1: opcode 0xbf, destination in the low nibble, source in the high one.
        assert_eq!(p[0], 0xbf | (0x16 << 8));
        // call 34: the helper's number in the high word.
        assert_eq!(p[1], 0x85 | (34 << 32));
        assert_eq!(p[2], 0xa4 | (0x1234_5678 << 32));
        // skb->mark = w0: the field's offset in bits 16-31.
        assert_eq!(p[7], 0x63 | (0x06 << 8) | (8 << 16));
        // r0 = -1: the immediate's 32 bits, sign-extended by the kernel.
        assert_eq!(p[11], 0xb7 | (0xffff_ffff << 32));
        assert_eq!(p[12], 0x95);
    }

    /// An Ethernet frame of one IPv4 TCP segment from `a`:`ap` to `b`:`bp`.
    fn segment(a: [u8; 4], ap: u16, b: [u8; 4], bp: u16) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 20];
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        f[14] = 0x45;
        f[16..18].copy_from_slice(&40u16.to_be_bytes());
        f[22] = 64;
        f[23] = 6;
        f[26..30].copy_from_slice(&a);
        f[30..34].copy_from_slice(&b);
        f[34..36].copy_from_slice(&ap.to_be_bytes());
        f[36..38].copy_from_slice(&bp.to_be_bytes());
        f[46] = 0x50;
        f[47] = 0x10;
        f
    }

    /// With two CPUs, RPS picks by the hash's top bit.
    fn cpu(hash: u32) -> u32 {
        hash >> 31
    }

    #[test]
    fn each_wire_hashes_a_connections_directions_on_its_own() -> Result<()> {
        let (client, server) = ([10, 0, 1, 2], [10, 0, 2, 2]);
        let (out, back) = (wire_key(0), wire_key(1));
        let mut same_wire = 0;
        let mut two_wires = 0;
        let flows = 64u16;
        for port in 40_000..40_000 + flows {
            let request = segment(client, port, server, 80);
            let reply = segment(server, 80, client, port);
            let h = test_run(out, &request)?;
            assert_eq!(
                test_run(out, &request)?,
                h,
                "a packet's hash is its tuple's"
            );
            if cpu(test_run(out, &reply)?) == cpu(h) {
                same_wire += 1;
            }
            if cpu(test_run(back, &reply)?) == cpu(h) {
                two_wires += 1;
            }
        }
        // One wire sees both directions alike (the kernel's hash is symmetric); a reply sent
        // on its own wire lands on a CPU of its own, the same one about half the time.
        assert_eq!(same_wire, flows);
        assert!(
            (16..=48).contains(&two_wires),
            "{two_wires} of {flows} replies on the request's CPU"
        );
        Ok(())
    }
}
