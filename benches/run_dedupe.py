"""Benchmark `nightshift run dedupe` against Splink and recordlinkage.

Two parts, each optional:

- Accuracy on FEBRL dataset1 and dataset2 (data/febrl): nightshift with the
  default dedupe configuration, Splink 5 with its standard unsupervised setup
  (dedupe/splink_dedupe.py) and recordlinkage with its standard unsupervised
  setup (dedupe/recordlinkage_dedupe.py).
- Speed and scale on generated files (`--scale RECORDS`, repeatable): a file
  of dedupe/generate_people.py, deduplicated by nightshift (ingest, then
  `run dedupe`, timed separately) and by Splink.

`--splink-blocking nightshift` runs Splink with nightshift's default blocking
rules in place of those of its FEBRL3 example; repeat the option with both
values to run Splink once with each.

Every tool runs as its own process under GNU time (`/usr/bin/time -v`), which
reports wall time, CPU time (user plus system) and maximum resident set size.
Each result is scored on pairs against the truth in the record ids
(dedupe/accuracy.py): precision, recall and F1 of the pairs inside predicted
clusters. For nightshift, a cluster is the records of merge_map with status
merged or survivor and one cluster_id. Records with status held count as
unmerged.

The script prints a markdown table and writes all figures to
WORK_DIR/results.json. It exits with 1 when a command fails.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
GNU_TIME = "/usr/bin/time"
PYTHON = BENCH_DIR / ".venv" / "bin" / "python"
RECORDLINKAGE_PYTHON = BENCH_DIR / "dedupe" / ".venv" / "bin" / "python"
FEBRL_FILES = ["dataset1.csv", "dataset2.csv"]

sys.path.insert(0, str(BENCH_DIR / "dedupe"))
import accuracy  # noqa: E402

FEBRL_COLUMN_MAP = ["rec_id=contact_id", "given_name=first_name", "surname=last_name", "suburb=city"]
GENERATED_COLUMN_MAP = ["rec_id=contact_id"]

NIGHTSHIFT_CONFIG = """\
# Written by benches/run_dedupe.py.
warehouse = "file://./warehouse"
pipelines = "pipelines"
"""

DEDUPE_PIPELINE = """\
# Written by benches/run_dedupe.py: the dedupe job with its default parameters.
kind = "dedupe"
"""

# Result key of each Splink blocking setup of dedupe/splink_dedupe.py.
SPLINK_RESULT_KEYS = {"febrl3": "splink", "nightshift": "splink_nightshift_blocking"}

# Maximum share of the CPU that other processes may use in the 2 s before the
# timed runs without a warning.
MAX_BUSY_FRACTION = 0.1


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-febrl", action="store_true", help="skip the FEBRL accuracy part")
    parser.add_argument(
        "--scale",
        type=int,
        action="append",
        default=[],
        metavar="RECORDS",
        help="also benchmark a generated file of RECORDS records (repeatable)",
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the generated files (default: 1)")
    parser.add_argument(
        "--splink-max-records",
        type=int,
        default=5_000_000,
        help="run Splink on generated files of at most this many records (default: 5000000)",
    )
    parser.add_argument(
        "--splink-blocking",
        choices=list(SPLINK_RESULT_KEYS),
        action="append",
        help="Splink's prediction blocking: the rules of its FEBRL3 example (febrl3, the default) or nightshift's "
        "default rules (nightshift); repeat the option to run Splink once with each",
    )
    parser.add_argument(
        "--count-splink-pairs",
        action="store_true",
        help="count Splink's candidate pairs on generated files too, in an extra untimed run",
    )
    parser.add_argument(
        "--max-rss-gib",
        type=float,
        default=9,
        help="kill a timed command whose processes use more memory than this, in GiB (default: 9)",
    )
    parser.add_argument(
        "--timeout-minutes",
        type=float,
        default=30,
        help="kill a timed command that runs longer than this (default: 30)",
    )
    parser.add_argument("--work-dir", type=Path, help="keep data, projects and logs in this folder")
    parser.add_argument("--reuse-data", action="store_true", help="reuse generated files in --work-dir")
    parser.add_argument(
        "--idle-wait-minutes",
        type=float,
        default=0,
        help="before the scale runs, wait up to this long for other benchmarks and builds to end",
    )
    parser.add_argument(
        "--nightshift-bin",
        type=Path,
        help="nightshift binary (default: $NIGHTSHIFT_BIN, else ${CARGO_TARGET_DIR:-target}/debug/nightshift)",
    )
    args = parser.parse_args()
    args.splink_blocking = args.splink_blocking or ["febrl3"]
    return args


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


class Stopped(Exception):
    """A timed command was stopped at the memory or time limit."""


def tree_rss_bytes(root: int) -> int:
    """Return the summed resident set size of process `root` and all its descendants."""
    total = 0
    pending = [root]
    while pending:
        pid = pending.pop()
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            for task in Path(f"/proc/{pid}/task").iterdir():
                pending.extend(int(child) for child in (task / "children").read_text().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


def run_timed(command: list[str], cwd: Path, log_dir: Path, name: str, limits: argparse.Namespace) -> tuple[str, dict]:
    """Run a command under GNU time; return its stdout and wall (s), cpu (s) and max_rss_mib.

    The command is killed, and Stopped raised, when its process tree uses more
    than limits.max_rss_gib of memory or runs longer than limits.timeout_minutes.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    time_report = log_dir / f"{name}.time"
    print("+ " + " ".join(command), file=sys.stderr, flush=True)
    started = time.monotonic()
    peak = 0
    with open(log_dir / f"{name}.stdout", "w") as stdout, open(log_dir / f"{name}.stderr", "w") as stderr:
        process = subprocess.Popen(
            [GNU_TIME, "-v", "-o", str(time_report), *command],
            cwd=cwd,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
        while process.poll() is None:
            time.sleep(0.5)
            peak = max(peak, tree_rss_bytes(process.pid))
            elapsed = time.monotonic() - started
            reason = None
            if peak > limits.max_rss_gib * 2**30:
                reason = f"memory above {limits.max_rss_gib} GiB"
            elif elapsed > limits.timeout_minutes * 60:
                reason = f"still running after {limits.timeout_minutes} minutes"
            if reason:
                os.killpg(process.pid, 9)
                process.wait()
                raise Stopped(f"{name}: killed after {elapsed:.0f} s, {reason} (peak {peak / 2**30:.1f} GiB)")
    output = (log_dir / f"{name}.stdout").read_text()
    if process.returncode != 0:
        sys.exit(f"command failed with exit code {process.returncode}: {' '.join(command)}; see {log_dir}/{name}.stderr")
    figures: dict[str, float] = {}
    for line in time_report.read_text().splitlines():
        key, _, value = line.strip().rpartition(": ")
        if key == "User time (seconds)":
            figures["user"] = float(value)
        elif key == "System time (seconds)":
            figures["system"] = float(value)
        elif key == "Maximum resident set size (kbytes)":
            figures["max_rss_mib"] = int(value) / 1024
        elif key.startswith("Elapsed (wall clock) time"):
            parts = [float(part) for part in value.split(":")]
            figures["wall"] = sum(part * 60**power for power, part in enumerate(reversed(parts)))
    figures["cpu"] = figures.pop("user") + figures.pop("system")
    return output, figures


def busy_fraction(seconds: float = 2.0) -> float:
    """Return the share of all CPUs that was busy over the next `seconds`."""

    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]

    total_before, idle_before = sample()
    time.sleep(seconds)
    total_after, idle_after = sample()
    total = total_after - total_before
    return 1 - (idle_after - idle_before) / total if total else 0.0


