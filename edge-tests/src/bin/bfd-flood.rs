//! `bfd-flood`: sends malformed BFD Control packets (RFC 5880 §4.1) to a BFD speaker, cycling
//! through the kinds a receiver must drop: bad version, bad length, detect multiplier 0, TTL
//! other than 255 (RFC 5881 §5), and an unknown Your Discriminator. Prints one JSON line with the
//! count of each kind sent.
//!
//! ```text
//! bfd-flood --target ADDR:PORT --count N [--pps P] [--avoid-disc D]
//! ```

use std::{
    net::{SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

const KINDS: [&str; 5] = [
    "version",
    "length",
    "detect_mult",
    "ttl",
    "unknown_discriminator",
];

/// A well-formed Up packet with Your Discriminator `your`.
fn packet(your: u32) -> [u8; 24] {
    let mut b = [0u8; 24];
    b[0] = 1 << 5;
    b[1] = 3 << 6;
    b[2] = 3;
    b[3] = 24;
    b[4..8].copy_from_slice(&0x5eed_0001u32.to_be_bytes());
    b[8..12].copy_from_slice(&your.to_be_bytes());
    b[12..16].copy_from_slice(&100_000u32.to_be_bytes());
    b[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    b
}

fn main() -> anyhow::Result<()> {
    let mut target: Option<SocketAddr> = None;
    let (mut count, mut pps, mut avoid) = (100_000u64, 50_000u64, 0u32);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))?;
        match flag.as_str() {
            "--target" => target = Some(value.parse()?),
            "--count" => count = value.parse()?,
            "--pps" => pps = value.parse()?,
            "--avoid-disc" => avoid = value.parse()?,
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    let target = target.ok_or_else(|| anyhow::anyhow!("--target is required"))?;
    let bind: SocketAddr = if target.is_ipv6() {
        "[::]:0".parse()?
    } else {
        "0.0.0.0:0".parse()?
    };
    let set_ttl = |s: &UdpSocket, ttl: u32| -> std::io::Result<()> {
        if target.is_ipv6() {
            socket2::SockRef::from(s).set_unicast_hops_v6(ttl)
        } else {
            s.set_ttl(ttl)
        }
    };
    let good = UdpSocket::bind(bind)?;
    set_ttl(&good, 255)?;
    let low = UdpSocket::bind(bind)?;
    set_ttl(&low, 254)?;
    let mut sent = [0u64; KINDS.len()];
    let mut disc = 0x1000_0000u32;
    let start = Instant::now();
    for i in 0..count {
        let kind = (i % KINDS.len() as u64) as usize;
        let mut b = packet(7);
        let mut sock = &good;
        match kind {
            0 => b[0] = 2 << 5,
            1 => b[3] = 20,
            2 => b[2] = 0,
            3 => sock = &low,
            _ => {
                disc = disc.wrapping_add(1).max(1);
                if disc == avoid {
                    disc = disc.wrapping_add(1).max(1);
                }
                b = packet(disc);
            }
        }
        sock.send_to(&b, target)?;
        sent[kind] += 1;
        // Paced: the receiver's socket buffer, not the agent, would drop a burst.
        let due = start + Duration::from_secs_f64((i + 1) as f64 / pps.max(1) as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    let fields: Vec<String> = KINDS
        .iter()
        .zip(sent)
        .map(|(k, n)| format!("\"{k}\":{n}"))
        .collect();
    println!(
        "{{\"sent\":{count},\"seconds\":{:.2},{}}}",
        start.elapsed().as_secs_f64(),
        fields.join(",")
    );
    Ok(())
}
