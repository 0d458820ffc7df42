//! The library's error type.

use std::path::PathBuf;

/// Errors of nightshift's library. The binary maps them onto exit codes with
/// [`Error::exit_code`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration, a pipeline file or a command-line value is invalid.
    #[error("{0}")]
    Config(String),

    /// A pipeline file could not be read or is invalid.
    #[error("invalid pipeline file {path}: {message}")]
    Pipeline { path: PathBuf, message: String },

    /// A table the command names does not exist in the warehouse.
    #[error("table `{0}` not found in the warehouse; `nightshift tables` lists the tables")]
    TableNotFound(String),

    /// A version the command names does not exist.
    #[error("table `{table}` has no version {version}; its latest version is {latest}")]
    VersionNotFound {
        table: String,
        version: u64,
        latest: u64,
    },

    /// Another writer committed the same table version first.
    #[error(
        "commit conflict on table `{table}`: version {version} was committed by another writer; \
         nothing of this write is visible, run it again"
    )]
    CommitConflict { table: String, version: u64 },

    /// Another run of the pipeline holds its lease.
    #[error(
        "pipeline `{pipeline}` is already running (run {run_id}, lease held until {expires_at}); \
         wait for it to finish"
    )]
    LeaseHeld {
        pipeline: String,
        run_id: String,
        expires_at: String,
    },

    /// An input file is unreadable, empty, truncated or not of its format.
    #[error("{0}")]
    Input(String),

    /// A run or an ingest failed on its data (a gate, a rejection limit, ...).
    #[error("{0}")]
    Data(String),

    /// A Delta log entry is unreadable.
    #[error("invalid Delta log entry {path}: {message}")]
    DeltaLog { path: String, message: String },

    #[error("object store error: {0}")]
    ObjectStore(#[from] object_store::Error),

    #[error("object store path error: {0}")]
    ObjectStorePath(#[from] object_store::path::Error),

    #[error(transparent)]
    Polars(#[from] polars::error::PolarsError),

    #[error(transparent)]
    Io(#[from] std::io::Error),

    #[error("JSON error: {0}")]
    Json(#[from] serde_json::Error),
}

impl Error {
    /// Returns the process exit code for this error: 2 for usage and
    /// configuration errors, 1 for run and data failures.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) | Error::Pipeline { .. } => 2,
            _ => 1,
        }
    }
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
