"""Compute the first-run suppression list with Python Polars.

This is the Polars reference for `nightshift run suppression` on an empty
suppression list. It reads every email_events Parquet file that EVENTS_GLOB
matches and writes one row per normalized address, sorted by
email_normalized, to OUTPUT:

- triggering events: a hard bounce (event_type 'bounce', bounce_type 'hard')
  gives reason 'hard_bounce', a 'complaint' or 'unsubscribe' event gives a
  reason of the same name. All other events are ignored.
- email_normalized is lower(trim(email)), where trim strips Unicode white
  space as Rust's `str::trim` does. Events whose normalized address is null
  or empty are not suppressed.
- email, reason and event_id come from the address's first event, the one
  with the smallest (occurred_at, event_id). Nulls sort last.
- first_suppressed_at and last_event_at are the min and max of occurred_at,
  and event_count (Int64) is the number of triggering events.
- source is 'email_events', expires_at is a null timestamp and run_id is the
  value of --run-id.
"""

import argparse

import polars as pl

OUTPUT_COLUMNS = [
    "email_normalized",
    "email",
    "reason",
    "event_id",
    "source",
    "first_suppressed_at",
    "last_event_at",
    "event_count",
    "expires_at",
    "run_id",
]


def first_event_value(column: str) -> pl.Expr:
    """Return `column` of the group's event with the smallest (occurred_at, event_id)."""
    return (
        pl.col(column)
        .sort_by("occurred_at", "event_id", nulls_last=True)
        .first()
        .alias(column)
    )


def build_plan(events_glob: str, run_id: str) -> pl.LazyFrame:
    """Build the lazy query that turns email events into the suppression list."""
    event_type = pl.col("event_type")
    is_hard_bounce = (event_type == "bounce") & (pl.col("bounce_type") == "hard")
    is_triggering = is_hard_bounce | event_type.is_in(["complaint", "unsubscribe"])
    reason = pl.when(is_hard_bounce).then(pl.lit("hard_bounce")).otherwise(event_type)

    triggering_events = (
        pl.scan_parquet(events_glob)
        .filter(is_triggering)
        .select(
            pl.col("email").str.strip_chars().str.to_lowercase().alias("email_normalized"),
            "email",
            reason.alias("reason"),
            "event_id",
            "occurred_at",
        )
        .filter(pl.col("email_normalized") != "")
    )
    occurred_at = pl.col("occurred_at")
    return (
        triggering_events.group_by("email_normalized")
        .agg(
            first_event_value("email"),
            first_event_value("reason"),
            first_event_value("event_id"),
            occurred_at.min().alias("first_suppressed_at"),
            occurred_at.max().alias("last_event_at"),
            pl.len().cast(pl.Int64).alias("event_count"),
        )
        .with_columns(
            pl.lit("email_events").alias("source"),
            pl.lit(None, dtype=pl.Datetime("us", "UTC")).alias("expires_at"),
            pl.lit(run_id).alias("run_id"),
        )
        .select(OUTPUT_COLUMNS)
        .sort("email_normalized")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("events_glob", help="glob of the email_events Parquet files")
    parser.add_argument("output", help="Parquet file to write the suppression list to")
    parser.add_argument("--run-id", default="reference-polars", help="value of the run_id column")
    args = parser.parse_args()
    build_plan(args.events_glob, args.run_id).sink_parquet(args.output)


if __name__ == "__main__":
    main()
