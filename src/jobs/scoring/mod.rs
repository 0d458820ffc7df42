//! Job kind `scoring`: engagement and fit scores per contact.
//!
//! The model lives in the pipeline file. Engagement comes from rule
//! groups: each group takes events from `email_events` (keyed by event
//! type, with bounces as `hard_bounce`, `soft_bounce` and `block`) or
//! `activities` (keyed by activity type), gives each event its points,
//! decays them with the event's age at the as-of time (exponential with a
//! half-life, or linear loss per period), adds them up and caps the sum.
//! Negative points (unsubscribes, hard bounces, complaints) are never
//! capped. Fit comes from SQL boolean rules over contact columns. The
//! score is engagement plus fit, each capped in total; grades come from
//! thresholds on the score, and the MQL flag from `mql_threshold`.
//!
//! Every contact gets a row, with no activity too. The as-of time is a
//! parameter (default: the run's start) and events after it are ignored,
//! so a past score can be reproduced exactly.
//!
//! Columns of `scores`: contact_id, engagement_score, fit_score, score,
//! grade, mql, one `engagement_<group>` and one `fit_<rule>` column per
//! group and rule (the breakdown), previous_score, score_change, as_of,
//! run_id.

use std::collections::{BTreeMap, BTreeSet};

use polars::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{JobContext, JobResult, KindSpec, OutputFrame, Role};
use crate::delta::WriteMode;
use crate::error::{Error, Result};
use crate::schema::utc_timestamp;

mod engagement;

pub const SPEC: KindSpec = KindSpec {
    name: "scoring",
    description: "engagement and fit scores with decay, caps, grades and an MQL flag",
    inputs: &[
        Role {
            optional: true,
            name: "activities",
            default_table: "activities",
            description: "web and sales activities",
        },
        Role {
            optional: false,
            name: "contacts",
            default_table: "contacts",
            description: "every contact gets a score",
        },
        Role {
            optional: true,
            name: "events",
            default_table: "email_events",
            description: "email events",
        },
    ],
    outputs: &[Role {
        optional: false,
        name: "scores",
        default_table: "scores",
        description: "one row per contact with its scores and their breakdown",
    }],
    validate_params,
    run,
};

/// The decay of an event's points with its age.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "snake_case", tag = "kind")]
pub enum Decay {
    /// No decay.
    None,
    /// Points halve every `half_life_days`.
    Exponential { half_life_days: f64 },
    /// Points lose `loss_per_period` (0.25 = a quarter of the original)
    /// for each whole `period_days` of age, down to 0.
    Linear {
        period_days: f64,
        loss_per_period: f64,
    },
}

/// The table a rule group's events come from.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    EmailEvents,
    Activities,
}

/// A rule group: points per event type from one source, decayed and
/// capped together.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Group {
    pub source: Source,
    pub points: BTreeMap<String, f64>,
    #[serde(default = "no_decay")]
    pub decay: Decay,
    /// The maximum of a group's positive points.
    pub cap: Option<f64>,
}

fn no_decay() -> Decay {
    Decay::None
}

/// A fit rule: points when a SQL boolean over contact columns holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FitRule {
    pub name: String,
    pub rule: String,
    pub points: f64,
}

/// A grade: the score at or above `min` earns it; the highest wins.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Band {
    pub grade: String,
    pub min: f64,
}

/// Parameters of the `scoring` job kind.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Params {
    pub as_of: Option<String>,
    pub groups: BTreeMap<String, Group>,
    pub fit: Vec<FitRule>,
    pub engagement_cap: Option<f64>,
    pub fit_cap: Option<f64>,
    pub bands: Vec<Band>,
    pub mql_threshold: Option<f64>,
}

fn check_name(what: &str, name: &str) -> std::result::Result<(), String> {
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{what} `{name}`: use lower-case letters, digits and _ (it names a column)"
        ))
    }
}

/// Checks a fit rule against the contact columns and returns its
/// expression.
fn fit_expr(rule: &FitRule, columns: &[String]) -> std::result::Result<Expr, String> {
    let expr = polars::sql::sql_expr(&rule.rule)
        .map_err(|e| format!("fit rule `{}` is not valid SQL: {e}", rule.name))?;
    let frame = DataFrame::new(
        0,
        columns
            .iter()
            .map(|c| Column::new_empty(c.as_str().into(), &DataType::String))
            .collect(),
    )
    .map_err(|e| e.to_string())?;
    frame.lazy().filter(expr.clone()).collect().map_err(|e| {
        format!(
            "fit rule `{}` (`{}`) does not apply to the contacts: {}; the columns are: {}",
            rule.name,
            rule.rule,
            super::short_error(&e),
            columns.join(", ")
        )
    })?;
    Ok(expr)
}

