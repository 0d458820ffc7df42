//! Job kind `suppression`: nightly list hygiene.
//!
//! Every suppression row says why it exists: the reason, the rule that
//! fired, and the ids of the events that triggered it. The rules:
//!
//! | reason | rule |
//! |---|---|
//! | `hard_bounce`, `complaint`, `unsubscribe` | the first such event suppresses at once |
//! | `soft_bounce_limit` | `soft_bounce_limit` (7) consecutive soft bounces with no delivery, open or click in between; `soft_bounce_limit_engaged` (15) for an address that opened or clicked before; optionally only those within `soft_bounce_window_days` |
//! | `block_limit` | `block_limit` (10) consecutive blocks: a block is the sender's reputation problem, never a hard bounce |
//! | `invalid_address` | a contact's address is not valid syntax (`invalid_address = true`) |
//! | `role_address` | a contact's address is a role address such as info@ (`role_addresses = true`) |
//! | `manual` | a `suppress` row of `suppression_manual`; never expires |
//!
//! Events are counted by `occurred_at`, not by arrival, so late events
//! land where they belong. Hard bounces, complaints and unsubscribes are
//! read incrementally (the files appended since the last successful run);
//! soft bounces and blocks are counted over the whole history each run,
//! because a late delivery can break a streak.
//!
//! Matching uses the normalization policy of [`crate::email`], recorded in
//! the manifest; the stored address is never rewritten.
//!
//! Mass-bounce guard: when one recipient domain produces more than
//! `mass_bounce_share` (25%) of a run's new hard-bounce suppressions, and
//! at least `mass_bounce_min` of them, they are held in `suppression_held`
//! instead of applied, and the manifest says so. Listing the domain in
//! `release_held_domains` applies them on the next run.
//!
//! A `remove` row of `suppression_manual` takes an address off the list,
//! with its reason recorded in `suppression_changes`; events older than the
//! removal never bring it back, newer ones do. Entries expired by
//! `suppression_review` stay in the table with `expired_at` set and leave
//! the active list; a triggering event after the expiry suppresses the
//! address again.
//!
//! `sendable_contacts` holds the contacts with a valid address whose key is
//! on no active suppression.

use polars::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{Export, JobContext, JobResult, KindSpec, OutputFrame, Role};
use crate::delta::log::Add;
use crate::delta::WriteMode;
use crate::email::{self, Normalization};
use crate::error::Result;
use crate::schema::{utc_literal, utc_timestamp};

pub const SPEC: KindSpec = KindSpec {
    name: "suppression",
    description: "keeps the suppression list and the sendable contacts",
    inputs: &[
        Role {
            optional: false,
            name: "events",
            default_table: "email_events",
            description: "email events, appended nightly",
        },
        Role {
            optional: true,
            name: "contacts",
            default_table: "contacts",
            description: "contacts, for address rules and sendable_contacts",
        },
        Role {
            optional: true,
            name: "manual",
            default_table: "suppression_manual",
            description: "manual suppressions and removals",
        },
    ],
    outputs: &[
        Role {
            optional: false,
            name: "list",
            default_table: "suppression_list",
            description: "every suppressed address",
        },
        Role {
            optional: false,
            name: "changes",
            default_table: "suppression_changes",
            description: "the addresses this run added, reactivated or removed",
        },
        Role {
            optional: false,
            name: "pending_review",
            default_table: "suppression_held",
            description: "hard bounces held back by the mass-bounce guard",
        },
        Role {
            optional: false,
            name: "sendable",
            default_table: "sendable_contacts",
            description: "contacts with a valid address that is not suppressed",
        },
    ],
    validate_params,
    run,
};

/// Parameters of the `suppression` job kind.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Params {
    /// Writes the active list as CSV to this path under the warehouse root
    /// after each run, for upload to an email service.
    pub export_csv: Option<String>,
    /// Writes sendable_contacts to this path (.csv or .parquet).
    pub sendable_export: Option<String>,
    pub soft_bounce_limit: u32,
    pub soft_bounce_limit_engaged: u32,
    pub soft_bounce_window_days: Option<u32>,
    pub block_limit: u32,
    pub mass_bounce_share: f64,
    pub mass_bounce_min: u32,
    pub release_held_domains: Vec<String>,
    pub invalid_address: bool,
    pub role_addresses: bool,
    /// Replaces the built-in role local parts.
    pub role_local_parts: Option<Vec<String>>,
    pub normalization: Normalization,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            export_csv: None,
            sendable_export: None,
            soft_bounce_limit: 7,
            soft_bounce_limit_engaged: 15,
            soft_bounce_window_days: None,
            block_limit: 10,
            mass_bounce_share: 0.25,
            mass_bounce_min: 20,
            release_held_domains: Vec::new(),
            invalid_address: true,
            role_addresses: false,
            role_local_parts: None,
            normalization: Normalization::default(),
        }
    }
}

