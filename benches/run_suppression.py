"""Benchmark `nightshift run suppression` against DuckDB and Python Polars.

The script generates a data set with `nightshift generate`, ingests its
email_events files into a local warehouse, and then times three processes
that compute the same first-run suppression list from the same Parquet files:

- `nightshift run suppression --force`, which also commits the result as a
  Delta table version and writes a run manifest,
- suppression/reference_duckdb.py,
- suppression/reference_polars.py.

Each process runs under `/usr/bin/time -v` (GNU time), which reports its wall
time and maximum resident set size. The tools run in turn, once per round, for
--repetitions rounds, and the table shows the median of each tool. Before every
nightshift run the script deletes the suppression tables and run manifests, so
that each run is a first run over all events, like the two references.

At the end the script checks that the three results contain the same rows in
the same order, and prints a markdown table of the figures. It exits with 1
when the results differ or a command fails.
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

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
GNU_TIME = "/usr/bin/time"

# The columns that must be equal in all three results. source and expires_at
# are constants, and run_id differs by design.
COMPARED_COLUMNS = [
    "email_normalized",
    "email",
    "reason",
    "event_id",
    "first_suppressed_at",
    "last_event_at",
    "event_count",
]

OUTPUT_TABLES = ["suppression_list", "suppression_changes"]

# Maximum share of the CPU that other processes may use in the 2 s before the
# timed runs without a warning.
MAX_BUSY_FRACTION = 0.1

NIGHTSHIFT_CONFIG = """\
# Written by benches/run_suppression.py.
warehouse = "file://./warehouse"
pipelines = "pipelines"
"""

SUPPRESSION_PIPELINE = """\
# Written by benches/run_suppression.py.
kind = "suppression"
description = "Suppression benchmark: first run over all email events"

[inputs]
events = "email_events"

