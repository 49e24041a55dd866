//! TCP header helpers: the fields the flow tables follow, and MSS clamping on SYN and SYN-ACK.

use crate::ctx::{ptr_at, Packet};

/// The TCP header fields the flow tables follow, host byte order.
#[derive(Clone, Copy)]
pub struct Segment {
    pub flags: u8,
    pub seq: u32,
    pub ack: u32,
}

impl Segment {
    /// Reads them from a TCP header.
    ///
    /// # Safety
    /// `hdr` points at a whole, bounds-checked TCP header.
    #[inline(always)]
    pub unsafe fn of(hdr: *const [u8; 20]) -> Self {
        // SAFETY: the caller's header.
        unsafe {
            Segment {
                flags: (*hdr)[13],
                seq: u32::from_be_bytes([(*hdr)[4], (*hdr)[5], (*hdr)[6], (*hdr)[7]]),
                ack: u32::from_be_bytes([(*hdr)[8], (*hdr)[9], (*hdr)[10], (*hdr)[11]]),
            }
        }
    }
}

/// Options walked before giving up; a SYN carries at most MSS, SACK-permitted, timestamps,
/// window scale and padding (RFC 9293 section 3.2).
const MAX_OPTIONS: usize = 10;

/// Lowers the MSS option of the SYN whose TCP header starts at `tcp_off` to `clamp`, keeping the
/// checksum right. Segments without an MSS option are left alone: the peer then assumes 536
/// (RFC 9293 section 3.7.1), which fits any overlay.
#[inline(always)]
pub fn clamp_mss<C: Packet>(ctx: &C, tcp_off: usize, clamp: u16) {
    if clamp == 0 {
        return;
    }
    let Some(hdr) = ptr_at::<_, [u8; 20]>(ctx, tcp_off) else {
        return;
    };
    // SAFETY: bounds-checked.
    let doff = usize::from(unsafe { (*hdr)[12] } >> 4) * 4;
    let end = tcp_off + doff;
    let mut off = tcp_off + 20;
    for _ in 0..MAX_OPTIONS {
        if off >= end {
            return;
        }
        // Two bytes at a time, even for the one-byte options: the verifier rejects the
        // one-byte bounds check the compiler makes of `ptr_at::<u8>` (see TOOLCHAIN.md). An
        // option list ending on the frame's last byte is simply not clamped.
        let Some(opt) = ptr_at::<_, [u8; 2]>(ctx, off) else {
            return;
        };
        // SAFETY: bounds-checked.
        let (kind, len) = unsafe { ((*opt)[0], usize::from((*opt)[1])) };
        match kind {
            0 => return,
            1 => {
                off += 1;
                continue;
            }
            _ => {}
        }
        if len < 2 {
            return;
        }
        if kind == 2 && len == 4 {
            let Some(value) = ptr_at::<_, [u8; 2]>(ctx, off + 2) else {
                return;
            };
            // SAFETY: bounds-checked.
            let old = unsafe { *value };
            if u16::from_be_bytes(old) <= clamp {
                return;
            }
            let new = clamp.to_be_bytes();
            // A 16-bit field at an odd offset from the header start straddles two checksum
            // words: its contribution is the byte-swapped value.
            let (old_word, new_word) = if (off + 2 - tcp_off).is_multiple_of(2) {
                (u16::from_ne_bytes(old), u16::from_ne_bytes(new))
            } else {
                (
                    u16::from_ne_bytes(old).swap_bytes(),
                    u16::from_ne_bytes(new).swap_bytes(),
                )
            };
            if !ctx.l4_csum_replace16(tcp_off + 16, old_word, new_word) {
                return;
            }
            // Looked up again: a checksum helper may have moved the packet.
            if let Some(value) = ptr_at::<_, [u8; 2]>(ctx, off + 2) {
                // SAFETY: bounds-checked.
                unsafe { *value = new };
            }
            return;
        }
        off += len;
    }
}