/// Checks the parameters: known keys only, limits of at least 1, and
/// export paths inside the warehouse.
fn validate_params(params: &toml::Table) -> std::result::Result<Value, String> {
    let value = super::parse_params::<Params>(params)?;
    let parsed: Params = serde_json::from_value(value.clone()).map_err(|e| e.to_string())?;
    for (name, limit) in [
        ("soft_bounce_limit", parsed.soft_bounce_limit),
        (
            "soft_bounce_limit_engaged",
            parsed.soft_bounce_limit_engaged,
        ),
        ("block_limit", parsed.block_limit),
    ] {
        if limit == 0 {
            return Err(format!("{name} must be at least 1"));
        }
    }
    if !(parsed.mass_bounce_share > 0.0 && parsed.mass_bounce_share <= 1.0) {
        return Err(format!(
            "mass_bounce_share must be above 0 and at most 1 (0.25 is 25%), got {}",
            parsed.mass_bounce_share
        ));
    }
    if let Some(path) = &parsed.export_csv {
        super::check_relative_path("export_csv", path)?;
    }
    if let Some(path) = &parsed.sendable_export {
        super::check_relative_path("sendable_export", path)?;
        if !(path.ends_with(".csv") || path.ends_with(".parquet")) {
            return Err(format!(
                "sendable_export `{path}` must end in .csv or .parquet"
            ));
        }
    }
    Ok(value)
}

/// Returns the columns of `suppression_list`, in order.
pub fn list_schema() -> Schema {
    Schema::from_iter([
        Field::new("email_normalized".into(), DataType::String),
        Field::new("email".into(), DataType::String),
        Field::new("reason".into(), DataType::String),
        Field::new("rule".into(), DataType::String),
        Field::new(
            "event_ids".into(),
            DataType::List(Box::new(DataType::String)),
        ),
        Field::new("source".into(), DataType::String),
        Field::new("event_id".into(), DataType::String),
        Field::new("first_suppressed_at".into(), utc_timestamp()),
        Field::new("last_event_at".into(), utc_timestamp()),
        Field::new("event_count".into(), DataType::Int64),
        Field::new("expires_at".into(), utc_timestamp()),
        Field::new("expired_at".into(), utc_timestamp()),
        Field::new("run_id".into(), DataType::String),
    ])
}

/// Returns the normalized form of an email expression under the default
/// policy: trimmed and lower-cased, with empty strings as null.
pub fn normalize_email(expr: Expr) -> Expr {
    Normalization::default().key(expr)
}

/// Returns true for the events that suppress at once: hard bounces,
/// complaints and unsubscribes. Soft bounces and blocks do not.
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
/// not suppress at once.
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

fn list_columns() -> Vec<Expr> {
    list_schema()
        .iter()
        .map(|(name, dtype)| col(name.clone()).cast(dtype.clone()))
        .collect()
}

/// Brings a list read from an older version (without the newer columns)
/// to the current columns.
pub fn with_list_columns(frame: DataFrame) -> LazyFrame {
    let names: Vec<String> = frame
        .get_column_names()
        .iter()
        .map(|n| n.to_string())
        .collect();
    let exprs: Vec<Expr> = list_schema()
        .iter()
        .map(|(name, dtype)| {
            if names.iter().any(|n| n == name.as_str()) {
                col(name.clone()).cast(dtype.clone())
            } else {
                lit(NULL).cast(dtype.clone()).alias(name.clone())
            }
        })
        .collect();
    frame.lazy().select(exprs)
}

/// Returns true for the soft bounces and blocks, the events that count
/// toward a streak.
fn is_streak_bounce() -> Expr {
    col("event_type").eq(lit("bounce")).and(
        col("bounce_type")
            .eq(lit("soft"))
            .or(col("bounce_type").eq(lit("block"))),
    )
}

/// Returns the latest delivery, open or click (`last_reset`) and the
/// earliest open or click (`first_engaged`) of each address in `keys`,
/// from one streaming pass over `events`.
///
/// The events are read with the streaming engine and only the rows of
/// `keys` reach the aggregation, so memory stays in proportion to `keys`,
/// not to the history.
fn reset_times(events: LazyFrame, keys: Series, policy: &Normalization) -> Result<DataFrame> {
    let engagement = ["delivered", "open", "click"];
    let resets = events
        .select([col("email"), col("event_type"), col("occurred_at")])
        .filter(col("event_type").is_in(
            lit(Series::new("t".into(), engagement)).implode(false),
            false,
        ))
        .select([
            policy.key(col("email")).alias("email_normalized"),
            col("occurred_at"),
            when(col("event_type").neq(lit("delivered")))
                .then(col("occurred_at"))
                .otherwise(lit(NULL).cast(utc_timestamp()))
                .alias("engaged_at"),
        ])
        // A filter, unlike a semi join, lets the streaming engine drop the
        // other rows as it reads them.
        .filter(col("email_normalized").is_in(lit(keys).implode(false), false))
        .with_column(super::compact(col("email_normalized")))
        .group_by([col("email_normalized")])
        .agg([
            col("occurred_at").max().alias("last_reset"),
            col("engaged_at").min().alias("first_engaged"),
        ]);
    super::collect_streaming(resets)
}