[outputs]
list = "suppression_list"
changes = "suppression_changes"
"""


@dataclasses.dataclass
class Measurement:
    """Wall time, CPU time and peak memory of one process, as GNU time reports them."""

    wall_seconds: float
    cpu_seconds: float
    max_rss_kib: int


@dataclasses.dataclass
class Tool:
    """One benchmarked command and the file its result is read from."""

    name: str
    log_name: str
    command: list[str]
    result_path: Path
    measurements: list[Measurement] = dataclasses.field(default_factory=list)


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
    parser.add_argument("--repetitions", type=int, default=3, help="number of timed runs of each tool")
    parser.add_argument(
        "--work-dir",
        type=Path,
        help="folder for the generated data, the warehouse and the results "
        "(default: a new temporary folder, deleted unless the benchmark fails)",
    )
    parser.add_argument(
        "--reuse-data",
        action="store_true",
        help="skip generate and ingest when --work-dir already contains an ingested email_events table",
    )
    parser.add_argument(
        "--nightshift-bin",
        type=Path,
        help="nightshift binary (default: $NIGHTSHIFT_BIN, else ${CARGO_TARGET_DIR:-target}/debug/nightshift)",
    )
    return parser.parse_args()


def find_nightshift_binary(explicit: Path | None) -> Path:
    """Return the nightshift binary to benchmark, or exit with 1 if it does not exist."""
    if explicit is not None:
        binary = explicit
    elif os.environ.get("NIGHTSHIFT_BIN"):
        binary = Path(os.environ["NIGHTSHIFT_BIN"])
    else:
        target_dir = Path(os.environ.get("CARGO_TARGET_DIR", REPO_DIR / "target"))
        binary = target_dir / "debug" / "nightshift"
    if not binary.is_file():
        sys.exit(f"nightshift binary not found: {binary}. Build it with `cargo build` or set NIGHTSHIFT_BIN.")
    return binary.resolve()


def run_checked(command: list[str], cwd: Path) -> str:
    """Run a command that is not timed and return its stdout, or exit with 1 if it fails."""
    print("+ " + " ".join(command), file=sys.stderr, flush=True)
    completed = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if completed.returncode != 0:
        sys.stderr.write(completed.stdout + completed.stderr)
        sys.exit(f"command failed with exit code {completed.returncode}: {' '.join(command)}")
    return completed.stdout


def prepare_data(args: argparse.Namespace, nightshift: Path, work_dir: Path) -> None:
    """Generate the data set, write the project files and ingest email_events."""
    (work_dir / "nightshift.toml").write_text(NIGHTSHIFT_CONFIG)
    (work_dir / "pipelines").mkdir(exist_ok=True)
    (work_dir / "pipelines" / "suppression.toml").write_text(SUPPRESSION_PIPELINE)

    table_dir = work_dir / "warehouse" / "tables" / "email_events"
    if args.reuse_data and (table_dir / "_delta_log").is_dir():
        print(f"reusing the email_events table in {table_dir}", file=sys.stderr)
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
            "--out",
            str(input_dir),
        ],
        cwd=work_dir,
    )
    event_files = sorted(glob.glob(str(input_dir / "email_events" / "*.parquet")))
    if not event_files:
        sys.exit(f"nightshift generate wrote no Parquet files to {input_dir / 'email_events'}")
    run_checked([str(nightshift), "ingest", "email_events", "--format", "parquet", *event_files], cwd=work_dir)


def table_data_files(nightshift: Path, work_dir: Path, table: str) -> list[Path]:
    """Return the data files of the latest version of a table, as `nightshift path --json` lists them."""
    listing = json.loads(run_checked([str(nightshift), "--json", "path", table], cwd=work_dir))
    table_dir = work_dir / "warehouse" / "tables" / table
    return sorted(table_dir / Path(name).name for name in listing["files"])


def check_events_glob(nightshift: Path, work_dir: Path, events_glob: str) -> list[Path]:
    """Return the files that events_glob matches, or exit with 1 unless they are the table's latest version."""
    matched = sorted(Path(name) for name in glob.glob(events_glob))
    listed = table_data_files(nightshift, work_dir, "email_events")
    if matched != listed:
        sys.exit(
            f"{events_glob} matches {len(matched)} files, but the latest version of email_events "
            f"has {len(listed)}: the references would read other rows than nightshift"
        )
    return matched


def reset_suppression_state(work_dir: Path) -> None:
    """Delete the suppression tables and run manifests, so the next run is a first run."""
    warehouse_dir = work_dir / "warehouse"
    for table in OUTPUT_TABLES:
        shutil.rmtree(warehouse_dir / "tables" / table, ignore_errors=True)
    shutil.rmtree(warehouse_dir / "runs" / "suppression", ignore_errors=True)


def check_first_run_manifest(work_dir: Path, events_rows: int) -> None:
    """Exit with 1 unless the only suppression run manifest is a successful run over all events."""
    manifest_paths = sorted((work_dir / "warehouse" / "runs" / "suppression").glob("*.json"))
    if len(manifest_paths) != 1:
        sys.exit(f"expected one suppression run manifest after a first run, found {len(manifest_paths)}")
    manifest = json.loads(manifest_paths[0].read_text())
    events_input = next(entry for entry in manifest["inputs"] if entry["table"] == "email_events")
    if manifest["status"] != "succeeded":
        sys.exit(f"suppression run has status {manifest['status']!r}, see {manifest_paths[0]}")
    if events_input.get("incremental_from") is not None or events_input["rows"] != events_rows:
        sys.exit(
            f"suppression run read {events_input['rows']} rows from email_events "
            f"(incremental_from {events_input.get('incremental_from')}) instead of all {events_rows} rows"
        )


