"""Compute nightshift's scores and list memberships with Python Polars.

This is the Polars reference for `nightshift run scoring` and `nightshift run
lists` (a `list_refresh` pipeline). It reads the model and the lists from the
same pipeline files as nightshift.

`score` reads the contacts, email_events and activities Parquet files and
writes one row per contact, sorted by contact_id, with the columns of
model.Model.output_columns:

- An email event's key is its event_type, except that a bounce's key is
  'block' for a block and bounce_type + '_bounce' otherwise ('hard_bounce'
  when bounce_type is null). An activity's key is its activity_type.
- Events with a null contact_id, an occurred_at after as_of or a key
  without points are ignored.
- An event's value is its points times the decay factor of its age in days
  at as_of: 0.5 ** (age / half_life_days) for exponential decay, and
  max(0, 1 - floor(age / period_days) * loss_per_period) for linear decay.
- Per group and contact, the positive values add up to at most the group's
  cap, and the negative values are added uncapped. A contact without events
  gets 0.
- A fit rule gives its points when its SQL boolean is true (null counts
  as false). engagement_score and fit_score are the sums of their columns,
  capped at engagement_cap and fit_cap; score is their sum; grade is the
  band with the highest min at or below score (null below every band); mql
  is score >= mql_threshold.

`lists` reads the contacts files and the scores table's files, joins each
contact to its scores, and writes (list_id, contact_id) for every contact
whose row passes a list's filter, sorted by list_id and contact_id.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model import MICROS_PER_DAY, Group, Model, load_lists, load_model  # noqa: E402

# Columns of the scores table that are not joined into the list view,
# as nightshift's list_refresh job leaves them out.
SCORES_COLUMNS_NOT_IN_VIEW = {"run_id", "as_of"}


def email_key() -> pl.Expr:
    """Return the event key of an email event, with bounces split by bounce type."""
    bounce_key = (
        pl.when(pl.col("bounce_type") == "block")
        .then(pl.lit("block"))
        .otherwise(pl.col("bounce_type").fill_null("hard") + "_bounce")
    )
    return pl.when(pl.col("event_type") == "bounce").then(bounce_key).otherwise(pl.col("event_type"))


def decay_factor(age_days: pl.Expr, decay: dict) -> pl.Expr:
    """Return the factor by which an event's points shrink at age_days."""
    kind = decay["kind"]
    if kind == "none":
        return pl.lit(1.0)
    if kind == "exponential":
        return pl.lit(0.5).pow(age_days / decay["half_life_days"])
    if kind == "linear":
        factor = 1.0 - (age_days / decay["period_days"]).floor() * decay["loss_per_period"]
        return pl.when(factor < 0.0).then(pl.lit(0.0)).otherwise(factor)
    raise ValueError(f"unknown decay kind {kind!r}")


def capped(value: pl.Expr, cap: float | None) -> pl.Expr:
    if cap is None:
        return value
    return pl.when(value > cap).then(pl.lit(float(cap))).otherwise(value)


def group_engagement(group: Group, model: Model, events_glob: str, activities_glob: str) -> pl.LazyFrame:
    """Build the plan of one group's engagement per contact that has events."""
    if group.source == "email_events":
        events = pl.scan_parquet(events_glob).select(
            "contact_id", "occurred_at", email_key().alias("key")
        )
    elif group.source == "activities":
        events = pl.scan_parquet(activities_glob).select(
            "contact_id", "occurred_at", pl.col("activity_type").alias("key")
        )
    else:
        raise ValueError(f"group {group.name}: unknown source {group.source!r}")

    occurred_micros = pl.col("occurred_at").dt.epoch("us")
    age_days = (model.as_of_micros - occurred_micros).cast(pl.Float64) / float(MICROS_PER_DAY)
    points = pl.col("key").replace_strict(
        list(group.points), list(group.points.values()), default=None, return_dtype=pl.Float64
    )
    value = pl.col("value")
    return (
        events.filter(pl.col("contact_id").is_not_null() & (occurred_micros <= model.as_of_micros))
        .with_columns(points.alias("points"))
        .filter(pl.col("points").is_not_null())
        .select("contact_id", (pl.col("points") * decay_factor(age_days, group.decay)).alias("value"))
        .group_by("contact_id")
        .agg(
            value.filter(value > 0.0).sum().alias("positive"),
            value.filter(value < 0.0).sum().alias("negative"),
        )
        .select(
            "contact_id",
            (capped(pl.col("positive"), group.cap) + pl.col("negative")).alias(f"engagement_{group.name}"),
        )
    )


