"""Compute the first-run suppression list and sendable contacts with DuckDB.

This is the DuckDB reference for a first `nightshift run suppression` with
the default parameters, an events input and a contacts input, and no manual
input: no role addresses, invalid_address on, the default normalization
policy. It reads the email_events Parquet files that EVENTS_GLOB matches and
the contacts Parquet files that CONTACTS_GLOB matches, and writes two Parquet
files: the suppression list sorted by email_normalized, and the sendable
contacts sorted by contact_id.

The rules, as src/jobs/suppression.rs applies them on a first run:

- hard_bounce, complaint and unsubscribe: one row per normalized address with
  such events. email, reason and event_id come from the event with the
  smallest (occurred_at, event_id). first_suppressed_at and last_event_at
  are the min and max occurred_at, and event_count is the number of those
  events.
- Mass-bounce guard: a domain (the text after the first '@') with at least
  mass_bounce_min of the rows whose reason is hard_bounce, and more than
  mass_bounce_share of them, is held. Its rows do not enter the list.
- soft_bounce_limit and block_limit: per address and bounce type, the soft
  bounces or blocks after the address's last delivery, open or click. The
  limit is block_limit for blocks, soft_bounce_limit_engaged for soft
  bounces of an address with an open or click before the first of them,
  else soft_bounce_limit. first_suppressed_at is the occurred_at of the
  limit-th bounce.
- invalid_address: a contact whose trimmed, lower-cased address fails
  VALID_ADDRESS. first_suppressed_at is the run time (--now).
- An address with a hard_bounce, complaint or unsubscribe row keeps it. For
  other addresses the candidate with the smallest first_suppressed_at wins,
  then the smallest reason.
- sendable contacts: contacts whose trimmed, lower-cased address matches
  VALID_ADDRESS and is on no list row.

NOTE: DuckDB's lower() maps each character to one character, unlike Rust's
to_lowercase, so addresses with a final capital sigma or U+0130 can
normalize differently than in nightshift.
"""

import argparse
import datetime

import duckdb

# The characters that Rust's `str::trim` strips (the Unicode White_Space
# property), as in suppression/reference_duckdb.py. DuckDB's one-argument
# trim() strips only ' '.
UNICODE_WHITESPACE = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680"
    + "".join(chr(code) for code in range(0x2000, 0x200B))
    + "\u2028\u2029\u202f\u205f\u3000"
)

# The key of an address under the default normalization policy: trimmed,
# lower-cased, null when empty. The regular expression strips the same
# characters as trim(email, UNICODE_WHITESPACE), which took about 5 times as
# long in DuckDB 2.0.1 on 5.7 million generated addresses.
_WHITESPACE_CLASS = "[" + "".join(f"\\x{{{ord(char):X}}}" for char in UNICODE_WHITESPACE) + "]"
NORMALIZE_MACRO = f"""
CREATE TEMP MACRO normalize_email(email) AS
    nullif(lower(regexp_replace(email, '^{_WHITESPACE_CLASS}+|{_WHITESPACE_CLASS}+$', '', 'g')), '')
"""

# VALID_ADDRESS in src/email.rs. DuckDB's RE2 reads it like Rust's regex
# crate: ASCII classes, and '$' matches only at the end of the text.
VALID_ADDRESS = (
    r"^[a-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+$"
)

# The default parameters of the suppression job kind.
SOFT_BOUNCE_LIMIT = 7
SOFT_BOUNCE_LIMIT_ENGAGED = 15
BLOCK_LIMIT = 10
MASS_BOUNCE_SHARE = 0.25
MASS_BOUNCE_MIN = 20

# The events that suppress or count toward a streak, with their normalized
# address: 1.8% of the generated events. The event types and bounce types are
# compared exactly, because ingest stores them trimmed and lower-cased.
RARE_EVENTS_TABLE = """
CREATE TEMP TABLE rare_events AS
SELECT
    event_id,
    email,
    event_type,
    bounce_type,
    occurred_at,
    normalize_email(email) AS email_normalized
FROM read_parquet($events_glob)
WHERE event_type IN ('complaint', 'unsubscribe')
   OR (event_type = 'bounce' AND bounce_type IN ('hard', 'soft', 'block'))
"""

