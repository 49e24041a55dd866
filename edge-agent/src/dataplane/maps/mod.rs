//! The kernel maps by what they hold: services and their Maglev tables, the geo classification,
//! the flow table, and the packet counters. Each file reads or writes one family of maps.

pub mod counters;
pub mod flows;
pub mod geo;
pub mod services;
