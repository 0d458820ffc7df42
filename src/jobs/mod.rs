//! Job kinds: the built-in transformations a pipeline uses.
//!
//! A job kind declares its input and output roles, checks its parameters,
//! and turns pinned input snapshots into output frames. It never commits:
//! the runner gates and commits what the job returns.

pub mod clv;
pub mod dedupe;
pub mod enrichment;
pub mod lists;
pub mod review;
pub mod scoring;
pub mod sql;
pub mod suppression;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use polars::prelude::*;
use polars_arrow::array::builder::{make_builder, ShareStrategy};
use serde_json::{Map, Value};

use crate::delta::{Snapshot, Table, WriteMode};
use crate::error::Result;
use crate::manifest::Manifest;
use crate::warehouse::Warehouse;

/// An input or output slot of a job kind, filled by a table.
#[derive(Debug)]
pub struct Role {
    pub name: &'static str,
    /// An optional input may be missing from the warehouse; the job then
    /// runs without it.
    pub optional: bool,
    /// The table used when the pipeline file does not name one.
    pub default_table: &'static str,
    pub description: &'static str,
}

/// A job kind's declaration.
#[derive(Debug)]
pub struct KindSpec {
    pub name: &'static str,
    pub description: &'static str,
    pub inputs: &'static [Role],
    pub outputs: &'static [Role],
    /// Checks the `[params]` table and returns the parameters with their
    /// defaults filled in, as JSON. Unknown parameters are errors.
    pub validate_params: fn(&toml::Table) -> std::result::Result<Value, String>,
    pub run: fn(&JobContext) -> Result<JobResult>,
}

/// Every job kind this build has.
pub const KINDS: &[&KindSpec] = &[
    &suppression::SPEC,
    &review::SPEC,
    &scoring::SPEC,
    &lists::SPEC,
    &sql::SPEC,
    &clv::SPEC,
    &dedupe::SPEC,
    &enrichment::SPEC,
];

/// Returns a column as text, or nulls when the frame lacks it.
pub fn string_column(frame: &DataFrame, name: &str) -> Result<Vec<Option<String>>> {
    match frame.column(name) {
        Ok(column) => Ok(column
            .cast(&DataType::String)?
            .str()?
            .iter()
            .map(|v| v.map(str::to_string))
            .collect()),
        Err(_) => Ok(vec![None; frame.height()]),
    }
}

/// Returns a column of `len` copies of `text`.
pub fn text_scalar(name: &str, text: &str, len: usize) -> Column {
    let value = Scalar::new(DataType::String, AnyValue::StringOwned(text.into()));
    Column::new_scalar(name.into(), value, len)
}

/// Returns the first line of a Polars error, without the query plan Polars
/// appends, for messages that people read.
pub fn short_error(error: &impl std::fmt::Display) -> String {
    let text = error.to_string();
    let text = text.split("\n\nResolved plan").next().unwrap_or(&text);
    text.lines().next().unwrap_or_default().trim().to_string()
}

/// Returns true for a pipeline whose result depends on when it runs: the
/// scoring, clv and suppression_review kinds without a fixed `as_of`.
pub fn reads_clock(kind: &str, params: &Value) -> bool {
    let clocked = [scoring::SPEC.name, clv::SPEC.name, review::SPEC.name];
    clocked.contains(&kind) && params.get("as_of").is_none_or(Value::is_null)
}

/// Returns true for an output role that amends a table another pipeline
/// owns, rather than owning it: the review's `list`.
pub fn amends(kind: &str, role: &str) -> bool {
    kind == review::SPEC.name && role == "list"
}

/// Returns the job kind named `name`.
pub fn kind(name: &str) -> Option<&'static KindSpec> {
    KINDS.iter().copied().find(|k| k.name == name)
}

/// Returns the names of every job kind.
pub fn kind_names() -> Vec<&'static str> {
    KINDS.iter().map(|k| k.name).collect()
}

/// An input table pinned at one version for the whole run.
#[derive(Debug, Clone)]
pub struct PinnedInput {
    pub table: Table,
    pub snapshot: Snapshot,
    /// The version of this table that the last successful run read.
    pub last_consumed: Option<u64>,
}

/// An output table and its latest version before the run.
#[derive(Debug, Clone)]
pub struct PinnedOutput {
    pub table: Table,
    pub snapshot: Option<Snapshot>,
    /// The version the last successful run left this table at.
    pub last_committed: Option<u64>,
    /// The content of `snapshot`, once read.
    pub content: std::sync::OnceLock<DataFrame>,
}

impl PinnedOutput {
    /// Returns true when the table is still at the version the last
    /// successful run left it at: not rolled back, not rewritten by hand.
    pub fn is_as_last_committed(&self) -> bool {
        let current = self.snapshot.as_ref().map(|s| s.version);
        current.is_some() && current == self.last_committed
    }
}

impl PinnedOutput {
    /// Reads the output's current content, or `None` if it does not exist.
    /// The content is read once per run: the job and the runner's
    /// comparison with the new version share it.
    pub fn read(&self) -> Result<Option<DataFrame>> {
        let Some(snapshot) = &self.snapshot else {
            return Ok(None);
        };
        if let Some(frame) = self.content.get() {
            return Ok(Some(frame.clone()));
        }
        let frame = self.table.scan(snapshot)?.collect()?;
        Ok(Some(self.content.get_or_init(|| frame).clone()))
    }
}

