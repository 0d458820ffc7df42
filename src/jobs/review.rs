//! Job kind `suppression_review`: the quarterly review of the suppression
//! list.
//!
//! - Expiry: each reason has a time to live from its last event (or its
//!   first suppression when it has no events): soft-bounce and block
//!   suppressions 90 days, hard bounces 365 days by default. Complaints,
//!   unsubscribes and manual suppressions never expire, because consent
//!   rules forbid it; invalid and role addresses neither. An entry whose
//!   time has come gets `expired_at` and leaves the active list; it stays in
//!   the table and in its history. Active entries get their planned
//!   `expires_at`.
//! - False positives: active suppressions of addresses that show
//!   engagement (delivery, open, click) after their suppression date are
//!   listed in `suppression_flagged` for a person to decide.
//! - A report, `suppression_report`: active entries by reason, by age
//!   bucket (0-30, 31-90, 91-180, 181-365, over 365 days) and by top
//!   recipient domain, each with the change since the last review.
//!
//! This job amends `suppression_list`, which the `suppression` pipeline
//! owns; both commit conditionally, so neither overwrites the other's
//! version unseen.

use std::collections::BTreeMap;

use polars::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::suppression::list_schema;
use super::{JobContext, JobResult, KindSpec, OutputFrame, Role};
use crate::delta::WriteMode;
use crate::error::{Error, Result};
use crate::schema::{utc_literal, utc_timestamp};

pub const SPEC: KindSpec = KindSpec {
    name: "suppression_review",
    description: "expires old suppressions, flags likely false positives, reports the list",
    inputs: &[Role {
        optional: false,
        name: "events",
        default_table: "email_events",
        description: "email events, for engagement after suppression",
    }],
    outputs: &[
        Role {
            optional: false,
            name: "flagged",
            default_table: "suppression_flagged",
            description: "suppressed addresses that engaged afterwards",
        },
        Role {
            optional: false,
            name: "list",
            default_table: "suppression_list",
            description: "the suppression list, amended with expiry",
        },
        Role {
            optional: false,
            name: "report",
            default_table: "suppression_report",
            description: "active entries by reason, age and domain",
        },
    ],
    validate_params,
    run,
};

/// Reasons that never expire, whatever the parameters say.
pub const NEVER_EXPIRE: [&str; 3] = ["complaint", "unsubscribe", "manual"];

/// Parameters of the `suppression_review` job kind.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Params {
    /// Days from the last event after which an entry of a reason expires.
    pub ttl_days: BTreeMap<String, u32>,
    /// The review's time: a date or timestamp. Default: the run's start.
    pub as_of: Option<String>,
    /// Domains listed in the report.
    pub top_domains: usize,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            ttl_days: [
                ("soft_bounce_limit".to_string(), 90),
                ("block_limit".to_string(), 90),
                ("hard_bounce".to_string(), 365),
            ]
            .into_iter()
            .collect(),
            as_of: None,
            top_domains: 10,
        }
    }
}

const EXPIRING: [&str; 5] = [
    "soft_bounce_limit",
    "block_limit",
    "hard_bounce",
    "invalid_address",
    "role_address",
];

fn validate_params(params: &toml::Table) -> std::result::Result<Value, String> {
    let value = super::parse_params::<Params>(params)?;
    let parsed: Params = serde_json::from_value(value.clone()).map_err(|e| e.to_string())?;
    for reason in parsed.ttl_days.keys() {
        if NEVER_EXPIRE.contains(&reason.as_str()) {
            return Err(format!(
                "ttl_days.{reason}: {reason} suppressions never expire, because consent rules \
                 forbid mailing the address again"
            ));
        }
        if !EXPIRING.contains(&reason.as_str()) {
            return Err(format!(
                "ttl_days.{reason}: unknown reason; the reasons that can expire are: {}",
                EXPIRING.join(", ")
            ));
        }
    }
    if let Some(as_of) = &parsed.as_of {
        parse_as_of(as_of)?;
    }
    Ok(value)
}

