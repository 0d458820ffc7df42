"""Benchmark the nightly `nightshift run suppression` with contacts against DuckDB.

The script generates contacts and email events with `nightshift generate`
and adds a supplement of events and contacts that makes every list-hygiene
rule fire (see write_supplement). It ingests everything into a local
warehouse and then times two processes that compute the same first-run
suppression list and sendable contacts from the same Parquet files:

- `nightshift run suppression --force` with an events and a contacts input
  and the default parameters, which also commits four Delta tables and
  writes a run manifest,
- hygiene/reference_duckdb.py, which writes two Parquet files.

Each process runs under `/usr/bin/time -v` (GNU time), which reports its wall
time, CPU time and maximum resident set size. The tools run in turn, once per
round, for --repetitions rounds, and the table shows the median of each tool.
Before each timed run the script waits until no `cargo` or `rustc` process
runs and the CPU is idle, for at most --idle-wait-minutes, and it marks runs
during which other processes used the CPU. Before every nightshift run it
deletes the job's output tables and run manifests, so that each run is a
first run over all events, like the reference.

At the end the script checks that both tools wrote the same list rows and
the same sendable contacts, and prints markdown tables. It exits with 1 when
the results differ or a command fails.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import deltalake
import duckdb
import polars as pl

from run_suppression import (
    GNU_TIME,
    MAX_BUSY_FRACTION,
    Measurement,
    find_nightshift_binary,
    parse_gnu_time_report,
    read_cpu_jiffies,
    run_checked,
)

BENCH_DIR = Path(__file__).resolve().parent

# The list columns both tools must agree on. run_id differs by design, and
# expires_at and expired_at are null on a first run. first_suppressed_at of
# invalid_address rows is the run's start time, so the comparison blanks it.
LIST_COLUMNS = [
    "email_normalized",
    "email",
    "reason",
    "rule",
    "event_ids",
    "source",
    "event_id",
    "first_suppressed_at",
    "last_event_at",
    "event_count",
]
SENDABLE_COLUMNS = ["contact_id", "email", "email_normalized"]
REASONS = ["hard_bounce", "complaint", "unsubscribe", "soft_bounce_limit", "block_limit", "invalid_address"]

OUTPUT_TABLES = ["suppression_list", "suppression_changes", "suppression_held", "sendable_contacts"]

# The target of the benchmark: peak memory under 4 GB (10^9 bytes).
MEMORY_TARGET_BYTES = 4 * 10**9

NIGHTSHIFT_CONFIG = """\
# Written by benches/run_hygiene.py.
warehouse = "file://./warehouse"
pipelines = "pipelines"
"""

SUPPRESSION_PIPELINE = """\
# Written by benches/run_hygiene.py.
kind = "suppression"
description = "List hygiene benchmark: first run over all email events and contacts"

