//! Receive packet steering (RPS) on the lab's veths: on by default (see `Lab`), and off for a
//! while where a measurement must not depend on which CPU a flow's hash picks.

use crate::{Lab, Result};

/// The sysfs file of `ifname`'s receive steering, as seen from inside its namespace.
fn rps_file(ifname: &str) -> String {
    format!("/sys/class/net/{ifname}/queues/rx-0/rps_cpus")
}

/// The CPU mask `ifname` in `ns` steers received packets to (hex, as sysfs writes it).
pub(crate) fn read_mask(lab: &Lab, ns: &str, ifname: &str) -> Result<String> {
    let out = lab.ns(ns).exec_ok(&["cat", &rps_file(ifname)])?;
    Ok(out.stdout.trim().to_owned())
}

/// Sets the CPU mask `ifname` in `ns` steers received packets to (`0`: none).
pub(crate) fn write_mask(lab: &Lab, ns: &str, ifname: &str, mask: &str) -> Result<()> {
    let write = format!("echo {mask} > {}", rps_file(ifname));
    lab.ns(ns).exec_ok(&["sh", "-c", &write])?;
    Ok(())
}

/// Steering turned off on some of a lab's interfaces; dropping this turns it back on, with the
/// masks they had.
#[derive(Debug)]
pub struct SteeringOff<'a> {
    lab: &'a Lab,
    /// (namespace label, interface, the mask it had).
    saved: Vec<(String, String, String)>,
}

impl Lab {
    /// Turns receive steering off on `ifaces` (namespace label, interface) until the guard
    /// drops: a packet a veth receives is then processed on the CPU that sent it, in the
    /// sender's own system call, as far as the path goes without waking anyone. A round trip's
    /// time then no longer depends on whether its tuple's hash sent each hop to another CPU
    /// (an idle one takes tens of microseconds to wake on a virtual machine): with two CPUs
    /// and four hops, one connection's figure otherwise reads as one of a few levels, picked
    /// by the tuple a mode gives the packets.
    pub fn steering_off(&self, ifaces: &[(&str, &str)]) -> Result<SteeringOff<'_>> {
        let mut guard = SteeringOff {
            lab: self,
            saved: Vec::new(),
        };
        for &(ns, ifname) in ifaces {
            let mask = read_mask(self, ns, ifname)?;
            write_mask(self, ns, ifname, "0")?;
            guard.saved.push((ns.to_owned(), ifname.to_owned(), mask));
        }
        Ok(guard)
    }
}

impl SteeringOff<'_> {
    /// The masks in force on the guarded interfaces now.
    pub fn masks(&self) -> Result<Vec<String>> {
        self.saved
            .iter()
            .map(|(ns, ifname, _)| read_mask(self.lab, ns, ifname))
            .collect()
    }
}

impl Drop for SteeringOff<'_> {
    fn drop(&mut self) {
        for (ns, ifname, mask) in &self.saved {
            if let Err(e) = write_mask(self.lab, ns, ifname, mask) {
                eprintln!("edge_tests: restoring receive steering on {ns}:{ifname}: {e}");
            }
        }
    }
}