fn parse_as_of(value: &str) -> std::result::Result<i64, String> {
    crate::ingest::convert::parse_timestamp(value.trim()).ok_or_else(|| {
        format!("as_of `{value}` is neither a date nor a timestamp; write 2026-12-31T00:00:00Z")
    })
}

const DAY: i64 = 86_400_000_000;

fn run(ctx: &JobContext) -> Result<JobResult> {
    let params: Params = serde_json::from_value(ctx.params.clone())?;
    let now = match &params.as_of {
        Some(value) => parse_as_of(value).map_err(Error::Config)?,
        None => ctx.started_at.timestamp_micros(),
    };
    let Some(list) = ctx
        .output("list")
        .read()?
        .map(super::suppression::with_list_columns)
    else {
        return Err(Error::Data(format!(
            "table `{}` does not exist yet; run the suppression pipeline first",
            ctx.output("list").table.name()
        )));
    };
    let mut result = JobResult::default();

    // Planned expiry of every row whose reason has a time to live.
    let mut ttl = lit(NULL).cast(DataType::Int64);
    for (reason, days) in params.ttl_days.iter().rev() {
        ttl = when(col("reason").eq(lit(reason.clone())))
            .then(lit(i64::from(*days) * DAY))
            .otherwise(ttl);
    }
    let since = col("last_event_at")
        .fill_null(col("first_suppressed_at"))
        .cast(DataType::Int64);
    let planned = (since + ttl.clone())
        .cast(DataType::Datetime(TimeUnit::Microseconds, None))
        .cast(utc_timestamp());
    let columns: Vec<Expr> = list_schema()
        .iter()
        .map(|(name, dtype)| col(name.clone()).cast(dtype.clone()))
        .collect();
    let reviewed = list
        .with_columns([planned.alias("_planned")])
        .with_columns([
            when(col("expired_at").is_null())
                .then(col("_planned"))
                .otherwise(col("expires_at"))
                .alias("expires_at"),
            when(
                col("expired_at")
                    .is_null()
                    .and(col("_planned").lt_eq(utc_literal(now))),
            )
            .then(utc_literal(now))
            .otherwise(col("expired_at"))
            .alias("expired_at"),
            when(
                col("expired_at")
                    .is_null()
                    .and(col("_planned").lt_eq(utc_literal(now))),
            )
            .then(lit(ctx.run_id.clone()))
            .otherwise(col("run_id"))
            .alias("run_id"),
        ])
        .with_column(
            col("expired_at")
                .eq(utc_literal(now))
                .and(col("run_id").eq(lit(ctx.run_id.clone())))
                .alias("_expired_now"),
        )
        .collect()?;
    let expired_now = reviewed
        .clone()
        .lazy()
        .filter(col("_expired_now"))
        .collect()?;
    let new_list = reviewed.lazy().select(columns).collect()?;
    let active = new_list
        .clone()
        .lazy()
        .filter(col("expired_at").is_null())
        .collect()?;

    // Engagement after the suppression date: likely false positives.
    let events = ctx.input("events");
    let engaged = events
        .table
        .scan(&events.snapshot)?
        .select([
            col("event_id"),
            col("email"),
            col("event_type"),
            col("occurred_at"),
        ])
        .filter(col("event_type").is_in(
            lit(Series::new("t".into(), ["delivered", "open", "click"])).implode(false),
            false,
        ))
        .with_column(super::suppression::normalize_email(col("email")).alias("email_normalized"))
        .join(
            active.clone().lazy().select([
                col("email_normalized"),
                col("reason"),
                col("first_suppressed_at"),
            ]),
            [col("email_normalized")],
            [col("email_normalized")],
            JoinArgs::new(JoinType::Inner),
        )
        .filter(col("occurred_at").gt(col("first_suppressed_at")))
        .group_by([col("email_normalized")])
        .agg([
            col("reason").first(),
            col("first_suppressed_at").first(),
            len().cast(DataType::Int64).alias("engagement_events"),
            col("occurred_at").max().alias("last_engaged_at"),
            col("event_type")
                .sort_by(
                    [col("occurred_at"), col("event_id")],
                    SortMultipleOptions::default(),
                )
                .last()
                .alias("last_engagement"),
            col("event_id")
                .sort_by(
                    [col("occurred_at"), col("event_id")],
                    SortMultipleOptions::default(),
                )
                .alias("event_ids"),
        ])
        .with_column(lit(ctx.run_id.clone()).alias("run_id"))
        .sort(["email_normalized"], SortMultipleOptions::default());
    let flagged = super::collect_streaming(engaged)?;

    // The report, with the change since the last review.
    let age_days = (utc_literal(now).cast(DataType::Int64)
        - col("first_suppressed_at").cast(DataType::Int64))
        / lit(DAY);
    let bucket = when(age_days.clone().lt_eq(lit(30)))
        .then(lit("0-30 days"))
        .when(age_days.clone().lt_eq(lit(90)))
        .then(lit("31-90 days"))
        .when(age_days.clone().lt_eq(lit(180)))
        .then(lit("91-180 days"))
        .when(age_days.lt_eq(lit(365)))
        .then(lit("181-365 days"))
        .otherwise(lit("over 365 days"));
    let by = |dimension: &str, value: Expr| -> LazyFrame {
        active
            .clone()
            .lazy()
            .select([value.alias("value")])
            .group_by([col("value")])
            .agg([len().cast(DataType::Int64).alias("active")])
            .with_column(lit(dimension.to_string()).alias("dimension"))
    };
    let domains = by(
        "domain",
        col("email_normalized").str().extract(lit(r"@(.*)$"), 1),
    )
    .sort(
        ["active", "value"],
        SortMultipleOptions::default().with_order_descending_multi([true, false]),
    )
    .limit(params.top_domains as u32);
    let report = concat(
        [by("reason", col("reason")), by("age", bucket), domains],
        UnionArgs::default(),
    )?;
    let previous = ctx.output("report").read()?;
    let report = match previous {
        Some(previous) => report.join(
            previous.lazy().select([
                col("dimension"),
                col("value"),
                col("active").alias("_before"),
            ]),
            [col("dimension"), col("value")],
            [col("dimension"), col("value")],
            JoinArgs::new(JoinType::Left),
        ),
        None => report.with_column(lit(NULL).cast(DataType::Int64).alias("_before")),
    }
    .with_column((col("active") - col("_before").fill_null(lit(0i64))).alias("change"))
    .select([
        col("dimension"),
        col("value"),
        col("active"),
        col("change"),
        lit(ctx.run_id.clone()).alias("run_id"),
    ])
    .sort(["dimension", "value"], SortMultipleOptions::default())
    .collect()?;

    let metrics = &mut result.metrics;
    metrics.insert("active".into(), Value::from(active.height()));
    metrics.insert("expired".into(), Value::from(expired_now.height()));
    metrics.insert("flagged".into(), Value::from(flagged.height()));
    let mut expired_by_reason = serde_json::Map::new();
    for reason in expired_now.column("reason")?.str()?.iter().flatten() {
        let entry = expired_by_reason
            .entry(reason.to_string())
            .or_insert(json!(0));
        *entry = json!(entry.as_i64().unwrap_or(0) + 1);
    }
    metrics.insert("expired_by_reason".into(), Value::Object(expired_by_reason));
    metrics.insert(
        "summary".into(),
        Value::from(format!(
            "{} active suppressions; {} expired in this review; {} flagged as likely false positives",
            active.height(),
            expired_now.height(),
            flagged.height()
        )),
    );
    result.outputs.push(OutputFrame {
        role: "list".into(),
        frame: new_list,
        mode: WriteMode::Overwrite,
        key: Some("email_normalized".into()),
    });
    result.outputs.push(OutputFrame {
        role: "flagged".into(),
        frame: flagged,
        mode: WriteMode::Overwrite,
        key: Some("email_normalized".into()),
    });
    result.outputs.push(OutputFrame {
        role: "report".into(),
        frame: report,
        mode: WriteMode::Overwrite,
        key: None,
    });
    Ok(result)
}
