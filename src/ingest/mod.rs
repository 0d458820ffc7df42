//! Ingest: loads CSV, Parquet and NDJSON files into a table, mapping source
//! column names onto canonical ones and quarantining bad rows.
//!
//! Bad rows go to `<table>_rejected` with their reason, file, line and
//! original record. A row is bad when it has an unparseable date or number,
//! misses a required field, repeats a key of the batch or of the table, or
//! is a CSV line with the wrong number of fields or an NDJSON line that is
//! not a JSON object. Rows read always equal rows
//! accepted plus rows rejected. A file that is empty, truncated or not of
//! its format fails the whole ingest, and nothing is committed.

pub(crate) mod convert;
mod read;

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use polars::prelude::*;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::delta::table::CommitOptions;
use crate::delta::{Snapshot, Table, WriteMode};
use crate::error::{Error, Result};
use crate::schema::{self, CanonicalTable, ColumnType};
use crate::warehouse::Warehouse;

use convert::convert_column;
pub use convert::parse_timestamp;
use read::{read_csv, read_ndjson, read_parquet, read_source, RawFile};

/// A source file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Csv,
    Parquet,
    Ndjson,
}

impl Format {
    /// Guesses the format from a file name's extension.
    pub fn from_name(name: &str) -> Option<Self> {
        let lower = name.to_ascii_lowercase();
        let lower = lower.strip_suffix(".gz").unwrap_or(&lower);
        if lower.ends_with(".csv") || lower.ends_with(".tsv") || lower.ends_with(".txt") {
            Some(Format::Csv)
        } else if lower.ends_with(".parquet") || lower.ends_with(".pq") {
            Some(Format::Parquet)
        } else if lower.ends_with(".ndjson")
            || lower.ends_with(".jsonl")
            || lower.ends_with(".json")
        {
            Some(Format::Ndjson)
        } else {
            None
        }
    }
}

/// The change a batch makes to the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum IngestMode {
    /// Adds the rows to the table.
    Append,
    /// Replaces the table's rows with the batch.
    Overwrite,
    /// Replaces rows whose key is in the batch and adds the others.
    Upsert,
}

/// CSV parsing options.
#[derive(Debug, Clone)]
pub struct CsvOptions {
    pub delimiter: u8,
    pub has_header: bool,
    /// The quote character; `None` turns quoting off.
    pub quote: Option<u8>,
}

impl Default for CsvOptions {
    fn default() -> Self {
        Self {
            delimiter: b',',
            has_header: true,
            quote: Some(b'"'),
        }
    }
}

/// The limit on rejected rows, past which the ingest fails.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MaxRejected {
    Count(u64),
    /// A percentage of rows read.
    Percent(f64),
}

impl std::str::FromStr for MaxRejected {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, String> {
        let text = text.trim();
        if let Some(number) = text.strip_suffix('%') {
            let pct: f64 = number
                .trim()
                .parse()
                .map_err(|_| format!("invalid percentage `{text}`: expected a number like 1.5%"))?;
            if !(0.0..=100.0).contains(&pct) {
                return Err(format!("invalid percentage `{text}`: expected 0% to 100%"));
            }
            return Ok(MaxRejected::Percent(pct));
        }
        text.parse().map(MaxRejected::Count).map_err(|_| {
            format!("invalid limit `{text}`: expected a row count like 100 or a percentage like 1%")
        })
    }
}

/// The files to ingest and the options for reading and committing them.
#[derive(Debug, Clone)]
pub struct IngestOptions {
    pub table: String,
    /// Local paths or object-store URLs (`s3://bucket/key`, `file://path`).
    pub files: Vec<String>,
    /// The format of every file; guessed from each extension when `None`.
    pub format: Option<Format>,
    pub csv: CsvOptions,
    /// Source column name to canonical column name.
    pub mapping: BTreeMap<String, String>,
    pub mode: IngestMode,
    /// The key column; defaults to the canonical table's key.
    pub key: Option<String>,
    pub max_rejected: Option<MaxRejected>,
}

/// Counts for one file.
#[derive(Debug, Clone, Serialize)]
pub struct FileSummary {
    pub file: String,
    pub rows_read: u64,
    pub accepted: u64,
    pub rejected: u64,
}