def parse_gnu_time_report(report: str) -> Measurement:
    """Parse the wall time, CPU time and max RSS from the output of `/usr/bin/time -v`."""
    wall_seconds = None
    cpu_seconds = 0.0
    max_rss_kib = None
    for line in report.splitlines():
        label, _, value = line.strip().rpartition(": ")
        if label.startswith("Elapsed (wall clock) time"):
            seconds = 0.0
            for part in value.split(":"):
                seconds = seconds * 60 + float(part)
            wall_seconds = seconds
        elif label in ("User time (seconds)", "System time (seconds)"):
            cpu_seconds += float(value)
        elif label == "Maximum resident set size (kbytes)":
            max_rss_kib = int(value)
    if wall_seconds is None or max_rss_kib is None:
        raise ValueError(f"no wall time or max RSS in the GNU time report:\n{report}")
    return Measurement(wall_seconds, cpu_seconds, max_rss_kib)


def time_command(tool: Tool, repetition: int, work_dir: Path) -> Measurement:
    """Run the tool's command under GNU time and return its measurement, or exit with 1 if it fails."""
    log_dir = work_dir / "logs"
    log_dir.mkdir(exist_ok=True)
    stem = f"{tool.log_name}-{repetition}"
    report_path = log_dir / f"{stem}.time"
    command = [GNU_TIME, "-v", "-o", str(report_path), *tool.command]
    print("+ " + " ".join(tool.command), file=sys.stderr, flush=True)
    with open(log_dir / f"{stem}.stdout", "wb") as stdout, open(log_dir / f"{stem}.stderr", "wb") as stderr:
        completed = subprocess.run(command, cwd=work_dir, stdout=stdout, stderr=stderr)
    if completed.returncode != 0:
        sys.stderr.write((log_dir / f"{stem}.stderr").read_text(errors="replace"))
        sys.exit(f"{tool.name} failed with exit code {completed.returncode}, logs in {log_dir}")
    return parse_gnu_time_report(report_path.read_text())


def read_cpu_jiffies() -> tuple[int, int]:
    """Return the idle and total CPU time of all cores since boot, in jiffies, from /proc/stat."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle and iowait
    return idle, sum(fields)


def warn_if_machine_busy() -> None:
    """Warn on stderr when other processes use the CPU, because they compete with the timed runs."""
    for name in ("cargo", "rustc"):
        found = subprocess.run(["pgrep", "-x", name], capture_output=True, text=True)
        if found.returncode == 0:
            print(f"warning: {name} is running, so the timings are not reliable", file=sys.stderr)

    idle_before, total_before = read_cpu_jiffies()
    time.sleep(2)
    idle_after, total_after = read_cpu_jiffies()
    busy_fraction = 1 - (idle_after - idle_before) / max(total_after - total_before, 1)
    if busy_fraction > MAX_BUSY_FRACTION:
        print(
            f"warning: the CPU was {busy_fraction:.0%} busy before the timed runs, so the timings are not reliable",
            file=sys.stderr,
        )


def read_result(tool: Tool) -> pl.DataFrame:
    """Read the compared columns of a tool's result, in the row order the tool wrote."""
    if tool.name == "nightshift":
        frame = pl.read_delta(str(tool.result_path))
    else:
        frame = pl.read_parquet(tool.result_path)
    return frame.select(COMPARED_COLUMNS)


def describe_difference(expected: pl.DataFrame, actual: pl.DataFrame) -> str:
    """Describe how actual differs from expected, with a few example rows."""
    if expected.schema != actual.schema:
        return f"schemas differ: {dict(expected.schema)} vs {dict(actual.schema)}"
    if expected.height != actual.height:
        return f"{expected.height} rows vs {actual.height} rows"
    joined = expected.join(actual, on="email_normalized", how="full", suffix="_other", nulls_equal=True)
    differs = pl.any_horizontal(
        [pl.col(column).ne_missing(pl.col(f"{column}_other")) for column in COMPARED_COLUMNS[1:]]
    )
    different_rows = joined.filter(differs | pl.col("email_normalized").is_null())
    if different_rows.is_empty():
        return "same rows in a different order"
    with pl.Config(tbl_cols=-1, tbl_width_chars=400, fmt_str_lengths=60):
        return f"{different_rows.height} rows differ, for example:\n{different_rows.head(5)}"