/// Suppressions from streaks of soft bounces and blocks, as candidate list
/// rows.
///
/// `bounces` are the soft bounces and blocks of the whole history, with
/// `email_normalized`. `events` is the whole history, read once for the
/// deliveries, opens and clicks that end a streak, and only for the
/// addresses whose soft bounces or blocks could reach a limit.
fn streak_candidates(
    bounces: DataFrame,
    events: LazyFrame,
    params: &Params,
    policy: &Normalization,
    now_micros: i64,
) -> Result<LazyFrame> {
    let soft = params.soft_bounce_limit;
    let engaged = params.soft_bounce_limit_engaged;
    let block = params.block_limit;

    let mut bounces = bounces.lazy().filter(col("email_normalized").is_not_null());
    if let Some(days) = params.soft_bounce_window_days {
        let since = now_micros - i64::from(days) * 86_400_000_000;
        bounces = bounces.filter(
            col("bounce_type")
                .eq(lit("block"))
                .or(col("occurred_at").gt_eq(utc_literal(since))),
        );
    }

    // A streak is a subset of an address's soft bounces (or blocks), so an
    // address with fewer of them than the lowest limit that can apply
    // never reaches a limit, and its resets need not be read.
    let lowest_limit = when(col("bounce_type").eq(lit("block")))
        .then(lit(i64::from(block)))
        .otherwise(lit(i64::from(soft.min(engaged))));
    let per_address = len()
        .cast(DataType::Int64)
        .over([col("email_normalized"), col("bounce_type")])?;
    let bounces = bounces.filter(per_address.gt_eq(lowest_limit)).collect()?;
    let keys = bounces
        .clone()
        .lazy()
        .select([col("email_normalized")])
        .unique(None, UniqueKeepStrategy::Any)
        .collect()?;
    let resets = if keys.height() == 0 {
        DataFrame::empty_with_schema(&Schema::from_iter([
            Field::new("email_normalized".into(), DataType::String),
            Field::new("last_reset".into(), utc_timestamp()),
            Field::new("first_engaged".into(), utc_timestamp()),
        ]))
    } else {
        let keys = keys.column("email_normalized")?.as_materialized_series();
        reset_times(events, keys.clone(), policy)?
    };

    let streak = bounces
        .lazy()
        .join(
            resets.lazy(),
            [col("email_normalized")],
            [col("email_normalized")],
            JoinArgs::new(JoinType::Left),
        )
        .filter(
            col("last_reset")
                .is_null()
                .or(col("occurred_at").gt(col("last_reset"))),
        );
    let order = || [col("occurred_at"), col("event_id")];
    let nth = |n: u32| {
        col("occurred_at")
            .sort(SortOptions::default())
            .slice(lit(i64::from(n) - 1), lit(1i64))
            .first()
    };
    let candidates = streak
        .group_by([col("email_normalized"), col("bounce_type")])
        .agg([
            len().cast(DataType::Int64).alias("event_count"),
            col("email")
                .sort_by(order(), SortMultipleOptions::default())
                .first()
                .alias("email"),
            col("event_id")
                .sort_by(order(), SortMultipleOptions::default())
                .first()
                .alias("event_id"),
            col("event_id")
                .sort_by(order(), SortMultipleOptions::default())
                .alias("event_ids"),
            col("occurred_at").max().alias("last_event_at"),
            col("first_engaged").first().alias("first_engaged"),
            nth(soft).alias("nth_soft"),
            nth(engaged).alias("nth_engaged"),
            nth(block).alias("nth_block"),
            col("occurred_at").min().alias("streak_start"),
        ])
        .with_column(
            // Engaged before: an open or click before the streak began.
            col("first_engaged")
                .lt(col("streak_start"))
                .fill_null(lit(false))
                .alias("engaged"),
        )
        .with_column(
            when(col("bounce_type").eq(lit("block")))
                .then(lit(block as i64))
                .when(col("engaged"))
                .then(lit(engaged as i64))
                .otherwise(lit(soft as i64))
                .alias("limit"),
        )
        .filter(col("event_count").gt_eq(col("limit")))
        .with_columns([
            when(col("bounce_type").eq(lit("block")))
                .then(lit("block_limit"))
                .otherwise(lit("soft_bounce_limit"))
                .alias("reason"),
            concat_str(
                [
                    when(col("bounce_type").eq(lit("block")))
                        .then(lit("block_limit: "))
                        .otherwise(lit("soft_bounce_limit: ")),
                    col("event_count").cast(DataType::String),
                    when(col("bounce_type").eq(lit("block")))
                        .then(lit(" consecutive blocks"))
                        .otherwise(lit(" consecutive soft bounces")),
                    lit(" with no delivery, open or click since (limit "),
                    col("limit").cast(DataType::String),
                    when(col("bounce_type").eq(lit("block")))
                        .then(lit(")"))
                        .when(col("engaged"))
                        .then(lit(", the limit for an address that engaged before)"))
                        .otherwise(lit(")")),
                ],
                "",
                false,
            )
            .alias("rule"),
            when(col("bounce_type").eq(lit("block")))
                .then(col("nth_block"))
                .when(col("engaged"))
                .then(col("nth_engaged"))
                .otherwise(col("nth_soft"))
                .alias("first_suppressed_at"),
            lit("email_events").alias("source"),
        ]);
    Ok(candidates)
}

/// Reads every contact once, with its address's key (`email_normalized`),
/// whether the address has valid syntax (`valid`), and whether it is a
/// role address (`role`, false unless `role_addresses` is on). The address
/// rules and the sendable contacts both use this frame.
fn contact_addresses(
    contacts: LazyFrame,
    params: &Params,
    policy: &Normalization,
) -> Result<DataFrame> {
    let roles: Vec<String> = match &params.role_local_parts {
        Some(parts) => parts.iter().map(|p| p.trim().to_lowercase()).collect(),
        None => email::ROLE_LOCAL_PARTS
            .iter()
            .map(|p| p.to_string())
            .collect(),
    };
    let role = if params.role_addresses {
        col("valid").and(
            email::local_part(col("normalized"))
                .is_in(lit(Series::new("r".into(), roles)).implode(false), false),
        )
    } else {
        lit(false)
    };
    let plan = contacts
        .select([col("contact_id"), col("email")])
        .with_column(normalize_email(col("email")).alias("normalized"))
        .with_columns([
            policy
                .key_of_normalized(col("normalized"))
                .alias("email_normalized"),
            email::is_valid(col("normalized")).alias("valid"),
        ])
        .with_column(role.alias("role"))
        .select([
            col("contact_id"),
            col("email"),
            col("email_normalized"),
            col("valid"),
            col("role"),
        ]);
    super::collect_streaming(plan)
}