def other_work() -> list[str]:
    """Return the command lines of other benchmark scripts and Rust builds that run now."""
    found = []
    # Benchmark scripts are matched on the full command line, builds on the process name only.
    for options, pattern in [("-af", r"run_.*\.py"), ("-a", "cargo"), ("-a", "rustc")]:
        completed = subprocess.run(["pgrep", options, pattern], capture_output=True, text=True)
        for line in completed.stdout.splitlines():
            pid, _, command = line.partition(" ")
            if int(pid) != os.getpid() and "pgrep" not in command and "run_dedupe.py" not in command:
                found.append(command[:120])
    return found


def wait_for_idle(minutes: float) -> dict:
    """Wait up to `minutes` for an idle machine and return what was seen at the end."""
    deadline = time.monotonic() + minutes * 60
    while True:
        others = other_work()
        busy = busy_fraction()
        if (not others and busy <= MAX_BUSY_FRACTION) or time.monotonic() >= deadline:
            break
        print(f"waiting for an idle machine: CPU {busy:.0%} busy, {len(others)} other processes", file=sys.stderr)
        time.sleep(30)
    if others or busy > MAX_BUSY_FRACTION:
        print(
            f"warning: the machine is not idle (CPU {busy:.0%} busy; others: {others}); the timings are not reliable",
            file=sys.stderr,
        )
    return {"cpu_busy_before": busy, "other_processes": others, "load_average": Path("/proc/loadavg").read_text().split()[:3]}