[inputs]
events = "email_events"
contacts = "contacts"
"""

# The supplement's events fall in November 2026, inside the 90 days of
# generated events, which end at 2026-11-30T00:00:00Z.
SUPPLEMENT_START = datetime.datetime(2026, 11, 1, tzinfo=datetime.timezone.utc)
SUPPLEMENT_SCENARIOS = 14

# Contact addresses that VALID_ADDRESS in src/email.rs rejects, and a few it
# accepts after trimming. {n} makes each address unique.
INVALID_ADDRESS_TEMPLATES = [
    "hygiene{n}@@example.org",
    "hygiene {n}@example.org",
    ".hygiene{n}@example.org",
    "hygiene..{n}@example.org",
    "hygiene{n}@example",
    "HYGIENE{n}@EXAMPLE",
    "hygiene{n}@-example.org",
    "hygi\u00e8ne{n}@example.org",
    "hygiene{n}@example.org.",
    "hygiene{n}.example.org",
]
OTHER_ADDRESS_TEMPLATES = [
    "\u00a0hygiene.trim{n}@example.org\u2003",
    "",
    "   ",
]


@dataclasses.dataclass
class Run:
    """One timed process: its GNU time figures or why it was stopped, and why other work may have slowed it."""

    measurement: Measurement | None
    stopped_reason: str | None = None
    machine_note: str | None = None


@dataclasses.dataclass
class Tool:
    """One benchmarked command and its timed runs."""

    name: str
    runs: list[Run] = dataclasses.field(default_factory=list)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=1_000_000, help="number of generated contacts")
    parser.add_argument(
        "--events-per-contact",
        type=int,
        default=10,
        help="mean number of email events per contact (`nightshift generate --events-per-contact`)",
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of `nightshift generate`")
    parser.add_argument(
        "--supplement-stride",
        type=int,
        default=1000,
        help="the supplement gets one new address and one existing address per this many contacts; "
        "0 leaves it out",
    )
    parser.add_argument(
        "--ingest-batch-files",
        type=int,
        default=10,
        help="number of generated files per `nightshift ingest` call (each call is one table version)",
    )
    parser.add_argument("--repetitions", type=int, default=3, help="number of timed runs of each tool")
    parser.add_argument(
        "--idle-wait-minutes",
        type=float,
        default=10.0,
        help="how long to wait for an idle machine before each timed run; after that the run goes ahead "
        "and is marked",
    )
    parser.add_argument(
        "--memory-limit-gib",
        type=float,
        default=16.0,
        help="resident set size in GiB after which a timed run is killed and reported as such",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        help="folder for the generated data, the warehouse and the results "
        "(default: a new temporary folder, deleted unless the benchmark fails)",
    )
    parser.add_argument(
        "--reuse-data",
        action="store_true",
        help="skip generate and ingest when --work-dir already contains ingested email_events and contacts tables",
    )
    parser.add_argument(
        "--nightshift-bin",
        type=Path,
        help="nightshift binary (default: $NIGHTSHIFT_BIN, else ${CARGO_TARGET_DIR:-target}/debug/nightshift)",
    )
    return parser.parse_args()


def supplement_events(address: str, contact_id: str, scenario: int, prefix: str, start: datetime.datetime) -> list:
    """Return the events of one supplement address as (event_id, contact_id, email, type, bounce_type, time).

    The scenario selects the pattern. Scenarios 0 to 5 are streaks just
    below and at the limits, with an open or click before the streak in 2
    and 3 (the higher limit). A delivery or click ends a streak in 6, 11 and
    13, 7 and 8 mix soft bounces and blocks, and 9 adds a hard bounce after
    a soft streak. Scenario 10 spells the address differently and puts two
    bounces at the same time.
    """
    hour = datetime.timedelta(hours=1)
    events = []

    def add(offset_hours: float, event_type: str, bounce_type: str | None = None, email: str = address) -> None:
        event_id = f"{prefix}-{len(events):02d}"
        events.append((event_id, contact_id, email, event_type, bounce_type, start + offset_hours * hour))

    def soft(count: int, first: int = 1) -> None:
        for k in range(count):
            add(first + k, "bounce", "soft")

    if scenario == 0:
        soft(6)
    elif scenario == 1:
        soft(7)
    elif scenario == 2:
        add(0, "open")
        soft(7)
    elif scenario == 3:
        add(0, "click")
        soft(15)
    elif scenario == 4:
        for k in range(9):
            add(1 + k, "bounce", "block")
    elif scenario == 5:
        for k in range(10):
            add(1 + k, "bounce", "block")
    elif scenario == 6:
        # The delivery sits between the third and the fourth bounce, so 7 remain.
        soft(10)
        add(3.5, "delivered")
    elif scenario == 7:
        for k in range(10):
            add(1 + 2 * k, "bounce", "soft")
            add(2 + 2 * k, "bounce", "block")
    elif scenario == 8:
        for k in range(10):
            add(1 + k, "bounce", "block")
        soft(7, first=11)
    elif scenario == 9:
        soft(7)
        add(8, "bounce", "hard")
    elif scenario == 10:
        # Other spellings of the address, and the first two bounces at the same time.
        add(1, "bounce", "soft", email=f"  {address.upper()} ")
        add(1, "bounce", "soft", email=address.title())
        soft(5, first=2)
    elif scenario == 11:
        soft(7)
        add(8, "click")
    elif scenario == 12:
        # The address is invalid, and a contact has it (see write_supplement).
        soft(7)
    else:
        soft(8)
        add(0.5, "delivered")
    return events


def write_supplement(work_dir: Path, contacts_glob: str, stride: int) -> tuple[Path, Path]:
    """Write the supplement's events and contacts as Parquet files and return their paths.

    Generated data has too few soft bounces and blocks in a row for a streak
    (2% and 1% of sends) and no invalid addresses, so without the supplement
    those rules would suppress nothing. It has, per `stride` generated
    contacts:

    - one new address `hygiene.N@example.org` with a contact, whose events
      follow one of SUPPLEMENT_SCENARIOS patterns, and one contact with an
      address from INVALID_ADDRESS_TEMPLATES or OTHER_ADDRESS_TEMPLATES,
    - 7 soft bounces, one a day from 2026-11-20, and from 2026-11-22 one
      block every 4 hours up to 10, on an existing contact's address, where
      later generated deliveries, opens and clicks may end the streak.
    """
    contacts = (
        pl.scan_parquet(contacts_glob)
        .select("contact_id", "email")
        .filter(pl.col("email").is_not_null())
        .sort("contact_id")
        .collect()
    )
    new_addresses = max(contacts.height // stride, SUPPLEMENT_SCENARIOS)
    events = []
    new_contacts = []
    for n in range(new_addresses):
        scenario = n % SUPPLEMENT_SCENARIOS
        # Scenario 12 puts a soft-bounce streak on an address that is also an invalid contact address.
        address = f"hygiene..{n}@example.org" if scenario == 12 else f"hygiene.{n}@example.org"
        contact_id = f"H{n:09d}"
        start = SUPPLEMENT_START + datetime.timedelta(minutes=n % 1440)
        events.extend(supplement_events(address, contact_id, scenario, f"EH{n:09d}", start))
        new_contacts.append((contact_id, address))
        templates = INVALID_ADDRESS_TEMPLATES + OTHER_ADDRESS_TEMPLATES
        new_contacts.append((f"I{n:09d}", templates[n % len(templates)].format(n=n)))
    # Two contacts share an invalid address in different case: the list keeps the smallest spelling.
    new_contacts.append(("I999999998", "Hygiene.Twice@Example"))
    new_contacts.append(("I999999999", "hygiene.twice@EXAMPLE"))

    day = datetime.timedelta(days=1)
    streak_start = datetime.datetime(2026, 11, 20, tzinfo=datetime.timezone.utc)
    block_start = datetime.datetime(2026, 11, 22, tzinfo=datetime.timezone.utc)
    for row in contacts.gather_every(stride).iter_rows():
        contact_id, address = row
        for k in range(7):
            events.append((f"ES{contact_id}-{k}", contact_id, address, "bounce", "soft", streak_start + k * day))
        for k in range(10):
            at = block_start + k * datetime.timedelta(hours=4)
            events.append((f"EB{contact_id}-{k}", contact_id, address, "bounce", "block", at))

    events_frame = pl.DataFrame(
        events,
        schema={
            "event_id": pl.String,
            "contact_id": pl.String,
            "email": pl.String,
            "event_type": pl.String,
            "bounce_type": pl.String,
            "occurred_at": pl.Datetime("us", "UTC"),
        },
        orient="row",
    ).with_columns(pl.lit("HYGIENE").alias("campaign_id"))
    contacts_frame = pl.DataFrame(
        new_contacts, schema={"contact_id": pl.String, "email": pl.String}, orient="row"
    )
    supplement_dir = work_dir / "supplement"
    supplement_dir.mkdir(exist_ok=True)
    events_path = supplement_dir / "email_events.parquet"
    contacts_path = supplement_dir / "contacts.parquet"
    events_frame.write_parquet(events_path)
    contacts_frame.write_parquet(contacts_path)
    return events_path, contacts_path


def timed_ingest(nightshift: Path, work_dir: Path, table: str, files: list[str], stem: str) -> Measurement:
    """Ingest files into a table under GNU time and return the measurement; exit with 1 if it fails."""
    log_dir = work_dir / "logs"
    log_dir.mkdir(exist_ok=True)
    report_path = log_dir / f"{stem}.time"
    command = [str(nightshift), "ingest", table, "--format", "parquet", *files]
    print(f"+ nightshift ingest {table} ({len(files)} files)", file=sys.stderr, flush=True)
    completed = subprocess.run(
        [GNU_TIME, "-v", "-o", str(report_path), *command], cwd=work_dir, capture_output=True, text=True
    )
    (log_dir / f"{stem}.stdout").write_text(completed.stdout)
    if completed.returncode != 0:
        sys.stderr.write(completed.stdout + completed.stderr)
        sys.exit(f"ingest into {table} failed with exit code {completed.returncode}")
    print(completed.stdout.strip(), file=sys.stderr)
    return parse_gnu_time_report(report_path.read_text())


def prepare_data(args: argparse.Namespace, nightshift: Path, work_dir: Path) -> dict[str, Measurement]:
    """Generate the data set, write the project files and ingest contacts, events and the supplement.

    Returns the GNU time measurements of generate and of each ingest, or
    nothing when --reuse-data finds both tables.
    """
    (work_dir / "nightshift.toml").write_text(NIGHTSHIFT_CONFIG)
    (work_dir / "pipelines").mkdir(exist_ok=True)
    (work_dir / "pipelines" / "suppression.toml").write_text(SUPPRESSION_PIPELINE)

    tables_dir = work_dir / "warehouse" / "tables"
    if args.reuse_data and all((tables_dir / t / "_delta_log").is_dir() for t in ("email_events", "contacts")):
        print(f"reusing the email_events and contacts tables in {tables_dir}", file=sys.stderr)
        return {}
    shutil.rmtree(work_dir / "warehouse", ignore_errors=True)

    input_dir = work_dir / "input"
    shutil.rmtree(input_dir, ignore_errors=True)
    log_dir = work_dir / "logs"
    log_dir.mkdir(exist_ok=True)
    generate = [
        str(nightshift),
        "generate",
        "--seed",
        str(args.seed),
        "--contacts",
        str(args.contacts),
        "--events-per-contact",
        str(args.events_per_contact),
        "--activities-per-contact",
        "0",
        "--out",
        str(input_dir),
    ]
    run_checked([GNU_TIME, "-v", "-o", str(log_dir / "generate.time"), *generate], cwd=work_dir)
    measurements = {"generate": parse_gnu_time_report((log_dir / "generate.time").read_text())}

    # Ingest keeps a whole call's rows in memory (2.7 GiB max RSS for 10
    # million events), so large tables are ingested in calls of a few files.
    # NOTE: an append also loads every key already in the table, so later
    # calls still need more: 17 GiB for 10 million events on top of 92 million.
    batch_size = args.ingest_batch_files
    for table in ("contacts", "email_events"):
        files = sorted(str(path) for path in (input_dir / table).glob("*.parquet"))
        if not files:
            sys.exit(f"nightshift generate wrote no Parquet files to {input_dir / table}")
        batches = [files[start : start + batch_size] for start in range(0, len(files), batch_size)]
        batch_measurements = [
            timed_ingest(nightshift, work_dir, table, batch, f"ingest-{table}-{number}")
            for number, batch in enumerate(batches, 1)
        ]
        step = f"ingest {table}: {len(batches)} calls of at most {batch_size} files, summed times, highest"
        measurements[step] = Measurement(
            sum(m.wall_seconds for m in batch_measurements),
            sum(m.cpu_seconds for m in batch_measurements),
            max(m.max_rss_kib for m in batch_measurements),
        )

    if args.supplement_stride > 0:
        contacts_glob = str(tables_dir / "contacts" / "*.parquet")
        events_path, contacts_path = write_supplement(work_dir, contacts_glob, args.supplement_stride)
        timed_ingest(nightshift, work_dir, "email_events", [str(events_path)], "ingest-supplement-events")
        timed_ingest(nightshift, work_dir, "contacts", [str(contacts_path)], "ingest-supplement-contacts")
    # The generated files are in the warehouse now.
    shutil.rmtree(input_dir, ignore_errors=True)
    return measurements


def table_files(nightshift: Path, work_dir: Path, table: str) -> tuple[str, list[Path]]:
    """Return a glob of the table's data files, or exit with 1 unless it matches exactly its latest version."""
    table_dir = work_dir / "warehouse" / "tables" / table
    listing = json.loads(run_checked([str(nightshift), "--json", "path", table], cwd=work_dir))
    listed = sorted(table_dir / Path(name).name for name in listing["files"])
    pattern = str(table_dir / "*.parquet")
    matched = sorted(table_dir.glob("*.parquet"))
    if matched != listed:
        sys.exit(
            f"{pattern} matches {len(matched)} files, but the latest version of {table} has {len(listed)}: "
            "the reference would read other rows than nightshift"
        )
    return pattern, listed


