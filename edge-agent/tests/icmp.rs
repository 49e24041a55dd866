//! ICMP and ICMPv6 errors about translated flows through `BPF_PROG_TEST_RUN` (issue 22): from
//! the client side (quoting VIP -> client) to the backend, through both forward hooks; from the
//! overlay (quoting POP -> backend) to the client, through the reply program; each type in
//! both families, translated with every checksum checked by `etherparse`; errors naming no
//! flow passed untouched; forged quotes refused and counted; echo to a VIP left to the kernel.
//! Needs root.

#[macro_use]
mod support;

use std::net::IpAddr;

use edge_common::DropStats;
use etherparse::PacketBuilder;
use support::{icmp::*, nat::*};

/// Each ICMPv4 error type from an IPv4 client's path, quoting its flow's VIP -> client
/// segment, reaches the backend as the ICMPv6 error RFC 7915 makes of it, about the backend's
/// own segment; a Fragmentation Needed's MTU grows by the 20 bytes NAT64 takes off.
fn ipv4_client_errors_reach_the_backend_as_icmpv6(hook: Hook) -> TestResult {
    let mut nat = Nat::new(hook)?;
    let syn = nat.handshake4(40000)?;
    let vip = IpAddr::from(VIP4);
    let client = IpAddr::from(CLIENT4);
    let quoted = quote(vip, client, (80, 40000), BACKEND_SEQ, 20 + 20 + QUOTED_DATA)?;
    // (ICMPv4 type, code, bytes 5-8) -> (ICMPv6 type, code, bytes 5-8)
    let cases: [(Kind, Kind, &str); 5] = [
        (
            (3, 4, [0, 0, 0x05, 0x78]),
            (2, 0, 1420u32.to_be_bytes()),
            "Fragmentation Needed, MTU 1400",
        ),
        (
            (3, 4, [0, 0, 0x04, 0xc4]),
            (2, 0, 1280u32.to_be_bytes()),
            "MTU 1220: IPv6's floor",
        ),
        ((3, 1, [0; 4]), (1, 0, [0; 4]), "host unreachable"),
        ((3, 3, [0; 4]), (1, 4, [0; 4]), "port unreachable"),
        ((11, 0, [0; 4]), (3, 0, [0; 4]), "time exceeded"),
    ];
    for ((kind, code, rest), (kind6, code6, rest6), what) in cases {
        let before = nat.drops()?;
        let frame = icmp4(ROUTER4, VIP4, kind, code, rest, &quoted)?;
        let (verdict, out) = nat.forward(&frame)?;
        assert_eq!(
            verdict,
            Verdict::Pass,
            "{what}: to the kernel's routing (no next hop in this namespace)"
        );
        let e = parse_error(&out)?;
        assert_eq!(
            (e.src, e.dst),
            (syn.src, syn.dst),
            "{what}: from the POP's overlay address to the backend"
        );
        assert_eq!((e.kind, e.code, e.rest), (kind6, code6, rest6), "{what}");
        assert_eq!(
            e.inner,
            (
                syn.dst,
                syn.src,
                8080,
                syn.sport,
                BACKEND_SEQ,
                (20 + 1400) as u16
            ),
            "{what}: the quote is the backend's own segment, its IPv6 payload length restored"
        );
        assert_eq!(e.tail, quoted[28..], "{what}: the rest of the quote intact");
        assert_eq!(
            out.len(),
            frame.len() + 40,
            "{what}: 20 bytes more outside, 20 quoted"
        );
        same_except(&before, &nat.drops()?, what, |d| d.icmp_to_backend, 1);
    }
    Ok(())
}

