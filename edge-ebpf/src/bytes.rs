//! Copies and fills of addresses and padding by whole words.
//!
//! For a byte array, LLVM emits a call to `memmove` or `memset`, which in a BPF object are
//! byte-at-a-time loops: a 16-byte address cost some 70 instructions and a call. These write
//! words, as the kernel's own C does for `in6_addr`. Volatile accesses keep LLVM from merging
//! them back into such a call. A packet address may sit at an offset that is not a multiple of
//! four: the verifier checks alignment only on architectures without efficient unaligned access
//! (or when asked to), and the JIT's loads and stores do not care on the ones this runs on.

/// Copies 16 bytes (an IPv6 address) as four 32-bit words.
#[inline(always)]
pub unsafe fn copy16(dst: *mut [u8; 16], src: *const [u8; 16]) {
    let (d, s) = (dst.cast::<u32>(), src.cast::<u32>());
    // SAFETY: the caller passes 16 readable and 16 writable bytes.
    unsafe {
        d.write_volatile(s.read_volatile());
        d.add(1).write_volatile(s.add(1).read_volatile());
        d.add(2).write_volatile(s.add(2).read_volatile());
        d.add(3).write_volatile(s.add(3).read_volatile());
    }
}

/// Whether two 16-byte values (IPv6 addresses) are equal, compared as four 32-bit words.
#[inline(always)]
pub unsafe fn eq16(a: *const [u8; 16], b: *const [u8; 16]) -> bool {
    let (a, b) = (a.cast::<u32>(), b.cast::<u32>());
    // SAFETY: the caller passes 16 readable bytes at each.
    unsafe {
        (a.read_volatile() ^ b.read_volatile())
            | (a.add(1).read_volatile() ^ b.add(1).read_volatile())
            | (a.add(2).read_volatile() ^ b.add(2).read_volatile())
            | (a.add(3).read_volatile() ^ b.add(3).read_volatile())
            == 0
    }
}

/// Whether the first 12 bytes at `a` and `b` (an address and a /96 prefix) are equal, compared
/// as three 32-bit words.
#[inline(always)]
pub unsafe fn eq12(a: *const u8, b: *const u8) -> bool {
    let (a, b) = (a.cast::<u32>(), b.cast::<u32>());
    // SAFETY: the caller passes 12 readable bytes at each, 4-byte aligned.
    unsafe {
        (a.read_volatile() ^ b.read_volatile())
            | (a.add(1).read_volatile() ^ b.add(1).read_volatile())
            | (a.add(2).read_volatile() ^ b.add(2).read_volatile())
            == 0
    }
}

/// Copies 6 bytes (a MAC address) as a 32-bit and a 16-bit word.
#[inline(always)]
pub unsafe fn copy6(dst: *mut [u8; 6], src: *const [u8; 6]) {
    // SAFETY: the caller passes 6 readable and 6 writable bytes.
    unsafe {
        dst.cast::<u32>()
            .write_volatile(src.cast::<u32>().read_volatile());
        dst.cast::<u16>()
            .add(2)
            .write_volatile(src.cast::<u16>().add(2).read_volatile());
    }
}

/// Writes the IPv4-mapped IPv6 address of `v4` (`::ffff:a.b.c.d`, RFC 4291 section 2.5.5.2).
#[inline(always)]
pub unsafe fn write_mapped(dst: *mut [u8; 16], v4: [u8; 4]) {
    let d = dst.cast::<u32>();
    // SAFETY: the caller passes 16 writable bytes.
    unsafe {
        d.write_volatile(0);
        d.add(1).write_volatile(0);
        d.add(2)
            .write_volatile(u32::from_ne_bytes([0, 0, 0xff, 0xff]));
        d.add(3).write_volatile(u32::from_ne_bytes(v4));
    }
}