fn validate_params(params: &toml::Table) -> std::result::Result<Value, String> {
    let value = super::parse_params::<Params>(params)?;
    let parsed: Params = serde_json::from_value(value.clone()).map_err(|e| e.to_string())?;
    if parsed.groups.is_empty() && parsed.fit.is_empty() {
        return Err("the model is empty: add [params.groups.NAME] or [[params.fit]]".into());
    }
    for (name, group) in &parsed.groups {
        check_name("group", name)?;
        match &group.decay {
            Decay::Exponential { half_life_days }
                if half_life_days.is_nan() || *half_life_days <= 0.0 =>
            {
                return Err(format!("group `{name}`: half_life_days must be positive"))
            }
            Decay::Linear {
                period_days,
                loss_per_period,
            } if period_days.is_nan()
                || loss_per_period.is_nan()
                || *period_days <= 0.0
                || *loss_per_period <= 0.0 =>
            {
                return Err(format!(
                    "group `{name}`: period_days and loss_per_period must be positive"
                ))
            }
            _ => {}
        }
        if group.points.is_empty() {
            return Err(format!("group `{name}` gives no points"));
        }
    }
    // A fit rule may use the columns of the canonical contacts table.
    let columns: Vec<String> = crate::schema::CONTACTS
        .column_names()
        .iter()
        .map(|c| c.to_string())
        .collect();
    for rule in &parsed.fit {
        check_name("fit rule", &rule.name)?;
        let _ = fit_expr(rule, &columns)?;
    }
    if let Some(as_of) = &parsed.as_of {
        crate::ingest::convert::parse_timestamp(as_of.trim())
            .ok_or_else(|| format!("as_of `{as_of}` is neither a date nor a timestamp"))?;
    }
    Ok(value)
}

const DAY_MICROS: f64 = 86_400_000_000.0;

/// Decayed points of an event: `points` times the decay factor of `age`
/// (in days).
fn decayed(points: Expr, age_days: Expr, decay: &Decay) -> Expr {
    match decay {
        Decay::None => points,
        Decay::Exponential { half_life_days } => {
            points * lit(0.5f64).pow(age_days / lit(*half_life_days))
        }
        Decay::Linear {
            period_days,
            loss_per_period,
        } => {
            let periods = (age_days / lit(*period_days)).floor();
            let factor = lit(1.0) - periods * lit(*loss_per_period);
            let factor = when(factor.clone().lt(lit(0.0)))
                .then(lit(0.0))
                .otherwise(factor);
            points * factor
        }
    }
}

/// The event key of email events: the event type, with bounces split by
/// bounce type.
fn email_key() -> Expr {
    when(col("event_type").eq(lit("bounce")))
        .then(
            when(col("bounce_type").eq(lit("block")))
                .then(lit("block"))
                .otherwise(concat_str(
                    [col("bounce_type").fill_null(lit("hard")), lit("_bounce")],
                    "",
                    false,
                )),
        )
        .otherwise(col("event_type"))
}

/// Returns the points of `key` in `points`, or null for a key without points.
fn points_of(key: Expr, points: &BTreeMap<String, f64>) -> Expr {
    let mut result = lit(NULL).cast(DataType::Float64);
    for (name, value) in points.iter().rev() {
        result = when(key.clone().eq(lit(name.clone())))
            .then(lit(*value))
            .otherwise(result);
    }
    result
}

