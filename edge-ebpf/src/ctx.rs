//! Bounds-checked access to packet bytes, for XDP and TC contexts alike.

use core::mem;

use aya_ebpf::programs::{TcContext, XdpContext};

use crate::csum;

/// A program context with a linear packet between `data` and `data_end`.
pub trait Packet {
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
    /// Updates the transport checksum at `check_off` for a 16-bit word of the segment changing
    /// from `old` to `new`. False if it could not.
    fn l4_csum_replace16(&self, check_off: usize, old: u16, new: u16) -> bool;
}

/// Volatile reads keep LLVM from merging the two adjacent 32-bit context fields into one 64-bit
/// value and shifting it apart again: the verifier refuses shifts of packet pointers
/// ("pointer arithmetic with <<= operator prohibited").
impl Packet for XdpContext {
    #[inline(always)]
    fn data(&self) -> usize {
        // SAFETY: `ctx` is the program's own context, valid for this run.
        unsafe { core::ptr::read_volatile(&raw const (*self.ctx).data) as usize }
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        // SAFETY: as above.
        unsafe { core::ptr::read_volatile(&raw const (*self.ctx).data_end) as usize }
    }
    /// An XDP frame always carries its full checksum: arithmetic in place.
    #[inline(always)]
    fn l4_csum_replace16(&self, check_off: usize, old: u16, new: u16) -> bool {
        let Some(check) = ptr_at::<_, [u8; 2]>(self, check_off) else {
            return false;
        };
        // SAFETY: bounds-checked.
        unsafe {
            let sum = csum::replace16(u16::from_ne_bytes(*check), old, new);
            *check = sum.to_ne_bytes();
        }
        true
    }
}

impl Packet for TcContext {
    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }
    /// The kernel's helper: an skb may carry a partial checksum (offload), which only covers
    /// the pseudo-header, and the helper knows which kind it is.
    #[inline(always)]
    fn l4_csum_replace16(&self, check_off: usize, old: u16, new: u16) -> bool {
        self.l4_csum_replace(check_off, u64::from(old), u64::from(new), 2)
            .is_ok()
    }
}

/// Pointer to a `T` at `offset` from the start of the packet, if the whole `T` is inside it.
#[inline(always)]
pub fn ptr_at<C: Packet, T>(ctx: &C, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// The hash the kernel has for the packet's flow (0: none yet), without computing one.
#[inline(always)]
pub fn flow_hash(ctx: &TcContext) -> u32 {
    // SAFETY: the context's skb, valid for this run.
    unsafe { (*ctx.skb.skb).hash }
}

/// Gives a translated packet back the flow hash it arrived with. Translating clears it, and
/// RPS on the next device would hash the new headers and steer the flow to another CPU than the
/// one its other hops use: an inter-processor interrupt per packet that plain routing, where
/// the hash the sending socket set travels with the packet, does not pay.
#[inline(always)]
pub fn keep_flow_hash(ctx: &TcContext, hash: u32) {
    if hash != 0 {
        // SAFETY: the context's skb, valid for this run.
        unsafe { aya_ebpf::helpers::bpf_set_hash(ctx.skb.skb.cast(), hash) };
    }
}
