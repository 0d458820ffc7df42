"""Benchmark `nightshift run scoring` and a 20-list `list_refresh` against DuckDB and Python Polars.

The script generates a data set with `nightshift generate`, ingests its
contacts, email_events and activities files into a local warehouse, and
times two steps, each done by three processes that read the same Parquet
files:

- scoring: `nightshift run scoring --force`, scoring/reference_duckdb.py
  score and scoring/reference_polars.py score, over contacts, email_events
  and activities;
- lists: `nightshift run lists --force`, reference_duckdb.py lists and
  reference_polars.py lists, over contacts and the scores table that the
  last timed nightshift scoring run wrote.

Each process runs under `/usr/bin/time -v` (GNU time). The tools run in
turn, once per round, for --repetitions rounds per step, and the tables show
the median of each tool. Before every nightshift run the script deletes that
pipeline's output tables and run manifests, so each run does the full work
of a first run.

After each step the script checks the results: per contact, every score
column of the references must equal nightshift's within a relative
difference of 1e-9 (see SCORE_TOLERANCE), and grade and mql must be equal.
The memberships of all lists must be equal as sets of (list_id, contact_id).
The script exits with 1 when the results differ or a command fails.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import platform
import shutil
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
SCORING_DIR = BENCH_DIR / "scoring"
sys.path.insert(0, str(SCORING_DIR))
from model import load_lists, load_model  # noqa: E402

INPUT_TABLES = ["contacts", "email_events", "activities"]

# A score of a reference may differ from nightshift's by this share of the
# larger absolute value (or by this much absolutely below 1), because the
# tools may add the decayed points of a contact in another order.
SCORE_TOLERANCE = 1e-9


# One day before the generator's end time (2026-12-01). The activities of
# the last day come after it, so the runs skip about 1 in 90 of them, and
# with 7 email events per contact every email event comes before it.
AS_OF = "2026-11-30T00:00:00Z"

NIGHTSHIFT_CONFIG = """\
# Written by benches/run_scoring.py.
warehouse = "file://./warehouse"
pipelines = "pipelines"
"""

SCORING_PIPELINE = f"""\
# Written by benches/run_scoring.py: the model of pipelines/scoring.toml with
# a fixed as_of and points for every event type the generator writes.
kind = "scoring"
description = "Scoring benchmark"

[inputs]
contacts = "contacts"
events = "email_events"
activities = "activities"

[outputs]
scores = "scores"

[params]
as_of = "{AS_OF}"
engagement_cap = 100
fit_cap = 40
mql_threshold = 50
bands = [
  {{ grade = "A", min = 60 }},
  {{ grade = "B", min = 35 }},
  {{ grade = "C", min = 15 }},
  {{ grade = "D", min = -1000 }},
]

[params.groups.email]
source = "email_events"
points = {{ open = 1, click = 3, unsubscribe = -20, complaint = -30, hard_bounce = -10, soft_bounce = -2, block = -5 }}
decay = {{ kind = "exponential", half_life_days = 30 }}
cap = 40

[params.groups.web]
source = "activities"
points = {{ page_view = 1, form_submit = 10, webinar_attended = 15, demo_request = 30 }}
decay = {{ kind = "linear", period_days = 30, loss_per_period = 0.25 }}
cap = 60

[[params.fit]]
name = "senior_title"
rule = "job_title ILIKE '%director%' OR job_title ILIKE '%head of%' OR job_title ILIKE '%vp%' OR job_title ILIKE '%chief%' OR job_title IN ('ceo', 'cto')"
points = 20