/// Suppressions from contacts' addresses: invalid syntax and role
/// addresses, as candidate list rows. `contacts` is the frame of
/// [`contact_addresses`].
fn address_candidates(contacts: &DataFrame, params: &Params, now_micros: i64) -> LazyFrame {
    let invalid = if params.invalid_address {
        col("valid").not()
    } else {
        lit(false)
    };
    contacts
        .clone()
        .lazy()
        .filter(col("email_normalized").is_not_null())
        .filter(invalid.clone().or(col("role")))
        .with_columns([
            when(invalid.clone())
                .then(lit("invalid_address"))
                .otherwise(lit("role_address"))
                .alias("reason"),
            when(invalid)
                .then(lit(
                    "invalid_address: the address is not valid email syntax",
                ))
                .otherwise(concat_str(
                    [
                        lit("role_address: the local part `"),
                        email::local_part(normalize_email(col("email"))),
                        lit("` names a function, not a person"),
                    ],
                    "",
                    false,
                ))
                .alias("rule"),
        ])
        .group_by([col("email_normalized")])
        .agg([
            col("email").min().alias("email"),
            col("reason").first().alias("reason"),
            col("rule").first().alias("rule"),
        ])
        .with_columns([
            lit("contacts").alias("source"),
            utc_literal(now_micros).alias("first_suppressed_at"),
            lit(NULL).cast(utc_timestamp()).alias("last_event_at"),
            lit(0i64).alias("event_count"),
        ])
}

/// The latest manual action per key: `suppress` or `remove`.
fn manual_actions(manual: LazyFrame, policy: &Normalization) -> LazyFrame {
    manual
        .select([
            col("email"),
            col("action"),
            col("reason"),
            col("requested_at"),
        ])
        .with_column(policy.key(col("email")).alias("email_normalized"))
        .filter(col("email_normalized").is_not_null())
        .sort(
            ["email_normalized", "requested_at"],
            SortMultipleOptions::default(),
        )
        .group_by([col("email_normalized")])
        .agg([
            col("email").last(),
            col("action").last(),
            col("reason").last().alias("manual_reason"),
            col("requested_at").last(),
        ])
}

/// Fills a candidate frame up to the list's columns.
fn as_list_rows(candidates: LazyFrame, run_id: &str) -> LazyFrame {
    let present = candidates
        .clone()
        .collect_schema()
        .map(|s| s.iter_names().map(|n| n.to_string()).collect::<Vec<_>>())
        .unwrap_or_default();
    let exprs: Vec<Expr> = list_schema()
        .iter()
        .map(|(name, dtype)| {
            let name = name.as_str();
            if name == "run_id" {
                lit(run_id.to_string()).alias("run_id")
            } else if name == "event_ids" && !present.iter().any(|p| p == name) {
                lit(Series::new_empty("event_ids".into(), &DataType::String))
                    .implode(false)
                    .first()
                    .alias("event_ids")
            } else if present.iter().any(|p| p == name) {
                col(name).cast(dtype.clone())
            } else {
                lit(NULL).cast(dtype.clone()).alias(name)
            }
        })
        .collect();
    candidates.select(exprs)
}

fn run(ctx: &JobContext) -> Result<JobResult> {
    let params: Params = serde_json::from_value(ctx.params.clone())?;
    // The contacts are read on a second thread while the events are read,
    // because neither read needs the other and each leaves a core idle
    // part of the time.
    std::thread::scope(|scope| {
        let contacts = scope.spawn(|| -> Result<Option<DataFrame>> {
            match ctx.optional_input("contacts") {
                Some(pinned) => Ok(Some(contact_addresses(
                    pinned.table.scan(&pinned.snapshot)?,
                    &params,
                    &params.normalization,
                )?)),
                None => Ok(None),
            }
        });
        run_with_contacts(ctx, &params, contacts)
    })
}

