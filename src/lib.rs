//! nightshift runs the scheduled batch jobs of marketing operations over
//! versioned Delta Lake tables in object storage.

pub mod cli;
pub mod clv;
pub mod config;
pub mod dedupe;
pub mod delta;
pub mod email;
pub mod enrich;
pub mod error;
pub mod generate;
pub mod hash;
pub mod ingest;
pub mod jobs;
pub mod lease;
pub mod manifest;
pub mod monitor;
pub mod notify;
pub mod pipeline;
pub mod runner;
pub mod schedule;
pub mod schema;
pub mod warehouse;

pub use error::{Error, Result};
