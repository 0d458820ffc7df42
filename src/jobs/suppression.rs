//! Job kind `suppression`: nightly bounce suppression.
//!
//! Reads the email events appended since the version the last successful
//! run consumed and upserts every hard bounce, complaint and unsubscribe
//! into `suppression_list`, keyed by the normalized address (trimmed,
//! lower-cased). The stored address is never rewritten.
//!
//! Columns of `suppression_list`, and of `suppression_changes`, which
//! contains the addresses this run added:
//!
//! | column              | meaning                                                    |
//! |---------------------|------------------------------------------------------------|
//! | email_normalized    | the key: `lower(trim(email))`                              |
//! | email               | the address as the first triggering event stored it        |
//! | reason              | `hard_bounce`, `complaint` or `unsubscribe`, of that event |
//! | source              | `email_events`                                             |
//! | event_id            | the first triggering event                                 |
//! | first_suppressed_at | occurred_at of the first triggering event                  |
//! | last_event_at       | occurred_at of the latest triggering event                 |
//! | event_count         | triggering events seen for the address                     |
//! | expires_at          | null: never expires                                        |
//! | run_id              | the run that last changed the row                          |
//!
//! The first event of an address is the one with the smallest
//! `(occurred_at, event_id)`. An address already on the list keeps its
//! email, reason, event id and first date; a later event raises
//! last_event_at and event_count. Events that arrive late (with an
//! occurred_at before the last run) are still applied, because the job
//! reads by commit, not by event time.

use polars::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Export, JobContext, JobResult, KindSpec, OutputFrame, Role};
use crate::delta::WriteMode;
use crate::error::Result;
use crate::schema::utc_timestamp;

pub const SPEC: KindSpec = KindSpec {
    name: "suppression",
    description: "moves hard bounces, complaints and unsubscribes to the suppression list",
    inputs: &[Role {
        name: "events",
        default_table: "email_events",
        description: "email events, appended nightly",
    }],
    outputs: &[
        Role {
            name: "list",
            default_table: "suppression_list",
            description: "every suppressed address",
        },
        Role {
            name: "changes",
            default_table: "suppression_changes",
            description: "the addresses this run added",
        },
    ],
    validate_params,
    run,
};

/// Parameters of the `suppression` job kind.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Writes the whole list as CSV to this path under the warehouse root
    /// after each run that changes it, for upload to an email service.
    pub export_csv: Option<String>,
}

/// Checks the parameters: known keys only, and an export path inside the
/// warehouse.
fn validate_params(params: &toml::Table) -> std::result::Result<Value, String> {
    let value = super::parse_params::<Params>(params)?;
    if let Some(path) = params.get("export_csv").and_then(|v| v.as_str()) {
        super::check_relative_path("export_csv", path)?;
    }
    Ok(value)
}

/// Returns the columns of `suppression_list`, in order.
pub fn list_schema() -> Schema {
    Schema::from_iter([
        Field::new("email_normalized".into(), DataType::String),
        Field::new("email".into(), DataType::String),
        Field::new("reason".into(), DataType::String),
        Field::new("source".into(), DataType::String),
        Field::new("event_id".into(), DataType::String),
        Field::new("first_suppressed_at".into(), utc_timestamp()),
        Field::new("last_event_at".into(), utc_timestamp()),
        Field::new("event_count".into(), DataType::Int64),
        Field::new("expires_at".into(), utc_timestamp()),
        Field::new("run_id".into(), DataType::String),
    ])
}

/// Returns the normalized form of an email expression: trimmed and
/// lower-cased, with empty strings as null.
pub fn normalize_email(expr: Expr) -> Expr {
    let normalized = expr.str().strip_chars(lit(NULL)).str().to_lowercase();
    when(normalized.clone().eq(lit("")))
        .then(lit(NULL).cast(DataType::String))
        .otherwise(normalized)
}

/// Returns true for the events that suppress: hard bounces, complaints and
/// unsubscribes. Soft bounces and blocks do not.
fn is_triggering() -> Expr {
    let event_type = col("event_type");
    event_type
        .clone()
        .eq(lit("bounce"))
        .and(col("bounce_type").eq(lit("hard")))
        .or(event_type.clone().eq(lit("complaint")))
        .or(event_type.eq(lit("unsubscribe")))
}