/// The outcome of an ingest.
#[derive(Debug, Clone, Serialize)]
pub struct IngestSummary {
    pub table: String,
    pub mode: IngestMode,
    pub batch_id: String,
    pub rows_read: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub files: Vec<FileSummary>,
    /// The table's version after the ingest.
    pub version: u64,
    /// False when no row was accepted, so no version was committed.
    pub committed: bool,
    /// The table rejected rows went to, and its committed version.
    pub rejected_table: Option<String>,
    pub rejected_version: Option<u64>,
    /// The most frequent rejection reasons, with counts.
    pub rejection_reasons: Vec<(String, u64)>,
}

/// Ingests files into a table of `warehouse`.
pub fn ingest(warehouse: &Warehouse, options: &IngestOptions) -> Result<IngestSummary> {
    if options.files.is_empty() {
        return Err(Error::Config(
            "no input files given; name at least one FILE".into(),
        ));
    }
    let table = Table::new(warehouse, &options.table)?;
    let canonical = schema::input_table(&options.table);
    let key = options
        .key
        .clone()
        .or_else(|| canonical.map(|t| t.key.to_string()));
    if options.mode == IngestMode::Upsert && key.is_none() {
        return Err(Error::Config(format!(
            "upsert into `{}` needs a key column: pass --key COLUMN",
            options.table
        )));
    }
    let batch_id = uuid::Uuid::now_v7().to_string();
    let ingested_at = Utc::now();

    let mut accepted_frames = Vec::new();
    let mut rejected = Rejected::default();
    let mut files = Vec::new();
    let mut seen_keys: HashMap<String, (usize, u64)> = HashMap::new();
    for (index, file) in options.files.iter().enumerate() {
        let bytes = read_source(file)?;
        let format = match options.format.or_else(|| Format::from_name(file)) {
            Some(format) => format,
            None => {
                return Err(Error::Config(format!(
                    "cannot tell the format of {file} from its name; pass --format csv, parquet or ndjson"
                )));
            }
        };
        if bytes.is_empty() {
            return Err(Error::Input(format!("file {file} is empty")));
        }
        let raw = match format {
            Format::Csv => read_csv(file, &bytes, &options.csv)?,
            Format::Parquet => read_parquet(file, bytes)?,
            Format::Ndjson => read_ndjson(file, &bytes)?,
        };
        let summary = validate_file(
            raw,
            canonical,
            &options.mapping,
            key.as_deref(),
            (index, &options.files),
            &mut seen_keys,
            &mut accepted_frames,
            &mut rejected,
        )?;
        files.push(summary);
    }

    let batch = if accepted_frames.is_empty() {
        DataFrame::empty()
    } else {
        concat_frames(accepted_frames)?
    };
    let base = table.latest_snapshot()?;
    let batch = match (options.mode, &key, &base) {
        (IngestMode::Append, Some(key), Some(base)) if batch.height() > 0 => reject_existing_keys(
            &table,
            base,
            batch,
            key,
            &options.files,
            &mut files,
            &mut rejected,
        )?,
        _ => batch,
    };
    let batch = batch.drop_many([FILE_COLUMN, LINE_COLUMN]);

    let rows_read: u64 = files.iter().map(|f| f.rows_read).sum();
    let rejected_count: u64 = files.iter().map(|f| f.rejected).sum();
    let accepted_count = rows_read - rejected_count;
    if let Some(limit) = options.max_rejected {
        let exceeded = match limit {
            MaxRejected::Count(max) => rejected_count > max,
            MaxRejected::Percent(pct) => {
                rows_read > 0 && (rejected_count as f64) * 100.0 / (rows_read as f64) > pct
            }
        };
        if exceeded {
            let limit = match limit {
                MaxRejected::Count(n) => format!("{n} rows"),
                MaxRejected::Percent(p) => format!("{p}%"),
            };
            return Err(Error::Data(format!(
                "ingest into `{}` rejected {rejected_count} of {rows_read} rows, more than \
                 --max-rejected {limit}; nothing was committed. Most frequent reasons: {}",
                options.table,
                rejected
                    .top_reasons(3)
                    .iter()
                    .map(|(r, n)| format!("{r} ({n})"))
                    .collect::<Vec<_>>()
                    .join("; ")
            )));
        }
    }

    let batch = match canonical {
        Some(canonical) => order_columns(batch, canonical)?,
        None => batch,
    };
    // A batch with no accepted rows changes nothing, unless it overwrites
    // the table or creates it.
    let unchanged = batch.height() == 0 && options.mode != IngestMode::Overwrite;
    let (version, committed) = match (&base, unchanged) {
        (Some(base), true) => (base.version, false),
        _ => {
            let version = commit_batch(
                &table,
                base.as_ref(),
                batch,
                options.mode,
                key.as_deref(),
                &batch_id,
            )?;
            (version, true)
        }
    };

    let rejection_reasons = rejected.top_reasons(5);
    let mut rejected_table = None;
    let mut rejected_version = None;
    if rejected_count > 0 {
        let name = format!("{}_rejected", options.table);
        let frame = rejected.into_frame(&batch_id, ingested_at)?;
        let reasons_table = Table::new(warehouse, &name)?;
        let commit = reasons_table.append_retrying(
            frame,
            CommitOptions::new("WRITE")
                .with_parameter("mode", "Append")
                .with_parameter("batch_id", batch_id.clone()),
        );
        match commit {
            Ok(v) => {
                rejected_table = Some(name);
                rejected_version = Some(v);
            }
            Err(e) => {
                // Undo the accepted rows, so that no row of the batch is
                // visible without its rejected siblings.
                if committed {
                    let undo = CommitOptions::new("RESTORE")
                        .with_parameter("batch_id", batch_id.clone())
                        .with_parameter("reason", "the rejected rows failed to commit");
                    if let Err(undo_error) = table.revert(version, undo) {
                        return Err(Error::Data(format!(
                            "{e}; the accepted rows stay in `{}` version {version} because undoing \
                             them failed too: {undo_error}",
                            options.table
                        )));
                    }
                }
                return Err(e);
            }
        }
    }
    Ok(IngestSummary {
        table: options.table.clone(),
        mode: options.mode,
        batch_id,
        rows_read,
        accepted: accepted_count,
        rejected: rejected_count,
        files,
        version,
        committed,
        rejected_table,
        rejected_version,
        rejection_reasons,
    })
}