/// Returns each group's engagement per contact row, with its column name
/// `engagement_<group>`, for the groups whose source table exists. Each
/// source table is scanned once for all of its groups.
fn engagement_per_row(
    ctx: &JobContext,
    params: &Params,
    as_of: i64,
    index: &engagement::ContactIndex,
) -> Result<Vec<(String, Vec<f64>)>> {
    let present: Vec<(&String, &Group)> = params
        .groups
        .iter()
        .filter(|(_, group)| match group.source {
            Source::EmailEvents => ctx.optional_input("events").is_some(),
            Source::Activities => ctx.optional_input("activities").is_some(),
        })
        .collect();
    let mut sums: Vec<engagement::GroupSums> = present
        .iter()
        .map(|_| engagement::GroupSums::new(index.slots()))
        .collect();
    for source in [Source::EmailEvents, Source::Activities] {
        let (input, type_column, key) = match source {
            Source::EmailEvents => (ctx.optional_input("events"), "event_type", email_key()),
            Source::Activities => (
                ctx.optional_input("activities"),
                "activity_type",
                col("activity_type"),
            ),
        };
        let Some(input) = input else {
            continue;
        };
        let groups: Vec<usize> = (0..present.len())
            .filter(|&i| present[i].1.source == source)
            .collect();
        if groups.is_empty() {
            continue;
        }
        // Only events whose type can earn points are read further: the
        // filter goes into the Parquet scan, before the key is computed.
        let mut types: BTreeSet<String> = groups
            .iter()
            .flat_map(|&i| present[i].1.points.keys().cloned())
            .collect();
        let mut columns = vec![col("contact_id"), col("occurred_at"), col(type_column)];
        if source == Source::EmailEvents {
            types.insert("bounce".into());
            columns.push(col("bounce_type"));
        }
        let types = Series::new("types".into(), types.into_iter().collect::<Vec<_>>());
        let events = input
            .table
            .scan(&input.snapshot)?
            .select(columns)
            .filter(
                col("contact_id").is_not_null().and(
                    col("occurred_at")
                        .cast(DataType::Int64)
                        .lt_eq(lit(as_of))
                        .and(col(type_column).is_in(lit(types).implode(false), false)),
                ),
            )
            .with_columns([
                key.alias("_key"),
                ((lit(as_of) - col("occurred_at").cast(DataType::Int64)).cast(DataType::Float64)
                    / lit(DAY_MICROS))
                .alias("_age"),
            ]);
        let mut values = vec![col("contact_id")];
        let mut value_columns = Vec::new();
        for &i in &groups {
            let (name, group) = present[i];
            let column = format!("_points_{name}");
            values.push(
                decayed(
                    points_of(col("_key"), &group.points),
                    col("_age"),
                    &group.decay,
                )
                .alias(column.as_str()),
            );
            value_columns.push(column);
        }
        let events = super::collect_streaming(events.select(values))?;
        let mut source_sums: Vec<&mut engagement::GroupSums> = sums
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| groups.contains(i))
            .map(|(_, sums)| sums)
            .collect();
        engagement::add_points(index, events, &value_columns, &mut source_sums)?;
    }
    Ok(present
        .iter()
        .zip(sums)
        .map(|((name, group), sums)| {
            (
                format!("engagement_{name}"),
                sums.engagement(index, group.cap),
            )
        })
        .collect())
}

