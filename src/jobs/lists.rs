//! Job kind `list_refresh`: dynamic lists rebuilt from current data.
//!
//! Each list is a SQL filter over one joined view of a contact: the
//! contact's columns, its scores (`engagement_score`, `fit_score`,
//! `score`, `grade`, `mql`), its customer value (`revenue_lifetime`, `clv`,
//! `probability_alive`, `churn_risk`, `rfm_segment`, ...), its
//! firmographics (`industry`, `employee_count`, `revenue_band`,
//! `company_name`) where those tables exist, and `suppressed` (its
//! address is on the active suppression list). Suppressed contacts are left
//! out unless a list sets `include_suppressed = true`.
//!
//! Outputs: `list_membership` (list_id, contact_id, member_since; a member
//! keeps its member_since across refreshes) and `list_changes` (this run's
//! adds and removes per list). A size guard per list fails the run before
//! anything commits when a list would shrink or grow by more than
//! `max_change_pct` (default 50%), naming both counts, so an empty input
//! never silently empties every list.

use std::collections::{BTreeMap, BTreeSet};

use polars::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{Export, JobContext, JobResult, KindSpec, OutputFrame, Role, RowChanges};
use crate::delta::WriteMode;
use crate::error::{Error, Result};
use crate::schema::utc_timestamp;

pub const SPEC: KindSpec = KindSpec {
    name: "list_refresh",
    description: "rebuilds SQL-defined lists from contacts, scores, CLV and firmographics",
    inputs: &[
        Role {
            optional: true,
            name: "clv",
            default_table: "clv",
            description: "customer value per contact",
        },
        Role {
            optional: false,
            name: "contacts",
            default_table: "contacts",
            description: "the contacts",
        },
        Role {
            optional: true,
            name: "firmographics",
            default_table: "contacts_enriched",
            description: "company data per contact",
        },
        Role {
            optional: true,
            name: "scores",
            default_table: "scores",
            description: "engagement and fit scores",
        },
        Role {
            optional: true,
            name: "suppression",
            default_table: "suppression_list",
            description: "suppressed addresses",
        },
    ],
    outputs: &[
        Role {
            optional: false,
            name: "changes",
            default_table: "list_changes",
            description: "this run's adds and removes per list",
        },
        Role {
            optional: false,
            name: "membership",
            default_table: "list_membership",
            description: "every list's members",
        },
    ],
    validate_params,
    run,
};

/// One list.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListSpec {
    pub id: String,
    /// A SQL boolean over the contact view.
    pub filter: String,
    #[serde(default)]
    pub include_suppressed: bool,
    /// Fails the run when the list changes size by more than this share of
    /// its previous size, in percent.
    pub max_change_pct: Option<f64>,
    /// Writes the members as CSV to this path under the warehouse.
    pub export_csv: Option<String>,
}

/// Parameters of the `list_refresh` job kind.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Params {
    pub lists: Vec<ListSpec>,
    /// The size guard of lists that set none.
    pub max_change_pct: f64,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            lists: Vec::new(),
            max_change_pct: 50.0,
        }
    }
}

