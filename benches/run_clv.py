"""Benchmark `nightshift run clv` against the Python `lifetimes` library.

For each data set the script prepares an orders Parquet or CSV file, ingests
it into a local warehouse (timed once, apart from the comparison), and then
times two processes that compute the same per-customer predictions from
that file:

- `nightshift run clv --force`, which reads the orders table, fits BG/NBD and
  Gamma-Gamma, writes the clv table as a new Delta version and a run
  manifest,
- clv/reference_lifetimes.py, which reads the file with pandas and uses
  lifetimes 0.11.3 (summary, BetaGeoFitter, GammaGammaFitter, predictions,
  customer_lifetime_value) and writes one Parquet file.

The data sets are `cdnow` (data/orders.csv, calibration through
1997-09-30) and generated ones, given as a number of customers, which
clv/generate_orders.py simulates from the BG/NBD and Gamma-Gamma models
with the published CDNOW parameters.

Each process runs under `/usr/bin/time -v` (GNU time), which reports its wall
time, CPU time and maximum resident set size. The tools run in turn, once
per round, and the tables show the median of each tool. A run that exceeds
--timeout-minutes or --memory-limit-gib is killed and reported as such.
Before each timed run the script waits until no `cargo` or `rustc` process
runs and the CPU is idle, for at most --idle-wait-minutes, and it repeats a
run that other work disturbed, at most --retries times. Before each
nightshift run it deletes the clv table, so that every timed run is a first
run.

At the end the script compares the fitted parameters and the per-customer
predictions of the two tools, joined on contact_id, and prints markdown
tables. It exits with 1 when a command fails, the customers differ, or the
parameters differ in the third significant digit.
"""

from __future__ import annotations

import argparse
import dataclasses
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

import lifetimes
import numpy as np
import pandas as pd
import polars as pl
import scipy
from lifetimes import BetaGeoFitter, GammaGammaFitter

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
REPO_DIR = BENCH_DIR.parent
CDNOW_ORDERS = REPO_DIR / "data" / "orders.csv"
CDNOW_AS_OF = "1997-09-30"

# 12 months of 4.345 weeks, so that nightshift's CLV covers the same time as
# lifetimes' customer_lifetime_value(time=12, freq="W").
HORIZON_WEEKS = 52.14
MONTHS = 12
MONTHLY_DISCOUNT_RATE = 0.01

BGNBD_PARAMS = ["r", "alpha", "a", "b"]
# nightshift calls the Gamma-Gamma scale parameter v, like lifetimes.
GAMMA_GAMMA_PARAMS = ["p", "q", "v"]
PREDICTIONS = ["probability_alive", "expected_purchases", "expected_order_value", "clv"]

NIGHTSHIFT_CONFIG = """\
# Written by benches/run_clv.py.
warehouse = "file://./warehouse"
pipelines = "pipelines"
"""

CLV_PIPELINE = """\
# Written by benches/run_clv.py.
kind = "clv"
description = "CLV benchmark"

[inputs]
orders = "orders"

[outputs]
values = "clv"

[params]
as_of = "{as_of}"
time_unit = "weeks"
horizon = {horizon}
monthly_discount_rate = {discount}
"""


@dataclasses.dataclass
class Run:
    """One timed process: its GNU time figures, or why it was stopped."""

    measurement: Measurement | None
    stopped_reason: str | None = None
    machine_note: str | None = None
    manifest: dict | None = None
    phase_seconds: dict[str, float] | None = None


