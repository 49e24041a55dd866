//! Packets cross a lab as routed, and labs do not interfere.

use super::{ping, tcp_echo, three_hosts, CLIENT_V4, CLIENT_V6, SERVER_V4, SERVER_V6};
use crate::{find_leftovers, Lab, Result};

#[test]
fn traffic_crosses_the_router_in_both_families() -> Result<()> {
    let lab = three_hosts("fwd")?;
    ping(&lab, "client", SERVER_V4)?;
    ping(&lab, "client", SERVER_V6)?;
    // Routed, not translated: the server sees the client's own address.
    assert_eq!(
        tcp_echo(&lab, "client", "server", SERVER_V4)?.to_string(),
        CLIENT_V4
    );
    assert_eq!(
        tcp_echo(&lab, "client", "server", SERVER_V6)?.to_string(),
        CLIENT_V6
    );
    assert_ne!(lab.ifindex("router", "cl")?, lab.ifindex("router", "sv")?);
    assert_ne!(lab.mac("client", "eth0")?, lab.mac("router", "cl")?);
    Ok(())
}

#[test]
fn labs_with_the_same_label_coexist() -> Result<()> {
    let labs = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..2)
            .map(|_| scope.spawn(|| three_hosts("twin")))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect::<Result<Vec<Lab>>>()
    })?;
    assert_ne!(labs[0].run_id(), labs[1].run_id());
    assert_ne!(labs[0].ns("client").name(), labs[1].ns("client").name());
    for lab in &labs {
        tcp_echo(lab, "client", "server", SERVER_V4)?;
    }
    let runs: Vec<String> = labs.iter().map(|lab| lab.run_id().to_string()).collect();
    drop(labs);
    for run in runs {
        let left = find_leftovers(Some(&run));
        assert!(left.is_empty(), "left behind:\n{left}");
    }
    Ok(())
}