/// The columns of the contact view, as far as nightshift's own tables
/// define them.
pub fn view_columns() -> Vec<(&'static str, DataType)> {
    let mut columns: Vec<(&'static str, DataType)> = crate::schema::CONTACTS
        .columns
        .iter()
        .map(|c| {
            let dtype = match c.kind {
                crate::schema::ColumnType::Timestamp => utc_timestamp(),
                crate::schema::ColumnType::Float64 => DataType::Float64,
                _ => DataType::String,
            };
            (c.name, dtype)
        })
        .collect();
    columns.extend([
        ("engagement_score", DataType::Float64),
        ("fit_score", DataType::Float64),
        ("score", DataType::Float64),
        ("grade", DataType::String),
        ("mql", DataType::Boolean),
        ("score_change", DataType::Float64),
        ("first_order_at", utc_timestamp()),
        ("last_order_at", utc_timestamp()),
        ("orders", DataType::Int64),
        ("revenue_lifetime", DataType::Float64),
        ("revenue_90d", DataType::Float64),
        ("revenue_365d", DataType::Float64),
        ("average_order_value", DataType::Float64),
        ("avg_days_between_orders", DataType::Float64),
        ("recency_days", DataType::Int64),
        ("r_score", DataType::Int32),
        ("f_score", DataType::Int32),
        ("m_score", DataType::Int32),
        ("rfm_segment", DataType::String),
        ("cohort", DataType::String),
        ("frequency", DataType::Float64),
        ("probability_alive", DataType::Float64),
        ("expected_purchases", DataType::Float64),
        ("expected_order_value", DataType::Float64),
        ("clv", DataType::Float64),
        ("churn_risk", DataType::String),
        ("company_name", DataType::String),
        ("industry", DataType::String),
        ("employee_count", DataType::Int64),
        ("revenue_band", DataType::String),
        ("suppressed", DataType::Boolean),
    ]);
    columns
}

fn empty_view(columns: &[(String, DataType)]) -> DataFrame {
    DataFrame::new(
        0,
        columns
            .iter()
            .map(|(n, t)| Column::new_empty(n.as_str().into(), t))
            .collect(),
    )
    .expect("empty columns of one height")
}

/// Checks a list's filter against the view's columns.
fn check_filter(
    list: &ListSpec,
    columns: &[(String, DataType)],
) -> std::result::Result<Expr, String> {
    let names = || {
        columns
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let expr = polars::sql::sql_expr(&list.filter).map_err(|e| {
        format!(
            "list `{}`: filter `{}` is not valid SQL: {e}",
            list.id, list.filter
        )
    })?;
    empty_view(columns)
        .lazy()
        .filter(expr.clone())
        .collect()
        .map_err(|e| {
            format!(
                "list `{}`: filter `{}` does not apply: {}; the columns are: {}",
                list.id,
                list.filter,
                super::short_error(&e),
                names()
            )
        })?;
    Ok(expr)
}

fn validate_params(params: &toml::Table) -> std::result::Result<Value, String> {
    let value = super::parse_params::<Params>(params)?;
    let parsed: Params = serde_json::from_value(value.clone()).map_err(|e| e.to_string())?;
    if parsed.lists.is_empty() {
        return Err("no lists: add [[params.lists]] with id and filter".into());
    }
    let columns: Vec<(String, DataType)> = view_columns()
        .into_iter()
        .map(|(n, t)| (n.to_string(), t))
        .collect();
    let mut ids = BTreeSet::new();
    for list in &parsed.lists {
        if list.id.trim().is_empty() || !ids.insert(list.id.clone()) {
            return Err(format!(
                "list ids must be unique and not empty; `{}` is not",
                list.id
            ));
        }
        let _ = check_filter(list, &columns)?;
        if let Some(path) = &list.export_csv {
            super::check_relative_path("export_csv", path)?;
        }
        if list.max_change_pct.is_some_and(|p| p.is_nan() || p < 0.0) {
            return Err(format!(
                "list `{}`: max_change_pct must be 0 or more",
                list.id
            ));
        }
    }
    Ok(value)
}

/// Builds the contact view: contacts plus the optional tables' columns and
/// `suppressed`. With `needed`, the view has only those columns (and
/// contact_id and suppressed): each table is read into memory with the
/// needed columns, and one whose contact_ids match the contacts' row for
/// row is joined without a hash join.
fn contact_view(ctx: &JobContext, needed: Option<&BTreeSet<String>>) -> Result<LazyFrame> {
    let suppression = ctx.optional_input("suppression");
    let keep = |name: &str| match needed {
        None => true,
        Some(needed) => {
            name == "contact_id"
                || needed.contains(name)
                || (name == "email" && suppression.is_some())
        }
    };
    let contacts = ctx.input("contacts");
    let mut present: BTreeSet<String> = contacts
        .snapshot
        .schema
        .iter_names()
        .map(|n| n.to_string())
        .collect();
    let contact_columns: Vec<Expr> = present
        .iter()
        .filter(|n| keep(n))
        .map(|n| col(n.as_str()))
        .collect();
    let mut view = contacts.table.scan(&contacts.snapshot)?;
    let mut frame = match needed {
        Some(_) => Some(super::collect_streaming(
            view.clone().select(contact_columns),
        )?),
        None => None,
    };
    for role in ["scores", "clv", "firmographics"] {
        let Some(input) = ctx.optional_input(role) else {
            continue;
        };
        let requested: Vec<String> = input
            .snapshot
            .schema
            .iter_names()
            .map(|n| n.to_string())
            .filter(|n| {
                n == "contact_id"
                    || (!present.contains(n)
                        && n != "run_id"
                        && n != "as_of"
                        && n != "domain"
                        && !n.ends_with("_source")
                        && !n.ends_with("_updated_at"))
            })
            .collect();
        present.extend(requested.iter().cloned());
        let selected: Vec<Expr> = requested
            .iter()
            .filter(|n| keep(n))
            .map(|n| col(n.as_str()))
            .collect();
        let table = input.table.scan(&input.snapshot)?.select(selected);
        frame = match frame {
            Some(left) => Some(join_on_contact_id(left, super::collect_streaming(table)?)?),
            None => {
                view = view.join(
                    table,
                    [col("contact_id")],
                    [col("contact_id")],
                    super::left_join_in_order(),
                );
                None
            }
        };
    }
    if let Some(frame) = frame {
        view = frame.lazy();
    }
    let Some(input) = suppression else {
        return Ok(view.with_column(lit(false).alias("suppressed")));
    };
    let active = input.table.scan(&input.snapshot)?;
    let active = if input.snapshot.schema.contains("expired_at") {
        active.filter(col("expired_at").is_null())
    } else {
        active
    };
    let active = active
        .select([col("email_normalized")])
        .with_column(lit(true).alias("suppressed"))
        .unique(None, UniqueKeepStrategy::Any);
    Ok(view
        .with_column(super::suppression::normalize_email(col("email")).alias("_email_key"))
        .join(
            active,
            [col("_email_key")],
            [col("email_normalized")],
            super::left_join_in_order(),
        )
        .with_column(col("suppressed").fill_null(lit(false)))
        .drop(cols(["_email_key"])))
}

/// Left-joins `right` to `left` on contact_id, keeping the order of `left`.
/// When both have the same contact_ids in the same order, without nulls,
/// their columns are put side by side, which gives the same rows as the
/// join.
fn join_on_contact_id(left: DataFrame, right: DataFrame) -> Result<DataFrame> {
    let left_ids = left.column("contact_id")?.as_materialized_series();
    let right_ids = right.column("contact_id")?.as_materialized_series();
    if left_ids.null_count() == 0 && left_ids.equals(right_ids) {
        let added = right.drop("contact_id")?;
        return Ok(left.hstack(added.columns())?);
    }
    Ok(left
        .lazy()
        .join(
            right.lazy(),
            [col("contact_id")],
            [col("contact_id")],
            super::left_join_in_order(),
        )
        .collect()?)
}

/// Returns the name of the boolean column that contains list `index`'s filter.
fn flag_column(index: usize) -> String {
    format!("_list_{index}")
}

/// Evaluates every list's filter over the contact view in one pass.
/// Returns one row per contact with `contact_id`, `email` when `with_email`,
/// and one boolean column per list (see [`flag_column`]), in the order of
/// the contacts table.
fn evaluate_filters(ctx: &JobContext, lists: &[ListSpec], with_email: bool) -> Result<DataFrame> {
    let columns: Vec<(String, DataType)> = contact_view(ctx, None)?
        .collect_schema()?
        .iter()
        .map(|(n, t)| (n.to_string(), t.clone()))
        .collect();
    let mut needed: BTreeSet<String> = BTreeSet::new();
    let mut selected = vec![col("contact_id")];
    if with_email {
        needed.insert("email".into());
        selected.push(col("email"));
    }
    for (index, list) in lists.iter().enumerate() {
        let expr = check_filter(list, &columns).map_err(Error::Config)?;
        needed.extend(
            expr.clone()
                .meta()
                .root_names()
                .iter()
                .map(|n| n.to_string()),
        );
        let mut filter = expr.fill_null(lit(false));
        if !list.include_suppressed {
            filter = filter.and(col("suppressed").not());
        }
        selected.push(filter.alias(flag_column(index)));
    }
    Ok(contact_view(ctx, Some(&needed))?
        .select(selected)
        .collect()?)
}

/// Returns `flags` with one row per contact_id, sorted by contact_id. A
/// contact with several rows in the view (a joined table with duplicate
/// contact_ids) is on a list when any of its rows passes the filter.
fn one_sorted_row_per_contact(flags: DataFrame, lists: usize) -> Result<DataFrame> {
    if super::is_strictly_increasing(flags.column("contact_id")?) {
        return Ok(flags);
    }
    let mut aggregates: Vec<Expr> = (0..lists)
        .map(|index| col(flag_column(index).as_str()).max())
        .collect();
    if flags.schema().contains("email") {
        aggregates.push(col("email").first());
    }
    Ok(flags
        .lazy()
        .group_by([col("contact_id")])
        .agg(aggregates)
        .sort(["contact_id"], SortMultipleOptions::default())
        .collect()?)
}

/// Returns the members of every list, sorted by list_id and contact_id, and
/// the number of members per list index.
fn current_members(flags: &DataFrame, lists: &[ListSpec]) -> Result<(DataFrame, Vec<usize>)> {
    let mut order: Vec<usize> = (0..lists.len()).collect();
    order.sort_by(|a, b| lists[*a].id.cmp(&lists[*b].id));
    let contact_ids = flags.column("contact_id")?;
    let mut sizes = vec![0; lists.len()];
    // Each list's members are appended as chunks, which shares the contact
    // ids' text with the flags rather than copying it into one array.
    let mut list_column = Series::new_empty("list_id".into(), &DataType::String);
    let mut contact_column = Series::new_empty("contact_id".into(), contact_ids.dtype());
    for index in order {
        let mask = flags.column(flag_column(index).as_str())?.bool()?;
        let members = contact_ids.filter(mask)?;
        sizes[index] = members.len();
        let list_id = super::text_scalar("list_id", &lists[index].id, members.len());
        list_column.append(list_id.as_materialized_series())?;
        contact_column.append(members.as_materialized_series())?;
    }
    let height = contact_column.len();
    let current = DataFrame::new(height, vec![list_column.into(), contact_column.into()])?;
    Ok((current, sizes))
}

fn run(ctx: &JobContext) -> Result<JobResult> {
    let params: Params = serde_json::from_value(ctx.params.clone())?;
    let with_email = params.lists.iter().any(|l| l.export_csv.is_some());
    let flags = evaluate_filters(ctx, &params.lists, with_email)?;
    let contacts = flags.height();
    let flags = one_sorted_row_per_contact(flags, params.lists.len())?;
    let (current, sizes) = current_members(&flags, &params.lists)?;

    let previous = ctx.output("membership").read()?;
    let previous_rows = previous.as_ref().map(|frame| frame.height() as u64);
    let list_ids: Vec<String> = params.lists.iter().map(|l| l.id.clone()).collect();
    let previous = previous
        .map(|frame| -> Result<DataFrame> {
            Ok(frame
                .lazy()
                .filter(col("list_id").is_in(
                    lit(Series::new("list_ids".into(), list_ids.clone())).implode(false),
                    false,
                ))
                .select([col("list_id"), col("contact_id"), col("member_since")])
                .collect()?)
        })
        .transpose()?;
    let sizes_before = match &previous {
        Some(frame) => Some(count_per_list(frame)?),
        None => None,
    };

    let mut counts = serde_json::Map::new();
    let mut guard_failures = Vec::new();
    for (list, after) in params.lists.iter().zip(&sizes) {
        let after = *after;
        let before = sizes_before
            .as_ref()
            .map(|sizes| sizes.get(&list.id).copied().unwrap_or(0));
        let limit = list.max_change_pct.unwrap_or(params.max_change_pct);
        if let Some(before) = before.filter(|b| *b > 0) {
            let change = (after as f64 - before as f64) / before as f64 * 100.0;
            if change.abs() > limit {
                guard_failures.push(format!(
                    "list `{}` would change from {before} to {after} members ({change:+.1}%), \
                     more than max_change_pct {limit}%",
                    list.id
                ));
            }
        }
        counts.insert(
            list.id.clone(),
            json!({ "members": after, "before": before }),
        );
    }
    if !guard_failures.is_empty() {
        return Err(Error::Data(format!(
            "{}; nothing was committed. If the change is right, raise the list's \
             max_change_pct in the pipeline file",
            guard_failures.join("; ")
        )));
    }

    let now = ctx.started_at.timestamp_micros();
    let first_refresh = previous.as_ref().is_none_or(|p| p.height() == 0);
    let refreshed_rows = previous.as_ref().map_or(0, |frame| frame.height() as u64);
    let Compared {
        membership,
        changes,
        kept_without_since,
    } = compare_with_previous(current, previous, now)?;
    let mut row_changes = BTreeMap::new();
    if let (Some(previous_rows), Some(kept_without_since)) = (previous_rows, kept_without_since) {
        // Rows of lists that are no longer refreshed are removed too.
        let adds = changes
            .column("change")?
            .str()?
            .equal("add")
            .sum()
            .unwrap_or(0) as u64;
        let removes = changes.height() as u64 - adds;
        row_changes.insert(
            "membership".to_string(),
            RowChanges {
                added: adds + kept_without_since,
                removed: removes + kept_without_since + (previous_rows - refreshed_rows),
                changed: 0,
            },
        );
    }
    if let Some(counted) = changes_replaced(ctx, now, changes.height() as u64)? {
        row_changes.insert("changes".to_string(), counted);
    }
    let height = changes.height();
    let changes = changes.hstack(&[
        timestamp_column("changed_at", now, height)?,
        super::text_scalar("run_id", &ctx.run_id, height),
    ])?;
    let (added, removed) = if first_refresh {
        let added = params
            .lists
            .iter()
            .zip(&sizes)
            .map(|(list, size)| (list.id.clone(), *size))
            .collect();
        (added, BTreeMap::new())
    } else {
        let of_kind = |kind: &str| -> Result<BTreeMap<String, usize>> {
            count_per_list(
                &changes
                    .clone()
                    .lazy()
                    .filter(col("change").eq(lit(kind)))
                    .collect()?,
            )
        };
        (of_kind("add")?, of_kind("remove")?)
    };
    for (id, value) in counts.iter_mut() {
        value["added"] = json!(added.get(id).copied().unwrap_or(0));
        value["removed"] = json!(removed.get(id).copied().unwrap_or(0));
    }
    let mut result = JobResult {
        row_changes,
        ..Default::default()
    };
    result.metrics.insert("lists".into(), Value::Object(counts));
    result
        .metrics
        .insert("contacts".into(), Value::from(contacts));
    for list in &params.lists {
        let Some(path) = &list.export_csv else {
            continue;
        };
        let frame = membership
            .clone()
            .lazy()
            .filter(col("list_id").eq(lit(list.id.clone())))
            .join(
                flags
                    .clone()
                    .lazy()
                    .select([col("contact_id"), col("email")]),
                [col("contact_id")],
                [col("contact_id")],
                super::left_join_in_order(),
            )
            .select([col("contact_id"), col("email"), col("member_since")])
            .collect()?;
        result.exports.push(Export {
            path: path.clone(),
            frame,
        });
    }
    result.outputs.push(OutputFrame {
        role: "membership".into(),
        frame: membership,
        mode: WriteMode::Overwrite,
        key: None,
    });
    result.outputs.push(OutputFrame {
        role: "changes".into(),
        frame: changes,
        mode: WriteMode::Overwrite,
        key: None,
    });
    Ok(result)
}

/// Returns the row counts of replacing the `changes` output with `rows` new
/// rows changed at `now`, or `None` when the runner must compare the
/// versions. Every new row has changed_at `now`, so when every previous
/// row was changed before `now`, no previous row equals a new one.
fn changes_replaced(ctx: &JobContext, now: i64, rows: u64) -> Result<Option<RowChanges>> {
    let output = ctx.output("changes");
    let Some(snapshot) = &output.snapshot else {
        return Ok(None);
    };
    if snapshot.schema.get("changed_at") != Some(&utc_timestamp()) {
        return Ok(None);
    }
    let previous = output
        .table
        .scan(snapshot)?
        .select([
            len().cast(DataType::Int64).alias("rows"),
            col("changed_at").to_physical().max().alias("latest"),
        ])
        .collect()?;
    let previous_rows = previous.column("rows")?.i64()?.get(0).unwrap_or(0);
    let latest = previous.column("latest")?.i64()?.get(0);
    if latest.is_some_and(|latest| latest >= now) {
        return Ok(None);
    }
    Ok(Some(RowChanges {
        added: rows,
        removed: previous_rows as u64,
        changed: 0,
    }))
}

/// Returns a column of `len` copies of the UTC timestamp `micros`.
fn timestamp_column(name: &str, micros: i64, len: usize) -> Result<Column> {
    let value = Scalar::new(DataType::Int64, AnyValue::Int64(micros));
    Ok(Column::new_scalar(name.into(), value, len)
        .cast(&DataType::Datetime(TimeUnit::Microseconds, None))?
        .cast(&utc_timestamp())?)
}

fn timestamp_literal(micros: i64) -> Expr {
    lit(micros)
        .cast(DataType::Datetime(TimeUnit::Microseconds, None))
        .cast(utc_timestamp())
}

/// Counts the rows of a membership frame per list_id.
fn count_per_list(membership: &DataFrame) -> Result<BTreeMap<String, usize>> {
    let counts = membership
        .clone()
        .lazy()
        .group_by([col("list_id")])
        .agg([len().cast(DataType::Int64).alias("n")])
        .collect()?;
    let mut sizes = BTreeMap::new();
    for (id, n) in counts
        .column("list_id")?
        .str()?
        .iter()
        .zip(counts.column("n")?.i64()?.iter())
    {
        if let (Some(id), Some(n)) = (id, n) {
            sizes.insert(id.to_string(), n as usize);
        }
    }
    Ok(sizes)
}

/// The outcome of comparing the current members with the previous ones.
struct Compared {
    /// list_id, contact_id, member_since, sorted by list_id and contact_id.
    membership: DataFrame,
    /// list_id, contact_id, change, sorted by list_id and contact_id.
    changes: DataFrame,
    /// The number of members who stay but had no member_since, or `None`
    /// when the comparison did not count them. Those rows differ from
    /// their previous version.
    kept_without_since: Option<u64>,
}

/// Returns the new membership, with the member_since of members who stay,
/// and the changes. `current` (list_id, contact_id) must be sorted by
/// list_id and contact_id, and `previous` contains only the earlier members
/// of the refreshed lists.
fn compare_with_previous(
    current: DataFrame,
    previous: Option<DataFrame>,
    now: i64,
) -> Result<Compared> {
    let Some(previous) = previous.filter(|p| p.height() > 0) else {
        // A first refresh: everyone is new.
        let height = current.height();
        let membership = current.hstack(&[timestamp_column("member_since", now, height)?])?;
        let changes = current.hstack(&[super::text_scalar("change", "add", height)])?;
        return Ok(Compared {
            membership,
            changes,
            kept_without_since: Some(0),
        });
    };
    if let Some(merged) = merge_memberships(&current, &previous, now)? {
        return Ok(merged);
    }
    let keys = || [col("list_id"), col("contact_id")];
    // One left join gives both the kept member_since and the adds.
    let joined = current
        .clone()
        .lazy()
        .join(
            previous
                .clone()
                .lazy()
                .with_column(lit(true).alias("_was_member")),
            keys(),
            keys(),
            super::left_join_in_order(),
        )
        .collect()?;
    let membership = joined
        .clone()
        .lazy()
        .select([
            col("list_id"),
            col("contact_id"),
            col("member_since").fill_null(timestamp_literal(now)),
        ])
        .collect()?;
    let adds = joined.lazy().filter(col("_was_member").is_null()).select([
        col("list_id"),
        col("contact_id"),
        lit("add").alias("change"),
    ]);
    let removes = previous
        .lazy()
        .select([col("list_id"), col("contact_id")])
        .join(
            current.lazy(),
            keys(),
            keys(),
            JoinArgs::new(JoinType::Anti),
        )
        .select([
            col("list_id"),
            col("contact_id"),
            lit("remove").alias("change"),
        ]);
    let changes = concat([adds, removes], UnionArgs::default())?
        .sort(["list_id", "contact_id"], SortMultipleOptions::default())
        .collect()?;
    Ok(Compared {
        membership,
        changes,
        kept_without_since: None,
    })
}

/// Compares `current` with `previous` in one pass over both, when both are
/// sorted by (list_id, contact_id) without duplicates, as the membership
/// table is written. Returns what [`compare_with_previous`] returns, or
/// `None` when `previous` is not sorted that way or has null keys.
fn merge_memberships(
    current: &DataFrame,
    previous: &DataFrame,
    now: i64,
) -> Result<Option<Compared>> {
    if previous.column("member_since")?.dtype() != &utc_timestamp() {
        return Ok(None);
    }
    let since = previous.column("member_since")?.to_physical_repr();
    let since = since.i64()?;
    let previous_lists = previous.column("list_id")?.str()?;
    let previous_contacts = previous.column("contact_id")?.str()?;
    let current_lists = current.column("list_id")?.str()?;
    let current_contacts = current.column("contact_id")?.str()?;

    let mut current_rows = current_lists.iter().zip(current_contacts.iter());
    let mut previous_rows = previous_lists
        .iter()
        .zip(previous_contacts.iter())
        .zip(since.iter());
    let mut member_since: Vec<i64> = Vec::with_capacity(current.height());
    let mut change_lists: Vec<&str> = Vec::new();
    let mut change_contacts: Vec<&str> = Vec::new();
    let mut change_kinds: Vec<&str> = Vec::new();
    let mut last_previous: Option<(&str, &str)> = None;
    let mut kept_without_since = 0;
    let mut next_current = current_rows.next();
    let mut next_previous = previous_rows.next();
    loop {
        let current_key = match next_current {
            None => None,
            Some((Some(list), Some(contact))) => Some((list, contact)),
            Some(_) => return Ok(None),
        };
        let (previous_key, previous_since) = match next_previous {
            None => (None, None),
            Some(((Some(list), Some(contact)), since)) => (Some((list, contact)), since),
            Some(_) => return Ok(None),
        };
        if let Some(key) = previous_key {
            if last_previous.is_some_and(|last| last >= key) {
                return Ok(None);
            }
        }
        let order = match (current_key, previous_key) {
            (None, None) => break,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some(current_key), Some(previous_key)) => current_key.cmp(&previous_key),
        };
        match order {
            std::cmp::Ordering::Less => {
                let (list, contact) = current_key.expect("a current row sorts first");
                member_since.push(now);
                change_lists.push(list);
                change_contacts.push(contact);
                change_kinds.push("add");
                next_current = current_rows.next();
            }
            std::cmp::Ordering::Greater => {
                let (list, contact) = previous_key.expect("a previous row sorts first");
                change_lists.push(list);
                change_contacts.push(contact);
                change_kinds.push("remove");
                last_previous = previous_key;
                next_previous = previous_rows.next();
            }
            std::cmp::Ordering::Equal => {
                if previous_since.is_none() {
                    kept_without_since += 1;
                }
                member_since.push(previous_since.unwrap_or(now));
                last_previous = previous_key;
                next_current = current_rows.next();
                next_previous = previous_rows.next();
            }
        }
    }
    let member_since = Column::new("member_since".into(), member_since)
        .cast(&DataType::Datetime(TimeUnit::Microseconds, None))?
        .cast(&utc_timestamp())?;
    let membership = current.clone().hstack(&[member_since])?;
    let changes = DataFrame::new(
        change_kinds.len(),
        vec![
            Column::new("list_id".into(), change_lists),
            Column::new("contact_id".into(), change_contacts),
            Column::new("change".into(), change_kinds),
        ],
    )?;
    Ok(Some(Compared {
        membership,
        changes,
        kept_without_since: Some(kept_without_since),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(frame: &DataFrame, column: &str) -> Vec<Option<String>> {
        frame
            .column(column)
            .unwrap()
            .str()
            .unwrap()
            .iter()
            .map(|v| v.map(str::to_string))
            .collect()
    }

    fn contacts(ids: &[&str]) -> DataFrame {
        let countries: Vec<String> = ids.iter().map(|id| format!("country of {id}")).collect();
        df!("contact_id" => ids, "country" => countries).unwrap()
    }

    fn scores(ids: &[&str]) -> DataFrame {
        let grades: Vec<String> = ids.iter().map(|id| format!("grade of {id}")).collect();
        df!("contact_id" => ids, "grade" => grades).unwrap()
    }

    #[test]
    fn contact_id_join_aligned_and_shuffled() {
        let aligned = join_on_contact_id(contacts(&["a", "b", "c"]), scores(&["a", "b", "c"]));
        let aligned = aligned.unwrap();
        assert_eq!(
            ids(&aligned, "contact_id"),
            ids(&contacts(&["a", "b", "c"]), "contact_id")
        );
        assert_eq!(
            ids(&aligned, "grade"),
            vec![
                Some("grade of a".into()),
                Some("grade of b".into()),
                Some("grade of c".into())
            ]
        );

        let shuffled = join_on_contact_id(contacts(&["a", "b", "c"]), scores(&["c", "a"])).unwrap();
        assert_eq!(
            ids(&shuffled, "contact_id"),
            vec![Some("a".into()), Some("b".into()), Some("c".into())]
        );
        assert_eq!(
            ids(&shuffled, "grade"),
            vec![Some("grade of a".into()), None, Some("grade of c".into())]
        );
    }

    #[test]
    fn duplicate_contacts_merge_their_flags() {
        let flags = df!(
            "contact_id" => ["b", "a", "b"],
            "_list_0" => [false, true, true],
            "_list_1" => [false, false, false]
        )
        .unwrap();
        let merged = one_sorted_row_per_contact(flags, 2).unwrap();
        assert_eq!(
            ids(&merged, "contact_id"),
            vec![Some("a".into()), Some("b".into())]
        );
        let first: Vec<Option<bool>> = merged
            .column("_list_0")
            .unwrap()
            .bool()
            .unwrap()
            .iter()
            .collect();
        assert_eq!(first, vec![Some(true), Some(true)]);
        let second: Vec<Option<bool>> = merged
            .column("_list_1")
            .unwrap()
            .bool()
            .unwrap()
            .iter()
            .collect();
        assert_eq!(second, vec![Some(false), Some(false)]);
    }

    fn membership(rows: &[(&str, &str, i64)]) -> DataFrame {
        let since = Column::new(
            "member_since".into(),
            rows.iter().map(|r| r.2).collect::<Vec<_>>(),
        )
        .cast(&DataType::Datetime(TimeUnit::Microseconds, None))
        .unwrap()
        .cast(&utc_timestamp())
        .unwrap();
        DataFrame::new(
            rows.len(),
            vec![
                Column::new(
                    "list_id".into(),
                    rows.iter().map(|r| r.0).collect::<Vec<_>>(),
                ),
                Column::new(
                    "contact_id".into(),
                    rows.iter().map(|r| r.1).collect::<Vec<_>>(),
                ),
                since,
            ],
        )
        .unwrap()
    }

    #[test]
    fn sorted_and_unsorted_previous_agree() {
        let current = df!(
            "list_id" => ["l1", "l1", "l2"],
            "contact_id" => ["a", "c", "b"]
        )
        .unwrap();
        let sorted = membership(&[("l1", "a", 5), ("l1", "b", 6), ("l2", "b", 7)]);
        let unsorted = membership(&[("l2", "b", 7), ("l1", "b", 6), ("l1", "a", 5)]);
        assert!(merge_memberships(&current, &sorted, 100).unwrap().is_some());
        assert!(merge_memberships(&current, &unsorted, 100)
            .unwrap()
            .is_none());

        for previous in [sorted, unsorted] {
            let Compared {
                membership: kept,
                changes,
                ..
            } = compare_with_previous(current.clone(), Some(previous), 100).unwrap();
            let since: Vec<Option<i64>> = kept
                .column("member_since")
                .unwrap()
                .to_physical_repr()
                .i64()
                .unwrap()
                .iter()
                .collect();
            assert_eq!(since, vec![Some(5), Some(100), Some(7)]);
            assert_eq!(
                ids(&changes, "contact_id"),
                vec![Some("b".into()), Some("c".into())]
            );
            assert_eq!(
                ids(&changes, "change"),
                vec![Some("remove".into()), Some("add".into())]
            );
        }
    }
}