/// Returns the suppression reason of each event, or null for events that do
/// not suppress.
fn reason() -> Expr {
    let event_type = col("event_type");
    when(
        event_type
            .clone()
            .eq(lit("bounce"))
            .and(col("bounce_type").eq(lit("hard"))),
    )
    .then(lit("hard_bounce"))
    .when(event_type.clone().eq(lit("complaint")))
    .then(lit("complaint"))
    .when(event_type.eq(lit("unsubscribe")))
    .then(lit("unsubscribe"))
    .otherwise(lit(NULL).cast(DataType::String))
}

/// Aggregates triggering events into one row per normalized address.
pub fn aggregate_events(events: LazyFrame) -> LazyFrame {
    let order = || [col("occurred_at"), col("event_id")];
    let first = |name: &str| {
        col(name)
            .sort_by(order(), SortMultipleOptions::default())
            .first()
    };
    events.group_by([col("email_normalized")]).agg([
        first("email").alias("new_email"),
        first("reason").alias("new_reason"),
        first("event_id").alias("new_event_id"),
        col("occurred_at").min().alias("new_first"),
        col("occurred_at").max().alias("new_last"),
        len().cast(DataType::Int64).alias("new_count"),
    ])
}

fn run(ctx: &JobContext) -> Result<JobResult> {
    let params: Params = serde_json::from_value(ctx.params.clone())?;
    let input = ctx.input("events");
    let list_output = ctx.output("list");
    let existing = list_output.read()?;
    let mut result = JobResult::default();

    // Read only the files appended since the last consumed version, when
    // the list is as the last successful run left it and the events table
    // was only appended to since then. A list that was rolled back or
    // rewritten gets every event again, so nothing it lost stays lost.
    let pinned = input.snapshot.version;
    let mut incremental_from = None;
    let mut files = input.snapshot.files.clone();
    let list_intact = list_output.is_as_last_committed();
    if let (true, Some(last)) = (list_intact, input.last_consumed) {
        if last <= pinned {
            if let Some(added) = input.table.added_between(last, pinned)? {
                files = added;
                incremental_from = Some(last);
            }
        }
    }
    if let Some(from) = incremental_from {
        result.incremental_from.insert("events".into(), from);
    }
    result.metrics.insert(
        "read_mode".into(),
        Value::from(if incremental_from.is_some() {
            "incremental"
        } else {
            "full"
        }),
    );
    result
        .metrics
        .insert("files_read".into(), Value::from(files.len()));

    // Ingest stores event_type and bounce_type trimmed and lower-cased, so
    // a plain comparison on the raw columns keeps the rare triggering events
    // before any string work is done on the millions of others.
    let events_read: u64 = files.iter().filter_map(|f| f.num_records()).sum();
    let triggering = input
        .table
        .scan_files(&input.snapshot.schema, &files)?
        .select([
            col("event_id"),
            col("email"),
            col("event_type"),
            col("bounce_type"),
            col("occurred_at"),
        ])
        .filter(is_triggering())
        .with_columns([
            normalize_email(col("email")).alias("email_normalized"),
            reason().alias("reason"),
        ]);
    let triggering = super::collect_streaming(triggering)?;
    let without_email = triggering.column("email_normalized")?.null_count();
    result
        .metrics
        .insert("events_read".into(), Value::from(events_read));
    result
        .metrics
        .insert("triggering_events".into(), Value::from(triggering.height()));
    result
        .metrics
        .insert("events_without_email".into(), Value::from(without_email));

    let triggering = triggering
        .lazy()
        .filter(col("email_normalized").is_not_null());
    let new_rows = aggregate_events(triggering).collect()?;
    if let (0, Some(existing)) = (new_rows.height(), &existing) {
        // Nothing new: the list and the changes keep their versions. The
        // export is still written, in case its path or the file changed.
        result
            .metrics
            .insert("addresses_added".into(), Value::from(0));
        result
            .metrics
            .insert("addresses_updated".into(), Value::from(0));
        if let Some(path) = params.export_csv {
            let frame = existing
                .clone()
                .lazy()
                .select(list_columns())
                .sort(["email_normalized"], SortMultipleOptions::default())
                .collect()?;
            result.exports.push(Export { path, frame });
        }
        return Ok(result);
    }

    let existing = match existing {
        Some(df) => df.lazy().select(list_columns()),
        None => DataFrame::empty_with_schema(&list_schema()).lazy(),
    };
    // A full re-read recounts every event, so counts replace old ones
    // instead of adding to them.
    let replace_counts = incremental_from.is_none();
    let merged = merge(existing, new_rows.lazy(), &ctx.run_id, replace_counts)
        .sort(["email_normalized"], SortMultipleOptions::default())
        .collect()?;

    let added_mask = merged.column("_existing")?.is_null();
    let updated = merged
        .clone()
        .lazy()
        .filter(
            col("_existing").is_not_null().and(
                col("event_count")
                    .neq(col("_old_count"))
                    .or(col("last_event_at").neq(col("_old_last"))),
            ),
        )
        .collect()?
        .height();
    let list = merged.clone().lazy().select(list_columns()).collect()?;
    let changes = merged
        .filter(&added_mask)?
        .lazy()
        .select(list_columns())
        .collect()?;

    result
        .metrics
        .insert("addresses_added".into(), Value::from(changes.height()));
    result
        .metrics
        .insert("addresses_updated".into(), Value::from(updated));
    result
        .metrics
        .insert("list_size".into(), Value::from(list.height()));
    let by_reason = changes
        .clone()
        .lazy()
        .group_by([col("reason")])
        .agg([len().alias("n")])
        .sort(["reason"], SortMultipleOptions::default())
        .collect()?;
    let mut added_by_reason = serde_json::Map::new();
    let reasons = by_reason.column("reason")?.str()?.clone();
    let ns = by_reason.column("n")?.cast(&DataType::Int64)?;
    let ns = ns.i64()?;
    for (reason, n) in reasons.iter().zip(ns.iter()) {
        if let (Some(reason), Some(n)) = (reason, n) {
            added_by_reason.insert(reason.to_string(), Value::from(n));
        }
    }
    result
        .metrics
        .insert("added_by_reason".into(), Value::Object(added_by_reason));

    if let Some(path) = params.export_csv {
        result.exports.push(Export {
            path,
            frame: list.clone(),
        });
    }
    result.outputs.push(OutputFrame {
        role: "list".into(),
        frame: list,
        mode: WriteMode::Overwrite,
        key: Some("email_normalized".into()),
    });
    result.outputs.push(OutputFrame {
        role: "changes".into(),
        frame: changes,
        mode: WriteMode::Overwrite,
        key: Some("email_normalized".into()),
    });
    Ok(result)
}

