//! Services (VIP, port) and backends as the kernel looks them up.

/// A service's address as clients reach it. `port` in network byte order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct ServiceKey {
    pub addr: [u8; 16],
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// A service: its id (index of its counters and of its rows in `SERVICE_RINGS`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct ServiceValue {
    pub service_id: u32,
    /// `SERVICE_*` bits.
    pub flags: u32,
}

/// Clients of this service stay with their backend (see `AffinityKey`).
pub const SERVICE_AFFINITY: u32 = 1;

/// A ring slot with no backend (a service with no eligible backend): new flows are dropped.
pub const NO_BACKEND: u32 = u32::MAX;

/// Where a backend listens on the overlay. `port` in network byte order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct BackendValue {
    pub addr: [u8; 16],
    pub port: u16,
    pub _pad: u16,
    /// `BACKEND_*` bits.
    pub flags: u32,
}

/// The slot holds a configured backend (an all-zero slot is free).
pub const BACKEND_ACTIVE: u32 = 1;
/// The backend may take new flows (enabled, not draining, healthy, under its hard limit): a
/// client bound to a backend without this bit is bound anew.
pub const BACKEND_ELIGIBLE: u32 = 2;

#[cfg(feature = "user")]
// SAFETY: repr(C), explicit padding, integer fields only.
unsafe impl aya::Pod for ServiceKey {}
#[cfg(feature = "user")]
// SAFETY: repr(C), explicit padding, integer fields only.
unsafe impl aya::Pod for ServiceValue {}
#[cfg(feature = "user")]
// SAFETY: repr(C), explicit padding, integer fields only.
unsafe impl aya::Pod for BackendValue {}