/// Rows rejected so far.
#[derive(Default)]
struct Rejected {
    files: Vec<String>,
    lines: Vec<i64>,
    reasons: Vec<String>,
    records: Vec<String>,
}

impl Rejected {
    fn push(&mut self, file: &str, line: u64, reason: String, record: String) {
        self.files.push(file.to_string());
        self.lines.push(line as i64);
        self.reasons.push(reason);
        self.records.push(record);
    }

    fn top_reasons(&self, n: usize) -> Vec<(String, u64)> {
        let mut counts: HashMap<String, u64> = HashMap::new();
        for reason in &self.reasons {
            // Group by the reason's kind: the first quoted value, which is
            // the row's own, is masked.
            let kind = match reason.split_once('`') {
                Some((head, rest)) => match rest.split_once('`') {
                    Some((_, tail)) => format!("{head}`…`{tail}"),
                    None => reason.clone(),
                },
                None => reason.clone(),
            };
            *counts.entry(kind).or_default() += 1;
        }
        let mut sorted: Vec<(String, u64)> = counts.into_iter().collect();
        sorted.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        sorted.truncate(n);
        sorted
    }

    fn into_frame(self, batch_id: &str, ingested_at: DateTime<Utc>) -> Result<DataFrame> {
        let height = self.files.len();
        let ingested = Column::new(
            "ingested_at".into(),
            vec![ingested_at.timestamp_micros(); height],
        )
        .cast(&schema::utc_timestamp())?;
        Ok(DataFrame::new(
            height,
            vec![
                Column::new("source_file".into(), self.files),
                Column::new("line".into(), self.lines),
                Column::new("reason".into(), self.reasons),
                Column::new("record".into(), self.records),
                ingested,
                Column::new("batch_id".into(), vec![batch_id.to_string(); height]),
            ],
        )?)
    }
}

