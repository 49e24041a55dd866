//! Turns rows into validated state. Source-agnostic: the local file and a Corrosion
//! subscription both hand over rows as [`Cell`]s in the column order of [`columns`].
//!
//! Every rejection is one [`RejectedRow`](crate::model::RejectedRow) with a one-line reason;
//! values from the row are quoted and shortened in reasons so that a hostile row cannot forge
//! or flood log lines. Where rows conflict (one VIP and port, one backend address and port, one
//! DNS name), who keeps it is decided by [`super::owners`], and the loser's reason names the
//! winner.
//!
//! One module per table checks its rows and the typed values writers hand in (`services`,
//! `backends`, `pops`, `health`, `settings`), over the cell reads of `cells` and the values
//! several tables share (`fields`); `snapshot` puts the rows of all tables together. What the
//! rest of the agent calls is re-exported here: writers and the registration API check values
//! with the same rules the rows are read with, without knowing which table module holds them.

mod backends;
mod cells;
pub mod columns;
mod fields;
mod health;
mod pops;
mod services;
mod settings;
mod snapshot;

pub use backends::{
    check_backend, check_backend_addr, check_backend_target, check_internal_name,
    parse_backend_addr, MAX_HEARTBEAT_SECS, MAX_WEIGHT,
};
pub(crate) use cells::{found, key_text};
pub use cells::{show, Cell};
pub use fields::{address_text, check_id, check_overlay_ip, check_registration_id};
pub(crate) use fields::{parse_country, parse_region};
pub use health::{check_health, status_str, MAX_REASON};
pub use pops::{check_endpoint, check_pop, check_public_key};
pub use services::{check_service, check_vip};
pub use settings::check_setting;
pub use snapshot::SnapshotBuilder;