/// Each ICMPv6 error type from an IPv6 client's path reaches the backend: the same type, the
/// MTU as it was (at least 1280).
fn ipv6_client_errors_reach_the_backend(hook: Hook) -> TestResult {
    let mut nat = Nat::new(hook)?;
    let syn = handshake6(&mut nat, 50000)?;
    let quoted = quote(
        ip(VIP6)?,
        ip(CLIENT6)?,
        (80, 50000),
        BACKEND_SEQ,
        40 + 20 + QUOTED_DATA,
    )?;
    let cases: [(Kind, [u8; 4], &str); 4] = [
        (
            (2, 0, 1280u32.to_be_bytes()),
            1280u32.to_be_bytes(),
            "Packet Too Big, MTU 1280",
        ),
        (
            (2, 0, 1000u32.to_be_bytes()),
            1280u32.to_be_bytes(),
            "MTU 1000: IPv6's floor",
        ),
        ((1, 3, [0; 4]), [0; 4], "address unreachable"),
        ((3, 0, [0; 4]), [0; 4], "time exceeded"),
    ];
    for ((kind, code, rest), rest6, what) in cases {
        let before = nat.drops()?;
        let frame = icmp6(
            (MAC_CLIENT, MAC_POP),
            ROUTER6,
            VIP6,
            kind,
            code,
            rest,
            &quoted,
        )?;
        let (verdict, out) = nat.forward(&frame)?;
        assert_eq!(verdict, Verdict::Pass, "{what}");
        let e = parse_error(&out)?;
        assert_eq!((e.src, e.dst), (syn.src, syn.dst), "{what}");
        assert_eq!((e.kind, e.code, e.rest), (kind, code, rest6), "{what}");
        assert_eq!(
            e.inner,
            (syn.dst, syn.src, 8080, syn.sport, BACKEND_SEQ, 20 + 1400),
            "{what}"
        );
        assert_eq!(e.tail, quoted[48..], "{what}");
        assert_eq!(out.len(), frame.len(), "{what}: same size");
        same_except(&before, &nat.drops()?, what, |d| d.icmp_to_backend, 1);
    }
    Ok(())
}

/// Each ICMPv6 error type from the overlay, quoting a flow's POP -> backend segment, reaches
/// the client: an IPv6 client as ICMPv6 from the VIP, an IPv4 one as ICMPv4 (RFC 7915), a
/// Packet Too Big's MTU 20 bytes smaller, about the client's own segment.
fn overlay_errors_reach_the_client(hook: Hook) -> TestResult {
    let mut nat = Nat::new(hook)?;
    let syn4 = nat.handshake4(40000)?;
    let syn6 = handshake6(&mut nat, 50000)?;
    let macs = (MAC_POP, MAC_CLIENT);
    // (ICMPv6 type, code, bytes 5-8) -> IPv6 client's, IPv4 client's (type, code, bytes 5-8)
    let cases: [(Kind, [u8; 4], Kind, &str); 4] = [
        (
            (2, 0, 1400u32.to_be_bytes()),
            1400u32.to_be_bytes(),
            (3, 4, [0, 0, 0x05, 0x64]),
            "Packet Too Big, MTU 1400",
        ),
        (
            (1, 3, [0; 4]),
            [0; 4],
            (3, 1, [0; 4]),
            "address unreachable",
        ),
        ((1, 4, [0; 4]), [0; 4], (3, 3, [0; 4]), "port unreachable"),
        ((3, 0, [0; 4]), [0; 4], (11, 0, [0; 4]), "time exceeded"),
    ];
    for ((kind, code, rest), rest6, (kind4, code4, rest4), what) in cases {
        for (syn, vip, client, sport) in [
            (&syn6, ip(VIP6)?, ip(CLIENT6)?, 50000),
            (&syn4, IpAddr::from(VIP4), IpAddr::from(CLIENT4), 40000),
        ] {
            let quoted = quote(
                syn.src,
                syn.dst,
                (syn.sport, 8080),
                CLIENT_SEQ,
                40 + 20 + QUOTED_DATA,
            )?;
            let before = nat.drops()?;
            let frame = icmp6(macs, HUB, OVERLAY, kind, code, rest, &quoted)?;
            let (verdict, out) = nat.tc(&frame)?;
            assert_eq!(
                verdict, TC_ACT_REDIRECT,
                "{what} for {client}: out of the public interface"
            );
            let e = parse_error(&out)?;
            assert_eq!(
                (e.src, e.dst),
                (vip, client),
                "{what}: from the VIP to the client"
            );
            let expected = if client.is_ipv4() {
                (kind4, code4, rest4)
            } else {
                (kind, code, rest6)
            };
            assert_eq!((e.kind, e.code, e.rest), expected, "{what} for {client}");
            let len = if client.is_ipv4() {
                20 + 20 + 1400
            } else {
                20 + 1400
            };
            assert_eq!(
                e.inner,
                (client, vip, sport, 80, CLIENT_SEQ, len),
                "{what}: the client's own segment"
            );
            assert_eq!(e.tail, quoted[48..], "{what}: the rest of the quote intact");
            same_except(&before, &nat.drops()?, what, |d| d.icmp_to_client, 1);
        }
    }
    Ok(())
}

