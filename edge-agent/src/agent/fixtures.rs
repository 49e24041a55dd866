//! Rows shared by the agent's unit tests: the decisions they test are over states, and a state
//! needs backends and services that pass for real ones.

use std::net::Ipv6Addr;

use crate::model::{Backend, BackendAddr, Service};

pub type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A backend of service `web` at `fd00::<last>`:8080, in pool, with limits 100/200.
pub fn backend(id: &str, last: u16) -> Result<Backend, Box<dyn std::error::Error>> {
    Ok(Backend {
        id: id.to_owned(),
        service: "web".to_owned(),
        region: "sa".parse::<crate::model::Region>()?,
        country: "BR".parse::<crate::model::Country>()?,
        addr: BackendAddr::Ip(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, last)),
        port: 8080,
        weight: 1,
        soft_limit: 100,
        hard_limit: 200,
        draining: false,
        enabled: true,
        check: None,
        lease: None,
    })
}

/// Service `id` on `vip`:80.
pub fn service(id: &str, vip: &str) -> Result<Service, Box<dyn std::error::Error>> {
    Ok(Service {
        id: id.to_owned(),
        vip: vip.parse()?,
        port: 80,
        check: None,
    })
}