def reset_outputs(work_dir: Path) -> None:
    """Delete the job's output tables, run manifests and lease, so the next run is a first run.

    The lease of a run killed at the memory limit would otherwise block the
    next run until it expires.
    """
    warehouse_dir = work_dir / "warehouse"
    for table in OUTPUT_TABLES:
        shutil.rmtree(warehouse_dir / "tables" / table, ignore_errors=True)
    shutil.rmtree(warehouse_dir / "runs" / "suppression", ignore_errors=True)
    shutil.rmtree(warehouse_dir / "leases" / "suppression", ignore_errors=True)


def read_manifest(work_dir: Path, events_rows: int) -> dict:
    """Return the only run manifest, or exit with 1 unless it is a successful full run with nothing held."""
    paths = sorted((work_dir / "warehouse" / "runs" / "suppression").glob("*.json"))
    if len(paths) != 1:
        sys.exit(f"expected one suppression run manifest after a first run, found {len(paths)}")
    manifest = json.loads(paths[0].read_text())
    metrics = manifest["metrics"]
    if manifest["status"] != "succeeded":
        sys.exit(f"suppression run has status {manifest['status']!r}, see {paths[0]}")
    if metrics["read_mode"] != "full" or metrics["events_read"] != events_rows:
        sys.exit(f"suppression run read {metrics['events_read']} events ({metrics['read_mode']}), not all {events_rows}")
    if metrics["held_for_review"]:
        # The reference applies the guard too, but the figures are meant for the usual case.
        print(f"note: the mass-bounce guard held {metrics['held_for_review']}", file=sys.stderr)
    return manifest


