//! The columns a source selects from each table, in the order the row parsers expect: the
//! contract between the sources (the local file, Corrosion) and [`super::SnapshotBuilder`].

pub const SERVICES: [&str; 6] = ["id", "vip", "port", "proto", "health_check", "created_at"];
pub const BACKENDS: [&str; 17] = [
    "id",
    "service_id",
    "region",
    "country",
    "address",
    "port",
    "weight",
    "soft_limit",
    "hard_limit",
    "draining",
    "enabled",
    "metadata",
    "health_check",
    "heartbeat_at",
    "heartbeat_secs",
    "created_at",
    "lease_pop",
];
pub const POPS: [&str; 8] = [
    "id",
    "region",
    "overlay_addr",
    "public_key",
    "endpoint",
    "role",
    "host_number",
    "overlay_ipv4",
];
pub const SETTINGS: [&str; 2] = ["key", "value"];
pub const HEALTH: [&str; 6] = [
    "pop_id",
    "backend_id",
    "status",
    "rtt_us",
    "checked_at",
    "reason",
];
