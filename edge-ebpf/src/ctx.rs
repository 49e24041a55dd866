//! Bounds-checked access to packet bytes, for XDP and TC contexts alike.

use core::mem;

use aya_ebpf::programs::{TcContext, XdpContext};

/// A program context with a linear packet between `data` and `data_end`.
pub trait Packet {
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
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
