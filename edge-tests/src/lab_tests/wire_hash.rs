//! The benchmark lab's NIC-like receive hash: attached to a wire's sending ends it lets traffic
//! through, is on the egress of the interfaces named and no other, and goes with its guard.

use super::{tcp_echo, three_hosts, CLIENT_V4, SERVER_V4};
use crate::{hash_like_a_nic, wire_hash::egress_programs, Result};

#[test]
fn the_wire_hash_passes_traffic_and_goes_with_its_guard() -> Result<()> {
    let lab = three_hosts("wirehash")?;
    let guard = hash_like_a_nic(&lab, &[("client", "eth0"), ("server", "eth0")])?;
    for (ns, ifname) in [("client", "eth0"), ("server", "eth0")] {
        assert_eq!(egress_programs(&lab, ns, ifname)?, 1, "{ns}:{ifname}");
    }
    assert_eq!(egress_programs(&lab, "router", "cl")?, 0);
    assert_eq!(
        tcp_echo(&lab, "client", "server", SERVER_V4)?.to_string(),
        CLIENT_V4
    );
    drop(guard);
    assert_eq!(
        egress_programs(&lab, "client", "eth0")?,
        0,
        "left after its guard"
    );
    Ok(())
}