fn list_columns() -> Vec<Expr> {
    list_schema()
        .iter()
        .map(|(name, dtype)| col(name.clone()).cast(dtype.clone()))
        .collect()
}

/// Merges aggregated new events into the existing list. The result keeps
/// the list's columns plus `_existing` (null for new addresses) and
/// `new_count` (null for addresses without new events).
fn merge(
    existing: LazyFrame,
    new_rows: LazyFrame,
    run_id: &str,
    replace_counts: bool,
) -> LazyFrame {
    let existing = existing.with_column(lit(true).alias("_existing"));
    let joined = existing.join(
        new_rows,
        [col("email_normalized")],
        [col("email_normalized")],
        JoinArgs::new(JoinType::Full).with_coalesce(JoinCoalesce::CoalesceColumns),
    );
    let is_existing = col("_existing").is_not_null();
    let has_new = col("new_count").is_not_null();
    let keep_or_new = |old: &str, new: &str| {
        when(is_existing.clone())
            .then(col(old))
            .otherwise(col(new))
            .alias(old)
    };
    let last_event_at = when(
        is_existing.clone().and(
            has_new
                .clone()
                .not()
                .or(col("last_event_at").gt_eq(col("new_last"))),
        ),
    )
    .then(col("last_event_at"))
    .otherwise(col("new_last"))
    .alias("last_event_at");
    let event_count = if replace_counts {
        when(has_new.clone())
            .then(col("new_count"))
            .otherwise(col("event_count"))
    } else {
        when(is_existing.clone())
            .then(col("event_count") + col("new_count").fill_null(lit(0i64)))
            .otherwise(col("new_count"))
    }
    .alias("event_count");
    joined.with_columns([
        keep_or_new("email", "new_email"),
        keep_or_new("reason", "new_reason"),
        keep_or_new("event_id", "new_event_id"),
        keep_or_new("first_suppressed_at", "new_first"),
        when(is_existing.clone())
            .then(col("source"))
            .otherwise(lit("email_events"))
            .alias("source"),
        when(is_existing.clone())
            .then(col("expires_at"))
            .otherwise(lit(NULL).cast(utc_timestamp()))
            .alias("expires_at"),
        when(is_existing.and(has_new.not()))
            .then(col("run_id"))
            .otherwise(lit(run_id.to_string()))
            .alias("run_id"),
        last_event_at,
        event_count,
        // The values before the merge, to count the rows it changed.
        col("event_count").alias("_old_count"),
        col("last_event_at").alias("_old_last"),
    ])
}
