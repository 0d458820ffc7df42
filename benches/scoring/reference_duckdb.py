"""Compute nightshift's scores and list memberships with DuckDB SQL.

This is the DuckDB reference for `nightshift run scoring` and `nightshift run
lists` (a `list_refresh` pipeline), with the semantics that
reference_polars.py describes. It reads the model and the lists from the same
pipeline files as nightshift and builds one SQL statement per command. The
fit rules and list filters go into it as they are written.

`score` writes the scores, one row per contact sorted by contact_id, and
`lists` writes (list_id, contact_id) sorted by list_id and contact_id, each
as one Parquet file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model import MICROS_PER_DAY, Group, Model, load_lists, load_model  # noqa: E402

SCORES_COLUMNS_NOT_IN_VIEW = {"run_id", "as_of"}

EMAIL_KEY = """CASE WHEN event_type = 'bounce' THEN
        CASE WHEN bounce_type = 'block' THEN 'block' ELSE coalesce(bounce_type, 'hard') || '_bounce' END
    ELSE event_type END"""


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def number(value: float) -> str:
    """Format a float as a DOUBLE literal, so that DuckDB does not compute in DECIMAL."""
    return f"CAST({float(value)!r} AS DOUBLE)"


def decay_factor(age_days: str, decay: dict) -> str:
    kind = decay["kind"]
    if kind == "none":
        return "1.0"
    if kind == "exponential":
        return f"pow(0.5, {age_days} / {number(decay['half_life_days'])})"
    if kind == "linear":
        factor = f"(1.0 - floor({age_days} / {number(decay['period_days'])}) * {number(decay['loss_per_period'])})"
        return f"greatest({factor}, 0.0)"
    raise ValueError(f"unknown decay kind {kind!r}")


def capped(value: str, cap: float | None) -> str:
    if cap is None:
        return value
    return f"CASE WHEN {value} > {number(cap)} THEN {number(cap)} ELSE {value} END"


def group_query(group: Group, model: Model, events_glob: str, activities_glob: str) -> str:
    """Return a query of one group's engagement per contact that has events."""
    if group.source == "email_events":
        source, key = events_glob, EMAIL_KEY
    elif group.source == "activities":
        source, key = activities_glob, "activity_type"
    else:
        raise ValueError(f"group {group.name}: unknown source {group.source!r}")
    points = ", ".join(f"({quote_literal(name)}, {number(value)})" for name, value in group.points.items())
    age_days = f"(CAST({model.as_of_micros} - epoch_us(occurred_at) AS DOUBLE) / {number(MICROS_PER_DAY)})"
    return f"""
    SELECT contact_id,
        {capped("coalesce(sum(value) FILTER (WHERE value > 0), 0.0)", group.cap)}
            + coalesce(sum(value) FILTER (WHERE value < 0), 0.0) AS engagement_{group.name}
    FROM (
        SELECT events.contact_id, points.points * {decay_factor(age_days, group.decay)} AS value
        FROM (
            SELECT contact_id, occurred_at, {key} AS key
            FROM read_parquet({quote_literal(source)})
            WHERE contact_id IS NOT NULL AND epoch_us(occurred_at) <= {model.as_of_micros}
        ) AS events
        JOIN (VALUES {points}) AS points(key, points) ON events.key = points.key
    )
    GROUP BY contact_id"""


def total(columns: list[str]) -> str:
    return " + ".join(columns) if columns else "0.0"


def scores_query(model: Model, contacts_glob: str, events_glob: str, activities_glob: str) -> str:
    fit_columns = [f"fit_{rule.name}" for rule in model.fit_rules]
    engagement_columns = [f"engagement_{group.name}" for group in model.groups]
    fit_selects = "".join(
        f",\n        CASE WHEN coalesce(({rule.rule}), false) THEN {number(rule.points)} ELSE 0.0 END AS {column}"
        for rule, column in zip(model.fit_rules, fit_columns)
    )
    joins = "".join(
        f"\n    LEFT JOIN ({group_query(group, model, events_glob, activities_glob)}\n    ) AS group_{group.name}"
        f" USING (contact_id)"
        for group in model.groups
    )
    engagement_selects = "".join(f", coalesce({column}, 0.0) AS {column}" for column in engagement_columns)
    grade_cases = " ".join(f"WHEN score >= {number(minimum)} THEN {quote_literal(name)}" for name, minimum in model.bands)
    grade = f"CASE {grade_cases} ELSE NULL END" if model.bands else "CAST(NULL AS VARCHAR)"
    mql = "false" if model.mql_threshold is None else f"score >= {number(model.mql_threshold)}"
    return f"""
WITH fit AS (
    SELECT contact_id{fit_selects}
    FROM read_parquet({quote_literal(contacts_glob)})
), breakdown AS (
    SELECT fit.*{engagement_selects}
    FROM fit{joins}
), totals AS (
    SELECT *,
        {capped(total(engagement_columns), model.engagement_cap)} AS engagement_score,
        {capped(total(fit_columns), model.fit_cap)} AS fit_score
    FROM breakdown
), scored AS (
    SELECT *, engagement_score + fit_score AS score FROM totals
)
SELECT {", ".join(model.output_columns()[:-2])}, {grade} AS grade, {mql} AS mql
FROM scored
ORDER BY contact_id"""


def write_lists(connection: duckdb.DuckDBPyConnection, lists: list[tuple[str, str]], contacts_glob: str,
                scores_glob: str, output: str) -> None:
    contact_columns = {row[0] for row in connection.sql(f"DESCRIBE SELECT * FROM read_parquet({quote_literal(contacts_glob)})").fetchall()}
    score_columns = [
        row[0]
        for row in connection.sql(f"DESCRIBE SELECT * FROM read_parquet({quote_literal(scores_glob)})").fetchall()
        if row[0] == "contact_id" or (row[0] not in contact_columns and row[0] not in SCORES_COLUMNS_NOT_IN_VIEW)
    ]
    # The view is materialized once because every list filters it. No contact
    # is suppressed, as in nightshift's view without a suppression_list table.
    connection.execute(f"""
        CREATE TEMP TABLE contact_view AS
        SELECT contacts.*, {", ".join(f"scores.{name}" for name in score_columns if name != "contact_id")},
            false AS suppressed
        FROM read_parquet({quote_literal(contacts_glob)}) AS contacts
        LEFT JOIN (SELECT {", ".join(score_columns)} FROM read_parquet({quote_literal(scores_glob)})) AS scores
        USING (contact_id)""")
    members = "\nUNION ALL\n".join(
        f"SELECT {quote_literal(list_id)} AS list_id, contact_id FROM contact_view WHERE coalesce(({list_filter}), false)"
        for list_id, list_filter in lists
    )
    connection.execute(f"COPY ({members}\nORDER BY list_id, contact_id) TO {quote_literal(output)} (FORMAT parquet)")


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

    connection = duckdb.connect()
    if args.command == "score":
        query = scores_query(load_model(args.pipeline), args.contacts_glob, args.events_glob, args.activities_glob)
        connection.execute(f"COPY ({query}) TO {quote_literal(args.output)} (FORMAT parquet)")
    else:
        write_lists(connection, load_lists(args.pipeline), args.contacts_glob, args.scores_glob, args.output)


if __name__ == "__main__":
    main()