EVENT_ROWS_TABLE = """
CREATE TEMP TABLE event_rows AS
WITH triggering AS (
    SELECT
        email_normalized,
        email,
        CASE WHEN event_type = 'bounce' THEN 'hard_bounce' ELSE event_type END AS reason,
        event_id,
        occurred_at
    FROM rare_events
    WHERE email_normalized IS NOT NULL
      AND ((event_type = 'bounce' AND bounce_type = 'hard') OR event_type IN ('complaint', 'unsubscribe'))
),
grouped AS (
    SELECT
        email_normalized,
        arg_min(email, (occurred_at, event_id)) AS email,
        arg_min(reason, (occurred_at, event_id)) AS reason,
        arg_min(event_id, (occurred_at, event_id)) AS event_id,
        min(occurred_at) AS first_suppressed_at,
        max(occurred_at) AS last_event_at,
        count(*)::BIGINT AS event_count
    FROM triggering
    GROUP BY email_normalized
),
hard AS (
    SELECT email_normalized, regexp_extract(email_normalized, '@(.*)$', 1) AS domain
    FROM grouped
    WHERE reason = 'hard_bounce'
),
held_domains AS (
    SELECT domain
    FROM hard
    WHERE domain IS NOT NULL
    GROUP BY domain
    HAVING count(*) >= $mass_bounce_min
       AND count(*) > $mass_bounce_share * (SELECT count(*) FROM hard)
)
SELECT
    email_normalized,
    email,
    reason,
    CASE reason
        WHEN 'hard_bounce' THEN 'hard_bounce: a hard bounce suppresses on its first occurrence'
        WHEN 'complaint' THEN 'complaint: a spam complaint suppresses at once'
        ELSE 'unsubscribe: an unsubscribe suppresses at once'
    END AS rule,
    [event_id] AS event_ids,
    'email_events' AS source,
    event_id,
    first_suppressed_at,
    last_event_at,
    event_count
FROM grouped
WHERE email_normalized NOT IN (
    SELECT email_normalized FROM hard WHERE domain IN (SELECT domain FROM held_domains)
)
"""

STREAK_ROWS_TABLE = """
CREATE TEMP TABLE streak_rows AS
WITH bounces AS (
    SELECT email_normalized, email, bounce_type, event_id, occurred_at
    FROM rare_events
    WHERE email_normalized IS NOT NULL AND event_type = 'bounce' AND bounce_type IN ('soft', 'block')
),
-- Deliveries, opens and clicks end a streak. Only those of addresses with
-- a soft bounce or block matter, so the scan joins them to those addresses.
resets AS (
    SELECT
        email_normalized,
        max(occurred_at) AS last_reset,
        min(occurred_at) FILTER (WHERE event_type <> 'delivered') AS first_engaged
    FROM (
        SELECT event_type, occurred_at, normalize_email(email) AS email_normalized
        FROM read_parquet($events_glob)
        WHERE event_type IN ('delivered', 'open', 'click')
    )
    WHERE email_normalized IN (SELECT email_normalized FROM bounces)
    GROUP BY email_normalized
),
streaks AS (
    SELECT
        b.email_normalized,
        b.bounce_type,
        count(*)::BIGINT AS event_count,
        arg_min(b.email, (b.occurred_at, b.event_id)) AS email,
        arg_min(b.event_id, (b.occurred_at, b.event_id)) AS event_id,
        list(b.event_id ORDER BY b.occurred_at, b.event_id) AS event_ids,
        list(b.occurred_at ORDER BY b.occurred_at) AS times,
        max(b.occurred_at) AS last_event_at,
        min(b.occurred_at) AS streak_start,
        any_value(r.first_engaged) AS first_engaged
    FROM bounces AS b
    LEFT JOIN resets AS r USING (email_normalized)
    WHERE r.last_reset IS NULL OR b.occurred_at > r.last_reset
    GROUP BY b.email_normalized, b.bounce_type
),
limited AS (
    SELECT
        *,
        coalesce(first_engaged < streak_start, false) AS engaged,
        CASE
            WHEN bounce_type = 'block' THEN $block_limit
            WHEN coalesce(first_engaged < streak_start, false) THEN $soft_bounce_limit_engaged
            ELSE $soft_bounce_limit
        END AS streak_limit
    FROM streaks
)
SELECT
    email_normalized,
    email,
    CASE WHEN bounce_type = 'block' THEN 'block_limit' ELSE 'soft_bounce_limit' END AS reason,
    CASE
        WHEN bounce_type = 'block' THEN
            'block_limit: ' || event_count::VARCHAR
            || ' consecutive blocks with no delivery, open or click since (limit ' || streak_limit::VARCHAR || ')'
        ELSE
            'soft_bounce_limit: ' || event_count::VARCHAR
            || ' consecutive soft bounces with no delivery, open or click since (limit ' || streak_limit::VARCHAR
            || CASE WHEN engaged THEN ', the limit for an address that engaged before)' ELSE ')' END
    END AS rule,
    event_ids,
    'email_events' AS source,
    event_id,
    times[streak_limit] AS first_suppressed_at,
    last_event_at,
    event_count
FROM limited
WHERE event_count >= streak_limit
"""