fn run(ctx: &JobContext) -> Result<JobResult> {
    let params: Params = serde_json::from_value(ctx.params.clone())?;
    let as_of = match &params.as_of {
        Some(value) => crate::ingest::convert::parse_timestamp(value.trim())
            .ok_or_else(|| Error::Config(format!("as_of `{value}` is not a timestamp")))?,
        None => ctx.started_at.timestamp_micros(),
    };
    let contacts_input = ctx.input("contacts");
    let contacts = contacts_input.table.scan(&contacts_input.snapshot)?;
    let available: Vec<String> = contacts_input
        .snapshot
        .schema
        .iter_names()
        .map(|n| n.to_string())
        .collect();

    // Fit rules over the contact columns.
    let mut fit_columns = Vec::new();
    let mut fit_exprs = Vec::new();
    for rule in &params.fit {
        let expr = fit_expr(rule, &available).map_err(Error::Config)?;
        let column = format!("fit_{}", rule.name);
        fit_exprs.push(
            when(expr.fill_null(lit(false)))
                .then(lit(rule.points))
                .otherwise(lit(0.0))
                .alias(column.as_str()),
        );
        fit_columns.push(column);
    }
    let mut contacts = super::collect_streaming(
        contacts.select(
            [col("contact_id")]
                .into_iter()
                .chain(fit_exprs)
                .collect::<Vec<_>>(),
        ),
    )?;

    let ids = contacts.column("contact_id")?.str()?.rechunk().into_owned();
    let index = engagement::ContactIndex::new(&ids);
    let mut group_columns = Vec::new();
    let mut engagement_columns = Vec::new();
    for (column, values) in engagement_per_row(ctx, &params, as_of, &index)? {
        engagement_columns.push(Column::new(column.as_str().into(), values));
        group_columns.push(column);
    }
    let unique_sorted_ids = matches!(index, engagement::ContactIndex::Sorted(_));
    drop(index);
    contacts.hstack_mut(&engagement_columns)?;

    // The previous score and the change. A previous version with the same
    // unique contact ids in the same order needs no join.
    let mut previous = ctx.output("scores").read()?;
    let mut previous_in_place = false;
    if let Some(scores) = &previous {
        let aligned = unique_sorted_ids
            && scores
                .column("contact_id")?
                .as_materialized_series()
                .equals(contacts.column("contact_id")?.as_materialized_series());
        if aligned {
            let score = scores.column("score")?.clone();
            contacts.with_column(score.with_name("previous_score".into()))?;
            previous_in_place = true;
            previous = None;
        }
    }
    let mut frame = contacts.lazy();
    let total = |columns: &[String]| -> Expr {
        columns
            .iter()
            .map(|c| col(c.as_str()))
            .reduce(|a, b| a + b)
            .unwrap_or(lit(0.0))
    };
    let capped = |expr: Expr, cap: Option<f64>| match cap {
        Some(cap) => when(expr.clone().gt(lit(cap)))
            .then(lit(cap))
            .otherwise(expr),
        None => expr,
    };
    frame = frame.with_columns([
        capped(total(&group_columns), params.engagement_cap).alias("engagement_score"),
        capped(total(&fit_columns), params.fit_cap).alias("fit_score"),
    ]);
    frame = frame.with_column((col("engagement_score") + col("fit_score")).alias("score"));
    let mut bands = params.bands.clone();
    bands.sort_by(|a, b| a.min.total_cmp(&b.min));
    let mut grade = lit(NULL).cast(DataType::String);
    for band in &bands {
        grade = when(col("score").gt_eq(lit(band.min)))
            .then(lit(band.grade.clone()))
            .otherwise(grade);
    }
    let mql = match params.mql_threshold {
        Some(threshold) => col("score").gt_eq(lit(threshold)),
        None => lit(false),
    };
    frame = frame.with_columns([grade.alias("grade"), mql.alias("mql")]);

    frame = match previous {
        _ if previous_in_place => frame,
        Some(previous) => frame.join(
            previous
                .lazy()
                .select([col("contact_id"), col("score").alias("previous_score")]),
            [col("contact_id")],
            [col("contact_id")],
            super::left_join_in_order(),
        ),
        None => frame.with_column(lit(NULL).cast(DataType::Float64).alias("previous_score")),
    };
    let mut order = vec![
        col("contact_id"),
        col("engagement_score"),
        col("fit_score"),
        col("score"),
        col("grade"),
        col("mql"),
    ];
    order.extend(group_columns.iter().map(|c| col(c.as_str())));
    order.extend(fit_columns.iter().map(|c| col(c.as_str())));
    order.extend([
        col("previous_score"),
        (col("score") - col("previous_score")).alias("score_change"),
        lit(as_of)
            .cast(DataType::Datetime(TimeUnit::Microseconds, None))
            .cast(utc_timestamp())
            .alias("as_of"),
        lit(ctx.run_id.clone()).alias("run_id"),
    ]);
    // The joins keep the contacts' order, so contacts already sorted by
    // contact_id need no sort.
    let scores = super::collect_streaming(frame.select(order))?;
    let scores = if super::is_strictly_increasing(scores.column("contact_id")?) {
        scores
    } else {
        scores.sort(["contact_id"], SortMultipleOptions::default())?
    };

    let mut result = JobResult::default();
    let metrics = &mut result.metrics;
    metrics.insert("contacts".into(), Value::from(scores.height()));
    let mql_count = scores.column("mql")?.bool()?.sum().unwrap_or(0);
    metrics.insert("mql".into(), Value::from(mql_count));
    if let Ok(mean) = scores.column("score")?.f64().map(|s| s.mean()) {
        metrics.insert("mean_score".into(), Value::from(mean.unwrap_or(0.0)));
    }
    metrics.insert(
        "as_of".into(),
        Value::from(
            chrono::DateTime::from_timestamp_micros(as_of)
                .map(|t| t.to_rfc3339())
                .unwrap_or_default(),
        ),
    );
    let mut grades = serde_json::Map::new();
    let counts = scores
        .clone()
        .lazy()
        .group_by([col("grade")])
        .agg([len().cast(DataType::Int64).alias("n")])
        .sort(["grade"], SortMultipleOptions::default())
        .collect()?;
    for (grade, n) in counts
        .column("grade")?
        .str()?
        .iter()
        .zip(counts.column("n")?.i64()?.iter())
    {
        grades.insert(
            grade.unwrap_or("none").to_string(),
            Value::from(n.unwrap_or(0)),
        );
    }
    metrics.insert("grades".into(), Value::Object(grades));
    result.outputs.push(OutputFrame {
        role: "scores".into(),
        frame: scores,
        mode: WriteMode::Overwrite,
        key: Some("contact_id".into()),
    });
    Ok(result)
}