/// Runs the job. `contacts` is the thread that reads the contacts, joined
/// where the address rules first need them.
fn run_with_contacts(
    ctx: &JobContext,
    params: &Params,
    contacts: std::thread::ScopedJoinHandle<'_, Result<Option<DataFrame>>>,
) -> Result<JobResult> {
    let policy = params.normalization;
    let now = ctx.started_at.timestamp_micros();
    let input = ctx.input("events");
    let list_output = ctx.output("list");
    let existing = list_output.read()?;
    let mut result = JobResult::default();
    result
        .metrics
        .insert("normalization".into(), policy.describe());

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
    let metrics = &mut result.metrics;
    metrics.insert(
        "read_mode".into(),
        Value::from(if incremental_from.is_some() {
            "incremental"
        } else {
            "full"
        }),
    );
    metrics.insert("files_read".into(), Value::from(files.len()));

    // Ingest stores event_type and bounce_type trimmed and lower-cased, so
    // a plain comparison on the raw columns keeps the rare events (those
    // that suppress at once, soft bounces and blocks) before any string
    // work is done on the millions of others.
    let events_read: u64 = files.iter().filter_map(|f| f.num_records()).sum();
    let rare_events = |files: &[Add], keep: Expr| -> Result<DataFrame> {
        let plan = input
            .table
            .scan_files(&input.snapshot.schema, files)?
            .select([
                col("event_id"),
                col("email"),
                col("event_type"),
                col("bounce_type"),
                col("occurred_at"),
            ])
            .filter(keep)
            .with_columns([
                super::compact(col("event_id")),
                super::compact(col("email")),
                super::compact(col("event_type")),
                super::compact(col("bounce_type")),
                super::compact(col("occurred_at")),
            ])
            .with_column(policy.key(col("email")).alias("email_normalized"));
        super::collect_streaming(plan)
    };
    // Streaks are counted over the whole history, so a full read gets the
    // triggering events and the streak bounces in one pass, and an
    // incremental read gets the triggering events of the new files only.
    let all_files = &input.snapshot.files;
    let (triggering, streak_bounces) = if incremental_from.is_some() {
        (
            rare_events(&files, is_triggering())?,
            rare_events(all_files, is_streak_bounce())?,
        )
    } else {
        let rare = rare_events(all_files, is_triggering().or(is_streak_bounce()))?;
        (
            rare.clone().lazy().filter(is_triggering()).collect()?,
            rare.lazy().filter(is_streak_bounce()).collect()?,
        )
    };
    let triggering = triggering
        .lazy()
        .with_column(reason().alias("reason"))
        .collect()?;
    let without_email = triggering.column("email_normalized")?.null_count();
    metrics.insert("events_read".into(), Value::from(events_read));
    metrics.insert("triggering_events".into(), Value::from(triggering.height()));
    metrics.insert("events_without_email".into(), Value::from(without_email));

    let new_rows = aggregate_events(
        triggering
            .lazy()
            .filter(col("email_normalized").is_not_null()),
    )
    .collect()?;

    let existing_list = match &existing {
        Some(df) => with_list_columns(df.clone()).collect()?,
        None => DataFrame::empty_with_schema(&list_schema()),
    };

    // Manual actions, and the removals among them.
    let manual = match ctx.optional_input("manual") {
        Some(pinned) => {
            Some(manual_actions(pinned.table.scan(&pinned.snapshot)?, &policy).collect()?)
        }
        None => None,
    };
    let removals = match &manual {
        Some(m) => m
            .clone()
            .lazy()
            .filter(col("action").eq(lit("remove")))
            .select([
                col("email_normalized"),
                col("requested_at").alias("removed_at"),
                col("manual_reason").alias("removal_reason"),
            ])
            .collect()?,
        None => DataFrame::empty_with_schema(&Schema::from_iter([
            Field::new("email_normalized".into(), DataType::String),
            Field::new("removed_at".into(), utc_timestamp()),
            Field::new("removal_reason".into(), DataType::String),
        ])),
    };
    // Drops candidates that a removal newer than their last event covers.
    let not_removed = |candidates: LazyFrame, last: &str| -> LazyFrame {
        candidates
            .join(
                removals.clone().lazy(),
                [col("email_normalized")],
                [col("email_normalized")],
                JoinArgs::new(JoinType::Left),
            )
            .filter(
                col("removed_at").is_null().or(col(last)
                    .fill_null(utc_literal(i64::MIN / 2))
                    .gt(col("removed_at"))),
            )
            .drop(cols(["removed_at", "removal_reason"]))
    };

    // Event suppressions: the mass-bounce guard holds new hard bounces of
    // a domain that dominates the run's hard bounces.
    let new_rows = not_removed(new_rows.lazy(), "new_last").collect()?;
    let active_keys = existing_list
        .clone()
        .lazy()
        .filter(col("expired_at").is_null())
        .select([col("email_normalized")]);
    let fresh_hard = new_rows
        .clone()
        .lazy()
        .filter(col("new_reason").eq(lit("hard_bounce")))
        .join(
            active_keys.clone(),
            [col("email_normalized")],
            [col("email_normalized")],
            JoinArgs::new(JoinType::Anti),
        )
        .with_column(
            col("email_normalized")
                .str()
                .extract(lit(r"@(.*)$"), 1)
                .alias("domain"),
        )
        .collect()?;
    let total_hard = fresh_hard.height() as f64;
    let domains = fresh_hard
        .clone()
        .lazy()
        .group_by([col("domain")])
        .agg([len().cast(DataType::Int64).alias("n")])
        .filter(
            col("n").gt_eq(lit(i64::from(params.mass_bounce_min))).and(
                col("n")
                    .cast(DataType::Float64)
                    .gt(lit(params.mass_bounce_share * total_hard)),
            ),
        )
        .sort(["domain"], SortMultipleOptions::default())
        .collect()?;
    let held_domains: Vec<(String, i64)> = domains
        .column("domain")?
        .str()?
        .iter()
        .zip(domains.column("n")?.i64()?.iter())
        .filter_map(|(d, n)| Some((d?.to_string(), n?)))
        .collect();
    let held_keys = fresh_hard
        .clone()
        .lazy()
        .filter(
            col("domain").is_in(
                lit(Series::new(
                    "d".into(),
                    held_domains
                        .iter()
                        .map(|(d, _)| d.clone())
                        .collect::<Vec<_>>(),
                ))
                .implode(false),
                false,
            ),
        )
        .select([col("email_normalized"), col("domain")])
        .collect()?;
    let new_held = new_rows
        .clone()
        .lazy()
        .join(
            held_keys.clone().lazy(),
            [col("email_normalized")],
            [col("email_normalized")],
            JoinArgs::new(JoinType::Inner),
        )
        .collect()?;
    let new_rows = new_rows
        .lazy()
        .join(
            held_keys.lazy(),
            [col("email_normalized")],
            [col("email_normalized")],
            JoinArgs::new(JoinType::Anti),
        )
        .collect()?;
    if !held_domains.is_empty() {
        let described: Vec<String> = held_domains
            .iter()
            .map(|(d, n)| format!("{d}: {n} of {total_hard} new hard bounces"))
            .collect();
        tracing::warn!(
            pipeline = %ctx.pipeline,
            "mass-bounce guard held hard bounces for review: {}",
            described.join("; ")
        );
    }
    metrics.insert(
        "held_for_review".into(),
        json!(held_domains
            .iter()
            .map(|(d, n)| json!({ "domain": d, "hard_bounces": n, "of": total_hard }))
            .collect::<Vec<_>>()),
    );

    // Held rows: earlier ones stay until their domain is released.
    let held_before = match ctx.output("pending_review").read()? {
        Some(df) => df,
        None => DataFrame::empty_with_schema(&held_schema()),
    };
    let release: Vec<String> = params
        .release_held_domains
        .iter()
        .map(|d| d.trim().to_lowercase())
        .collect();
    let release_series = || lit(Series::new("r".into(), release.clone())).implode(false);
    let released = held_before
        .clone()
        .lazy()
        .filter(col("domain").is_in(release_series(), false))
        .collect()?;
    let held_rows = as_held_rows(new_held, &ctx.run_id, now, total_hard)?;
    let held = concat(
        [
            held_before
                .lazy()
                .filter(col("domain").is_in(release_series(), false).not()),
            held_rows.lazy(),
        ],
        UnionArgs::default(),
    )?
    .unique_stable(Some(cols(["email_normalized"])), UniqueKeepStrategy::First)
    .sort(["email_normalized"], SortMultipleOptions::default())
    .collect()?;
    metrics.insert("held_released".into(), Value::from(released.height()));

    // Merge the event suppressions into the list.
    let replace_counts = incremental_from.is_none();
    let merged = merge(
        existing_list.clone().lazy(),
        new_rows.lazy(),
        &ctx.run_id,
        replace_counts,
    )
    .select(list_columns())
    .collect()?;

    // Candidates from streaks, contacts, manual suppressions and released
    // holds join the list where the address is not already active.
    let mut candidates: Vec<LazyFrame> = Vec::new();
    let full_events = input.table.scan(&input.snapshot)?;
    candidates.push(not_removed(
        streak_candidates(streak_bounces, full_events, params, &policy, now)?,
        "last_event_at",
    ));
    let contacts = contacts
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
    if let Some(contacts) = &contacts {
        candidates.push(not_removed(
            address_candidates(contacts, params, now),
            "last_event_at",
        ));
    }
    if let Some(manual) = &manual {
        candidates.push(
            manual
                .clone()
                .lazy()
                .filter(col("action").eq(lit("suppress")))
                .select([
                    col("email_normalized"),
                    col("email"),
                    lit("manual").alias("reason"),
                    concat_str([lit("manual: "), col("manual_reason")], "", false).alias("rule"),
                    lit("suppression_manual").alias("source"),
                    col("requested_at").alias("first_suppressed_at"),
                    col("requested_at").alias("last_event_at"),
                    lit(0i64).alias("event_count"),
                ]),
        );
    }
    if released.height() > 0 {
        candidates.push(
            released
                .clone()
                .lazy()
                .drop(cols(["domain", "held_at", "held_reason"])),
        );
    }
    let candidates = concat(
        candidates
            .into_iter()
            .map(|c| as_list_rows(c, &ctx.run_id))
            .collect::<Vec<_>>(),
        UnionArgs::default(),
    )?
    .sort(
        ["email_normalized", "first_suppressed_at", "reason"],
        SortMultipleOptions::default().with_nulls_last(true),
    )
    .unique_stable(Some(cols(["email_normalized"])), UniqueKeepStrategy::First);

    // An expired entry comes back when a candidate is newer than its expiry.
    let inactive = merged
        .clone()
        .lazy()
        .filter(col("expired_at").is_not_null())
        .select([col("email_normalized"), col("expired_at").alias("_expired")]);
    let active = merged
        .clone()
        .lazy()
        .filter(col("expired_at").is_null())
        .select([col("email_normalized")]);
    let additions = candidates
        .join(
            active,
            [col("email_normalized")],
            [col("email_normalized")],
            JoinArgs::new(JoinType::Anti),
        )
        .join(
            inactive,
            [col("email_normalized")],
            [col("email_normalized")],
            JoinArgs::new(JoinType::Left),
        )
        .filter(
            col("_expired").is_null().or(col("last_event_at")
                .fill_null(col("first_suppressed_at"))
                .gt(col("_expired"))),
        )
        .select(list_columns())
        .collect()?;

    // Manual removals take active rows off the list.
    let removed = merged
        .clone()
        .lazy()
        .filter(col("expired_at").is_null())
        .join(
            removals.clone().lazy(),
            [col("email_normalized")],
            [col("email_normalized")],
            JoinArgs::new(JoinType::Inner),
        )
        .filter(
            col("last_event_at")
                .fill_null(utc_literal(i64::MIN / 2))
                .lt_eq(col("removed_at"))
                .and(
                    col("reason")
                        .neq(lit("manual"))
                        .or(col("first_suppressed_at").lt_eq(col("removed_at"))),
                ),
        )
        .collect()?;
    let list = concat(
        [
            merged
                .clone()
                .lazy()
                .join(
                    additions.clone().lazy().select([col("email_normalized")]),
                    [col("email_normalized")],
                    [col("email_normalized")],
                    JoinArgs::new(JoinType::Anti),
                )
                .join(
                    removed.clone().lazy().select([col("email_normalized")]),
                    [col("email_normalized")],
                    [col("email_normalized")],
                    JoinArgs::new(JoinType::Anti),
                ),
            additions.clone().lazy(),
        ],
        UnionArgs::default(),
    )?
    .select(list_columns())
    .sort(["email_normalized"], SortMultipleOptions::default())
    .collect()?;

    // What changed: added, reactivated and removed addresses.
    let was_active = existing_list
        .clone()
        .lazy()
        .filter(col("expired_at").is_null())
        .select([col("email_normalized"), lit(true).alias("_was_active")]);
    let was_present = existing_list
        .clone()
        .lazy()
        .select([col("email_normalized"), lit(true).alias("_was_present")]);
    let now_active = list
        .clone()
        .lazy()
        .filter(col("expired_at").is_null())
        .join(
            was_active.clone(),
            [col("email_normalized")],
            [col("email_normalized")],
            JoinArgs::new(JoinType::Left),
        )
        .join(
            was_present,
            [col("email_normalized")],
            [col("email_normalized")],
            JoinArgs::new(JoinType::Left),
        )
        .filter(col("_was_active").is_null())
        .with_columns([
            when(col("_was_present").is_null())
                .then(lit("added"))
                .otherwise(lit("reactivated"))
                .alias("change"),
            lit(NULL).cast(DataType::String).alias("change_reason"),
        ]);
    let removed_changes = removed.clone().lazy().with_columns([
        lit("removed").alias("change"),
        concat_str([lit("manual removal: "), col("removal_reason")], "", false)
            .alias("change_reason"),
    ]);
    let mut change_columns = list_columns();
    change_columns.extend([col("change"), col("change_reason")]);
    let changes = concat(
        [
            now_active.select(change_columns.clone()),
            removed_changes.select(change_columns),
        ],
        UnionArgs::default(),
    )?
    .sort(["email_normalized"], SortMultipleOptions::default())
    .collect()?;

    let metrics = &mut result.metrics;
    let count_change = |what: &str| -> Result<usize> {
        Ok(changes
            .column("change")?
            .str()?
            .iter()
            .filter(|c| *c == Some(what))
            .count())
    };
    metrics.insert(
        "addresses_added".into(),
        Value::from(count_change("added")?),
    );
    metrics.insert(
        "addresses_reactivated".into(),
        Value::from(count_change("reactivated")?),
    );
    metrics.insert(
        "addresses_removed".into(),
        Value::from(count_change("removed")?),
    );
    let updated = count_updated(&existing_list, &list)?;
    metrics.insert("addresses_updated".into(), Value::from(updated));
    let active_list = list
        .clone()
        .lazy()
        .filter(col("expired_at").is_null())
        .collect()?;
    metrics.insert("list_size".into(), Value::from(active_list.height()));
    metrics.insert(
        "added_by_reason".into(),
        count_by(&changes, "reason", Some("change"))?,
    );
    metrics.insert(
        "active_by_reason".into(),
        count_by(&active_list, "reason", None)?,
    );

    let list_changed = existing.is_none() || changes.height() > 0 || updated > 0;
    if let Some(path) = &params.export_csv {
        result.exports.push(Export {
            path: path.clone(),
            frame: active_list.clone(),
        });
    }
    if list_changed {
        result.outputs.push(OutputFrame {
            role: "list".into(),
            frame: list.clone(),
            mode: WriteMode::Overwrite,
            key: Some("email_normalized".into()),
        });
        result.outputs.push(OutputFrame {
            role: "changes".into(),
            frame: changes,
            mode: WriteMode::Overwrite,
            key: Some("email_normalized".into()),
        });
    }
    let held_previous = ctx.output("pending_review").read()?;
    if held_previous
        .as_ref()
        .is_none_or(|p| !p.equals_missing(&held))
    {
        result.outputs.push(OutputFrame {
            role: "pending_review".into(),
            frame: held,
            mode: WriteMode::Overwrite,
            key: Some("email_normalized".into()),
        });
    }

    // Sendable contacts: a valid address on no active suppression.
    if let Some(contacts) = contacts {
        // The contacts are in memory already, and the active list is small
        // beside them. A filter with a set lookup keeps memory to the
        // result, where a join and a sort would each hold another copy.
        let suppressed = active_list
            .column("email_normalized")?
            .as_materialized_series();
        let in_order = super::is_strictly_increasing(contacts.column("contact_id")?);
        let mut sendable = contacts
            .lazy()
            .filter(
                col("valid").and(
                    col("email_normalized")
                        .is_in(lit(suppressed.clone()).implode(false), false)
                        .not(),
                ),
            )
            .select([col("contact_id"), col("email"), col("email_normalized")]);
        if !in_order {
            sendable = sendable.sort(["contact_id"], SortMultipleOptions::default());
        }
        let sendable = sendable.collect()?;
        result
            .metrics
            .insert("sendable_contacts".into(), Value::from(sendable.height()));
        if let Some(path) = &params.sendable_export {
            result.exports.push(Export {
                path: path.clone(),
                frame: sendable.clone(),
            });
        }
        let previous = ctx.output("sendable").read()?;
        if previous
            .as_ref()
            .is_none_or(|p| !p.equals_missing(&sendable))
        {
            result.outputs.push(OutputFrame {
                role: "sendable".into(),
                frame: sendable,
                mode: WriteMode::Overwrite,
                key: Some("contact_id".into()),
            });
        }
    }
    Ok(result)
}

