//! The BFD Control packet (RFC 5880 §4.1): encoding, and the checks of §6.8.6 that a received
//! packet must pass before it may touch a session. Hand-written: the mandatory section is 24
//! bytes of fixed fields, and no maintained crate encodes it (the BFD crates found were a
//! dissector, a pcap DSL and an unmaintained daemon). Authentication (§4.2-4.4) is not
//! supported: a packet with the A bit is refused, as §6.8.6 asks of a session without it.

/// The mandatory section; also the only length this speaker sends.
pub const LEN: usize = 24;
/// RFC 5880 §4.1: Vers.
pub const VERSION: u8 = 1;

/// Session states (§4.1 Sta).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    AdminDown,
    Down,
    Init,
    Up,
}

impl State {
    fn from_bits(b: u8) -> State {
        match b & 3 {
            0 => State::AdminDown,
            1 => State::Down,
            2 => State::Init,
            _ => State::Up,
        }
    }

    fn bits(self) -> u8 {
        match self {
            State::AdminDown => 0,
            State::Down => 1,
            State::Init => 2,
            State::Up => 3,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::AdminDown => "admin_down",
            State::Down => "down",
            State::Init => "init",
            State::Up => "up",
        }
    }
}

/// Diagnostic codes this speaker sends or shows (§4.1 Diag).
pub mod diag {
    pub const NONE: u8 = 0;
    pub const DETECTION_TIME_EXPIRED: u8 = 1;
    pub const NEIGHBOR_DOWN: u8 = 3;
    pub const ADMIN_DOWN: u8 = 7;

    pub fn name(code: u8) -> &'static str {
        match code {
            0 => "no diagnostic",
            1 => "control detection time expired",
            2 => "echo function failed",
            3 => "neighbor signaled session down",
            4 => "forwarding plane reset",
            5 => "path down",
            6 => "concatenated path down",
            7 => "administratively down",
            8 => "reverse concatenated path down",
            _ => "reserved",
        }
    }
}

/// One Control packet's mandatory section.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Control {
    pub diag: u8,
    pub state: State,
    pub poll: bool,
    pub final_: bool,
    /// Control Plane Independent: always clear here (the session lives in the agent; see
    /// `bfd/mod.rs`).
    pub cpi: bool,
    pub demand: bool,
    pub detect_mult: u8,
    pub my_disc: u32,
    pub your_disc: u32,
    /// Microseconds.
    pub desired_min_tx: u32,
    pub required_min_rx: u32,
    pub required_min_echo_rx: u32,
}

const FLAG_POLL: u8 = 0x20;
const FLAG_FINAL: u8 = 0x10;
const FLAG_CPI: u8 = 0x08;
const FLAG_AUTH: u8 = 0x04;
const FLAG_DEMAND: u8 = 0x02;
const FLAG_MULTIPOINT: u8 = 0x01;

/// Why a received packet was dropped (each is counted, by this name, in status and metrics).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, thiserror::Error)]
pub enum Malformed {
    #[error("shorter than the 24-byte mandatory section")]
    Short,
    #[error("version is not 1")]
    Version,
    #[error("length field below 24 or beyond the datagram")]
    Length,
    #[error("detect multiplier 0")]
    DetectMult,
    #[error("multipoint bit set")]
    Multipoint,
    #[error("my discriminator 0")]
    MyDiscriminator,
    #[error("your discriminator 0 in a state other than Down or AdminDown")]
    YourDiscriminatorZero,
    #[error("authentication present (not configured)")]
    Authentication,
    #[error("TTL or hop limit not 255 (RFC 5881 §5)")]
    Ttl,
    #[error("no TTL or hop limit in the datagram's control data")]
    NoTtl,
    #[error("your discriminator names no session")]
    UnknownDiscriminator,
    #[error("from an address that is not a BFD peer")]
    UnknownPeer,
}

impl Malformed {
    pub const ALL: [Malformed; 12] = [
        Malformed::Short,
        Malformed::Version,
        Malformed::Length,
        Malformed::DetectMult,
        Malformed::Multipoint,
        Malformed::MyDiscriminator,
        Malformed::YourDiscriminatorZero,
        Malformed::Authentication,
        Malformed::Ttl,
        Malformed::NoTtl,
        Malformed::UnknownDiscriminator,
        Malformed::UnknownPeer,
    ];

    /// The label in `edge-agent status` and `/metrics`.
    pub fn as_str(self) -> &'static str {
        match self {
            Malformed::Short => "short",
            Malformed::Version => "version",
            Malformed::Length => "length",
            Malformed::DetectMult => "detect_mult",
            Malformed::Multipoint => "multipoint",
            Malformed::MyDiscriminator => "my_discriminator",
            Malformed::YourDiscriminatorZero => "your_discriminator_zero",
            Malformed::Authentication => "authentication",
            Malformed::Ttl => "ttl",
            Malformed::NoTtl => "no_ttl",
            Malformed::UnknownDiscriminator => "unknown_discriminator",
            Malformed::UnknownPeer => "unknown_peer",
        }
    }

    pub fn index(self) -> usize {
        Malformed::ALL.iter().position(|m| *m == self).unwrap_or(0)
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    match b.get(at..at + 4) {
        Some(&[a, b, c, d]) => u32::from_be_bytes([a, b, c, d]),
        _ => 0,
    }
}

