//! Run manifests: one JSON document per run at
//! `<warehouse>/runs/<pipeline>/<run_id>.json`.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::warehouse::Warehouse;

/// The manifest format version, raised when fields change meaning.
pub const MANIFEST_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Succeeded,
    Failed,
    Skipped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Skipped => "skipped",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    Manual,
    Schedule,
    CatchUp,
}

/// An input table as the run read it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InputRecord {
    pub role: String,
    pub table: String,
    /// The pinned version.
    pub version: u64,
    /// Rows in the pinned version, from file statistics.
    pub rows: Option<u64>,
    /// The version the run read from (exclusive) when it read only the
    /// files appended since then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incremental_from: Option<u64>,
}

/// An output table as the run wrote it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct OutputRecord {
    pub role: String,
    pub table: String,
    /// The latest version before the run, if the table existed.
    pub version_before: Option<u64>,
    /// The version the run committed; `None` when it committed nothing.
    pub version: Option<u64>,
    pub rows: Option<u64>,
    pub rows_added: Option<u64>,
    pub rows_removed: Option<u64>,
    pub rows_changed: Option<u64>,
    /// The version that undid this output's commit after another output
    /// failed to commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensated_by: Option<u64>,
}

/// The record of one run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub manifest_version: u32,
    pub nightshift_version: String,
    pub pipeline: String,
    pub kind: String,
    pub run_id: String,
    pub trigger: Trigger,
    pub status: Status,
    pub forced: bool,
    pub started_at: DateTime<Utc>,
    pub ended_at: DateTime<Utc>,
    pub elapsed_seconds: f64,
    pub params: Value,
    pub params_hash: String,
    pub error: Option<String>,
    pub inputs: Vec<InputRecord>,
    pub outputs: Vec<OutputRecord>,
    /// The job's own figures (rows suppressed, addresses added, ...).
    pub metrics: Map<String, Value>,
    /// The reason a skipped run was skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped_reason: Option<String>,
    /// The gate checks that failed and stopped the commit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gate_failures: Vec<GateFailure>,
    /// True when the run was told to commit without checking its gates.
    #[serde(default)]
    pub gates_skipped: bool,
    /// The scheduled time the run serves, for scheduled runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_for: Option<DateTime<Utc>>,
    /// The scheduled times a catch-up run covers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub windows: Option<usize>,
    /// For a scheduled run that did not start: the upstream pipeline whose
    /// failure held it back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked_by: Option<String>,
    /// Alerts and pings sent about this run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notifications: Vec<Notification>,
}

/// One failed gate check.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GateFailure {
    /// The output role or table the gate is on.
    pub output: String,
    /// The check: min_rows, max_change_pct, not_null, unique, expression, ...
    pub check: String,
    pub expected: String,
    pub actual: String,
}

/// An alert or a ping, as delivered or not.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Notification {
    /// The alert channel's name, or `ping`.
    pub channel: String,
    /// failure, recovery, stale, reminder, or for pings start, success, failure.
    pub event: String,
    pub delivered: bool,
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Manifest {
    /// Returns the input record of `role`.
    pub fn input(&self, role: &str) -> Option<&InputRecord> {
        self.inputs.iter().find(|i| i.role == role)
    }
}

fn runs_prefix(warehouse: &Warehouse, pipeline: &str) -> object_store::path::Path {
    warehouse.path(&format!("runs/{pipeline}"))
}

/// Writes `manifest`; a manifest is written once and never changed.
pub fn write(warehouse: &Warehouse, manifest: &Manifest) -> Result<()> {
    let path = runs_prefix(warehouse, &manifest.pipeline).join(format!("{}.json", manifest.run_id));
    let body = serde_json::to_vec_pretty(manifest)?;
    warehouse.put(&path, Bytes::from(body))
}

/// Lists the manifests of `pipeline`, oldest first (run ids are UUIDv7, so
/// their order is the order the runs started).
pub fn list(warehouse: &Warehouse, pipeline: &str) -> Result<Vec<Manifest>> {
    let mut objects = warehouse.list(&runs_prefix(warehouse, pipeline))?;
    objects.sort_by(|a, b| a.location.cmp(&b.location));
    let mut manifests = Vec::with_capacity(objects.len());
    for meta in objects {
        if !meta.location.as_ref().ends_with(".json") {
            continue;
        }
        let Some(bytes) = warehouse.get(&meta.location)? else {
            continue;
        };
        let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| {
            Error::Data(format!(
                "invalid run manifest {}: {e}",
                warehouse.uri(&meta.location)
            ))
        })?;
        manifests.push(manifest);
    }
    Ok(manifests)
}

/// Lists the pipelines that have manifests.
pub fn pipelines(warehouse: &Warehouse) -> Result<Vec<String>> {
    warehouse.list_folders(&warehouse.path("runs"))
}

/// Returns the latest succeeded run of `pipeline`.
pub fn last_success(warehouse: &Warehouse, pipeline: &str) -> Result<Option<Manifest>> {
    Ok(list(warehouse, pipeline)?
        .into_iter()
        .rev()
        .find(|m| m.status == Status::Succeeded))
}
