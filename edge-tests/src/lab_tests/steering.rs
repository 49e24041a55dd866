//! Receive steering turned off for a measurement: off on the interfaces named only, traffic
//! still passes, and the lab's masks come back with the guard's drop.

use super::{tcp_echo, three_hosts, CLIENT_V4, SERVER_V4};
use crate::{steering::read_mask, Result};

#[test]
fn steering_goes_off_where_named_and_comes_back_with_its_guard() -> Result<()> {
    let lab = three_hosts("steering")?;
    let named = [("router", "cl"), ("server", "eth0")];
    let on = |ns: &str, ifname: &str| read_mask(&lab, ns, ifname);
    let before: Vec<String> = named
        .iter()
        .map(|&(ns, ifname)| on(ns, ifname))
        .collect::<Result<_>>()?;
    assert!(
        before
            .iter()
            .all(|m| u64::from_str_radix(&m.replace(',', ""), 16) != Ok(0)),
        "the lab steers every veth: {before:?}"
    );
    let guard = lab.steering_off(&named)?;
    for mask in guard.masks()? {
        assert_eq!(u64::from_str_radix(&mask.replace(',', ""), 16), Ok(0));
    }
    assert_eq!(
        on("client", "eth0")?,
        on("router", "sv")?,
        "others untouched"
    );
    assert_ne!(
        u64::from_str_radix(&on("client", "eth0")?.replace(',', ""), 16),
        Ok(0)
    );
    assert_eq!(
        tcp_echo(&lab, "client", "server", SERVER_V4)?.to_string(),
        CLIENT_V4
    );
    drop(guard);
    for (&(ns, ifname), mask) in named.iter().zip(&before) {
        assert_eq!(&on(ns, ifname)?, mask, "{ns}:{ifname} after the guard");
    }
    Ok(())
}