/// Applies the mapping to a file's columns, checks every row, and moves
/// accepted rows into `accepted` and bad ones into `rejected`.
#[allow(clippy::too_many_arguments)]
fn validate_file(
    raw: RawFile,
    canonical: Option<&CanonicalTable>,
    mapping: &BTreeMap<String, String>,
    key: Option<&str>,
    (file_index, all_files): (usize, &[String]),
    seen_keys: &mut HashMap<String, (usize, u64)>,
    accepted: &mut Vec<DataFrame>,
    rejected: &mut Rejected,
) -> Result<FileSummary> {
    let RawFile {
        name,
        frame,
        lines,
        broken,
    } = raw;
    let rows_read = (frame.height() + broken.len()) as u64;
    let rejected_before = rejected.files.len();
    for (line, reason, text) in broken {
        rejected.push(&name, line, reason, text);
    }

    // Rename source columns: the explicit mapping first, then
    // case-insensitive matches of canonical names.
    let source_names: Vec<String> = frame
        .get_column_names()
        .iter()
        .map(|s| s.to_string())
        .collect();
    let unknown: Vec<&str> = mapping
        .keys()
        .filter(|source| !source_names.contains(source))
        .map(String::as_str)
        .collect();
    if !unknown.is_empty() {
        return Err(Error::Config(format!(
            "--map names columns that file {name} does not have: {}. Its columns are: {}{}",
            unknown.join(", "),
            source_names.join(", "),
            delimiter_hint(&source_names)
        )));
    }
    let mut renamed: Vec<String> = Vec::with_capacity(source_names.len());
    for source in &source_names {
        let target = match mapping.get(source) {
            Some(target) => target.clone(),
            None => canonical
                .and_then(|t| {
                    t.columns
                        .iter()
                        .find(|c| c.name.eq_ignore_ascii_case(source))
                })
                .map(|c| c.name.to_string())
                .unwrap_or_else(|| source.clone()),
        };
        if let Some(first) = renamed.iter().position(|r| r == &target) {
            return Err(Error::Config(format!(
                "file {name}: columns `{}` and `{source}` both map onto `{target}`; rename one \
                 with --map, e.g. --map {source}={source}_2",
                source_names[first]
            )));
        }
        renamed.push(target);
    }
    if let Some(canonical) = canonical {
        let missing: Vec<&str> = canonical
            .columns
            .iter()
            .filter(|c| c.required && !renamed.iter().any(|r| r == c.name))
            .map(|c| c.name)
            .collect();
        if !missing.is_empty() {
            return Err(Error::Input(format!(
                "file {name} has no column {}, which table `{}` requires; map source columns \
                 onto them with --map SOURCE={}. The file's columns are: {}{}",
                missing
                    .iter()
                    .map(|m| format!("`{m}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
                canonical.name,
                missing[0],
                source_names.join(", "),
                delimiter_hint(&source_names)
            )));
        }
    }
    if let Some(key) = key {
        if !renamed.iter().any(|r| r == key) {
            return Err(Error::Input(format!(
                "file {name} has no key column `{key}`; its columns are: {}",
                source_names.join(", ")
            )));
        }
    }

    // Convert each column to its canonical type, remembering the first
    // problem of every row.
    let height = frame.height();
    let mut problems: Vec<Option<String>> = vec![None; height];
    let mut converted = Vec::with_capacity(renamed.len());
    for (source, target) in source_names.iter().zip(&renamed) {
        let column = frame.column(source)?.as_materialized_series().clone();
        let spec = canonical.and_then(|t| t.column(target));
        if let Some(spec) = spec {
            let numeric = column.dtype().is_primitive_numeric();
            if spec.kind == ColumnType::Timestamp && numeric {
                return Err(Error::Input(format!(
                    "file {name}: column `{source}` contains numbers of type {}, but `{target}` is a \
                     timestamp; store it as a Parquet timestamp or as text like \
                     2024-03-05T10:22:31Z",
                    column.dtype()
                )));
            }
        }
        let series = match spec {
            Some(spec) => {
                let series =
                    convert_column(&column, target, spec.kind, spec.required, &mut problems)?;
                match spec.values {
                    Some(values) => check_vocabulary(&series, target, values, &mut problems)?,
                    None => series,
                }
            }
            None => column.clone(),
        };
        converted.push(series.with_name(target.as_str().into()).into_column());
    }
    let typed = DataFrame::new(height, converted)?;
    if canonical.is_some_and(|t| t.name == schema::EMAIL_EVENTS.name) {
        check_bounce_types(&typed, &mut problems)?;
    }

    // Duplicate keys within the batch: the first occurrence wins.
    if let Some(key) = key {
        let keys = typed.column(key)?.cast(&DataType::String)?;
        let keys = keys.str()?;
        for (row, value) in keys.iter().enumerate() {
            let Some(value) = value else { continue };
            if problems[row].is_some() {
                continue;
            }
            if let Some((first_file, first_line)) = seen_keys.get(value) {
                problems[row] = Some(format!(
                    "duplicate key `{value}` in column {key}; the first occurrence ({} line {first_line}) was kept",
                    all_files[*first_file]
                ));
            } else {
                seen_keys.insert(value.to_string(), (file_index, lines[row]));
            }
        }
    }

    let bad: Vec<bool> = problems.iter().map(Option::is_some).collect();
    if bad.iter().any(|b| *b) {
        let records = records_as_json(&frame, &bad)?;
        let mut record_iter = records.into_iter();
        for (row, problem) in problems.iter().enumerate() {
            if let Some(reason) = problem {
                let record = record_iter.next().unwrap_or_default();
                rejected.push(&name, lines[row], reason.clone(), record);
            }
        }
    }
    let good = BooleanChunked::from_iter_values("good".into(), bad.iter().map(|b| !b));
    let mut kept = typed.filter(&good)?;
    let kept_lines: Vec<i64> = lines
        .iter()
        .zip(&bad)
        .filter(|(_, bad)| !**bad)
        .map(|(line, _)| *line as i64)
        .collect();
    let height = kept.height();
    kept.with_column(Column::new(
        FILE_COLUMN.into(),
        vec![file_index as i64; height],
    ))?;
    kept.with_column(Column::new(LINE_COLUMN.into(), kept_lines))?;
    let accepted_rows = height as u64;
    if accepted_rows > 0 || accepted.is_empty() {
        accepted.push(kept);
    }
    let rejected_rows = (rejected.files.len() - rejected_before) as u64;
    Ok(FileSummary {
        file: name,
        rows_read,
        accepted: accepted_rows,
        rejected: rejected_rows,
    })
}

/// Trims and lower-cases the values of a column with a fixed vocabulary,
/// noting a problem for each row whose value is not in it.
fn check_vocabulary(
    series: &Series,
    name: &str,
    values: &[&str],
    problems: &mut [Option<String>],
) -> Result<Series> {
    let text = series.str()?;
    let canonical: Vec<Option<String>> = text
        .iter()
        .enumerate()
        .map(|(row, value)| {
            let value = value?;
            let normalized = value.trim().to_lowercase();
            if !values.contains(&normalized.as_str()) && problems[row].is_none() {
                problems[row] = Some(format!(
                    "invalid {name} `{value}`; expected one of: {}",
                    values.join(", ")
                ));
            }
            Some(normalized)
        })
        .collect();
    Ok(Series::new(name.into(), canonical))
}

/// Notes a problem for each bounce event without a bounce type, which the
/// suppression job could not classify.
fn check_bounce_types(events: &DataFrame, problems: &mut [Option<String>]) -> Result<()> {
    let Ok(bounce_types) = events.column("bounce_type") else {
        // Without the column no bounce can be classified: every bounce row
        // is flagged below through a missing value.
        let event_types = events.column("event_type")?.str()?.clone();
        for (row, event_type) in event_types.iter().enumerate() {
            if event_type == Some("bounce") && problems[row].is_none() {
                problems[row] = Some(bounce_without_type());
            }
        }
        return Ok(());
    };
    let bounce_types = bounce_types.str()?.clone();
    let event_types = events.column("event_type")?.str()?.clone();
    for (row, (event_type, bounce_type)) in event_types.iter().zip(bounce_types.iter()).enumerate()
    {
        if event_type == Some("bounce") && bounce_type.is_none() && problems[row].is_none() {
            problems[row] = Some(bounce_without_type());
        }
    }
    Ok(())
}

fn bounce_without_type() -> String {
    "missing bounce_type for a bounce event; expected one of: hard, soft, block".to_string()
}

/// Returns a hint to pass `--delimiter` when a file read as one column
/// looks delimited by another character.
fn delimiter_hint(columns: &[String]) -> String {
    let [only] = columns else {
        return String::new();
    };
    for (delimiter, shown) in [(';', ";"), ('\t', "\\t"), ('|', "|")] {
        if only.contains(delimiter) {
            return format!(
                ". The header looks delimited by `{shown}`: pass --delimiter '{shown}'"
            );
        }
    }
    String::new()
}

/// Renders the rows of `frame` marked in `rows` as JSON objects of their
/// original values.
fn records_as_json(frame: &DataFrame, rows: &[bool]) -> Result<Vec<String>> {
    let mask = BooleanChunked::from_iter_values("rows".into(), rows.iter().copied());
    let selected = frame.filter(&mask)?;
    let names: Vec<String> = selected
        .get_column_names()
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut out = Vec::with_capacity(selected.height());
    for row in 0..selected.height() {
        let mut object = Map::new();
        for (index, column) in selected.columns().iter().enumerate() {
            let value = column.get(row)?;
            let json = match value {
                AnyValue::Null => Value::Null,
                AnyValue::String(s) => Value::String(s.to_string()),
                AnyValue::StringOwned(s) => Value::String(s.to_string()),
                other => Value::String(other.to_string()),
            };
            object.insert(names[index].clone(), json);
        }
        out.push(Value::Object(object).to_string());
    }
    Ok(out)
}

/// Concatenates accepted frames of several files, which may have different
/// pass-through columns.
fn concat_frames(frames: Vec<DataFrame>) -> Result<DataFrame> {
    let lazy: Vec<LazyFrame> = frames.into_iter().map(DataFrame::lazy).collect();
    let args = UnionArgs {
        to_supertypes: true,
        diagonal: true,
        ..Default::default()
    };
    Ok(concat(lazy, args)?.collect()?)
}

/// Puts canonical columns first, in table order; other columns follow.
fn order_columns(df: DataFrame, canonical: &CanonicalTable) -> Result<DataFrame> {
    if df.width() == 0 {
        let columns: Vec<Column> = canonical
            .columns
            .iter()
            .map(|c| Column::new_empty(c.name.into(), &c.kind.dtype()))
            .collect();
        return Ok(DataFrame::new(0, columns)?);
    }
    let present: Vec<String> = df
        .get_column_names()
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut exprs: Vec<Expr> = canonical
        .columns
        .iter()
        .map(|c| {
            if present.iter().any(|p| p == c.name) {
                col(c.name)
            } else {
                lit(NULL).cast(c.kind.dtype()).alias(c.name)
            }
        })
        .collect();
    for name in &present {
        if canonical.column(name).is_none() {
            exprs.push(col(name.as_str()));
        }
    }
    Ok(df.lazy().select(exprs).collect()?)
}

/// Commits the accepted rows in `mode` and returns the new version.
fn commit_batch(
    table: &Table,
    base: Option<&Snapshot>,
    batch: DataFrame,
    mode: IngestMode,
    key: Option<&str>,
    batch_id: &str,
) -> Result<u64> {
    let rows = batch.height() as u64;
    let (frame, write_mode, operation, mode_name) = match (mode, base) {
        (IngestMode::Append, _) => (batch, WriteMode::Append, "WRITE", "Append"),
        (IngestMode::Overwrite, _) => (batch, WriteMode::Overwrite, "WRITE", "Overwrite"),
        (IngestMode::Upsert, None) => (batch, WriteMode::Overwrite, "MERGE", "Upsert"),
        (IngestMode::Upsert, Some(base)) => {
            let key = key.expect("upsert key checked above");
            let current = table.scan(base)?;
            let kept = current.join(
                batch.clone().lazy().select([col(key)]),
                [col(key)],
                [col(key)],
                JoinArgs::new(JoinType::Anti),
            );
            let union = concat(
                [kept, batch.lazy()],
                UnionArgs {
                    to_supertypes: true,
                    diagonal: true,
                    ..Default::default()
                },
            )?
            .collect()?;
            (union, WriteMode::Overwrite, "MERGE", "Upsert")
        }
    };
    let options = CommitOptions::new(operation)
        .with_parameter("mode", mode_name)
        .with_parameter("batch_id", batch_id)
        .with_parameter("rows", rows);
    table.stage(frame, write_mode, base)?.commit(options)
}

/// Internal columns that carry each accepted row's file index and line
/// until the batch commits.
const FILE_COLUMN: &str = "__nightshift_file";
const LINE_COLUMN: &str = "__nightshift_line";

/// Moves rows whose key is already in the table to the rejected rows, so
/// that appending the same file twice adds nothing twice.
fn reject_existing_keys(
    table: &Table,
    base: &Snapshot,
    batch: DataFrame,
    key: &str,
    file_names: &[String],
    files: &mut [FileSummary],
    rejected: &mut Rejected,
) -> Result<DataFrame> {
    if !base.schema.contains(key) {
        return Ok(batch);
    }
    let existing = table
        .scan(base)?
        .select([col(key).cast(DataType::String).alias("__nightshift_key")])
        .unique(None, UniqueKeepStrategy::Any);
    let keyed = batch
        .lazy()
        .with_column(col(key).cast(DataType::String).alias("__nightshift_key"));
    let join = |how: JoinType| {
        keyed.clone().join(
            existing.clone(),
            [col("__nightshift_key")],
            [col("__nightshift_key")],
            JoinArgs::new(how),
        )
    };
    let duplicates = join(JoinType::Semi).collect()?;
    let without_key = |df: DataFrame| df.drop_many(["__nightshift_key"]);
    if duplicates.height() == 0 {
        return Ok(without_key(keyed.collect()?));
    }
    let record_columns: Vec<String> = duplicates
        .get_column_names()
        .iter()
        .map(|c| c.to_string())
        .filter(|c| !c.starts_with("__nightshift_"))
        .collect();
    // NOTE: the raw text of these rows is gone by now, so their record is
    // the row after mapping and parsing, not the source line.
    let records = records_as_json(
        &duplicates.select(record_columns)?,
        &vec![true; duplicates.height()],
    )?;
    let file_index = duplicates.column(FILE_COLUMN)?.i64()?.clone();
    let lines = duplicates.column(LINE_COLUMN)?.i64()?.clone();
    let keys = duplicates.column("__nightshift_key")?.str()?.clone();
    for (row, record) in records.into_iter().enumerate() {
        let index = file_index.get(row).unwrap_or(0) as usize;
        let value = keys.get(row).unwrap_or("");
        rejected.push(
            &file_names[index],
            lines.get(row).unwrap_or(0) as u64,
            format!(
                "duplicate key `{value}` in column {key}: already in table `{}` (version {}); \
                 use --mode upsert to replace rows",
                table.name(),
                base.version
            ),
            record,
        );
        files[index].accepted -= 1;
        files[index].rejected += 1;
    }
    Ok(without_key(join(JoinType::Anti).collect()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_parse_in_utc() {
        let expected = 1_709_634_151_000_000; // 2024-03-05T10:22:31Z
        assert_eq!(parse_timestamp("2024-03-05T10:22:31Z"), Some(expected));
        assert_eq!(parse_timestamp("2024-03-05 10:22:31"), Some(expected));
        assert_eq!(parse_timestamp("2024-03-05T12:22:31+02:00"), Some(expected));
        assert_eq!(
            parse_timestamp("2024-03-05T10:22:31.000000+0000"),
            Some(expected)
        );
        assert_eq!(parse_timestamp("2024-03-05"), Some(1_709_596_800_000_000));
        assert_eq!(parse_timestamp("20240305"), Some(1_709_596_800_000_000));
        assert_eq!(parse_timestamp("yesterday"), None);
        assert_eq!(parse_timestamp("2024-13-05"), None);
    }

    #[test]
    fn max_rejected_parses_counts_and_percentages() {
        assert_eq!("10".parse::<MaxRejected>(), Ok(MaxRejected::Count(10)));
        assert_eq!("2.5%".parse::<MaxRejected>(), Ok(MaxRejected::Percent(2.5)));
        assert!("ten".parse::<MaxRejected>().is_err());
        assert!("150%".parse::<MaxRejected>().is_err());
    }
}
