//! The operator commands of `edge-agent`, one file per command; each reads what the running agent
//! has loaded (its pins and status file), not the files on disk. `main.rs` parses the command line
//! and calls them.

pub mod backends;
pub mod explain;
pub mod flows;
pub mod import_v1;
pub mod maps;
pub mod status;
pub mod wg;

/// How a command prints what it read.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns for a person.
    Table,
    /// One JSON document for a program.
    Json,
}