def new_project(nightshift: Path, directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)
    (directory / "pipelines").mkdir(parents=True)
    (directory / "nightshift.toml").write_text(NIGHTSHIFT_CONFIG)
    (directory / "pipelines" / "dedupe.toml").write_text(DEDUPE_PIPELINE)


def run_nightshift(
    nightshift: Path, data: Path, column_map: list[str], project: Path, log_dir: Path, label: str, limits: argparse.Namespace
) -> dict:
    """Ingest `data` into a new project, run dedupe, and return the figures and accuracy."""
    new_project(nightshift, project)
    maps = [argument for pair in column_map for argument in ("--map", pair)]
    _, ingest = run_timed(
        [str(nightshift), "ingest", "contacts", str(data), *maps, "--json"],
        project,
        log_dir,
        f"{label}-nightshift-ingest",
        limits,
    )
    try:
        stdout, dedupe = run_timed(
            [str(nightshift), "-v", "run", "dedupe", "--json"], project, log_dir, f"{label}-nightshift-dedupe", limits
        )
    except Stopped as stopped:
        print(stopped, file=sys.stderr)
        return {"ingest": ingest, "stopped": str(stopped)}
    manifest = json.loads(stdout)[0]["manifest"]
    if manifest["status"] != "succeeded":
        sys.exit(f"nightshift dedupe run has status {manifest['status']!r}: {manifest.get('error')}")
    metrics = manifest["metrics"]
    merge_map = pl.read_delta(str(project / "warehouse" / "tables" / "merge_map"))
    clusters = merge_map.select(
        pl.col("contact_id").alias("record_id"),
        pl.when(pl.col("status").is_in(["merged", "survivor"]))
        .then(pl.col("cluster_id"))
        .otherwise(pl.col("contact_id"))
        .alias("cluster_id"),
    )
    score = accuracy.score(clusters, merge_map["contact_id"])
    return {
        "ingest": ingest,
        "dedupe": dedupe,
        "candidate_pairs": metrics["candidate_pairs"],
        "held_for_review": len(metrics.get("held_for_review", [])),
        "skipped_blocks": len(metrics.get("skipped_blocks", [])),
        "emails_left_out": metrics.get("emails_left_out"),
        "accuracy": score,
    }