def compare_results(tools: list[Tool]) -> bool:
    """Print whether every tool's result equals nightshift's and return True if all do."""
    expected = read_result(tools[0])
    if not expected["email_normalized"].is_sorted():
        print(f"{tools[0].name}: rows are not sorted by email_normalized", file=sys.stderr)
        return False
    all_equal = True
    for tool in tools[1:]:
        actual = read_result(tool)
        if actual.equals(expected):
            print(f"{tool.name}: result equals {tools[0].name}'s ({expected.height} rows)", file=sys.stderr)
        else:
            difference = describe_difference(expected, actual)
            print(f"{tool.name}: result differs from {tools[0].name}'s: {difference}", file=sys.stderr)
            all_equal = False
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


def count_rows(parquet_files: list[Path]) -> int:
    return pl.scan_parquet([str(path) for path in parquet_files]).select(pl.len()).collect().item()


def describe_setup(nightshift: Path, work_dir: Path, event_files: list[Path], tools: list[Tool]) -> str:
    """Describe the data set, the result and the software versions in markdown."""
    events_rows = count_rows(event_files)
    events_bytes = sum(path.stat().st_size for path in event_files)
    result_rows = read_result(tools[0]).height
    nightshift_version = run_checked([str(nightshift), "--version"], cwd=work_dir).strip()
    return "\n".join(
        [
            f"- email_events: {events_rows:,} rows in {len(event_files)} Parquet files, "
            f"{events_bytes / 2**20:,.1f} MiB on disk",
            f"- suppression_list: {result_rows:,} rows",
            f"- {nightshift_version}, DuckDB {duckdb.__version__}, Polars {pl.__version__}, "
            f"deltalake {deltalake.__version__}, Python {platform.python_version()}",
        ]
    )


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
        prepare_data(args, nightshift, work_dir)
        events_glob = str(work_dir / "warehouse" / "tables" / "email_events" / "*.parquet")
        event_files = check_events_glob(nightshift, work_dir, events_glob)

        results_dir = work_dir / "results"
        results_dir.mkdir(exist_ok=True)
        python = sys.executable
        tools = [
            Tool(
                "nightshift",
                "nightshift",
                [str(nightshift), "run", "suppression", "--force"],
                work_dir / "warehouse" / "tables" / "suppression_list",
            ),
            Tool(
                "DuckDB",
                "duckdb",
                [python, str(BENCH_DIR / "suppression" / "reference_duckdb.py"), events_glob,
                 str(results_dir / "duckdb.parquet")],
                results_dir / "duckdb.parquet",
            ),
            Tool(
                "Python Polars",
                "polars",
                [python, str(BENCH_DIR / "suppression" / "reference_polars.py"), events_glob,
                 str(results_dir / "polars.parquet")],
                results_dir / "polars.parquet",
            ),
        ]

        events_rows = count_rows(event_files)
        warn_if_machine_busy()
        started = time.monotonic()
        for repetition in range(1, args.repetitions + 1):
            for tool in tools:
                if tool.name == "nightshift":
                    reset_suppression_state(work_dir)
                tool.measurements.append(time_command(tool, repetition, work_dir))
                if tool.name == "nightshift":
                    check_first_run_manifest(work_dir, events_rows)
        print(f"timed runs took {time.monotonic() - started:.0f} s in total", file=sys.stderr)

        results_equal = compare_results(tools)
        print(describe_setup(nightshift, work_dir, event_files, tools))
        print()
        print(format_table(tools))
        if not results_equal:
            sys.exit("the results differ")
        succeeded = True
    finally:
        if created_work_dir and succeeded:
            shutil.rmtree(work_dir, ignore_errors=True)
        elif created_work_dir:
            print(f"kept {work_dir} for inspection", file=sys.stderr)


if __name__ == "__main__":
    main()