def busy_reason() -> str | None:
    """Return why the machine is not idle (a build, or a busy CPU over 2 s), or None when it is."""
    for name in ("cargo", "rustc"):
        if subprocess.run(["pgrep", "-x", name], capture_output=True).returncode == 0:
            return f"{name} is running"
    idle_before, total_before = read_cpu_jiffies()
    time.sleep(2)
    idle_after, total_after = read_cpu_jiffies()
    busy_fraction = 1 - (idle_after - idle_before) / max(total_after - total_before, 1)
    if busy_fraction > MAX_BUSY_FRACTION:
        return f"the CPU was {busy_fraction:.0%} busy"
    return None


def wait_for_idle_machine(wait_seconds: float) -> str | None:
    """Wait until the machine is idle; return why it was still busy when the wait ran out, else None."""
    deadline = time.monotonic() + wait_seconds
    while True:
        reason = busy_reason()
        if reason is None:
            return None
        if time.monotonic() >= deadline:
            print(f"warning: {reason} before a timed run, so its timings are not reliable", file=sys.stderr)
            return reason
        print(f"waiting for an idle machine: {reason}", file=sys.stderr, flush=True)
        time.sleep(15)


def process_rss_kib(pid: int) -> int:
    """Return the VmRSS of a process and its children, in KiB (0 once it has ended)."""
    total = 0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            with open(f"/proc/{current}/status") as status:
                total += sum(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
            with open(f"/proc/{current}/task/{current}/children") as children:
                pending.extend(int(child) for child in children.read().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def time_command(command: list[str], work_dir: Path, stem: str, args: argparse.Namespace) -> Run:
    """Run a command under GNU time on an idle machine and return its figures; exit with 1 if it fails.

    A run whose resident set size exceeds --memory-limit-gib is killed and
    returned without figures.

    The run's machine_note is set when the machine was busy before the run,
    or when other processes used more than MAX_BUSY_FRACTION of the CPU time
    of all cores during it.
    """
    busy_note = wait_for_idle_machine(args.idle_wait_minutes * 60)
    log_dir = work_dir / "logs"
    log_dir.mkdir(exist_ok=True)
    report_path = log_dir / f"{stem}.time"
    memory_limit_kib = int(args.memory_limit_gib * 2**20)
    print("+ " + " ".join(command), file=sys.stderr, flush=True)
    idle_before, total_before = read_cpu_jiffies()
    started = time.monotonic()
    with open(log_dir / f"{stem}.stdout", "wb") as stdout, open(log_dir / f"{stem}.stderr", "wb") as stderr:
        process = subprocess.Popen(
            [GNU_TIME, "-v", "-o", str(report_path), *command],
            cwd=work_dir,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
        while process.poll() is None:
            rss_kib = process_rss_kib(process.pid)
            if rss_kib > memory_limit_kib:
                # The group is the one this call created with start_new_session.
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                elapsed = time.monotonic() - started
                reason = f"killed at {rss_kib / 2**20:.1f} GiB resident after {elapsed:.0f} s (memory limit)"
                print(f"{stem}: {reason}", file=sys.stderr)
                return Run(None, reason, busy_note)
            time.sleep(0.2)
    idle_after, total_after = read_cpu_jiffies()
    if process.returncode != 0:
        sys.stderr.write((log_dir / f"{stem}.stderr").read_text(errors="replace")[-4000:])
        sys.exit(f"{stem} failed with exit code {process.returncode}, logs in {log_dir}")
    measurement = parse_gnu_time_report(report_path.read_text())

    busy_seconds = ((total_after - total_before) - (idle_after - idle_before)) / os.sysconf("SC_CLK_TCK")
    capacity_seconds = measurement.wall_seconds * (os.cpu_count() or 1)
    other_fraction = (busy_seconds - measurement.cpu_seconds) / max(capacity_seconds, 1e-9)
    note = busy_note
    if note is None and measurement.wall_seconds >= 1 and other_fraction > MAX_BUSY_FRACTION:
        note = f"other processes used {other_fraction:.0%} of the CPU during the run"
    if note:
        print(f"warning: {stem}: {note}", file=sys.stderr)
    return Run(measurement, None, note)


def read_list(path: Path, delta: bool) -> pl.DataFrame:
    """Read the compared list columns in the written row order, with first_suppressed_at blanked on contact rows."""
    frame = pl.read_delta(str(path)) if delta else pl.read_parquet(path)
    return frame.select(LIST_COLUMNS).with_columns(
        pl.when(pl.col("source") == "contacts")
        .then(None)
        .otherwise(pl.col("first_suppressed_at"))
        .alias("first_suppressed_at")
    )


def describe_difference(expected: pl.DataFrame, actual: pl.DataFrame, key: str) -> str:
    """Describe how actual differs from expected, with a few example rows."""
    if expected.schema != actual.schema:
        return f"schemas differ: {dict(expected.schema)} vs {dict(actual.schema)}"
    only_expected = expected.join(actual, on=expected.columns, how="anti", nulls_equal=True)
    only_actual = actual.join(expected, on=expected.columns, how="anti", nulls_equal=True)
    if only_expected.is_empty() and only_actual.is_empty():
        return f"same {expected.height} rows in a different order"
    with pl.Config(tbl_cols=-1, tbl_width_chars=400, fmt_str_lengths=100):
        return (
            f"{expected.height} vs {actual.height} rows; {only_expected.height} rows only in nightshift's, "
            f"{only_actual.height} only in DuckDB's, for example:\n"
            f"{only_expected.sort(key).head(5)}\n{only_actual.sort(key).head(5)}"
        )


def compare_results(work_dir: Path) -> tuple[bool, pl.DataFrame, pl.DataFrame]:
    """Print whether DuckDB's list and sendable contacts equal nightshift's; return the verdict and both of nightshift's."""
    tables_dir = work_dir / "warehouse" / "tables"
    results_dir = work_dir / "results"
    nightshift_list = read_list(tables_dir / "suppression_list", delta=True)
    duckdb_list = read_list(results_dir / "duckdb_list.parquet", delta=False)
    nightshift_sendable = pl.read_delta(str(tables_dir / "sendable_contacts")).select(SENDABLE_COLUMNS)
    duckdb_sendable = pl.read_parquet(results_dir / "duckdb_sendable.parquet").select(SENDABLE_COLUMNS)

    equal = True
    for name, expected, actual, key in [
        ("suppression list", nightshift_list, duckdb_list, "email_normalized"),
        ("sendable contacts", nightshift_sendable, duckdb_sendable, "contact_id"),
    ]:
        if not expected[key].is_sorted():
            print(f"nightshift's {name} is not sorted by {key}", file=sys.stderr)
            equal = False
        if actual.equals(expected):
            print(f"{name}: DuckDB's result equals nightshift's ({expected.height:,} rows)", file=sys.stderr)
        else:
            difference = describe_difference(expected, actual, key)
            print(f"{name}: DuckDB's result differs from nightshift's: {difference}", file=sys.stderr)
            equal = False
    return equal, nightshift_list, nightshift_sendable


def median(values: list[float]) -> float:
    return statistics.median(values)


def completed(tool: Tool) -> list[Measurement]:
    return [run.measurement for run in tool.runs if run.measurement is not None]


def format_table(tools: list[Tool]) -> str:
    """Format the medians of the completed runs as a markdown table, with wall times relative to nightshift."""
    nightshift_runs = completed(tools[0])
    nightshift_wall = median([m.wall_seconds for m in nightshift_runs]) if nightshift_runs else None
    lines = [
        "| tool | wall time, median (s) | relative to nightshift | CPU time, median (s) "
        "| max RSS, median (MiB) | max RSS, highest (MiB) | wall times of all runs (s) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for tool in tools:
        measurements = completed(tool)
        walls = ", ".join(
            f"{run.measurement.wall_seconds:.1f}" if run.measurement else run.stopped_reason for run in tool.runs
        )
        if not measurements:
            lines.append(f"| {tool.name} | - | - | - | - | - | {walls} |")
            continue
        wall = median([m.wall_seconds for m in measurements])
        relative = f"{wall / nightshift_wall:.2f}x" if nightshift_wall else "-"
        cpu = median([m.cpu_seconds for m in measurements])
        rss = median([m.max_rss_kib for m in measurements]) / 1024
        highest_rss = max(m.max_rss_kib for m in measurements) / 1024
        lines.append(
            f"| {tool.name} | {wall:.1f} | {relative} | {cpu:.1f} | {rss:,.0f} | {highest_rss:,.0f} | {walls} |"
        )
    return "\n".join(lines)


def format_targets(tools: list[Tool]) -> str:
    """State whether nightshift is faster than DuckDB and stays under 4 GB at its peak."""
    nightshift, reference = tools
    stopped = [run.stopped_reason for run in nightshift.runs if run.stopped_reason]
    if stopped or not completed(reference):
        nightshift_state = "; ".join(stopped) if stopped else "completed"
        reference_state = "completed" if completed(reference) else "stopped"
        return f"- targets not evaluated: nightshift runs {nightshift_state}, DuckDB runs {reference_state}"
    nightshift_wall = median([m.wall_seconds for m in completed(nightshift)])
    reference_wall = median([m.wall_seconds for m in completed(reference)])
    peak_bytes = max(m.max_rss_kib for m in completed(nightshift)) * 1024
    faster = "met" if nightshift_wall < reference_wall else "not met"
    memory = "met" if peak_bytes < MEMORY_TARGET_BYTES else "not met"
    return "\n".join(
        [
            f"- faster than DuckDB: {faster} (DuckDB's median wall time is "
            f"{reference_wall / nightshift_wall:.2f} times nightshift's)",
            f"- peak memory under 4 GB: {memory} (highest max RSS of nightshift: {peak_bytes / 10**9:.2f} GB, "
            f"{peak_bytes / 2**30:.2f} GiB)",
        ]
    )


def count_events(event_files: list[Path]) -> pl.DataFrame:
    """Count the events by event_type and bounce_type."""
    return (
        pl.scan_parquet([str(path) for path in event_files])
        .group_by("event_type", "bounce_type")
        .agg(pl.len().alias("events"))
        .sort("events", descending=True)
        .collect()
    )


def describe_setup(
    nightshift: Path,
    work_dir: Path,
    event_files: list[Path],
    contact_files: list[Path],
    preparation: dict[str, Measurement],
    manifest: dict,
    suppression_list: pl.DataFrame | None,
    tools: list[Tool],
) -> str:
    """Describe the data, the results and the software in markdown."""
    counts = count_events(event_files)
    events_rows = int(counts["events"].sum())
    events_bytes = sum(path.stat().st_size for path in event_files)
    contacts_rows = pl.scan_parquet([str(path) for path in contact_files]).select(pl.len()).collect().item()

    by_type = ", ".join(
        f"{row['event_type']}{'/' + row['bounce_type'] if row['bounce_type'] else ''} {row['events']:,}"
        for row in counts.iter_rows(named=True)
    )
    nightshift_version = run_checked([str(nightshift), "--version"], cwd=work_dir).strip()
    digest = hashlib.sha256(nightshift.read_bytes()).hexdigest()[:16]

    lines = [
        f"- email_events: {events_rows:,} rows in {len(event_files)} Parquet files, "
        f"{events_bytes / 2**20:,.1f} MiB on disk; by type: {by_type}",
        f"- contacts: {contacts_rows:,} rows in {len(contact_files)} Parquet files",
    ]
    if suppression_list is not None:
        by_reason = suppression_list.group_by("reason").len()
        reason_counts = dict(zip(by_reason["reason"], by_reason["len"]))
        metrics = manifest["metrics"]
        lines += [
            f"- suppression_list: {suppression_list.height:,} rows; by reason: "
            + ", ".join(f"{reason} {reason_counts.get(reason, 0):,}" for reason in REASONS),
            f"- sendable_contacts: {metrics['sendable_contacts']:,} rows; mass-bounce guard held: "
            f"{metrics['held_for_review'] or 'nothing'}",
        ]

    lines += [
        f"- {nightshift_version} (binary {nightshift}, SHA-256 {digest}...), DuckDB {duckdb.__version__}, "
        f"Polars {pl.__version__}, deltalake {deltalake.__version__}, Python {platform.python_version()}",
    ]
    for step, measurement in preparation.items():
        lines.append(
            f"- {step}: {measurement.wall_seconds:.1f} s wall, {measurement.cpu_seconds:.1f} s CPU, "
            f"{measurement.max_rss_kib / 1024:,.0f} MiB max RSS"
        )

    notes = [
        f"{tool.name} run {number}: {run.machine_note}"
        for tool in tools
        for number, run in enumerate(tool.runs, 1)
        if run.machine_note
    ]
    if notes:
        lines.append(f"- runs not on an idle machine: {'; '.join(notes)}")
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    nightshift = find_nightshift_binary(args.nightshift_bin)
    if not os.access(GNU_TIME, os.X_OK):
        sys.exit(f"{GNU_TIME} not found: install GNU time (Debian package `time`)")

    created_work_dir = args.work_dir is None
    work_dir = Path(tempfile.mkdtemp(prefix="nightshift-hygiene-")) if created_work_dir else args.work_dir
    work_dir = work_dir.resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    succeeded = False
    try:
        preparation = prepare_data(args, nightshift, work_dir)
        events_glob, event_files = table_files(nightshift, work_dir, "email_events")
        contacts_glob, contact_files = table_files(nightshift, work_dir, "contacts")
        events_rows = pl.scan_parquet(events_glob).select(pl.len()).collect().item()

        results_dir = work_dir / "results"
        results_dir.mkdir(exist_ok=True)
        # Every event is older than the start of the benchmark, like the run time nightshift uses.
        now = datetime.datetime.now(datetime.timezone.utc).isoformat()
        reference_command = [
            sys.executable,
            str(BENCH_DIR / "hygiene" / "reference_duckdb.py"),
            events_glob,
            contacts_glob,
            str(results_dir / "duckdb_list.parquet"),
            str(results_dir / "duckdb_sendable.parquet"),
            "--now",
            now,
        ]
        tools = [Tool("nightshift"), Tool("DuckDB")]
        manifest = {}
        started = time.monotonic()
        for repetition in range(1, args.repetitions + 1):
            reset_outputs(work_dir)
            command = [str(nightshift), "run", "suppression", "--force"]
            nightshift_run = time_command(command, work_dir, f"nightshift-{repetition}", args)
            tools[0].runs.append(nightshift_run)
            if nightshift_run.measurement is not None:
                manifest = read_manifest(work_dir, events_rows)
            tools[1].runs.append(time_command(reference_command, work_dir, f"duckdb-{repetition}", args))
        print(f"timed runs took {time.monotonic() - started:.0f} s in total", file=sys.stderr)

        # The results on disk are those of the last round.
        if all(tool.runs[-1].measurement is not None for tool in tools):
            results_equal, suppression_list, _ = compare_results(work_dir)
        else:
            print("the results were not compared, because a run of the last round was stopped", file=sys.stderr)
            results_equal, suppression_list = False, None
        print(
            describe_setup(
                nightshift, work_dir, event_files, contact_files, preparation, manifest, suppression_list, tools
            )
        )
        print()
        print(format_table(tools))
        print()
        print(format_targets(tools))
        if not results_equal:
            sys.exit("the results differ or were not compared")
        succeeded = True
    finally:
        if created_work_dir and succeeded:
            shutil.rmtree(work_dir, ignore_errors=True)
        elif created_work_dir:
            print(f"kept {work_dir} for inspection", file=sys.stderr)


if __name__ == "__main__":
    main()
