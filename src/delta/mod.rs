//! Delta Lake tables on object storage, written by a small module of our
//! own: Parquet data files from Polars, and a JSON log whose commits are
//! conditional creates.

pub mod log;
pub mod schema;
pub mod table;

pub use table::{Commit, HistoryEntry, Snapshot, Table, WriteMode};