/// The run as a job reads it: pinned inputs and outputs, parameters and ids.
#[derive(Debug)]
pub struct JobContext {
    pub warehouse: Warehouse,
    pub pipeline: String,
    pub run_id: String,
    pub started_at: DateTime<Utc>,
    pub params: Value,
    pub inputs: BTreeMap<String, PinnedInput>,
    pub outputs: BTreeMap<String, PinnedOutput>,
    pub last_success: Option<Manifest>,
    /// True for a dry run: the job must not call paid or outside services.
    pub dry_run: bool,
}

impl JobContext {
    /// Returns the pinned input of `role`; roles are validated on load, so
    /// a missing one is a bug in the job kind.
    pub fn input(&self, role: &str) -> &PinnedInput {
        &self.inputs[role]
    }

    /// Returns the pinned input of an optional role, if its table exists.
    pub fn optional_input(&self, role: &str) -> Option<&PinnedInput> {
        self.inputs.get(role)
    }

    pub fn output(&self, role: &str) -> &PinnedOutput {
        &self.outputs[role]
    }
}

/// A new version of one output.
#[derive(Debug)]
pub struct OutputFrame {
    pub role: String,
    pub frame: DataFrame,
    pub mode: WriteMode,
    /// The column that identifies a row, for the added, removed and changed
    /// counts.
    pub key: Option<String>,
}

/// A file written after the outputs commit, such as a CSV for upload.
#[derive(Debug)]
pub struct Export {
    /// A path under the warehouse root.
    pub path: String,
    pub frame: DataFrame,
}

/// The outcome of a job. Outputs it leaves out keep their current version.
#[derive(Debug, Default)]
pub struct JobResult {
    pub outputs: Vec<OutputFrame>,
    pub exports: Vec<Export>,
    pub metrics: Map<String, Value>,
    /// The input versions read only in part, by role: the version after
    /// which files were read.
    pub incremental_from: BTreeMap<String, u64>,
    /// Fails the run after its outputs commit: for jobs whose partial
    /// results must be kept (such as paid API answers), yet whose run must
    /// still count as failed and alert.
    pub fail_after_commit: Option<String>,
    /// The row counts of outputs that the job compared with their previous
    /// versions itself, by role. The runner takes these in place of its
    /// own comparison, so they must equal what it would count.
    pub row_changes: BTreeMap<String, RowChanges>,
}

/// Rows added, removed and changed against an output's previous version,
/// counted as the runner counts them: by key, or without a key as rows
/// with no identical row (run_id aside) in the other version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RowChanges {
    pub added: u64,
    pub removed: u64,
    pub changed: u64,
}

/// Checks that a parameter names a relative path inside the warehouse,
/// without `..`, a leading `/` or a URL scheme.
pub fn check_relative_path(name: &str, path: &str) -> std::result::Result<(), String> {
    let escapes = path.starts_with('/')
        || path.contains("://")
        || path.split(['/', '\\']).any(|part| part == "..");
    if path.trim().is_empty() || escapes {
        return Err(format!(
            "invalid {name} `{path}`: expected a relative path under the warehouse, like \
             exports/list.csv"
        ));
    }
    Ok(())
}

/// Executes `plan` with Polars' streaming engine, so that memory stays
/// bounded by the result rather than the input.
pub fn collect_streaming(plan: LazyFrame) -> Result<DataFrame> {
    // A plan without multiple sinks always yields a single frame.
    Ok(plan.collect_with_engine(Engine::Streaming)?.unwrap_single())
}

/// Copies the values of `column` into buffers of their own size, part by
/// part. A filter in a streaming read can leave each part of a column in
/// a buffer sized for the rows it was read with, and text values in the
/// buffers of all those rows. Where a plan keeps a small share of a large
/// input, the kept parts would then hold memory in proportion to the
/// input: in the suppression job, 1.8 million events kept from 102
/// million held 2.2 GB, against 180 MB after this copy.
pub fn compact(column: Expr) -> Expr {
    column.map(
        |column: Column| {
            let series = column.as_materialized_series();
            let chunks = series
                .chunks()
                .iter()
                .map(|array| {
                    let mut builder = make_builder(array.dtype());
                    builder.reserve(array.len());
                    builder.extend(array.as_ref(), ShareStrategy::Never);
                    builder.freeze_reset()
                })
                .collect();
            // SAFETY: the chunks are copies of the series' own chunks, so
            // they have the physical type of its data type.
            let copied = unsafe {
                Series::from_chunks_and_dtype_unchecked(
                    series.name().clone(),
                    chunks,
                    series.dtype(),
                )
            };
            Ok(copied.into_column())
        },
        |_, field| Ok(field.clone()),
    )
}

/// Returns the arguments of a left join that keeps the order of the left
/// rows.
pub fn left_join_in_order() -> JoinArgs {
    let mut args = JoinArgs::new(JoinType::Left);
    args.maintain_order = MaintainOrderJoin::Left;
    args
}

/// Returns true when `column` is a text column without nulls whose every
/// value sorts after the one before it: sorted and without duplicates.
pub fn is_strictly_increasing(column: &Column) -> bool {
    let Ok(values) = column.str() else {
        return false;
    };
    if values.null_count() > 0 {
        return false;
    }
    let mut previous: Option<&str> = None;
    for value in values.iter().flatten() {
        if previous.is_some_and(|p| p >= value) {
            return false;
        }
        previous = Some(value);
    }
    true
}

/// Parses `params` into `T`, rejecting unknown keys when `T` does.
pub fn parse_params<T: serde::de::DeserializeOwned + serde::Serialize>(
    params: &toml::Table,
) -> std::result::Result<Value, String> {
    let parsed: T = toml::Value::Table(params.clone())
        .try_into()
        .map_err(|e: toml::de::Error| e.message().to_string())?;
    serde_json::to_value(parsed).map_err(|e| e.to_string())
}