[[params.fit]]
name = "target_country"
rule = "country IN ('AU', 'NZ', 'US', 'GB')"
points = 10
"""

# The lists use the contact columns and the scores' columns that
# `nightshift validate` accepts (not the breakdown columns such as
# engagement_email), with null values (email, phone), NOT, OR, IN, LIKE and
# ILIKE.
LISTS = [
    ("mql", "mql"),
    ("grade_a", "grade = 'A'"),
    ("grade_b", "grade = 'B'"),
    ("grade_c_or_d", "grade IN ('C', 'D')"),
    ("near_mql", "score >= 40 AND score < 50"),
    ("engaged_no_fit", "engagement_score >= 10 AND fit_score = 0"),
    ("highly_engaged", "engagement_score >= 30"),
    ("negative_engagement", "engagement_score < 0"),
    ("no_engagement", "engagement_score = 0"),
    ("engaged_or_fit", "engagement_score >= 40 OR fit_score >= 30"),
    ("senior_titles", "job_title IN ('ceo', 'cto') OR job_title ILIKE '%director%'"),
    ("target_country_mql", "country IN ('AU', 'NZ', 'US', 'GB') AND mql"),
    ("high_fit_not_mql", "NOT mql AND fit_score >= 30"),
    ("us_leads", "country = 'US' AND lifecycle_stage IN ('lead', 'mql')"),
    ("de_fr_engaged", "country IN ('DE', 'FR') AND engagement_score > 5"),
    ("customers_high_score", "lifecycle_stage = 'customer' AND score >= 40"),
    ("no_phone_scored", "phone IS NULL AND score >= 20"),
    ("no_email_engaged", "email IS NULL AND engagement_score > 0"),
    ("gmail_engaged", "email LIKE '%@gmail.com' AND engagement_score > 1"),
    ("directors_webform", "job_title ILIKE '%director%' AND source = 'webform'"),
]


def lists_pipeline() -> str:
    """Return the list_refresh pipeline of the benchmark: LISTS over contacts and scores."""
    lines = [
        "# Written by benches/run_scoring.py.",
        'kind = "list_refresh"',
        'description = "List refresh benchmark: 20 lists over contacts and scores"',
        "",
        "[inputs]",
        'contacts = "contacts"',
        'scores = "scores"',
        "",
        "[outputs]",
        'membership = "list_membership"',
        'changes = "list_changes"',
        "",
        "# The script deletes the outputs before each run, so the guard never",
        "# compares with an earlier run; the large value keeps it from failing one.",
        "[params]",
        "max_change_pct = 100000",
    ]
    for list_id, list_filter in LISTS:
        lines += ["", "[[params.lists]]", f'id = "{list_id}"', f"filter = {json.dumps(list_filter)}"]
    return "\n".join(lines) + "\n"


@dataclasses.dataclass
class Tool:
    """One benchmarked command and the file or table its result is read from."""

    name: str
    log_name: str
    command: list[str]
    result_path: Path
    measurements: list[Measurement] = dataclasses.field(default_factory=list)
    busy_notes: list[str] = dataclasses.field(default_factory=list)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=1_000_000, help="number of generated contacts")
    parser.add_argument(
        "--events-per-contact",
        type=int,
        default=7,
        help="mean number of email events per contact (`nightshift generate --events-per-contact`)",
    )
    parser.add_argument(
        "--activities-per-contact",
        type=int,
        default=3,
        help="mean number of activities per contact (`nightshift generate --activities-per-contact`)",
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of `nightshift generate`")
    parser.add_argument("--repetitions", type=int, default=3, help="number of timed runs of each tool per step")
    parser.add_argument(
        "--ingest-batch-files",
        type=int,
        default=20,
        help="number of generated files per `nightshift ingest` call (each call is one table version)",
    )
    parser.add_argument(
        "--idle-wait-minutes",
        type=float,
        default=45.0,
        help="how long to wait for an idle machine before the timed runs; after that they go ahead "
        "and the table notes it",
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
        help="skip generate and ingest when --work-dir already contains the ingested input tables",
    )
    parser.add_argument(
        "--nightshift-bin",
        type=Path,
        help="nightshift binary (default: $NIGHTSHIFT_BIN, else ${CARGO_TARGET_DIR:-target}/debug/nightshift)",
    )
    return parser.parse_args()


def write_project(nightshift: Path, work_dir: Path) -> None:
    """Write nightshift.toml and the two pipelines, and check them with `nightshift validate`."""
    (work_dir / "nightshift.toml").write_text(NIGHTSHIFT_CONFIG)
    pipelines_dir = work_dir / "pipelines"
    pipelines_dir.mkdir(exist_ok=True)
    (pipelines_dir / "scoring.toml").write_text(SCORING_PIPELINE)
    (pipelines_dir / "lists.toml").write_text(lists_pipeline())
    completed = subprocess.run(
        [str(nightshift), "--json", "validate"], cwd=work_dir, capture_output=True, text=True
    )
    report = json.loads(completed.stdout)
    # NOTE: nightshift 0.1.0's validate checks the optional inputs of
    # list_refresh (clv, contacts_enriched, suppression_list) like required
    # ones and rejects the pipeline when those tables do not exist, although
    # the run leaves them out. Only those problems are let through here.
    optional_tables = ("`clv`", "`contacts_enriched`", "`suppression_list`")
    problems = [
        problem
        for problem in report["problems"]
        if not (problem.startswith("pipelines/lists.toml: input ") and problem.endswith(
            "which is not a canonical table, not written by any pipeline, and not in the warehouse")
            and any(f"names table {name}," in problem for name in optional_tables))
    ]
    if problems or sorted(report["pipelines"]) != ["lists", "scoring"]:
        sys.exit(f"nightshift validate rejected the benchmark pipelines: {completed.stdout}{completed.stderr}")


def prepare_data(args: argparse.Namespace, nightshift: Path, work_dir: Path) -> None:
    """Generate the data set and ingest contacts, email_events and activities."""
    tables_dir = work_dir / "warehouse" / "tables"
    if args.reuse_data and all((tables_dir / table / "_delta_log").is_dir() for table in INPUT_TABLES):
        print(f"reusing the input tables in {tables_dir}", file=sys.stderr)
        return

    input_dir = work_dir / "input"
    run_checked(
        [
            str(nightshift),
            "generate",
            "--seed",
            str(args.seed),
            "--contacts",
            str(args.contacts),
            "--events-per-contact",
            str(args.events_per_contact),
            "--activities-per-contact",
            str(args.activities_per_contact),
            "--out",
            str(input_dir),
        ],
        cwd=work_dir,
    )
    for table in INPUT_TABLES:
        files = sorted(glob.glob(str(input_dir / table / "*.parquet")))
        if not files:
            sys.exit(f"nightshift generate wrote no Parquet files to {input_dir / table}")
        for start in range(0, len(files), args.ingest_batch_files):
            batch = files[start : start + args.ingest_batch_files]
            run_checked([str(nightshift), "ingest", table, "--format", "parquet", *batch], cwd=work_dir)
    # The generated files are only needed for ingest.
    shutil.rmtree(input_dir)


def table_data_files(nightshift: Path, work_dir: Path, table: str) -> list[Path]:
    """Return the data files of the latest version of a table, as `nightshift path --json` lists them."""
    listing = json.loads(run_checked([str(nightshift), "--json", "path", table], cwd=work_dir))
    table_dir = work_dir / "warehouse" / "tables" / table
    return sorted(table_dir / Path(name).name for name in listing["files"])


def table_glob(nightshift: Path, work_dir: Path, table: str) -> str:
    """Return a glob of the table's Parquet files, or exit with 1 unless it matches exactly the latest version."""
    table_dir = work_dir / "warehouse" / "tables" / table
    pattern = str(table_dir / "*.parquet")
    matched = sorted(Path(name) for name in glob.glob(pattern))
    listed = table_data_files(nightshift, work_dir, table)
    if matched != listed:
        sys.exit(
            f"{pattern} matches {len(matched)} files, but the latest version of {table} "
            f"has {len(listed)}: the references would read other rows than nightshift"
        )
    return pattern