def total(columns: list[str]) -> pl.Expr:
    """Return the sum of columns, added left to right, or 0.0 for none."""
    if not columns:
        return pl.lit(0.0)
    result = pl.col(columns[0])
    for column in columns[1:]:
        result = result + pl.col(column)
    return result


def build_scores_plan(model: Model, contacts_glob: str, events_glob: str, activities_glob: str) -> pl.LazyFrame:
    fit_columns = [f"fit_{rule.name}" for rule in model.fit_rules]
    engagement_columns = [f"engagement_{group.name}" for group in model.groups]
    scores = pl.scan_parquet(contacts_glob).select(
        "contact_id",
        *(
            pl.when(pl.sql_expr(rule.rule).fill_null(False))
            .then(pl.lit(rule.points))
            .otherwise(pl.lit(0.0))
            .alias(column)
            for rule, column in zip(model.fit_rules, fit_columns)
        ),
    )
    for group, column in zip(model.groups, engagement_columns):
        scores = scores.join(
            group_engagement(group, model, events_glob, activities_glob), on="contact_id", how="left"
        ).with_columns(pl.col(column).fill_null(0.0))

    grade = pl.lit(None, dtype=pl.String)
    for name, minimum in reversed(model.bands):
        grade = pl.when(pl.col("score") >= minimum).then(pl.lit(name)).otherwise(grade)
    if model.mql_threshold is None:
        mql = pl.lit(False)
    else:
        mql = pl.col("score") >= model.mql_threshold
    return (
        scores.with_columns(
            capped(total(engagement_columns), model.engagement_cap).alias("engagement_score"),
            capped(total(fit_columns), model.fit_cap).alias("fit_score"),
        )
        .with_columns((pl.col("engagement_score") + pl.col("fit_score")).alias("score"))
        .with_columns(grade.alias("grade"), mql.alias("mql"))
        .select(model.output_columns())
        .sort("contact_id")
    )


def build_lists_plan(lists: list[tuple[str, str]], contacts_glob: str, scores_glob: str) -> pl.LazyFrame:
    contacts = pl.scan_parquet(contacts_glob)
    contact_columns = set(contacts.collect_schema().names())
    scores = pl.scan_parquet(scores_glob)
    score_columns = [
        name
        for name in scores.collect_schema().names()
        if name == "contact_id" or (name not in contact_columns and name not in SCORES_COLUMNS_NOT_IN_VIEW)
    ]
    # No suppression input, so no contact is suppressed, as in nightshift's
    # view without a suppression_list table.
    view = (
        contacts.join(scores.select(score_columns), on="contact_id", how="left")
        .with_columns(pl.lit(False).alias("suppressed"))
        .cache()
    )
    members = [
        view.filter(pl.sql_expr(list_filter).fill_null(False)).select(
            pl.lit(list_id).alias("list_id"), "contact_id"
        )
        for list_id, list_filter in lists
    ]
    return pl.concat(members).sort("list_id", "contact_id")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    score = commands.add_parser("score", help="compute the scores of a scoring pipeline")
    score.add_argument("pipeline", type=Path, help="the scoring pipeline file")
    score.add_argument("contacts_glob", help="glob of the contacts Parquet files")
    score.add_argument("events_glob", help="glob of the email_events Parquet files")
    score.add_argument("activities_glob", help="glob of the activities Parquet files")
    score.add_argument("output", help="Parquet file to write the scores to")
    lists = commands.add_parser("lists", help="compute the memberships of a list_refresh pipeline")
    lists.add_argument("pipeline", type=Path, help="the list_refresh pipeline file")
    lists.add_argument("contacts_glob", help="glob of the contacts Parquet files")
    lists.add_argument("scores_glob", help="glob of the scores Parquet files")
    lists.add_argument("output", help="Parquet file to write (list_id, contact_id) to")
    args = parser.parse_args()

    if args.command == "score":
        model = load_model(args.pipeline)
        plan = build_scores_plan(model, args.contacts_glob, args.events_glob, args.activities_glob)
    else:
        plan = build_lists_plan(load_lists(args.pipeline), args.contacts_glob, args.scores_glob)
    plan.sink_parquet(args.output)


if __name__ == "__main__":
    main()
