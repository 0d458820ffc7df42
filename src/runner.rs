//! The run lifecycle: lease, pin inputs, execute the job, gate, commit,
//! write the manifest, release the lease.

use std::collections::BTreeMap;
use std::time::Instant;

use bytes::Bytes;
use chrono::{Duration, Utc};
use polars::prelude::*;

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::delta::table::{CommitOptions, Staged};
use crate::delta::{Table, WriteMode};
use crate::error::{Error, Result};
use crate::jobs::{JobContext, JobResult, OutputFrame, PinnedInput, PinnedOutput, RowChanges};
use crate::lease;
use crate::manifest::{self, GateFailure, InputRecord, Manifest, OutputRecord, Status, Trigger};
use crate::pipeline::{Gate, Pipeline};
use crate::warehouse::Warehouse;

/// How to run a pipeline.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Runs even when inputs and parameters equal the last successful run's.
    pub force: bool,
    /// Computes and reports the outputs, commits nothing and writes no
    /// manifest.
    pub dry_run: bool,
    pub trigger: Trigger,
    /// Commits even when a gate fails; recorded in the manifest.
    pub skip_gates: bool,
    /// The scheduled time this run serves, for runs started by a schedule.
    pub scheduled_for: Option<chrono::DateTime<Utc>>,
    /// Scheduled times this run covers (more than 1 for a catch-up).
    pub windows: Option<usize>,
    /// How long the lease lasts before another run may take it over.
    pub lease_timeout: Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            force: false,
            dry_run: false,
            trigger: Trigger::Manual,
            skip_gates: false,
            scheduled_for: None,
            windows: None,
            lease_timeout: Duration::minutes(120),
        }
    }
}

/// The outcome of one run: its manifest (for dry runs, the manifest that a
/// real run would have written, with no versions committed).
#[derive(Debug, Clone)]
pub struct RunReport {
    pub manifest: Manifest,
    pub dry_run: bool,
}