/// Counts rows of `before` whose event count or last event changed.
fn count_updated(before: &DataFrame, after: &DataFrame) -> Result<usize> {
    let joined = before
        .clone()
        .lazy()
        .select([
            col("email_normalized"),
            col("event_count").alias("_count"),
            col("last_event_at").alias("_last"),
        ])
        .join(
            after.clone().lazy(),
            [col("email_normalized")],
            [col("email_normalized")],
            JoinArgs::new(JoinType::Inner),
        )
        .filter(
            col("event_count")
                .neq_missing(col("_count"))
                .or(col("last_event_at").neq_missing(col("_last"))),
        )
        .collect()?;
    Ok(joined.height())
}

fn count_by(frame: &DataFrame, column: &str, only_added: Option<&str>) -> Result<Value> {
    let mut plan = frame.clone().lazy();
    if let Some(change) = only_added {
        plan = plan.filter(col(change).neq(lit("removed")));
    }
    let counts = plan
        .group_by([col(column)])
        .agg([len().cast(DataType::Int64).alias("n")])
        .sort([column], SortMultipleOptions::default())
        .collect()?;
    let mut map = serde_json::Map::new();
    let names = counts.column(column)?.str()?.clone();
    let ns = counts.column("n")?.i64()?.clone();
    for (name, n) in names.iter().zip(ns.iter()) {
        if let (Some(name), Some(n)) = (name, n) {
            map.insert(name.to_string(), Value::from(n));
        }
    }
    Ok(Value::Object(map))
}