/// With a SNAT prefix the overlay's errors are addressed to the client's own address under it.
fn overlay_errors_reach_a_snat_prefix_client(hook: Hook) -> TestResult {
    let mut nat = Nat::with(hook, 4096, Some("fd00:ee:ff::/96".parse()?))?;
    let syn = nat.handshake4(40010)?;
    let source = syn.src.to_string();
    assert!(
        source.starts_with("fd00:ee:ff::"),
        "translated from the prefix: {source}"
    );
    let quoted = quote(
        syn.src,
        syn.dst,
        (syn.sport, 8080),
        CLIENT_SEQ,
        40 + 20 + QUOTED_DATA,
    )?;
    let (verdict, out) = nat.tc(&icmp6(
        (MAC_POP, MAC_CLIENT),
        HUB,
        &source,
        2,
        0,
        1300u32.to_be_bytes(),
        &quoted,
    )?)?;
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let e = parse_error(&out)?;
    assert_eq!(
        (e.src, e.dst, e.kind, e.code, e.rest),
        (
            IpAddr::from(VIP4),
            IpAddr::from(CLIENT4),
            3,
            4,
            [0, 0, 0x05, 0x00]
        )
    );
    assert_eq!(nat.drops()?.icmp_to_client, 1);
    Ok(())
}

/// Errors that name no established flow reach the kernel as they came: counted when the quote
/// is a service's (or the POP's translated source's), not when it is the host's own.
fn errors_about_no_flow_pass_untouched(hook: Hook) -> TestResult {
    let mut nat = Nat::new(hook)?;
    let syn = nat.handshake4(40000)?;
    let (vip, client) = (IpAddr::from(VIP4), IpAddr::from(CLIENT4));
    let cases: [(Vec<u8>, u64, &str); 4] = [
        (
            icmp4(
                ROUTER4,
                VIP4,
                3,
                4,
                [0, 0, 5, 0x78],
                &quote(vip, client, (80, 40999), BACKEND_SEQ, 68)?,
            )?,
            1,
            "a VIP's segment to another client port",
        ),
        (
            icmp4(
                ROUTER4,
                VIP4,
                3,
                4,
                [0, 0, 5, 0x78],
                &quote(vip, client, (22, 40000), BACKEND_SEQ, 68)?,
            )?,
            0,
            "the host's own SSH",
        ),
        (
            icmp6(
                (MAC_CLIENT, MAC_POP),
                ROUTER6,
                VIP6,
                2,
                0,
                1280u32.to_be_bytes(),
                &quote(ip(VIP6)?, ip(CLIENT6)?, (80, 50000), BACKEND_SEQ, 88)?,
            )?,
            1,
            "an IPv6 client with no flow",
        ),
        (
            icmp4(
                ROUTER4,
                VIP4,
                3,
                3,
                [0; 4],
                &quote(
                    vip,
                    IpAddr::from([198, 51, 100, 8]),
                    (80, 40000),
                    BACKEND_SEQ,
                    68,
                )?,
            )?,
            1,
            "another client's address",
        ),
    ];
    for (frame, counted, what) in cases {
        let before = nat.drops()?;
        let (verdict, out) = nat.forward(&frame)?;
        assert_eq!(verdict, Verdict::Pass, "{what}");
        assert_eq!(out, frame, "{what}: untouched");
        same_except(&before, &nat.drops()?, what, |d| d.icmp_no_flow, counted);
    }
    // Another port of the overlay address's range (10000-32767 here).
    let other = if syn.sport > 10_000 {
        syn.sport - 1
    } else {
        syn.sport + 1
    };
    let overlay = [
        (
            quote(syn.src, syn.dst, (other, 8080), CLIENT_SEQ, 88)?,
            1,
            "the POP's port with no flow",
        ),
        (
            quote(syn.src, syn.dst, (45000, 8080), CLIENT_SEQ, 88)?,
            0,
            "a port of the POP's own connections (a health check)",
        ),
    ];
    for (quoted, counted, what) in overlay {
        let frame = icmp6(
            (MAC_POP, MAC_CLIENT),
            HUB,
            OVERLAY,
            2,
            0,
            1280u32.to_be_bytes(),
            &quoted,
        )?;
        let before = nat.drops()?;
        let (verdict, out) = nat.tc(&frame)?;
        assert_eq!(verdict, 0, "{what}: TC_ACT_OK");
        assert_eq!(out, frame, "{what}: untouched");
        same_except(&before, &nat.drops()?, what, |d| d.icmp_no_flow, counted);
    }
    Ok(())
}