def reset_pipeline_state(work_dir: Path, pipeline: str, tables: list[str]) -> None:
    """Delete a pipeline's output tables and run manifests, so its next run is a first run."""
    warehouse_dir = work_dir / "warehouse"
    for table in tables:
        shutil.rmtree(warehouse_dir / "tables" / table, ignore_errors=True)
    shutil.rmtree(warehouse_dir / "runs" / pipeline, ignore_errors=True)


def check_manifest(work_dir: Path, pipeline: str, input_rows: dict[str, int]) -> None:
    """Exit with 1 unless the only run manifest of the pipeline is a success that read every input row."""
    manifest_paths = sorted((work_dir / "warehouse" / "runs" / pipeline).glob("*.json"))
    if len(manifest_paths) != 1:
        sys.exit(f"expected one {pipeline} run manifest after a first run, found {len(manifest_paths)}")
    manifest = json.loads(manifest_paths[0].read_text())
    if manifest["status"] != "succeeded":
        sys.exit(f"{pipeline} run has status {manifest['status']!r}, see {manifest_paths[0]}")
    for entry in manifest["inputs"]:
        expected = input_rows.get(entry["table"])
        if expected is not None and entry.get("rows") != expected:
            sys.exit(f"{pipeline} run read {entry.get('rows')} rows of {entry['table']} instead of {expected}")