/// Hashes the job kind, its parameters and table names, so that a change to
/// any of them makes the next run a real one.
fn params_hash(pipeline: &Pipeline) -> String {
    let value = json!({
        "kind": pipeline.kind.name,
        "params": pipeline.params,
        "inputs": pipeline.inputs,
        "outputs": pipeline.outputs,
        "gates": pipeline.gates,
    });
    let digest = Sha256::digest(value.to_string().as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs `pipeline` on `warehouse`.
pub fn run_pipeline(
    warehouse: &Warehouse,
    pipeline: &Pipeline,
    options: &RunOptions,
) -> Result<RunReport> {
    run_pipeline_with(warehouse, pipeline, options, &mut |_| {})
}

/// Returns the manifest of a run that has not started yet.
pub fn new_manifest(pipeline: &Pipeline, options: &RunOptions) -> Manifest {
    let started_at = Utc::now();
    Manifest {
        manifest_version: manifest::MANIFEST_VERSION,
        nightshift_version: env!("CARGO_PKG_VERSION").to_string(),
        pipeline: pipeline.name.clone(),
        kind: pipeline.kind.name.to_string(),
        run_id: uuid::Uuid::now_v7().to_string(),
        trigger: options.trigger,
        status: Status::Failed,
        forced: options.force,
        started_at,
        ended_at: started_at,
        elapsed_seconds: 0.0,
        params: pipeline.params.clone(),
        params_hash: params_hash(pipeline),
        error: None,
        inputs: Vec::new(),
        outputs: Vec::new(),
        metrics: Map::new(),
        skipped_reason: None,
        gate_failures: Vec::new(),
        gates_skipped: false,
        scheduled_for: options.scheduled_for,
        windows: options.windows,
        notifications: Vec::new(),
        blocked_by: None,
    }
}

/// Records a scheduled run that did not start because a pipeline it runs
/// after failed: a skipped manifest naming the upstream run.
pub fn record_blocked(
    warehouse: &Warehouse,
    pipeline: &Pipeline,
    options: &RunOptions,
    upstream: &str,
    reason: String,
) -> Result<Manifest> {
    let mut manifest = new_manifest(pipeline, options);
    manifest.status = Status::Skipped;
    manifest.skipped_reason = Some(reason);
    manifest.blocked_by = Some(upstream.to_string());
    if !options.dry_run {
        manifest::write(warehouse, &manifest)?;
    }
    Ok(manifest)
}

/// Runs `pipeline`, calling `finish` with the complete manifest just before
/// it is written (alerts and pings record themselves there).
pub fn run_pipeline_with(
    warehouse: &Warehouse,
    pipeline: &Pipeline,
    options: &RunOptions,
    finish: &mut dyn FnMut(&mut Manifest),
) -> Result<RunReport> {
    let mut manifest = new_manifest(pipeline, options);
    let run_id = manifest.run_id.clone();
    let clock = Instant::now();
    let lease = if options.dry_run {
        None
    } else {
        Some(lease::acquire(
            warehouse,
            &pipeline.name,
            &run_id,
            options.lease_timeout,
        )?)
    };
    tracing::info!(pipeline = %pipeline.name, run_id = %run_id, "run started");

    let outcome = execute(warehouse, pipeline, options, &mut manifest);
    manifest.ended_at = Utc::now();
    manifest.elapsed_seconds = clock.elapsed().as_secs_f64();
    if let Err(e) = &outcome {
        manifest.status = Status::Failed;
        manifest.error = Some(e.to_string());
        tracing::error!(pipeline = %pipeline.name, run_id = %run_id, error = %e, "run failed");
    }
    if !options.dry_run {
        finish(&mut manifest);
        let written = manifest::write(warehouse, &manifest);
        if let Some(lease) = lease {
            lease.release();
        }
        written?;
    }
    tracing::info!(pipeline = %pipeline.name, run_id = %run_id, status = %manifest.status, "run ended");
    match outcome {
        Ok(()) => Ok(RunReport {
            manifest,
            dry_run: options.dry_run,
        }),
        Err(e) => Err(e),
    }
}

fn execute(
    warehouse: &Warehouse,
    pipeline: &Pipeline,
    options: &RunOptions,
    manifest: &mut Manifest,
) -> Result<()> {
    let last_success = manifest::last_success(warehouse, &pipeline.name)?;

    // Pin every input at its latest version, so the run reads one snapshot.
    let mut inputs = BTreeMap::new();
    for (role, name) in &pipeline.inputs {
        let table = Table::new(warehouse, name)?;
        let optional = pipeline
            .kind
            .inputs
            .iter()
            .any(|r| r.name == role && r.optional);
        let snapshot = match table.snapshot(None) {
            Ok(snapshot) => snapshot,
            Err(Error::TableNotFound(_)) if optional => continue,
            Err(Error::TableNotFound(_)) => {
                return Err(Error::Data(format!(
                    "input table `{name}` of pipeline `{}` not found; ingest it first with \
                     `nightshift ingest {name} FILE`",
                    pipeline.name
                )));
            }
            Err(e) => return Err(e),
        };
        let last_consumed = last_success
            .as_ref()
            .and_then(|m| m.input(role))
            .filter(|record| &record.table == name)
            .map(|record| record.version);
        manifest.inputs.push(InputRecord {
            role: role.clone(),
            table: name.clone(),
            version: snapshot.version,
            rows: snapshot.num_rows(),
            incremental_from: None,
        });
        inputs.insert(
            role.clone(),
            PinnedInput {
                table,
                snapshot,
                last_consumed,
            },
        );
    }
    let mut outputs = BTreeMap::new();
    for (role, name) in &pipeline.outputs {
        let table = Table::new(warehouse, name)?;
        let snapshot = table.latest_snapshot()?;
        let last_committed = last_success
            .as_ref()
            .and_then(|m| {
                m.outputs
                    .iter()
                    .find(|o| &o.role == role && &o.table == name)
            })
            .and_then(|record| record.version.or(record.version_before));
        outputs.insert(
            role.clone(),
            PinnedOutput {
                table,
                snapshot,
                last_committed,
                content: Default::default(),
            },
        );
    }

    if !options.force {
        if let Some(reason) = skip_reason(pipeline, manifest, &outputs, last_success.as_ref()) {
            manifest.status = Status::Skipped;
            manifest.skipped_reason = Some(reason);
            manifest.outputs = outputs
                .iter()
                .map(|(role, output)| OutputRecord {
                    role: role.clone(),
                    table: output.table.name().to_string(),
                    version_before: output.snapshot.as_ref().map(|s| s.version),
                    version: None,
                    rows: output.snapshot.as_ref().and_then(|s| s.num_rows()),
                    ..Default::default()
                })
                .collect();
            return Ok(());
        }
    }

    let context = JobContext {
        warehouse: warehouse.clone(),
        pipeline: pipeline.name.clone(),
        run_id: manifest.run_id.clone(),
        started_at: manifest.started_at,
        params: pipeline.params.clone(),
        inputs,
        outputs,
        last_success,
        dry_run: options.dry_run,
    };
    let job_started = std::time::Instant::now();
    let result = (pipeline.kind.run)(&context)?;
    tracing::debug!(
        pipeline = %pipeline.name,
        seconds = job_started.elapsed().as_secs_f64(),
        "job finished"
    );
    manifest.metrics = result.metrics.clone();
    for (role, from) in &result.incremental_from {
        if let Some(record) = manifest.inputs.iter_mut().find(|i| &i.role == role) {
            record.incremental_from = Some(*from);
        }
    }

    // Compare each new output with its previous version.
    let mut records = Vec::new();
    let outputs = &context.outputs;
    for (role, output) in outputs {
        let new = result.outputs.iter().find(|o| &o.role == role);
        let known = result.row_changes.get(role).copied();
        records.push(describe_output(role, output, new, known)?);
    }
    manifest.outputs = records;
    tracing::debug!(pipeline = %pipeline.name, "outputs compared with their previous versions");

    if options.skip_gates {
        manifest.gates_skipped = true;
        if !pipeline.gates.is_empty() {
            tracing::warn!(pipeline = %pipeline.name, "gates skipped on request");
        }
    } else {
        check_gates(pipeline, &result, manifest)?;
    }
    if options.dry_run {
        manifest.status = Status::Succeeded;
        return Ok(());
    }
    let fail_after_commit = result.fail_after_commit.clone();
    let commit_started = std::time::Instant::now();
    commit_outputs(pipeline, outputs, result, manifest)?;
    tracing::debug!(
        pipeline = %pipeline.name,
        seconds = commit_started.elapsed().as_secs_f64(),
        "outputs written and committed"
    );
    if let Some(message) = fail_after_commit {
        return Err(Error::Data(format!(
            "{message} (the results received were committed)"
        )));
    }
    manifest.status = Status::Succeeded;
    Ok(())
}

/// Returns why the run can be skipped: the last successful run had the same
/// parameters and input versions, and no output changed since.
fn skip_reason(
    pipeline: &Pipeline,
    manifest: &Manifest,
    outputs: &BTreeMap<String, PinnedOutput>,
    last: Option<&Manifest>,
) -> Option<String> {
    let last = last?;
    if last.params_hash != manifest.params_hash {
        return None;
    }
    // A job that reads the clock (an as-of time of "now") has new work
    // whenever time passes, even on unchanged inputs.
    if crate::jobs::reads_clock(pipeline.kind.name, &pipeline.params) {
        return None;
    }
    let same_inputs = manifest.inputs.len() == last.inputs.len()
        && manifest.inputs.iter().all(|input| {
            last.input(&input.role)
                .is_some_and(|l| l.table == input.table && l.version == input.version)
        });
    if !same_inputs {
        return None;
    }
    // An output rolled back or rewritten by hand since makes the run real.
    for record in &last.outputs {
        let current = outputs
            .get(&record.role)?
            .snapshot
            .as_ref()
            .map(|s| s.version);
        let expected = record.version.or(record.version_before);
        if current != expected {
            return None;
        }
    }
    Some(format!(
        "inputs and parameters unchanged since run {} of pipeline `{}`; use --force to run anyway",
        last.run_id, pipeline.name
    ))
}

/// Counts rows added, removed and changed (by key) against the previous
/// version of an output, unless the job counted them (`known`).
fn describe_output(
    role: &str,
    output: &PinnedOutput,
    new: Option<&OutputFrame>,
    known: Option<RowChanges>,
) -> Result<OutputRecord> {
    let version_before = output.snapshot.as_ref().map(|s| s.version);
    let mut record = OutputRecord {
        role: role.to_string(),
        table: output.table.name().to_string(),
        version_before,
        version: None,
        rows: output.snapshot.as_ref().and_then(|s| s.num_rows()),
        ..Default::default()
    };
    let Some(new) = new else {
        return Ok(record);
    };
    let new_rows = new.frame.height() as u64;
    record.rows = Some(match new.mode {
        WriteMode::Overwrite => new_rows,
        WriteMode::Append => record.rows.unwrap_or(0) + new_rows,
    });
    if let Some(known) = known {
        record.rows_added = Some(known.added);
        record.rows_removed = Some(known.removed);
        record.rows_changed = Some(known.changed);
        return Ok(record);
    }
    let previous = output.read()?;
    let (added, removed, changed) = match (new.mode, previous, &new.key) {
        (WriteMode::Append, _, _) => (new_rows, 0, 0),
        (WriteMode::Overwrite, None, _) => (new_rows, 0, 0),
        (WriteMode::Overwrite, Some(previous), Some(key)) => {
            diff_by_key(&previous, &new.frame, key)?
        }
        (WriteMode::Overwrite, Some(previous), None) => diff_rows(&previous, &new.frame)?,
    };
    record.rows_added = Some(added);
    record.rows_removed = Some(removed);
    record.rows_changed = Some(changed);
    Ok(record)
}

/// Returns (added, removed, 0) row counts between two frames without a key:
/// a row counts as added or removed when no row of the other frame has the
/// same values (run_id aside).
pub fn diff_rows(old: &DataFrame, new: &DataFrame) -> Result<(u64, u64, u64)> {
    let old = flatten_lists(old.clone())?;
    let new = flatten_lists(new.clone())?;
    let compared: Vec<String> = new
        .get_column_names()
        .iter()
        .map(|c| c.to_string())
        .filter(|c| c != "run_id" && old.schema().contains(c))
        .collect();
    if compared.is_empty() {
        return Ok((new.height() as u64, old.height() as u64, 0));
    }
    let fingerprint = |df: &DataFrame| -> LazyFrame {
        let parts: Vec<Expr> = compared
            .iter()
            .map(|c| {
                col(c.as_str())
                    .cast(DataType::String)
                    .fill_null(lit("\u{1}"))
            })
            .collect();
        df.clone()
            .lazy()
            .select([concat_str(parts, "\u{0}", false).alias("_row")])
    };
    let anti = |a: &DataFrame, b: &DataFrame| -> Result<u64> {
        Ok(fingerprint(a)
            .join(
                fingerprint(b),
                [col("_row")],
                [col("_row")],
                JoinArgs::new(JoinType::Anti),
            )
            .collect()?
            .height() as u64)
    };
    Ok((anti(&new, &old)?, anti(&old, &new)?, 0))
}

/// Returns (added, removed, changed) row counts between two frames with the
/// same key column. A row changed when any column other than `run_id`
/// differs.
pub fn diff_by_key(old: &DataFrame, new: &DataFrame, key: &str) -> Result<(u64, u64, u64)> {
    let old = &flatten_lists(old.clone())?;
    let new = &flatten_lists(new.clone())?;
    if let Some(changed) = changed_rows_in_place(old, new, key)? {
        return Ok((0, 0, changed));
    }
    let anti = |a: &DataFrame, b: &DataFrame| -> Result<u64> {
        Ok(a.clone()
            .lazy()
            .join(
                b.clone().lazy().select([col(key)]),
                [col(key)],
                [col(key)],
                JoinArgs::new(JoinType::Anti),
            )
            .collect()?
            .height() as u64)
    };
    let added = anti(new, old)?;
    let removed = anti(old, new)?;
    let compared: Vec<String> = new
        .get_column_names()
        .iter()
        .map(|c| c.to_string())
        .filter(|c| c != key && c != "run_id" && old.schema().contains(c))
        .collect();
    let fingerprint = |df: &DataFrame| -> LazyFrame {
        let parts: Vec<Expr> = compared
            .iter()
            .map(|c| {
                col(c.as_str())
                    .cast(DataType::String)
                    .fill_null(lit("\u{1}"))
            })
            .collect();
        let row = if parts.is_empty() {
            lit("")
        } else {
            concat_str(parts, "\u{0}", false)
        };
        df.clone().lazy().select([col(key), row.alias("_row")])
    };
    let changed = fingerprint(old)
        .join(
            fingerprint(new),
            [col(key)],
            [col(key)],
            JoinArgs::new(JoinType::Inner),
        )
        .filter(col("_row").neq(col("_row_right")))
        .collect()?
        .height() as u64;
    Ok((added, removed, changed))
}

/// Counts the rows that differ in a column other than `key` and `run_id`,
/// when both frames have the same key values in the same strictly
/// increasing order, so row i of one is row i of the other. Returns `None`
/// otherwise. Columns of the same type are compared by value, others as
/// text, as [`diff_by_key`] compares them.
fn changed_rows_in_place(old: &DataFrame, new: &DataFrame, key: &str) -> Result<Option<u64>> {
    let (Ok(old_key), Ok(new_key)) = (old.column(key), new.column(key)) else {
        return Ok(None);
    };
    let same_keys = old_key.dtype() == new_key.dtype()
        && crate::jobs::is_strictly_increasing(new_key)
        && old_key
            .as_materialized_series()
            .equals(new_key.as_materialized_series());
    if !same_keys {
        return Ok(None);
    }
    let mut differs = BooleanChunked::full("differs".into(), false, new.height());
    for column in new.columns() {
        let name = column.name().as_str();
        if name == key || name == "run_id" {
            continue;
        }
        let Ok(previous) = old.column(name) else {
            continue;
        };
        let equal = if previous.dtype() == column.dtype() {
            previous.equal_missing(column)?
        } else {
            previous
                .cast(&DataType::String)?
                .equal_missing(&column.cast(&DataType::String)?)?
        };
        differs = &differs | &!equal;
    }
    Ok(Some(differs.sum().unwrap_or(0) as u64))
}

/// Fails when a gate of the pipeline does not pass, recording every failed
/// check in the manifest.
fn check_gates(pipeline: &Pipeline, result: &JobResult, manifest: &mut Manifest) -> Result<()> {
    let mut failures = Vec::new();
    for gate in &pipeline.gates {
        let Some(table) = pipeline.output_table(&gate.output) else {
            continue;
        };
        let Some(record) = manifest.outputs.iter().find(|o| o.table == table) else {
            continue;
        };
        let frame = result
            .outputs
            .iter()
            .find(|o| o.role == record.role)
            .map(|o| &o.frame);
        failures.extend(gate_failures(gate, record, frame)?);
    }
    if failures.is_empty() {
        return Ok(());
    }
    let message = failures
        .iter()
        .map(|f| {
            format!(
                "gate {} on output `{}` failed: expected {}, got {}",
                f.check, f.output, f.expected, f.actual
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    manifest.gate_failures = failures;
    Err(Error::Data(format!(
        "{message}; nothing was committed (a person who has checked the output can pass \
         --skip-gates)"
    )))
}

/// Returns the checks of `gate` that the new version of an output fails.
/// Row counts and changes come from the output's record; content checks
/// (`not_null`, `unique`, `expression`) read the rows the run writes, and
/// pass when it writes none.
pub fn gate_failures(
    gate: &Gate,
    record: &OutputRecord,
    frame: Option<&DataFrame>,
) -> Result<Vec<GateFailure>> {
    let mut failures = Vec::new();
    let mut fail = |check: &str, expected: String, actual: String| {
        failures.push(GateFailure {
            output: gate.output.clone(),
            check: check.to_string(),
            expected,
            actual,
        })
    };
    let rows = record.rows.unwrap_or(0);
    if let Some(min) = gate.min_rows {
        if rows < min {
            fail(
                "min_rows",
                format!("at least {min} rows"),
                format!("{rows} rows"),
            );
        }
    }
    if let Some(max) = gate.max_rows {
        if rows > max {
            fail(
                "max_rows",
                format!("at most {max} rows"),
                format!("{rows} rows"),
            );
        }
    }
    let before = record
        .rows_removed
        .zip(record.rows_added)
        .map(|(removed, added)| (rows + removed).saturating_sub(added));
    if let Some(before) = before.filter(|b| *b > 0) {
        let change = (rows as f64 - before as f64) / before as f64 * 100.0;
        let actual = format!("{before} to {rows} rows ({change:+.1}%)");
        if let Some(max) = gate.max_shrink_pct {
            if -change > max {
                fail(
                    "max_shrink_pct",
                    format!("a shrink of at most {max}%"),
                    actual.clone(),
                );
            }
        }
        if let Some(max) = gate.max_growth_pct {
            if change > max {
                fail(
                    "max_growth_pct",
                    format!("a growth of at most {max}%"),
                    actual.clone(),
                );
            }
        }
        if let Some(max) = gate.max_change_pct {
            if change.abs() > max {
                fail(
                    "max_change_pct",
                    format!("a change of at most {max}%"),
                    actual,
                );
            }
        }
    }
    let Some(frame) = frame else {
        return Ok(failures);
    };
    let names: Vec<String> = frame
        .get_column_names()
        .iter()
        .map(|n| n.to_string())
        .collect();
    // A column or expression the output does not have is a mistake in the
    // pipeline file, not a failed check: it is reported as such.
    let wrong = |what: String| {
        Error::Config(format!(
            "gate on output `{}`: {what}; the output's columns are: {}. Fix the gate in the \
             pipeline file",
            gate.output,
            names.join(", ")
        ))
    };
    for column in gate.not_null.iter().chain(&gate.unique) {
        if !names.iter().any(|n| n == column) {
            return Err(wrong(format!("no column `{column}`")));
        }
    }
    for column in &gate.not_null {
        let nulls = frame.column(column)?.null_count();
        if nulls > 0 {
            fail(
                "not_null",
                format!("no null in `{column}`"),
                format!("{nulls} null values"),
            );
        }
    }
    if !gate.unique.is_empty() {
        let distinct = frame
            .clone()
            .lazy()
            .select(
                gate.unique
                    .iter()
                    .map(|c| col(c.as_str()))
                    .collect::<Vec<_>>(),
            )
            .unique(None, UniqueKeepStrategy::Any)
            .collect()?
            .height();
        let duplicates = frame.height() - distinct;
        if duplicates > 0 {
            fail(
                "unique",
                format!("unique ({})", gate.unique.join(", ")),
                format!("{duplicates} duplicate rows"),
            );
        }
    }
    if let Some(expression) = &gate.expression {
        let expr = polars::sql::sql_expr(expression)?;
        let counted = frame
            .clone()
            .lazy()
            .filter(expr.fill_null(lit(false)).not())
            .select([len()])
            .collect()
            .map_err(|e| {
                wrong(format!(
                    "expression `{expression}` cannot be evaluated: {}",
                    crate::jobs::short_error(&e)
                ))
            })?;
        let n = counted.column("len")?.get(0)?.extract::<u64>().unwrap_or(0);
        if n > 0 {
            fail(
                "expression",
                format!("`{expression}` on every row"),
                format!("{n} rows where it does not hold"),
            );
        }
    }
    Ok(failures)
}

/// Stages every output (writing data files), then commits them one by one.
/// When a commit fails after others succeeded, each committed output gets a
/// compensating version that restores its previous content.
fn commit_outputs(
    pipeline: &Pipeline,
    outputs: &BTreeMap<String, PinnedOutput>,
    result: JobResult,
    manifest: &mut Manifest,
) -> Result<()> {
    let mut staged: Vec<(String, &'static str, Staged)> = Vec::new();
    for frame in result.outputs {
        let output = &outputs[&frame.role];
        let mode = match frame.mode {
            WriteMode::Append => "Append",
            WriteMode::Overwrite => "Overwrite",
        };
        let stage = output
            .table
            .stage(frame.frame, frame.mode, output.snapshot.as_ref())?;
        staged.push((frame.role, mode, stage));
    }

    failpoint("abort_before_commit")?;
    let mut committed: Vec<(String, u64)> = Vec::new();
    for (role, mode, stage) in staged {
        if !committed.is_empty() {
            if let Err(e) = failpoint("fail_after_first_commit") {
                compensate(pipeline, outputs, &committed, manifest);
                return Err(e);
            }
        }
        let options = CommitOptions::new("WRITE")
            .with_parameter("mode", mode)
            .with_parameter("pipeline", pipeline.name.clone())
            .with_run_id(Some(manifest.run_id.clone()));
        match stage.commit(options) {
            Ok(version) => {
                if let Some(record) = manifest.outputs.iter_mut().find(|o| o.role == role) {
                    record.version = Some(version);
                }
                committed.push((role, version));
            }
            Err(e) => {
                compensate(pipeline, outputs, &committed, manifest);
                return Err(e);
            }
        }
    }

    for export in result.exports {
        let warehouse = outputs
            .values()
            .next()
            .map(|o| o.table.warehouse().clone())
            .ok_or_else(|| Error::Data("a job with exports has no outputs".into()))?;
        write_csv_export(&warehouse, &export.path, export.frame)?;
        let exports = manifest
            .metrics
            .entry("exports")
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Some(list) = exports.as_array_mut() {
            list.push(Value::from(export.path.clone()));
        }
    }
    Ok(())
}

/// Fails (or aborts the process) at the named point when the environment
/// variable `NIGHTSHIFT_FAILPOINT` names it. Tests use it to simulate a
/// crash between writing data files and committing, or a commit failing
/// after another output committed.
fn failpoint(name: &str) -> Result<()> {
    if std::env::var("NIGHTSHIFT_FAILPOINT").as_deref() != Ok(name) {
        return Ok(());
    }
    if name.starts_with("abort") {
        tracing::error!(failpoint = name, "aborting the process");
        std::process::abort();
    }
    Err(Error::Data(format!("failpoint `{name}` triggered")))
}

/// Restores each committed output to its version before the run.
fn compensate(
    pipeline: &Pipeline,
    outputs: &BTreeMap<String, PinnedOutput>,
    committed: &[(String, u64)],
    manifest: &mut Manifest,
) {
    for (role, committed_version) in committed {
        let output = &outputs[role];
        let options = CommitOptions::new("RESTORE")
            .with_parameter("pipeline", pipeline.name.clone())
            .with_parameter("reason", "another output of the run failed to commit")
            .with_run_id(Some(manifest.run_id.clone()));
        // Undo only this run's commit: a version another writer committed
        // since is never rolled back with it.
        let restored = output.table.revert(*committed_version, options);
        match restored {
            Ok(version) => {
                if let Some(record) = manifest.outputs.iter_mut().find(|o| &o.role == role) {
                    record.compensated_by = Some(version);
                }
            }
            Err(e) => {
                tracing::error!(table = %output.table.name(), error = %e, "failed to restore an output after a failed commit");
            }
        }
    }
}

/// Writes `frame` as CSV to `path` under the warehouse root.
pub fn write_csv_export(warehouse: &Warehouse, path: &str, frame: DataFrame) -> Result<()> {
    let mut buffer = Vec::new();
    if path.ends_with(".parquet") {
        let mut frame = frame;
        ParquetWriter::new(&mut buffer).finish(&mut frame)?;
    } else {
        // CSV has no lists: list values are joined with spaces.
        let mut frame = flatten_lists(frame)?;
        CsvWriter::new(&mut buffer)
            .include_header(true)
            .with_datetime_format(Some("%Y-%m-%dT%H:%M:%S%.6fZ".into()))
            .finish(&mut frame)?;
    }
    warehouse.put(&warehouse.path(path), Bytes::from(buffer))?;
    tracing::info!(path, "wrote export");
    Ok(())
}

/// Replaces list columns by their values joined with spaces.
fn flatten_lists(frame: DataFrame) -> Result<DataFrame> {
    let mut columns = Vec::with_capacity(frame.width());
    for column in frame.columns() {
        if let DataType::List(_) = column.dtype() {
            let lists = column.list()?;
            let joined: Vec<Option<String>> = (0..lists.len())
                .map(|i| {
                    lists.get_as_series(i).map(|series| {
                        series
                            .cast(&DataType::String)
                            .ok()
                            .and_then(|s| {
                                s.str()
                                    .ok()
                                    .map(|s| s.iter().flatten().collect::<Vec<_>>().join(" "))
                            })
                            .unwrap_or_default()
                    })
                })
                .collect();
            columns.push(Column::new(column.name().clone(), joined));
        } else {
            columns.push(column.clone());
        }
    }
    Ok(DataFrame::new(frame.height(), columns)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_by_key_in_place_and_joined_agree() {
        let old = df!(
            "id" => ["a", "b", "c"],
            "score" => [Some(1.0), None, Some(3.0)],
            "grade" => ["x", "y", "z"],
            "run_id" => ["r1", "r1", "r1"]
        )
        .unwrap();
        let new = df!(
            "id" => ["a", "b", "c"],
            "score" => [Some(1.0), Some(2.0), Some(3.0)],
            "grade" => ["x", "y", "w"],
            "run_id" => ["r2", "r2", "r2"]
        )
        .unwrap();
        assert_eq!(diff_by_key(&old, &new, "id").unwrap(), (0, 0, 2));
        // Reversed keys are not increasing, so the rows are matched by a join.
        assert_eq!(diff_by_key(&old, &new.reverse(), "id").unwrap(), (0, 0, 2));
    }
}