/// Quotes that name a live flow but cannot be a router's report of it are dropped and counted:
/// truncated, not addressed to the quoted source, a sequence number far from the flow's (a
/// blind forgery of another client's flow), a code with no counterpart; and more than 10 a
/// second for one flow.
fn forged_and_excess_errors_are_refused_and_counted(hook: Hook) -> TestResult {
    let mut nat = Nat::new(hook)?;
    let syn = nat.handshake4(40000)?;
    let (vip, client) = (IpAddr::from(VIP4), IpAddr::from(CLIENT4));
    let ptb =
        |quoted: &[u8], to: [u8; 4]| icmp4([198, 51, 100, 66], to, 3, 4, [0, 0, 5, 0x78], quoted);
    type Field = fn(&DropStats) -> u64;
    let cases: [(Vec<u8>, Field, &str); 5] = [
        (
            ptb(&quote(vip, client, (80, 40000), BACKEND_SEQ, 24)?, VIP4)?,
            |d| d.icmp_bad_quote,
            "only the ports quoted",
        ),
        (
            ptb(
                &quote(vip, client, (80, 40000), BACKEND_SEQ, 68)?,
                [198, 18, 0, 11],
            )?,
            |d| d.icmp_bad_quote,
            "addressed to another address than the VIP",
        ),
        (
            ptb(
                &quote(
                    vip,
                    client,
                    (80, 40000),
                    BACKEND_SEQ.wrapping_add(1 << 30),
                    68,
                )?,
                VIP4,
            )?,
            |d| d.icmp_out_of_window,
            "another client's flow, its sequence number guessed",
        ),
        (
            ptb(
                &quote(
                    vip,
                    client,
                    (80, 40000),
                    BACKEND_SEQ.wrapping_sub(2 << 20),
                    68,
                )?,
                VIP4,
            )?,
            |d| d.icmp_out_of_window,
            "long acknowledged data",
        ),
        (
            icmp4(
                ROUTER4,
                VIP4,
                3,
                2,
                [0; 4],
                &quote(vip, client, (80, 40000), BACKEND_SEQ, 68)?,
            )?,
            |d| d.icmp_untranslatable,
            "protocol unreachable (for TCP)",
        ),
    ];
    for (frame, field, what) in cases {
        let before = nat.drops()?;
        let (verdict, _) = nat.forward(&frame)?;
        assert_eq!(verdict, Verdict::Drop, "{what}: refused");
        same_except(&before, &nat.drops()?, what, field, 1);
    }

    let quoted = quote(syn.src, syn.dst, (syn.sport, 8080), CLIENT_SEQ, 88)?;
    let overlay: [(Vec<u8>, Field, &str); 4] = [
        (
            icmp6(
                (MAC_POP, MAC_CLIENT),
                HUB,
                OVERLAY,
                2,
                0,
                1280u32.to_be_bytes(),
                &quoted[..44],
            )?,
            |d| d.icmp_bad_quote,
            "overlay: only the ports quoted",
        ),
        (
            icmp6(
                (MAC_POP, MAC_CLIENT),
                HUB,
                "fd00:ee::2",
                2,
                0,
                1280u32.to_be_bytes(),
                &quoted,
            )?,
            |d| d.icmp_bad_quote,
            "overlay: not addressed to the quoted source",
        ),
        (
            icmp6(
                (MAC_POP, MAC_CLIENT),
                HUB,
                OVERLAY,
                2,
                0,
                1280u32.to_be_bytes(),
                &quote(syn.src, syn.dst, (syn.sport, 8080), 0xdead_beef, 88)?,
            )?,
            |d| d.icmp_out_of_window,
            "overlay: a guessed sequence number",
        ),
        (
            icmp6((MAC_POP, MAC_CLIENT), HUB, OVERLAY, 1, 5, [0; 4], &quoted)?,
            |d| d.icmp_untranslatable,
            "overlay: source address failed policy, for an IPv4 client",
        ),
    ];
    for (frame, field, what) in overlay {
        let before = nat.drops()?;
        let (verdict, _) = nat.tc(&frame)?;
        assert_eq!(verdict, TC_ACT_SHOT, "{what}: refused");
        same_except(&before, &nat.drops()?, what, field, 1);
    }

    // The limit: 10 a second per flow and direction, the refused ones included in no budget.
    let frame = icmp4(
        ROUTER4,
        VIP4,
        3,
        4,
        [0, 0, 5, 0x78],
        &quote(vip, client, (80, 40000), BACKEND_SEQ, 68)?,
    )?;
    let before = nat.drops()?;
    let verdicts: Vec<Verdict> = (0..12)
        .map(|_| nat.forward(&frame).map(|(v, _)| v))
        .collect::<Result<_, _>>()?;
    let after = nat.drops()?;
    assert_eq!(
        after.icmp_to_backend - before.icmp_to_backend,
        10,
        "{verdicts:?}"
    );
    assert_eq!(
        after.icmp_rate_limited - before.icmp_rate_limited,
        2,
        "{verdicts:?}"
    );
    assert_eq!(
        verdicts[10..],
        [Verdict::Drop, Verdict::Drop],
        "the 11th and 12th are dropped"
    );
    let (_, out) = nat.tc(&icmp6(
        (MAC_POP, MAC_CLIENT),
        HUB,
        OVERLAY,
        2,
        0,
        1280u32.to_be_bytes(),
        &quoted,
    )?)?;
    assert_eq!(
        parse_error(&out)?.dst,
        client,
        "the other direction has its own budget"
    );
    Ok(())
}