def other_work_running() -> str | None:
    """Return which build or benchmark is running, or None."""
    for name in ("cargo", "rustc"):
        if subprocess.run(["pgrep", "-x", name], capture_output=True).returncode == 0:
            return f"{name} is running"
    # Another benchmark of this folder is a process with a run_*.py argument.
    # Matching whole arguments skips shell command lines that only mention one.
    for process_dir in Path("/proc").glob("[0-9]*"):
        if process_dir.name == str(os.getpid()):
            continue
        try:
            arguments = (process_dir / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        for argument in arguments:
            name = os.path.basename(argument.decode(errors="replace"))
            if name.startswith("run_") and name.endswith(".py"):
                return f"{name} is running"
    return None


def busy_reason() -> str | None:
    """Return why the machine is not idle (other work, or a CPU more than 10% busy over 2 s), or None."""
    reason = other_work_running()
    if reason is not None:
        return reason
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
        if reason is None or time.monotonic() >= deadline:
            return reason
        print(f"waiting for an idle machine: {reason}", file=sys.stderr, flush=True)
        time.sleep(30)


def time_command(tool: Tool, label: str, work_dir: Path) -> None:
    """Run the tool's command under GNU time and record its figures, or exit with 1 if it fails."""
    busy = other_work_running()
    if busy is not None:
        tool.busy_notes.append(f"{label}: {busy}")
    log_dir = work_dir / "logs"
    log_dir.mkdir(exist_ok=True)
    stem = f"{tool.log_name}-{label}"
    report_path = log_dir / f"{stem}.time"
    print("+ " + " ".join(tool.command), file=sys.stderr, flush=True)
    with open(log_dir / f"{stem}.stdout", "wb") as stdout, open(log_dir / f"{stem}.stderr", "wb") as stderr:
        completed = subprocess.run(
            [GNU_TIME, "-v", "-o", str(report_path), *tool.command], cwd=work_dir, stdout=stdout, stderr=stderr
        )
    if completed.returncode != 0:
        sys.stderr.write((log_dir / f"{stem}.stderr").read_text(errors="replace"))
        sys.exit(f"{tool.name} failed with exit code {completed.returncode}, logs in {log_dir}")
    tool.measurements.append(parse_gnu_time_report(report_path.read_text()))


def read_table(path: Path) -> pl.DataFrame:
    """Read a Delta table (a folder) at its latest version, or a Parquet file."""
    if path.is_dir():
        return pl.read_delta(str(path))
    return pl.read_parquet(path)


def compare_scores(tools: list[Tool], columns: list[str]) -> bool:
    """Print whether every reference's scores equal nightshift's and return True if all do."""
    expected = read_table(tools[0].result_path).select(columns)
    if not expected["contact_id"].is_sorted():
        print(f"{tools[0].name}: scores are not sorted by contact_id", file=sys.stderr)
        return False
    float_columns = [name for name in columns if expected.schema[name] == pl.Float64]
    exact_columns = [name for name in columns if name not in float_columns]
    all_equal = True
    for tool in tools[1:]:
        actual = read_table(tool.result_path).select(columns)
        problems = []
        max_difference = 0.0
        if actual.schema != expected.schema:
            problems.append(f"schemas differ: {dict(actual.schema)} vs {dict(expected.schema)}")
        elif actual.height != expected.height or not actual["contact_id"].equals(expected["contact_id"]):
            problems.append(f"{actual.height} rows vs {expected.height}, or other contact_ids or order")
        else:
            for name in float_columns:
                difference = (actual[name] - expected[name]).abs()
                scale = pl.max_horizontal(actual[name].abs(), expected[name].abs(), pl.lit(1.0))
                bad = pl.select((difference > SCORE_TOLERANCE * scale).sum()).item()
                max_difference = max(max_difference, pl.select((difference / scale).max()).item() or 0.0)
                if bad:
                    problems.append(f"{name}: {bad} contacts differ by more than the tolerance")
            for name in exact_columns:
                bad = (~actual[name].eq_missing(expected[name])).sum()
                if bad:
                    problems.append(f"{name}: {bad} contacts differ")
        if problems:
            print(f"{tool.name}: scores differ from {tools[0].name}'s: {'; '.join(problems)}", file=sys.stderr)
            all_equal = False
        else:
            print(
                f"{tool.name}: scores equal {tools[0].name}'s ({expected.height} contacts, largest relative "
                f"difference {max_difference:.1e})",
                file=sys.stderr,
            )
    return all_equal


def compare_memberships(tools: list[Tool]) -> bool:
    """Print whether every reference's memberships equal nightshift's and return True if all do."""
    expected = read_table(tools[0].result_path).select("list_id", "contact_id").sort("list_id", "contact_id")
    all_equal = True
    for tool in tools[1:]:
        actual = read_table(tool.result_path).select("list_id", "contact_id").sort("list_id", "contact_id")
        if actual.equals(expected):
            print(f"{tool.name}: memberships equal {tools[0].name}'s ({expected.height} rows)", file=sys.stderr)
            continue
        all_equal = False
        missing = expected.join(actual, on=["list_id", "contact_id"], how="anti")
        extra = actual.join(expected, on=["list_id", "contact_id"], how="anti")
        print(
            f"{tool.name}: memberships differ from {tools[0].name}'s: {missing.height} missing, "
            f"{extra.height} extra, by list:\n{pl.concat([missing, extra])['list_id'].value_counts()}",
            file=sys.stderr,
        )
    return all_equal


def format_table(tools: list[Tool]) -> str:
    """Format the medians as a markdown table, with wall times relative to nightshift."""
    nightshift_wall = statistics.median(m.wall_seconds for m in tools[0].measurements)
    lines = [
        "| tool | wall time, median (s) | relative to nightshift | CPU time, median (s) "
        "| max RSS, median (MiB) | wall times of all runs (s) |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for tool in tools:
        wall = statistics.median(m.wall_seconds for m in tool.measurements)
        cpu = statistics.median(m.cpu_seconds for m in tool.measurements)
        rss_mib = statistics.median(m.max_rss_kib for m in tool.measurements) / 1024
        all_walls = ", ".join(f"{m.wall_seconds:.2f}" for m in tool.measurements)
        lines.append(
            f"| {tool.name} | {wall:.2f} | {wall / nightshift_wall:.2f}x | {cpu:.2f} | {rss_mib:.0f} | {all_walls} |"
        )
    return "\n".join(lines)


def describe_files(name: str, pattern: str) -> str:
    files = sorted(glob.glob(pattern))
    rows = pl.scan_parquet(pattern).select(pl.len()).collect().item()
    size = sum(os.path.getsize(path) for path in files)
    return f"- {name}: {rows:,} rows in {len(files)} Parquet files, {size / 2**20:,.1f} MiB on disk"


def run_step(tools: list[Tool], step: str, repetitions: int, work_dir: Path, before_nightshift, after_nightshift) -> None:
    for repetition in range(1, repetitions + 1):
        for tool in tools:
            if tool.name == "nightshift":
                before_nightshift()
            time_command(tool, f"{step}-{repetition}", work_dir)
            if tool.name == "nightshift":
                after_nightshift()


def main() -> None:
    args = parse_args()
    nightshift = find_nightshift_binary(args.nightshift_bin)
    if not os.access(GNU_TIME, os.X_OK):
        sys.exit(f"{GNU_TIME} not found: install GNU time (Debian package `time`)")

    created_work_dir = args.work_dir is None
    work_dir = Path(tempfile.mkdtemp(prefix="nightshift-bench-")) if created_work_dir else args.work_dir
    work_dir = work_dir.resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    succeeded = False
    try:
        write_project(nightshift, work_dir)
        prepare_data(args, nightshift, work_dir)
        globs = {table: table_glob(nightshift, work_dir, table) for table in INPUT_TABLES}
        input_rows = {table: pl.scan_parquet(pattern).select(pl.len()).collect().item() for table, pattern in globs.items()}
        results_dir = work_dir / "results"
        results_dir.mkdir(exist_ok=True)
        python = sys.executable
        scoring_pipeline = work_dir / "pipelines" / "scoring.toml"
        lists_pipeline_file = work_dir / "pipelines" / "lists.toml"
        tables_dir = work_dir / "warehouse" / "tables"

        busy_note = wait_for_idle_machine(args.idle_wait_minutes * 60)
        if busy_note is not None:
            print(f"warning: the machine was not idle before the timed runs ({busy_note})", file=sys.stderr)
        started = time.monotonic()

        score_inputs = [globs["contacts"], globs["email_events"], globs["activities"]]
        scoring_tools = [
            Tool("nightshift", "nightshift", [str(nightshift), "run", "scoring", "--force"], tables_dir / "scores"),
            Tool(
                "DuckDB",
                "duckdb",
                [python, str(SCORING_DIR / "reference_duckdb.py"), "score", str(scoring_pipeline), *score_inputs,
                 str(results_dir / "scores-duckdb.parquet")],
                results_dir / "scores-duckdb.parquet",
            ),
            Tool(
                "Python Polars",
                "polars",
                [python, str(SCORING_DIR / "reference_polars.py"), "score", str(scoring_pipeline), *score_inputs,
                 str(results_dir / "scores-polars.parquet")],
                results_dir / "scores-polars.parquet",
            ),
        ]
        run_step(
            scoring_tools,
            "scoring",
            args.repetitions,
            work_dir,
            lambda: reset_pipeline_state(work_dir, "scoring", ["scores"]),
            lambda: check_manifest(work_dir, "scoring", input_rows),
        )
        scores_equal = compare_scores(scoring_tools, load_model(scoring_pipeline).output_columns())

        # The lists of all three tools read the scores of the last nightshift run.
        scores_glob = table_glob(nightshift, work_dir, "scores")
        list_inputs = [globs["contacts"], scores_glob]
        lists_tools = [
            Tool("nightshift", "nightshift", [str(nightshift), "run", "lists", "--force"],
                 tables_dir / "list_membership"),
            Tool(
                "DuckDB",
                "duckdb",
                [python, str(SCORING_DIR / "reference_duckdb.py"), "lists", str(lists_pipeline_file), *list_inputs,
                 str(results_dir / "lists-duckdb.parquet")],
                results_dir / "lists-duckdb.parquet",
            ),
            Tool(
                "Python Polars",
                "polars",
                [python, str(SCORING_DIR / "reference_polars.py"), "lists", str(lists_pipeline_file), *list_inputs,
                 str(results_dir / "lists-polars.parquet")],
                results_dir / "lists-polars.parquet",
            ),
        ]
        run_step(
            lists_tools,
            "lists",
            args.repetitions,
            work_dir,
            lambda: reset_pipeline_state(work_dir, "lists", ["list_membership", "list_changes"]),
            lambda: check_manifest(work_dir, "lists", {"contacts": input_rows["contacts"]}),
        )
        lists_equal = compare_memberships(lists_tools)
        print(f"timed runs took {time.monotonic() - started:.0f} s in total", file=sys.stderr)

        memberships = read_table(lists_tools[0].result_path)
        list_sizes = memberships.group_by("list_id").len().sort("list_id")
        nightshift_version = run_checked([str(nightshift), "--version"], cwd=work_dir).strip()
        print("\n".join(describe_files(table, pattern) for table, pattern in globs.items()))
        print(f"- scores: {read_table(scoring_tools[0].result_path).height:,} rows")
        print(
            f"- list_membership: {memberships.height:,} rows in {list_sizes.height} lists, "
            f"{list_sizes['len'].min():,} to {list_sizes['len'].max():,} members each"
        )
        print(
            f"- {nightshift_version}, DuckDB {duckdb.__version__}, Polars {pl.__version__}, "
            f"deltalake {deltalake.__version__}, Python {platform.python_version()}"
        )
        notes = [note for tool in scoring_tools + lists_tools for note in tool.busy_notes]
        print(f"- machine idle before the timed runs: {'yes' if busy_note is None else 'no, ' + busy_note}")
        if notes:
            print(f"- runs started while other work ran: {'; '.join(notes)}")
        print("\nScoring:\n")
        print(format_table(scoring_tools))
        print("\nLists:\n")
        print(format_table(lists_tools))
        print(f"\nmembers per list: {dict(zip(list_sizes['list_id'], list_sizes['len']))}")
        if not (scores_equal and lists_equal):
            sys.exit("the results differ")
        succeeded = True
    finally:
        if created_work_dir and succeeded:
            shutil.rmtree(work_dir, ignore_errors=True)
        elif created_work_dir:
            print(f"kept {work_dir} for inspection", file=sys.stderr)


if __name__ == "__main__":
    main()
