//! The flow hash, shared so that the agent and tests can predict the kernel's choices.
//!
//! MurmurHash3's 32-bit mixing (Appleby, public domain): a few multiplies and rotates per word,
//! cheap enough for the per-SYN budget and well distributed over 5-tuples.

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;

#[inline(always)]
const fn mix(h: u32, k: u32) -> u32 {
    let k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[inline(always)]
const fn word(a: &[u8; 16], i: usize) -> u32 {
    u32::from_le_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]])
}

/// Hash of a flow's client side: source and destination address and ports.
#[inline(always)]
pub const fn flow_hash(src: &[u8; 16], dst: &[u8; 16], sport: u16, dport: u16) -> u32 {
    let mut h = 0x5eed_u32;
    h = mix(h, word(src, 0));
    h = mix(h, word(src, 4));
    h = mix(h, word(src, 8));
    h = mix(h, word(src, 12));
    h = mix(h, word(dst, 0));
    h = mix(h, word(dst, 4));
    h = mix(h, word(dst, 8));
    h = mix(h, word(dst, 12));
    h = mix(h, (sport as u32) << 16 | dport as u32);
    // Finalizer (fmix32).
    h ^= 36;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}