def run_splink(
    data: Path,
    record_ids: pl.Series,
    out_dir: Path,
    log_dir: Path,
    label: str,
    count_pairs: bool,
    limits: argparse.Namespace,
    blocking: str = "febrl3",
) -> dict:
    label = f"{label}-splink" if blocking == "febrl3" else f"{label}-splink-{blocking}-blocking"
    clusters_path = out_dir / f"{label}-clusters.parquet"
    script = str(BENCH_DIR / "dedupe" / "splink_dedupe.py")
    try:
        stdout, figures = run_timed(
            [str(PYTHON), script, str(data), str(clusters_path), "--blocking", blocking], out_dir, log_dir, label, limits
        )
    except Stopped as stopped:
        print(stopped, file=sys.stderr)
        return {"stopped": str(stopped)}
    report = json.loads(stdout.strip().splitlines()[-1])
    result = {
        "run": figures,
        "predicted_pairs": report["predicted_pairs"],
        "steps": report["steps"],
        "version": report["splink_version"],
        "blocking": blocking,
        "accuracy": accuracy.score(pl.read_parquet(clusters_path), record_ids),
    }
    if count_pairs:
        try:
            counted, _ = run_timed(
                [str(PYTHON), script, str(data), "--count-pairs", "--blocking", blocking],
                out_dir,
                log_dir,
                f"{label}-count",
                limits,
            )
            result["candidate_pairs"] = json.loads(counted.strip().splitlines()[-1])["candidate_pairs"]
        except Stopped as stopped:
            print(stopped, file=sys.stderr)
            result["candidate_pairs"] = "count stopped"
    return result


def run_recordlinkage(
    data: Path, record_ids: pl.Series, out_dir: Path, log_dir: Path, label: str, limits: argparse.Namespace
) -> dict:
    pairs_path = out_dir / f"{label}-recordlinkage-pairs.csv"
    script = str(BENCH_DIR / "dedupe" / "recordlinkage_dedupe.py")
    stdout, figures = run_timed(
        [str(RECORDLINKAGE_PYTHON), script, str(data), str(pairs_path)], out_dir, log_dir, f"{label}-recordlinkage", limits
    )
    report = json.loads(stdout.strip().splitlines()[-1])
    pairs = pl.read_csv(pairs_path, schema={"id_l": pl.String, "id_r": pl.String})
    return {
        "run": figures,
        "candidate_pairs": report["candidate_pairs"],
        "predicted_pairs": report["predicted_pairs"],
        "version": report["recordlinkage_version"],
        "accuracy": accuracy.score_pairs(pairs, record_ids),
    }


def febrl_part(args: argparse.Namespace, nightshift: Path, work_dir: Path) -> list[dict]:
    rows = []
    for file in FEBRL_FILES:
        data = REPO_DIR / "data" / "febrl" / file
        label = file.removesuffix(".csv")
        record_ids = pl.read_csv(data, columns=["rec_id"])["rec_id"]
        log_dir = work_dir / "logs"
        ns = run_nightshift(nightshift, data, FEBRL_COLUMN_MAP, work_dir / f"{label}-nightshift", log_dir, label, args)
        row = {"data": file, "records": record_ids.len(), "nightshift": ns}
        for blocking in args.splink_blocking:
            row[SPLINK_RESULT_KEYS[blocking]] = run_splink(data, record_ids, work_dir, log_dir, label, True, args, blocking)
        row["recordlinkage"] = run_recordlinkage(data, record_ids, work_dir, log_dir, label, args)
        rows.append(row)
    return rows


# Blocking rules as (name, key expressions, maximum block size), for the
# estimate in blocking_estimate(). nightshift's are its defaults (Params::default
# in src/jobs/dedupe.rs), Splink's those of dedupe/splink_dedupe.py.
def _prefix(column: str, length: int) -> pl.Expr:
    return pl.col(column).str.slice(0, length)


NIGHTSHIFT_RULES = [
    ("postcode, first_name, last_name[..1]", [pl.col("postcode"), pl.col("first_name"), _prefix("last_name", 1)], 2000),
    ("postcode, last_name, first_name[..1]", [pl.col("postcode"), pl.col("last_name"), _prefix("first_name", 1)], 2000),
    ("first_name[..3], date_of_birth", [_prefix("first_name", 3), pl.col("date_of_birth")], 2000),
    ("last_name[..3], date_of_birth", [_prefix("last_name", 3), pl.col("date_of_birth")], 2000),
    (
        "first_name[..3], last_name[..3], date_of_birth[..6]",
        [_prefix("first_name", 3), _prefix("last_name", 3), _prefix("date_of_birth", 6)],
        2000,
    ),
    ("soc_sec_id", [pl.col("soc_sec_id")], 2000),
    ("soc_sec_id[..4], date_of_birth[..6]", [_prefix("soc_sec_id", 4), _prefix("date_of_birth", 6)], 2000),
    ("address_1, street_number", [pl.col("address_1"), pl.col("street_number")], 2000),
    ("address_1[..5], postcode", [_prefix("address_1", 5), pl.col("postcode")], 2000),
    ("email", [pl.col("email")], 2000),
    ("phone", [pl.col("phone")], 2000),
]
SPLINK_RULES = [
    (name, [pl.col(name)], None) for name in ["soc_sec_id", "first_name", "last_name", "date_of_birth", "postcode"]
]


