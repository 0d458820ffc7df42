"""Compute the first-run suppression list with DuckDB.

This is the DuckDB reference for `nightshift run suppression` on an empty
suppression list, with the same semantics as reference_polars.py: it reads
every email_events Parquet file that EVENTS_GLOB matches and writes one row
per normalized address, sorted by email_normalized, to OUTPUT.

NOTE: DuckDB's lower() maps each character to one character, so it differs
from Rust's and Polars' to_lowercase on characters with special casing rules.
A final capital sigma becomes 'σ', not 'ς'. U+0130 becomes 'i', not 'i'
followed by U+0307. Addresses with these characters can normalize differently
than in nightshift.
"""

import argparse

import duckdb

# The characters that Rust's `str::trim` strips (the Unicode White_Space
# property). DuckDB's one-argument trim() strips only ' '.
UNICODE_WHITESPACE = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680"
    + "".join(chr(code) for code in range(0x2000, 0x200B))
    + "\u2028\u2029\u202f\u205f\u3000"
)

SUPPRESSION_QUERY = """
WITH triggering_events AS (
    SELECT
        lower(trim(email, $whitespace)) AS email_normalized,
        email,
        CASE WHEN event_type = 'bounce' THEN 'hard_bounce' ELSE event_type END AS reason,
        event_id,
        occurred_at
    FROM read_parquet($events_glob)
    WHERE (event_type = 'bounce' AND bounce_type = 'hard')
       OR event_type IN ('complaint', 'unsubscribe')
)
SELECT
    email_normalized,
    first(email ORDER BY occurred_at NULLS LAST, event_id NULLS LAST) AS email,
    first(reason ORDER BY occurred_at NULLS LAST, event_id NULLS LAST) AS reason,
    first(event_id ORDER BY occurred_at NULLS LAST, event_id NULLS LAST) AS event_id,
    'email_events' AS source,
    min(occurred_at) AS first_suppressed_at,
    max(occurred_at) AS last_event_at,
    count(*)::BIGINT AS event_count,
    NULL::TIMESTAMPTZ AS expires_at,
    $run_id AS run_id
FROM triggering_events
-- The comparison is also false for a null address, so those rows are dropped too.
WHERE email_normalized <> ''
GROUP BY email_normalized
ORDER BY email_normalized
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("events_glob", help="glob of the email_events Parquet files")
    parser.add_argument("output", help="Parquet file to write the suppression list to")
    parser.add_argument("--run-id", default="reference-duckdb", help="value of the run_id column")
    args = parser.parse_args()

    connection = duckdb.connect()
    parameters = {
        "events_glob": args.events_glob,
        "whitespace": UNICODE_WHITESPACE,
        "run_id": args.run_id,
    }
    result = connection.sql(SUPPRESSION_QUERY, params=parameters)
    result.write_parquet(args.output, compression="zstd")


if __name__ == "__main__":
    main()