/// Returns the columns of `suppression_held`: the list's, plus the domain,
/// when and why the row was held.
pub fn held_schema() -> Schema {
    let mut schema = list_schema();
    schema.with_column("domain".into(), DataType::String);
    schema.with_column("held_at".into(), utc_timestamp());
    schema.with_column("held_reason".into(), DataType::String);
    schema
}

/// Turns held event aggregates into `suppression_held` rows.
fn as_held_rows(new_held: DataFrame, run_id: &str, now: i64, total: f64) -> Result<DataFrame> {
    let counts = new_held
        .clone()
        .lazy()
        .group_by([col("domain")])
        .agg([len().cast(DataType::Int64).alias("_n")]);
    let rows = new_held
        .lazy()
        .join(
            counts,
            [col("domain")],
            [col("domain")],
            JoinArgs::new(JoinType::Left),
        )
        .select([
            col("email_normalized"),
            col("new_email").alias("email"),
            col("new_reason").alias("reason"),
            lit("hard_bounce: a hard bounce suppresses on its first occurrence").alias("rule"),
            concat_list([col("new_event_id")])
                .map_err(crate::error::Error::from)?
                .alias("event_ids"),
            lit("email_events").alias("source"),
            col("new_event_id").alias("event_id"),
            col("new_first").alias("first_suppressed_at"),
            col("new_last").alias("last_event_at"),
            col("new_count").alias("event_count"),
            lit(NULL).cast(utc_timestamp()).alias("expires_at"),
            lit(NULL).cast(utc_timestamp()).alias("expired_at"),
            lit(run_id.to_string()).alias("run_id"),
            col("domain"),
            utc_literal(now).alias("held_at"),
            concat_str(
                [
                    lit("mass-bounce guard: "),
                    col("domain"),
                    lit(" produced "),
                    col("_n").cast(DataType::String),
                    lit(format!(" of {total} new hard bounces in this run")),
                ],
                "",
                false,
            )
            .alias("held_reason"),
        ]);
    let schema = held_schema();
    let exprs: Vec<Expr> = schema
        .iter()
        .map(|(name, dtype)| col(name.clone()).cast(dtype.clone()))
        .collect();
    Ok(rows.select(exprs).collect()?)
}