def blocking_estimate(data: Path) -> dict:
    """Estimate the candidate pairs of each blocking rule from block sizes.

    A block of k records gives k(k-1)/2 pairs, and nightshift skips blocks of
    more than 2000 records. Pairs that several rules find are counted once per
    rule, so the sum is an upper bound on the distinct pairs. Keys are
    compared as stored, without nightshift's normalization.
    """
    frame = pl.read_parquet(data)
    estimate = {}
    for tool, rules in [("nightshift", NIGHTSHIFT_RULES), ("splink", SPLINK_RULES)]:
        per_rule = {}
        for name, keys, max_block in rules:
            blocks = frame.select(keys).drop_nulls().group_by(pl.all()).len()["len"].cast(pl.Int64)
            if max_block is not None:
                blocks = blocks.filter(blocks <= max_block)
            per_rule[name] = int((blocks * (blocks - 1) // 2).sum())
        estimate[tool] = {"per_rule": per_rule, "sum": sum(per_rule.values())}
    return estimate


def scale_part(args: argparse.Namespace, nightshift: Path, work_dir: Path) -> list[dict]:
    machine = wait_for_idle(args.idle_wait_minutes) if args.scale else {}
    rows = []
    for records in args.scale:
        label = f"people-{records}"
        data = work_dir / f"{label}.parquet"
        log_dir = work_dir / "logs"
        if not (args.reuse_data and data.is_file()):
            run_checked(
                [str(PYTHON), str(BENCH_DIR / "dedupe" / "generate_people.py"), str(records), str(data), "--seed", str(args.seed)],
                work_dir,
            )
        record_ids = pl.read_parquet(data, columns=["rec_id"])["rec_id"]
        row = {"data": data.name, "records": records, "machine_before": machine, "blocking_estimate": blocking_estimate(data)}
        project = work_dir / f"{label}-nightshift"
        row["nightshift"] = run_nightshift(nightshift, data, GENERATED_COLUMN_MAP, project, log_dir, label, args)
        shutil.rmtree(work_dir / f"{label}-nightshift", ignore_errors=True)
        if records <= args.splink_max_records:
            for blocking in args.splink_blocking:
                row[SPLINK_RESULT_KEYS[blocking]] = run_splink(
                    data, record_ids, work_dir, log_dir, label, args.count_splink_pairs, args, blocking
                )
        rows.append(row)
        machine = wait_for_idle(0)
    return rows


def tool_name(key: str, result: dict) -> str:
    """Name a result column: the tool, its version and, for Splink, its blocking."""
    if key == "recordlinkage":
        return f"recordlinkage {result['version']}"
    version = result.get("version", "")
    if key == "splink_nightshift_blocking":
        return f"Splink {version} (nightshift blocking)".replace("  ", " ")
    return f"Splink {version}".strip()


def format_accuracy(score: accuracy.PairAccuracy) -> str:
    return f"{score.precision:.4f} | {score.recall:.4f} | {score.f1:.4f}"


def print_tables(febrl: list[dict], scale: list[dict]) -> None:
    if febrl:
        print("| data | tool | precision | recall | F1 | predicted pairs | true pairs | candidate pairs | wall (s) | max RSS (MiB) |")
        print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for row in febrl:
            ns = row["nightshift"]
            wall = ns["ingest"]["wall"] + ns["dedupe"]["wall"]
            rss = max(ns["ingest"]["max_rss_mib"], ns["dedupe"]["max_rss_mib"])
            score = ns["accuracy"]
            print(
                f"| {row['data']} | nightshift | {format_accuracy(score)} | {score.predicted_pairs} | {score.true_pairs} "
                f"| {ns['candidate_pairs']} | {wall:.2f} | {rss:.0f} |"
            )
            for tool in [*SPLINK_RESULT_KEYS.values(), "recordlinkage"]:
                result = row.get(tool)
                if result is None:
                    continue
                if "stopped" in result:
                    print(f"| {row['data']} | {tool_name(tool, result)} | {result['stopped']} | | | | | | |")
                    continue
                score = result["accuracy"]
                print(
                    f"| {row['data']} | {tool_name(tool, result)} | {format_accuracy(score)} | {score.predicted_pairs} "
                    f"| {score.true_pairs} | {result['candidate_pairs']} | {result['run']['wall']:.2f} "
                    f"| {result['run']['max_rss_mib']:.0f} |"
                )
    if scale:
        print()
        print("| records | tool | step | wall (s) | CPU (s) | max RSS (MiB) | candidate pairs | precision | recall | F1 |")
        print("| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for row in scale:
            ns = row["nightshift"]
            figures = ns["ingest"]
            print(
                f"| {row['records']} | nightshift | ingest | {figures['wall']:.1f} | {figures['cpu']:.1f} "
                f"| {figures['max_rss_mib']:.0f} | | | | |"
            )
            if "stopped" in ns:
                print(f"| {row['records']} | nightshift | dedupe | {ns['stopped']} | | | | | | |")
            else:
                figures = ns["dedupe"]
                print(
                    f"| {row['records']} | nightshift | dedupe | {figures['wall']:.1f} | {figures['cpu']:.1f} "
                    f"| {figures['max_rss_mib']:.0f} | {ns['candidate_pairs']} | {format_accuracy(ns['accuracy'])} |"
                )
            for tool in SPLINK_RESULT_KEYS.values():
                result = row.get(tool)
                if result is None:
                    continue
                if "stopped" in result:
                    print(f"| {row['records']} | {tool_name(tool, result)} | all | {result['stopped']} | | | | | | |")
                    continue
                figures = result["run"]
                print(
                    f"| {row['records']} | {tool_name(tool, result)} | all | {figures['wall']:.1f} "
                    f"| {figures['cpu']:.1f} | {figures['max_rss_mib']:.0f} "
                    f"| {result.get('candidate_pairs', 'not counted')} | {format_accuracy(result['accuracy'])} |"
                )


def to_json(value):
    if isinstance(value, accuracy.PairAccuracy):
        return {
            "predicted_pairs": value.predicted_pairs,
            "true_pairs": value.true_pairs,
            "correct_pairs": value.correct_pairs,
            "precision": value.precision,
            "recall": value.recall,
            "f1": value.f1,
        }
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def main() -> None:
    args = parse_args()
    nightshift = find_nightshift_binary(args.nightshift_bin)
    for python in [PYTHON] + ([] if args.skip_febrl else [RECORDLINKAGE_PYTHON]):
        if not python.is_file():
            sys.exit(f"{python} not found: create the virtual environments as benches/README.md describes")
    keep = args.work_dir is not None
    work_dir = args.work_dir.resolve() if keep else Path(tempfile.mkdtemp(prefix="nightshift-dedupe-bench-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    febrl = [] if args.skip_febrl else febrl_part(args, nightshift, work_dir)
    scale = scale_part(args, nightshift, work_dir)
    results = {
        "started": started,
        "nightshift": str(nightshift),
        "python": platform.python_version(),
        "febrl": febrl,
        "scale": scale,
    }
    (work_dir / "results.json").write_text(json.dumps(results, indent=2, default=to_json))
    print_tables(febrl, scale)
    print(f"\nfigures in {work_dir / 'results.json'}", file=sys.stderr)
    if not keep:
        shutil.rmtree(work_dir)


if __name__ == "__main__":
    main()