impl Control {
    /// Parses `b` (a whole UDP payload) with the packet checks of RFC 5880 §6.8.6, in its order.
    pub fn parse(b: &[u8]) -> Result<Control, Malformed> {
        if b.len() < LEN {
            return Err(Malformed::Short);
        }
        if b[0] >> 5 != VERSION {
            return Err(Malformed::Version);
        }
        let flags = b[1] & 0x3f;
        // "If the A bit is set, the Length field MUST be at least 26; otherwise at least 24",
        // and never more than the payload.
        let length = usize::from(b[3]);
        let least = if flags & FLAG_AUTH != 0 { 26 } else { LEN };
        if length < least || length > b.len() {
            return Err(Malformed::Length);
        }
        let c = Control {
            diag: b[0] & 0x1f,
            state: State::from_bits(b[1] >> 6),
            poll: flags & FLAG_POLL != 0,
            final_: flags & FLAG_FINAL != 0,
            cpi: flags & FLAG_CPI != 0,
            demand: flags & FLAG_DEMAND != 0,
            detect_mult: b[2],
            my_disc: be32(b, 4),
            your_disc: be32(b, 8),
            desired_min_tx: be32(b, 12),
            required_min_rx: be32(b, 16),
            required_min_echo_rx: be32(b, 20),
        };
        if c.detect_mult == 0 {
            return Err(Malformed::DetectMult);
        }
        if flags & FLAG_MULTIPOINT != 0 {
            return Err(Malformed::Multipoint);
        }
        if c.my_disc == 0 {
            return Err(Malformed::MyDiscriminator);
        }
        if c.your_disc == 0 && !matches!(c.state, State::Down | State::AdminDown) {
            return Err(Malformed::YourDiscriminatorZero);
        }
        if flags & FLAG_AUTH != 0 {
            return Err(Malformed::Authentication);
        }
        Ok(c)
    }

    pub fn encode(&self) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        b[0] = (VERSION << 5) | (self.diag & 0x1f);
        let flags = [
            (self.poll, FLAG_POLL),
            (self.final_, FLAG_FINAL),
            (self.cpi, FLAG_CPI),
            (self.demand, FLAG_DEMAND),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .fold(0, |f, (_, bit)| f | bit);
        b[1] = (self.state.bits() << 6) | flags;
        b[2] = self.detect_mult;
        b[3] = LEN as u8;
        b[4..8].copy_from_slice(&self.my_disc.to_be_bytes());
        b[8..12].copy_from_slice(&self.your_disc.to_be_bytes());
        b[12..16].copy_from_slice(&self.desired_min_tx.to_be_bytes());
        b[16..20].copy_from_slice(&self.required_min_rx.to_be_bytes());
        b[20..24].copy_from_slice(&self.required_min_echo_rx.to_be_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up() -> Control {
        Control {
            diag: diag::NONE,
            state: State::Up,
            poll: false,
            final_: true,
            cpi: false,
            demand: false,
            detect_mult: 3,
            my_disc: 0x0102_0304,
            your_disc: 7,
            desired_min_tx: 100_000,
            required_min_rx: 300_000,
            required_min_echo_rx: 0,
        }
    }

    #[test]
    fn encodes_the_rfc_layout_and_parses_it_back() -> Result<(), Malformed> {
        let b = up().encode();
        // Vers 1, Diag 0 | Sta Up (3), F | mult 3 | length 24
        assert_eq!(&b[..4], &[0x20, 0xd0, 3, 24]);
        assert_eq!(&b[4..8], &[1, 2, 3, 4]);
        assert_eq!(&b[12..16], &100_000u32.to_be_bytes());
        assert_eq!(Control::parse(&b)?, up());
        // Trailing bytes beyond the length field are allowed (the length is what counts).
        let mut longer = b.to_vec();
        longer.extend_from_slice(&[0; 8]);
        assert_eq!(Control::parse(&longer)?, up());
        Ok(())
    }

    #[test]
    fn every_malformation_is_named() {
        let good = up().encode();
        let with = |f: &dyn Fn(&mut [u8; LEN])| {
            let mut b = good;
            f(&mut b);
            Control::parse(&b).err()
        };
        assert_eq!(Control::parse(&good[..23]).err(), Some(Malformed::Short));
        assert_eq!(with(&|b| b[0] = 0x40), Some(Malformed::Version));
        assert_eq!(with(&|b| b[0] = 0), Some(Malformed::Version));
        assert_eq!(with(&|b| b[3] = 23), Some(Malformed::Length));
        assert_eq!(with(&|b| b[3] = 25), Some(Malformed::Length));
        assert_eq!(with(&|b| b[2] = 0), Some(Malformed::DetectMult));
        assert_eq!(with(&|b| b[1] |= 1), Some(Malformed::Multipoint));
        assert_eq!(with(&|b| b[4..8].fill(0)), Some(Malformed::MyDiscriminator));
        assert_eq!(
            with(&|b| b[8..12].fill(0)),
            Some(Malformed::YourDiscriminatorZero)
        );
        // Down with your discriminator 0 is how every session starts.
        assert_eq!(
            with(&|b| {
                b[8..12].fill(0);
                b[1] = 0x40;
            }),
            None
        );
        // A bit: at least 26 bytes, then refused as unsupported.
        assert_eq!(with(&|b| b[1] |= 4), Some(Malformed::Length));
        let mut auth = good.to_vec();
        auth.extend_from_slice(&[1, 2]);
        auth[1] |= 4;
        auth[3] = 26;
        assert_eq!(Control::parse(&auth).err(), Some(Malformed::Authentication));
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = fastrand::Rng::with_seed(5880);
        let good = up().encode();
        for _ in 0..200_000 {
            let len = rng.usize(0..40);
            let mut b: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            if rng.bool() && len >= LEN {
                b[..LEN].copy_from_slice(&good);
                let i = rng.usize(..LEN);
                b[i] = rng.u8(..);
            }
            if let Ok(c) = Control::parse(&b) {
                assert!(c.detect_mult > 0 && c.my_disc != 0, "{c:?} from {b:?}");
            }
        }
    }
}