/// Merges aggregated new events into the existing list. The result keeps
/// the list's columns plus `_existing` (null for new addresses) and
/// `new_count` (null for addresses without new events). An expired row
/// with events newer than its expiry becomes active again with the new
/// events' values.
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
    let has_new = col("new_count").is_not_null();
    let is_existing = col("_existing").is_not_null().and(
        col("expired_at")
            .is_null()
            .or(has_new.clone().not())
            .or(col("new_last").lt_eq(col("expired_at"))),
    );
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
    joined
        .with_column(event_rule_from("new_reason").alias("_new_rule"))
        .with_columns([
            keep_or_new("email", "new_email"),
            keep_or_new("reason", "new_reason"),
            keep_or_new("rule", "_new_rule"),
            when(is_existing.clone())
                .then(col("event_ids"))
                .otherwise(concat_list([col("new_event_id")]).unwrap_or_else(|_| col("event_ids")))
                .alias("event_ids"),
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
            when(is_existing.clone())
                .then(col("expired_at"))
                .otherwise(lit(NULL).cast(utc_timestamp()))
                .alias("expired_at"),
            when(is_existing.clone().and(has_new.not()))
                .then(col("run_id"))
                .otherwise(lit(run_id.to_string()))
                .alias("run_id"),
            last_event_at,
            event_count,
        ])
}

/// The rule text of the reasons that fire on one event, from a reason
/// column.
fn event_rule_from(column: &str) -> Expr {
    let reason = col(column);
    when(reason.clone().eq(lit("hard_bounce")))
        .then(lit(
            "hard_bounce: a hard bounce suppresses on its first occurrence",
        ))
        .when(reason.clone().eq(lit("complaint")))
        .then(lit("complaint: a spam complaint suppresses at once"))
        .when(reason.eq(lit("unsubscribe")))
        .then(lit("unsubscribe: an unsubscribe suppresses at once"))
        .otherwise(lit(NULL).cast(DataType::String))
}