# The contacts with their normalized address and its validity, read by the
# invalid_address rows and the sendable contacts.
CONTACT_ADDRESSES_TABLE = """
CREATE TEMP TABLE contact_addresses AS
SELECT contact_id, email, email_normalized, coalesce(regexp_matches(email_normalized, $valid_address), false) AS valid
FROM (SELECT contact_id, email, normalize_email(email) AS email_normalized FROM read_parquet($contacts_glob))
"""

INVALID_ROWS_TABLE = """
CREATE TEMP TABLE invalid_rows AS
SELECT
    email_normalized,
    min(email) AS email,
    'invalid_address' AS reason,
    'invalid_address: the address is not valid email syntax' AS rule,
    []::VARCHAR[] AS event_ids,
    'contacts' AS source,
    NULL::VARCHAR AS event_id,
    $now::TIMESTAMPTZ AS first_suppressed_at,
    NULL::TIMESTAMPTZ AS last_event_at,
    0::BIGINT AS event_count
FROM contact_addresses
WHERE email_normalized IS NOT NULL AND NOT valid
GROUP BY email_normalized
"""

LIST_TABLE = """
CREATE TEMP TABLE list AS
WITH candidates AS (
    SELECT * FROM streak_rows
    UNION ALL
    SELECT * FROM invalid_rows
),
additions AS (
    SELECT * EXCLUDE (rank)
    FROM (
        SELECT
            *,
            row_number() OVER (
                PARTITION BY email_normalized ORDER BY first_suppressed_at NULLS LAST, reason NULLS LAST
            ) AS rank
        FROM candidates
    )
    WHERE rank = 1
      AND email_normalized NOT IN (SELECT email_normalized FROM event_rows)
)
SELECT
    email_normalized,
    email,
    reason,
    rule,
    event_ids,
    source,
    event_id,
    first_suppressed_at,
    last_event_at,
    event_count,
    NULL::TIMESTAMPTZ AS expires_at,
    NULL::TIMESTAMPTZ AS expired_at,
    $run_id AS run_id
FROM (SELECT * FROM event_rows UNION ALL SELECT * FROM additions)
ORDER BY email_normalized
"""

SENDABLE_QUERY = """
SELECT contact_id, email, email_normalized
FROM contact_addresses
WHERE valid AND email_normalized NOT IN (SELECT email_normalized FROM list)
ORDER BY contact_id
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("events_glob", help="glob of the email_events Parquet files")
    parser.add_argument("contacts_glob", help="glob of the contacts Parquet files")
    parser.add_argument("list_output", help="Parquet file to write the suppression list to")
    parser.add_argument("sendable_output", help="Parquet file to write the sendable contacts to")
    parser.add_argument("--run-id", default="reference-duckdb", help="value of the run_id column")
    parser.add_argument(
        "--now",
        type=datetime.datetime.fromisoformat,
        default=datetime.datetime.now(datetime.timezone.utc),
        help="run time, RFC 3339 (default: the current time): first_suppressed_at of invalid_address rows",
    )
    args = parser.parse_args()

    connection = duckdb.connect()
    connection.execute("SET TimeZone = 'UTC'")
    connection.execute(NORMALIZE_MACRO)
    connection.execute(RARE_EVENTS_TABLE, {"events_glob": args.events_glob})
    connection.execute(
        EVENT_ROWS_TABLE, {"mass_bounce_min": MASS_BOUNCE_MIN, "mass_bounce_share": MASS_BOUNCE_SHARE}
    )
    connection.execute(
        STREAK_ROWS_TABLE,
        {
            "soft_bounce_limit": SOFT_BOUNCE_LIMIT,
            "soft_bounce_limit_engaged": SOFT_BOUNCE_LIMIT_ENGAGED,
            "block_limit": BLOCK_LIMIT,
            "events_glob": args.events_glob,
        },
    )
    connection.execute(
        CONTACT_ADDRESSES_TABLE, {"contacts_glob": args.contacts_glob, "valid_address": VALID_ADDRESS}
    )
    connection.execute(INVALID_ROWS_TABLE, {"now": args.now})
    connection.execute(LIST_TABLE, {"run_id": args.run_id})
    connection.table("list").write_parquet(args.list_output, compression="zstd")
    connection.sql(SENDABLE_QUERY).write_parquet(args.sendable_output, compression="zstd")


if __name__ == "__main__":
    main()