@dataclasses.dataclass
class DataSet:
    """One data set: its orders file, its project folder and the runs of both tools."""

    name: str
    orders_path: Path
    as_of: str
    folder: Path
    ingest: Measurement | None = None
    runs: dict[str, list[Run]] = dataclasses.field(default_factory=lambda: {"nightshift": [], "lifetimes": []})


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-set",
        action="append",
        dest="data_sets",
        help="`cdnow`, or a number of customers to generate; repeat for several (default: cdnow and 1000000)",
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of clv/generate_orders.py")
    parser.add_argument("--repetitions", type=int, default=3, help="number of timed runs of nightshift")
    parser.add_argument(
        "--lifetimes-repetitions", type=int, help="number of timed runs of lifetimes (default: --repetitions)"
    )
    parser.add_argument(
        "--timeout-minutes", type=float, default=20.0, help="wall time after which a timed run is killed"
    )
    parser.add_argument(
        "--memory-limit-gib",
        type=float,
        default=16.0,
        help="resident set size after which a timed run is killed, in GiB",
    )
    parser.add_argument(
        "--idle-wait-minutes",
        type=float,
        default=10.0,
        help="how long to wait for an idle machine before each timed run; after that the run goes ahead "
        "and is marked",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=3,
        help="how often a timed run is repeated when a build or other processes ran beside it",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        help="folder for the data, the warehouses, the results and the logs "
        "(default: a new temporary folder, deleted unless the benchmark fails)",
    )
    parser.add_argument(
        "--reuse-data",
        action="store_true",
        help="skip generate and ingest for data sets whose folder in --work-dir already has an orders table",
    )
    parser.add_argument(
        "--nightshift-bin",
        type=Path,
        help="nightshift binary (default: $NIGHTSHIFT_BIN, else ${CARGO_TARGET_DIR:-target}/debug/nightshift)",
    )
    return parser.parse_args()


def data_set_name(spec: str) -> str:
    if spec == "cdnow":
        return spec
    customers = int(spec)
    if customers % 1_000_000 == 0:
        return f"{customers // 1_000_000}m"
    return str(customers)


def file_sha256(path: Path) -> str:
    """Return the SHA-256 digest of a file in hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def prepare_data_set(spec: str, args: argparse.Namespace, nightshift: Path, work_dir: Path) -> DataSet:
    """Write the data set's project, generate its orders file and ingest it, unless --reuse-data finds it."""
    name = data_set_name(spec)
    folder = work_dir / name
    (folder / "pipelines").mkdir(parents=True, exist_ok=True)
    if spec == "cdnow":
        orders_path, as_of = CDNOW_ORDERS, CDNOW_AS_OF
    else:
        orders_path, as_of = folder / "orders.parquet", None
    data_set = DataSet(name, orders_path, as_of or "", folder)

    table_dir = folder / "warehouse" / "tables" / "orders"
    reuse = args.reuse_data and (table_dir / "_delta_log").is_dir()
    if spec != "cdnow":
        command = [
            sys.executable,
            str(BENCH_DIR / "clv" / "generate_orders.py"),
            str(orders_path),
            "--customers",
            spec,
            "--seed",
            str(args.seed),
        ]
        if not reuse:
            run_checked(command, cwd=folder)
        # The calibration period of generate_orders.py's defaults: 39 weeks from 2024-01-01.
        data_set.as_of = "2024-09-29"

    (folder / "nightshift.toml").write_text(NIGHTSHIFT_CONFIG)
    pipeline = CLV_PIPELINE.format(as_of=data_set.as_of, horizon=HORIZON_WEEKS, discount=MONTHLY_DISCOUNT_RATE)
    (folder / "pipelines" / "clv.toml").write_text(pipeline)
    if reuse:
        print(f"reusing the orders table in {table_dir}", file=sys.stderr)
        return data_set

    shutil.rmtree(folder / "warehouse", ignore_errors=True)
    file_format = "csv" if orders_path.suffix == ".csv" else "parquet"
    ingest = [str(nightshift), "ingest", "orders", "--format", file_format, str(orders_path)]
    run = time_command(ingest, folder, f"ingest-{name}", limits_from(args))
    if run.measurement is None:
        sys.exit(f"ingest of {orders_path} was stopped: {run.stopped_reason}")
    data_set.ingest = run.measurement
    return data_set


@dataclasses.dataclass
class Limits:
    timeout_seconds: float
    memory_limit_kib: int
    idle_wait_seconds: float
    retries: int


def limits_from(args: argparse.Namespace) -> Limits:
    return Limits(
        args.timeout_minutes * 60, int(args.memory_limit_gib * 2**20), args.idle_wait_minutes * 60, args.retries
    )


def busy_reason() -> str | None:
    """Return why the machine is not idle, or None when it is."""
    build = build_running()
    if build:
        return f"{build} is running"
    idle_before, total_before = read_cpu_jiffies()
    time.sleep(2)
    idle_after, total_after = read_cpu_jiffies()
    busy_fraction = 1 - (idle_after - idle_before) / max(total_after - total_before, 1)
    if busy_fraction > MAX_BUSY_FRACTION:
        return f"the CPU was {busy_fraction:.0%} busy"
    return None