/// Echo requests to a VIP are the kernel's to answer (the VIP is a local address of the POP):
/// passed untouched, no flow made, nothing counted.
fn echo_to_a_vip_goes_to_the_kernel(hook: Hook) -> TestResult {
    let mut nat = Nat::new(hook)?;
    let mut ping4 = Vec::new();
    PacketBuilder::ethernet2(MAC_CLIENT, MAC_POP)
        .ipv4(CLIENT4, VIP4, 64)
        .icmpv4_echo_request(7, 1)
        .write(&mut ping4, b"ping")?;
    let mut ping6 = Vec::new();
    PacketBuilder::ethernet2(MAC_CLIENT, MAC_POP)
        .ipv6(v6(CLIENT6)?, v6(VIP6)?, 64)
        .icmpv6_echo_request(7, 1)
        .write(&mut ping6, b"ping")?;
    let before = nat.drops()?;
    for frame in [ping4, ping6] {
        let (verdict, out) = nat.forward(&frame)?;
        assert_eq!(verdict, Verdict::Pass);
        assert_eq!(out, frame, "untouched");
    }
    assert_eq!(nat.drops()?, before, "nothing counted");
    assert!(nat.entries()?.is_empty(), "no flow");
    Ok(())
}

for_both_hooks!(
    ipv4_client_errors_reach_the_backend_as_icmpv6,
    ipv6_client_errors_reach_the_backend,
    overlay_errors_reach_the_client,
    overlay_errors_reach_a_snat_prefix_client,
    errors_about_no_flow_pass_untouched,
    forged_and_excess_errors_are_refused_and_counted,
    echo_to_a_vip_goes_to_the_kernel,
);