def wait_for_idle_machine(limits: Limits) -> str | None:
    """Wait until the machine is idle; return why it was still busy when the wait ran out, else None."""
    deadline = time.monotonic() + limits.idle_wait_seconds
    while True:
        reason = busy_reason()
        if reason is None:
            return None
        if time.monotonic() >= deadline:
            print(f"warning: {reason} before a timed run, so its timings are not reliable", file=sys.stderr)
            return reason
        print(f"waiting for an idle machine: {reason}", file=sys.stderr, flush=True)
        time.sleep(15)


def tree_rss_kib(pid: int) -> int:
    """Return the summed VmRSS of a process and its descendants, in KiB (0 for processes that have ended)."""
    total = 0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            with open(f"/proc/{current}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            with open(f"/proc/{current}/task/{current}/children") as children:
                pending.extend(int(child) for child in children.read().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def build_running() -> str | None:
    """Return the name of a running `cargo` or `rustc` process, or None."""
    for name in ("cargo", "rustc"):
        if subprocess.run(["pgrep", "-x", name], capture_output=True).returncode == 0:
            return name
    return None


def run_once(command: list[str], cwd: Path, stem: str, limits: Limits) -> Run:
    """Run a command under GNU time once, killing it past the time or memory limit.

    The run's machine_note records why other work may have slowed it: a
    build seen during the run, or more than MAX_BUSY_FRACTION of the CPU
    time of all cores used by other processes.
    """
    log_dir = cwd / "logs"
    log_dir.mkdir(exist_ok=True)
    report_path = log_dir / f"{stem}.time"
    print("+ " + " ".join(command), file=sys.stderr, flush=True)
    idle_before, total_before = read_cpu_jiffies()
    started = time.monotonic()
    stopped_reason = None
    build_seen = None
    with open(log_dir / f"{stem}.stdout", "wb") as stdout, open(log_dir / f"{stem}.stderr", "wb") as stderr:
        process = subprocess.Popen(
            [GNU_TIME, "-v", "-o", str(report_path), *command],
            cwd=cwd,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
        peak_kib = 0
        polls = 0
        while process.poll() is None:
            peak_kib = max(peak_kib, tree_rss_kib(process.pid))
            elapsed = time.monotonic() - started
            if elapsed > limits.timeout_seconds:
                stopped_reason = f"killed after {elapsed / 60:.1f} minutes (time limit)"
            elif peak_kib > limits.memory_limit_kib:
                stopped_reason = f"killed at {peak_kib / 2**20:.1f} GiB resident (memory limit) after {elapsed:.0f} s"
            if stopped_reason:
                # The group is the one this call created with start_new_session.
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                break
            if polls % 4 == 0:
                build_seen = build_seen or build_running()
            polls += 1
            time.sleep(0.5)
    idle_after, total_after = read_cpu_jiffies()
    build_seen = build_seen or build_running()
    machine_note = f"{build_seen} ran during the run" if build_seen else None

    if stopped_reason:
        print(f"{stem}: {stopped_reason}; peak resident set {peak_kib / 2**20:.1f} GiB", file=sys.stderr)
        return Run(None, stopped_reason, machine_note)
    if process.returncode != 0:
        sys.stderr.write((log_dir / f"{stem}.stderr").read_text(errors="replace")[-4000:])
        sys.exit(f"{stem} failed with exit code {process.returncode}, logs in {log_dir}")
    measurement = parse_gnu_time_report(report_path.read_text())

    busy_seconds = ((total_after - total_before) - (idle_after - idle_before)) / os.sysconf("SC_CLK_TCK")
    capacity_seconds = measurement.wall_seconds * (os.cpu_count() or 1)
    other_fraction = (busy_seconds - measurement.cpu_seconds) / max(capacity_seconds, 1e-9)
    if machine_note is None and measurement.wall_seconds >= 1 and other_fraction > MAX_BUSY_FRACTION:
        machine_note = f"other processes used {other_fraction:.0%} of the CPU during the run"
    if machine_note:
        print(f"warning: {stem}: {machine_note}", file=sys.stderr)
    return Run(measurement, None, machine_note)


def time_command(command: list[str], cwd: Path, stem: str, limits: Limits) -> Run:
    """Time a command on an idle machine, repeating a run that other work disturbed.

    After limits.retries repeats the last run is kept, with its machine_note.
    """
    attempt = 0
    while True:
        busy_note = wait_for_idle_machine(limits)
        suffix = f"-retry{attempt}" if attempt else ""
        run = run_once(command, cwd, stem + suffix, limits)
        run.machine_note = run.machine_note or busy_note
        if run.machine_note is None or run.measurement is None or attempt >= limits.retries:
            return run
        attempt += 1
        print(f"repeating {stem} because {run.machine_note}", file=sys.stderr)


def run_manifest_paths(folder: Path) -> set[Path]:
    return set((folder / "warehouse" / "runs" / "clv").glob("*.json"))


def time_nightshift(data_set: DataSet, nightshift: Path, repetition: int, limits: Limits) -> Run:
    """Time one forced clv run over no previous clv table and attach its run manifest.

    With a previous version of the clv table the run also compares every
    row with it for the manifest's change counts, which lifetimes does not
    do, so each timed run starts without that table.
    """
    shutil.rmtree(data_set.folder / "warehouse" / "tables" / "clv", ignore_errors=True)
    before = run_manifest_paths(data_set.folder)
    command = [str(nightshift), "run", "clv", "--force"]
    run = time_command(command, data_set.folder, f"nightshift-{repetition}", limits)
    if run.measurement is None:
        return run
    # Run ids are UUIDv7, so the last name is the manifest of the last, kept attempt.
    new_manifests = sorted(run_manifest_paths(data_set.folder) - before)
    if not new_manifests:
        sys.exit(f"the clv run wrote no run manifest in {data_set.folder}")
    manifest = json.loads(new_manifests[-1].read_text())
    if manifest["status"] != "succeeded" or manifest["metrics"].get("predictions") != "made":
        sys.exit(f"the clv run did not succeed with predictions, see {new_manifests[-1]}")
    run.manifest = manifest
    run.phase_seconds = manifest["metrics"]["seconds"]
    return run


def time_lifetimes(data_set: DataSet, repetition: int, limits: Limits) -> Run:
    """Time one run of the lifetimes reference and attach its phase times."""
    out = data_set.folder / "results" / "lifetimes.parquet"
    out.parent.mkdir(exist_ok=True)
    out.unlink(missing_ok=True)
    command = [
        sys.executable,
        str(BENCH_DIR / "clv" / "reference_lifetimes.py"),
        str(data_set.orders_path),
        str(out),
        "--as-of",
        data_set.as_of,
        "--horizon",
        str(HORIZON_WEEKS),
        "--months",
        str(MONTHS),
        "--monthly-discount-rate",
        str(MONTHLY_DISCOUNT_RATE),
    ]
    run = time_command(command, data_set.folder, f"lifetimes-{repetition}", limits)
    if run.measurement is not None:
        run.phase_seconds = json.loads(out.with_suffix(".json").read_text())["seconds"]
    return run


def completed(runs: list[Run]) -> list[Measurement]:
    return [run.measurement for run in runs if run.measurement is not None]


def median_phases(runs: list[Run]) -> dict[str, float]:
    phase_runs = [run.phase_seconds for run in runs if run.phase_seconds]
    if not phase_runs:
        return {}
    return {phase: statistics.median(seconds[phase] for seconds in phase_runs) for phase in phase_runs[0]}


def three_significant(value: float) -> str:
    return f"{value:.3g}"


def bgnbd_log_likelihood(params: dict[str, float], frame: pd.DataFrame) -> float:
    """Return the BG/NBD log-likelihood in weeks, with lifetimes' own function."""
    log_params = np.log([params[name] for name in BGNBD_PARAMS])
    weights = np.ones(len(frame))
    mean = BetaGeoFitter._negative_log_likelihood(
        log_params, frame["frequency"].to_numpy(), frame["recency"].to_numpy(), frame["T"].to_numpy(), weights, 0.0
    )
    return -mean * len(frame)


def gamma_gamma_log_likelihood(params: dict[str, float], frame: pd.DataFrame) -> float:
    """Return the Gamma-Gamma log-likelihood of the repeat buyers, with lifetimes' own function."""
    repeat = frame[(frame["frequency"] > 0) & (frame["monetary_value"] > 0)]
    log_params = np.log([params[name] for name in GAMMA_GAMMA_PARAMS])
    mean = GammaGammaFitter._negative_log_likelihood(
        log_params, repeat["frequency"].to_numpy(), repeat["monetary_value"].to_numpy(), np.ones(len(repeat)), 0.0
    )
    return -mean * len(repeat)


@dataclasses.dataclass
class Comparison:
    """Comparison of the two tools' parameters and per-customer results on one data set, as markdown."""

    markdown: str
    parameters_match: bool
    customers_match: bool


def compare_data_set(data_set: DataSet) -> Comparison | None:
    """Compare the latest nightshift result with the latest lifetimes result, or None without the latter."""
    lifetimes_out = data_set.folder / "results" / "lifetimes.parquet"
    nightshift_runs = [run for run in data_set.runs["nightshift"] if run.manifest]
    if not lifetimes_out.exists() or not nightshift_runs:
        return None
    report = json.loads(lifetimes_out.with_suffix(".json").read_text())
    metrics = nightshift_runs[-1].manifest["metrics"]
    ours = pl.read_delta(str(data_set.folder / "warehouse" / "tables" / "clv")).select(
        "contact_id", "frequency", "recency", pl.col("age").alias("T"), *PREDICTIONS
    )
    theirs = pl.read_parquet(lifetimes_out)
    joined = ours.join(theirs, on="contact_id", how="full", suffix="_lifetimes", coalesce=True)
    only_ours = joined.filter(pl.col("frequency_lifetimes").is_null()).height
    only_theirs = joined.filter(pl.col("frequency").is_null()).height
    both = joined.drop_nulls(["frequency", "frequency_lifetimes"])

    lines = [f"#### {data_set.name}", ""]
    lines.append(
        f"Customers: {ours.height:,} in nightshift's result, {theirs.height:,} in lifetimes', "
        f"{both.height:,} in both."
    )
    input_differences = {
        column: both.select((pl.col(column) - pl.col(f"{column}_lifetimes")).abs().max()).item()
        for column in ["frequency", "recency", "T"]
    }
    lines.append(
        "Largest difference of the model inputs (weeks): "
        + ", ".join(f"{column} {value:.3g}" for column, value in input_differences.items())
        + "."
    )
    lines.append("")

    summary = theirs.to_pandas()
    parameters_match = True
    lines += [
        "| model | parameter | nightshift | lifetimes | same to 3 significant digits | relative difference |",
        "| --- | --- | ---: | ---: | --- | ---: |",
    ]
    for model, names in (("bgnbd", BGNBD_PARAMS), ("gamma_gamma", GAMMA_GAMMA_PARAMS)):
        for name in names:
            nightshift_value = metrics[model][name]
            lifetimes_value = report[model][name]
            same = three_significant(nightshift_value) == three_significant(lifetimes_value)
            parameters_match &= same
            relative = abs(nightshift_value - lifetimes_value) / abs(lifetimes_value)
            lines.append(
                f"| {model} | {name} | {nightshift_value:.6g} | {lifetimes_value:.6g} | "
                f"{'yes' if same else 'no'} | {relative:.1e} |"
            )
    nightshift_bgnbd = bgnbd_log_likelihood({name: metrics["bgnbd"][name] for name in BGNBD_PARAMS}, summary)
    lifetimes_bgnbd = bgnbd_log_likelihood(report["bgnbd"], summary)
    nightshift_gg = gamma_gamma_log_likelihood(
        {name: metrics["gamma_gamma"][name] for name in GAMMA_GAMMA_PARAMS}, summary
    )
    lifetimes_gg = gamma_gamma_log_likelihood(report["gamma_gamma"], summary)
    lines += [
        "",
        "Log-likelihoods, computed with lifetimes' functions at each tool's parameters: "
        f"BG/NBD {nightshift_bgnbd:.4f} (nightshift) and {lifetimes_bgnbd:.4f} (lifetimes), "
        f"nightshift minus lifetimes {nightshift_bgnbd - lifetimes_bgnbd:.2e}; "
        f"Gamma-Gamma {nightshift_gg:.4f} and {lifetimes_gg:.4f}, difference {nightshift_gg - lifetimes_gg:.2e}. "
        f"nightshift's manifest gives BG/NBD {metrics['bgnbd']['log_likelihood']:.4f} and "
        f"Gamma-Gamma {metrics['gamma_gamma']['log_likelihood']:.4f}.",
        "",
    ]

    repeat = both.filter(pl.col("frequency") > 0)
    one_time = both.filter(pl.col("frequency") == 0)
    lines += [
        "| prediction | customers | max relative difference | max absolute difference | median relative difference |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for column in PREDICTIONS:
        groups = [("repeat buyers", repeat)]
        if column != "probability_alive":
            groups.append(("one-time buyers", one_time))
        for label, group in groups:
            difference = group.select(
                absolute=(pl.col(column) - pl.col(f"{column}_lifetimes")).abs(),
                relative=(pl.col(column) - pl.col(f"{column}_lifetimes")).abs() / pl.col(f"{column}_lifetimes").abs(),
            )
            lines.append(
                f"| {column} | {label} ({group.height:,}) | {difference['relative'].max():.1e} | "
                f"{difference['absolute'].max():.1e} | {difference['relative'].median():.1e} |"
            )
    alive_null = one_time.select(pl.col("probability_alive").is_null().all()).item()
    alive_one = one_time.select((pl.col("probability_alive_lifetimes") == 1.0).all()).item()
    lines += [
        "",
        f"One-time buyers: nightshift's probability_alive is null for {'all' if alive_null else 'not all'} "
        f"of them, lifetimes' is 1 for {'all' if alive_one else 'not all'}.",
        "",
    ]
    return Comparison("\n".join(lines), parameters_match, only_ours == 0 and only_theirs == 0)


def format_seconds(values: list[float]) -> str:
    return ", ".join(f"{value:.2f}" for value in values)


def format_times_table(data_sets: list[DataSet]) -> str:
    lines = [
        "| data set | tool | wall time, median (s) | CPU time, median (s) | max RSS, median (MiB) "
        "| wall times of all runs (s) | lifetimes / nightshift, wall |",
        "| --- | --- | ---: | ---: | ---: | --- | ---: |",
    ]
    for data_set in data_sets:
        nightshift_runs = completed(data_set.runs["nightshift"])
        nightshift_wall = statistics.median(m.wall_seconds for m in nightshift_runs) if nightshift_runs else None
        for tool in ("nightshift", "lifetimes"):
            runs = data_set.runs[tool]
            measurements = completed(runs)
            stopped = [run.stopped_reason for run in runs if run.stopped_reason]
            if not measurements:
                lines.append(f"| {data_set.name} | {tool} | - | - | - | {'; '.join(stopped)} | - |")
                continue
            wall = statistics.median(m.wall_seconds for m in measurements)
            cpu = statistics.median(m.cpu_seconds for m in measurements)
            rss = statistics.median(m.max_rss_kib for m in measurements) / 1024
            all_walls = format_seconds([m.wall_seconds for m in measurements])
            if stopped:
                all_walls += "; " + "; ".join(stopped)
            ratio = f"{wall / nightshift_wall:.1f}x" if tool == "lifetimes" and nightshift_wall else ""
            lines.append(
                f"| {data_set.name} | {tool} | {wall:.2f} | {cpu:.2f} | {rss:,.0f} | {all_walls} | {ratio} |"
            )
    return "\n".join(lines)


def format_phase_table(data_sets: list[DataSet]) -> str:
    lines = ["| data set | tool | phase medians (s) |", "| --- | --- | --- |"]
    for data_set in data_sets:
        for tool in ("nightshift", "lifetimes"):
            phases = median_phases(data_set.runs[tool])
            if phases:
                text = ", ".join(f"{phase} {seconds:.3f}" for phase, seconds in phases.items())
                lines.append(f"| {data_set.name} | {tool} | {text} |")
    return "\n".join(lines)


def describe_setup(data_sets: list[DataSet], nightshift: Path) -> str:
    nightshift_version = run_checked([str(nightshift), "--version"], cwd=REPO_DIR).strip()
    lines = [
        f"- {nightshift_version}, lifetimes {lifetimes.__version__}, pandas {pd.__version__}, "
        f"numpy {np.__version__}, scipy {scipy.__version__}, Polars {pl.__version__}, "
        f"Python {platform.python_version()}"
    ]
    for data_set in data_sets:
        orders = (
            pl.read_csv(data_set.orders_path, columns=["contact_id"])
            if data_set.orders_path.suffix == ".csv"
            else pl.read_parquet(data_set.orders_path, columns=["contact_id"])
        )
        size = data_set.orders_path.stat().st_size / 2**20
        line = (
            f"- {data_set.name}: {orders.height:,} orders of {orders['contact_id'].n_unique():,} customers "
            f"in {data_set.orders_path.name} ({size:,.1f} MiB), as_of {data_set.as_of}"
        )
        if data_set.ingest:
            line += (
                f"; `nightshift ingest` took {data_set.ingest.wall_seconds:.2f} s wall, "
                f"{data_set.ingest.max_rss_kib / 1024:,.0f} MiB max RSS"
            )
        lines.append(line)
        notes = [run.machine_note for runs in data_set.runs.values() for run in runs if run.machine_note]
        if notes:
            lines.append(f"  - runs not on an idle machine: {'; '.join(notes)}")
    return "\n".join(lines)


def run_benchmark(args: argparse.Namespace, nightshift: Path, work_dir: Path) -> bool:
    """Run every data set and print the tables; return True when all checks pass."""
    limits = limits_from(args)
    lifetimes_repetitions = args.lifetimes_repetitions or args.repetitions
    # A build in the same target folder may replace the binary between runs,
    # so every run uses one copy of it.
    snapshot = work_dir / "bin" / "nightshift"
    snapshot.parent.mkdir(exist_ok=True)
    shutil.copy2(nightshift, snapshot)
    modified = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(snapshot.stat().st_mtime))
    digest = file_sha256(snapshot)[:16]
    print(f"benchmarking a copy of {nightshift}, built {modified}, sha256 {digest}", file=sys.stderr)
    nightshift = snapshot
    data_sets = [prepare_data_set(spec, args, nightshift, work_dir) for spec in args.data_sets]

    for data_set in data_sets:
        lifetimes_stopped = False
        for repetition in range(1, max(args.repetitions, lifetimes_repetitions) + 1):
            if repetition <= args.repetitions:
                data_set.runs["nightshift"].append(time_nightshift(data_set, nightshift, repetition, limits))
            # A run that was killed would be killed again, so it is not repeated.
            if repetition <= lifetimes_repetitions and not lifetimes_stopped:
                run = time_lifetimes(data_set, repetition, limits)
                data_set.runs["lifetimes"].append(run)
                lifetimes_stopped = run.stopped_reason is not None

    all_passed = True
    print(describe_setup(data_sets, nightshift))
    print()
    print(format_times_table(data_sets))
    print()
    print(format_phase_table(data_sets))
    print()
    for data_set in data_sets:
        comparison = compare_data_set(data_set)
        if comparison is None:
            print(f"#### {data_set.name}\n\nno lifetimes result to compare with\n")
            continue
        print(comparison.markdown)
        if not comparison.customers_match:
            print(f"{data_set.name}: the two results have different customers", file=sys.stderr)
        if not comparison.parameters_match:
            print(f"{data_set.name}: the parameters differ in the third significant digit", file=sys.stderr)
        all_passed &= comparison.customers_match and comparison.parameters_match
    return all_passed


def main() -> None:
    args = parse_args()
    args.data_sets = args.data_sets or ["cdnow", "1000000"]
    nightshift = find_nightshift_binary(args.nightshift_bin)
    if not os.access(GNU_TIME, os.X_OK):
        sys.exit(f"{GNU_TIME} not found: install GNU time (Debian package `time`)")

    created_work_dir = args.work_dir is None
    work_dir = Path(tempfile.mkdtemp(prefix="nightshift-clv-bench-")) if created_work_dir else args.work_dir
    work_dir = work_dir.resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    succeeded = False
    try:
        if not run_benchmark(args, nightshift, work_dir):
            sys.exit("the results differ")
        succeeded = True
    finally:
        if created_work_dir and succeeded:
            shutil.rmtree(work_dir, ignore_errors=True)
        elif created_work_dir:
            print(f"kept {work_dir} for inspection", file=sys.stderr)


if __name__ == "__main__":
    main()
