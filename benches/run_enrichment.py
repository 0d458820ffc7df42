"""Benchmark `nightshift run` of an HTTP enrichment pipeline against a rate-limited local API.

The script writes one contact per company domain (company-000001.example,
...) to a CSV file, ingests it as the contacts table of a local warehouse,
and starts enrichment/server.py on 127.0.0.1. The server admits --rate
requests per second (token bucket of --burst requests, 429 with
`Retry-After: 1` beyond that) and responds to each admitted request
--latency-ms milliseconds after reading it.

It then times `nightshift run enrich --force` under `/usr/bin/time -v` (GNU
time) with the pipeline's `requests_per_second` set to the server's rate
(or to --pipeline-rate), once per --concurrency value and round. Before
every run it deletes the enrichment tables and run manifests, so every
domain is requested, and it starts a new server, so the server's counters
cover that run alone.

The ideal wall time is the number of domains divided by the server's rate.
For each run the script prints the wall time, its ratio to the ideal, the
HTTP figures of the run manifest and of the server, the max RSS, and how
busy the CPU was during the run. It writes nightshift's RSS every 2 s to
logs/nightshift-cN-R-rss.csv.

It checks that no domain was lost. The firmographics table must contain
every domain exactly once, with status `found` and the four field values
the server sent. contacts_enriched must contain every contact with a
company_name, and the server must have returned 200 for every domain. It
exits with 1 when a command fails or a
domain is lost, and with 0 otherwise, also when a run misses the
--target-ratio.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent / "enrichment"))
from server import company_data  # noqa: E402  (enrichment/server.py)

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
SERVER_SCRIPT = BENCH_DIR / "enrichment" / "server.py"
GNU_TIME = "/usr/bin/time"

PIPELINE = "enrich"
OUTPUT_TABLES = ["firmographics", "firmographic_changes", "contacts_enriched"]
FIELD_COLUMNS = ["company_name", "industry", "employee_count", "country"]
API_KEY_ENV = "BENCH_KEY"

# Maximum share of the CPU that other processes may use in the 2 s before a
# timed run without a warning.
MAX_BUSY_FRACTION = 0.1

# Seconds between two samples of the CPU use of the machine during a run.
SAMPLE_SECONDS = 2.0

# Seconds the server may take to print its port, or to exit after SIGTERM.
SERVER_START_TIMEOUT = 10
SERVER_STOP_TIMEOUT = 10

NIGHTSHIFT_CONFIG = """\
# Written by benches/run_enrichment.py.
warehouse = "file://./warehouse"
pipelines = "pipelines"
"""

ENRICH_PIPELINE = """\
# Written by benches/run_enrichment.py.
kind = "enrichment"
description = "Enrichment benchmark: every contact domain from the local test API"

[params]
provider = "bench"
max_failure_ratio = 0.0

[params.http]
url = "http://127.0.0.1:{port}/v1/companies/{{domain}}"
api_key_env = "{key_env}"
api_key_header = "X-Api-Key"
requests_per_second = {rate}
concurrency = {concurrency}
timeout_seconds = {timeout_seconds}
max_retries = {max_retries}

[params.http.fields]
company_name = "/company/name"
industry = "/company/industry"
employee_count = "/metrics/employees"
country = "/geo/country"
"""


@dataclasses.dataclass
class Measurement:
    """Wall time, CPU time and peak memory of one process, as GNU time reports them."""

    wall_seconds: float
    cpu_seconds: float
    max_rss_kib: int


@dataclasses.dataclass
class CpuUse:
    """CPU use of the whole machine during a run, and of the processes other than nightshift, the server and this script."""

    busy_cores_mean: float
    busy_cores_max: float
    other_cpu_seconds: float
    other_commands: list[tuple[str, float]]


@dataclasses.dataclass
class RunResult:
    """Figures and checks of one timed run."""

    concurrency: int
    repetition: int
    exit_code: int
    measurement: Measurement
    cpu_use: CpuUse
    manifest: dict
    server_stats: dict
    lost_domains: int
    problems: list[str]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domains", type=int, default=100_000, help="number of contacts, each with its own domain")

    parser.add_argument(
        "--rate",
        type=float,
        default=200.0,
        help="rate limit of the server, and http.requests_per_second of the pipeline unless --pipeline-rate is given",
    )
    parser.add_argument("--burst", type=int, default=10, help="token bucket size of the server, in requests")
    parser.add_argument(
        "--latency-ms", type=float, default=20.0, help="delay of the server before each response, in ms"
    )

    parser.add_argument(
        "--pipeline-rate",
        type=float,
        help="http.requests_per_second of the pipeline (default: --rate); the ideal wall time always uses --rate",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        action="append",
        help="http.concurrency of the pipeline; repeat to time several values (default: 8)",
    )
    parser.add_argument("--timeout-seconds", type=float, default=5.0, help="http.timeout_seconds of the pipeline")
    parser.add_argument("--max-retries", type=int, default=5, help="http.max_retries of the pipeline")

    parser.add_argument("--repetitions", type=int, default=1, help="number of timed runs per concurrency value")
    parser.add_argument(
        "--target-ratio",
        type=float,
        default=1.05,
        help="wall time over the ideal that a run must not exceed to meet the target (default: 1.05)",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        help="folder for the contacts file, the warehouse and the logs "
        "(default: a new temporary folder, deleted unless the benchmark fails)",
    )
    parser.add_argument(
        "--reuse-data",
        action="store_true",
        help="skip writing and ingesting the contacts when --work-dir already contains a contacts table "
        "with --domains rows",
    )
    parser.add_argument(
        "--nightshift-bin",
        type=Path,
        help="nightshift binary (default: $NIGHTSHIFT_BIN, else ${CARGO_TARGET_DIR:-target}/debug/nightshift)",
    )

    args = parser.parse_args()
    args.concurrency = args.concurrency or [8]
    if args.pipeline_rate is None:
        args.pipeline_rate = args.rate
    if args.domains < 1 or args.domains > 999_999:
        parser.error(f"--domains must be between 1 and 999999, got {args.domains}")
    if args.rate <= 0 or args.pipeline_rate <= 0:
        parser.error("--rate and --pipeline-rate must be positive")
    if args.repetitions < 1:
        parser.error(f"--repetitions must be at least 1, got {args.repetitions}")
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


def domain_of(number: int) -> str:
    return f"company-{number:06d}.example"


def expected_domains(count: int) -> set[str]:
    return {domain_of(number) for number in range(1, count + 1)}


def table_dir(work_dir: Path, table: str) -> Path:
    return work_dir / "warehouse" / "tables" / table


def prepare_data(args: argparse.Namespace, nightshift: Path, work_dir: Path) -> None:
    """Write the project configuration and the contacts file, and ingest the contacts."""
    (work_dir / "nightshift.toml").write_text(NIGHTSHIFT_CONFIG)
    (work_dir / "pipelines").mkdir(exist_ok=True)

    contacts_dir = table_dir(work_dir, "contacts")
    if args.reuse_data and (contacts_dir / "_delta_log").is_dir():
        rows = pl.read_delta(str(contacts_dir)).height
        if rows == args.domains:
            print(f"reusing the contacts table in {contacts_dir}", file=sys.stderr)
            return
        sys.exit(f"{contacts_dir} has {rows} rows, not --domains {args.domains}; drop --reuse-data")

    shutil.rmtree(work_dir / "warehouse", ignore_errors=True)
    contacts_csv = work_dir / "input" / "contacts.csv"
    contacts_csv.parent.mkdir(parents=True, exist_ok=True)
    with open(contacts_csv, "w") as csv_file:
        csv_file.write("contact_id,email,company_domain\n")
        for number in range(1, args.domains + 1):
            domain = domain_of(number)
            csv_file.write(f"contact-{number:06d},person-{number:06d}@{domain},{domain}\n")
    run_checked([str(nightshift), "ingest", "contacts", str(contacts_csv)], cwd=work_dir)


def reset_enrichment_state(work_dir: Path) -> None:
    """Delete the enrichment tables and run manifests, so the next run requests every domain."""
    for table in OUTPUT_TABLES:
        shutil.rmtree(table_dir(work_dir, table), ignore_errors=True)
    shutil.rmtree(work_dir / "warehouse" / "runs" / PIPELINE, ignore_errors=True)


class Server:
    """enrichment/server.py as a child process, with its port and counters."""

    def __init__(self, args: argparse.Namespace, api_key: str, stats_file: Path, log_file: Path) -> None:
        command = [
            sys.executable,
            str(SERVER_SCRIPT),
            "--rate",
            str(args.rate),
            "--burst",
            str(args.burst),
            "--latency-ms",
            str(args.latency_ms),
            "--key-env",
            API_KEY_ENV,
            "--stats-file",
            str(stats_file),
        ]
        self.stats_file = stats_file
        self.log = open(log_file, "wb")
        environment = dict(os.environ, **{API_KEY_ENV: api_key})
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=self.log, env=environment)
        self.port = self._read_port()

    def _read_port(self) -> int:
        port: list[int] = []

        def read_first_line() -> None:
            line = self.process.stdout.readline().decode(errors="replace")
            match = re.fullmatch(r"listening on 127\.0\.0\.1:(\d+)\s*", line)
            if match:
                port.append(int(match.group(1)))

        reader = threading.Thread(target=read_first_line, daemon=True)
        reader.start()
        reader.join(SERVER_START_TIMEOUT)
        if not port:
            self.process.kill()
            sys.exit(f"the test server did not report its port within {SERVER_START_TIMEOUT} s, see {self.log.name}")
        return port[0]

    def stop(self) -> dict:
        """Stop the server with SIGTERM and return the counters it wrote."""
        self.process.terminate()
        try:
            self.process.wait(SERVER_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            sys.exit(f"the test server did not exit within {SERVER_STOP_TIMEOUT} s of SIGTERM")
        self.log.close()
        if self.process.returncode != 0:
            sys.exit(f"the test server exited with code {self.process.returncode}, see {self.log.name}")
        return json.loads(self.stats_file.read_text())


def read_cpu_jiffies() -> tuple[int, int]:
    """Return the idle and total CPU time of all cores since boot, in jiffies, from /proc/stat."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle and iowait
    return idle, sum(fields)


def read_process_cpu() -> dict[int, tuple[str, int]]:
    """Return the command and the CPU time in jiffies (user plus system) of every process."""
    processes = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat_file:
                stat = stat_file.read()
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline_file:
                arguments = cmdline_file.read().split(b"\0")
        except OSError:
            continue  # The process exited while the loop ran.
        # The command name in brackets may contain spaces, so split after its closing bracket.
        fields = stat[stat.rindex(")") + 2 :].split()
        cpu_jiffies = int(fields[11]) + int(fields[12])  # utime and stime
        processes[int(entry)] = (describe_command(arguments, stat), cpu_jiffies)
    return processes


def describe_command(arguments: list[bytes], stat: str) -> str:
    """Name a process by its program and, for an interpreter, its script."""
    words = [Path(argument.decode(errors="replace")).name for argument in arguments if argument]
    if not words:
        return stat[stat.index("(") + 1 : stat.rindex(")")]
    scripts = [word for word in words[1:] if word.endswith(".py")]
    return f"{words[0]} {scripts[0]}" if scripts else words[0]


def read_rss_mib(pid: int) -> float | None:
    """Return the resident set size of a process in MiB, or None when it has exited."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def find_child_pid(parent_pid: int) -> int | None:
    """Return the first child of a process, or None when it has none (yet)."""
    try:
        with open(f"/proc/{parent_pid}/task/{parent_pid}/children") as children:
            pids = children.read().split()
    except OSError:
        return None
    return int(pids[0]) if pids else None


class RunSampler:
    """Samples the CPU use of the machine and of each process, and the RSS of nightshift, every SAMPLE_SECONDS.

    nightshift is found as the child of the GNU time process whose pid is set
    in `time_pid` after the sampler starts.
    """

    def __init__(self, excluded_commands: set[str]) -> None:
        self.excluded_commands = excluded_commands
        self.clock_ticks = os.sysconf("SC_CLK_TCK")
        self.cores = os.cpu_count() or 1
        self.busy_fractions: list[float] = []
        self.other_jiffies: dict[str, int] = {}
        self.time_pid: int | None = None
        self.nightshift_pid: int | None = None
        # (seconds since the sampler started, RSS of nightshift in MiB)
        self.rss_samples: list[tuple[float, float]] = []
        self.started = time.monotonic()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def start(self) -> None:
        self.started = time.monotonic()
        self.thread.start()

    def _sample(self) -> None:
        idle_before, total_before = read_cpu_jiffies()
        processes_before = read_process_cpu()
        while True:
            stop = self.stopped.wait(SAMPLE_SECONDS)
            self._sample_rss()
            idle_after, total_after = read_cpu_jiffies()
            processes_after = read_process_cpu()
            if total_after > total_before:
                self.busy_fractions.append(1 - (idle_after - idle_before) / (total_after - total_before))
            for pid, (command, jiffies) in processes_after.items():
                if command in self.excluded_commands:
                    continue
                _, jiffies_before = processes_before.get(pid, (command, 0))
                if jiffies > jiffies_before:
                    self.other_jiffies[command] = self.other_jiffies.get(command, 0) + jiffies - jiffies_before
            idle_before, total_before, processes_before = idle_after, total_after, processes_after
            if stop:
                return

    def _sample_rss(self) -> None:
        if self.nightshift_pid is None and self.time_pid is not None:
            self.nightshift_pid = find_child_pid(self.time_pid)
        if self.nightshift_pid is None:
            return
        rss_mib = read_rss_mib(self.nightshift_pid)
        if rss_mib is not None:
            self.rss_samples.append((time.monotonic() - self.started, rss_mib))

    def stop(self, rss_log: Path) -> CpuUse:
        """Stop sampling, write the RSS samples to rss_log as CSV, and return the CPU use."""
        self.stopped.set()
        self.thread.join()
        with open(rss_log, "w") as rss_file:
            rss_file.write("seconds,rss_mib\n")
            for seconds, rss_mib in self.rss_samples:
                rss_file.write(f"{seconds:.1f},{rss_mib:.1f}\n")
        fractions = self.busy_fractions or [0.0]
        commands = sorted(self.other_jiffies.items(), key=lambda item: -item[1])
        return CpuUse(
            busy_cores_mean=sum(fractions) / len(fractions) * self.cores,
            busy_cores_max=max(fractions) * self.cores,
            other_cpu_seconds=sum(self.other_jiffies.values()) / self.clock_ticks,
            other_commands=[(command, jiffies / self.clock_ticks) for command, jiffies in commands],
        )


def warn_if_machine_busy() -> None:
    """Warn on stderr when cargo, rustc or other processes use the CPU, because they compete with the timed runs."""
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
            f"warning: the CPU was {busy_fraction:.0%} busy before the timed run, so the timings are not reliable",
            file=sys.stderr,
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


def newest_manifest(work_dir: Path) -> dict:
    """Return the newest run manifest of the pipeline, or exit with 1 if there is none."""
    runs_dir = work_dir / "warehouse" / "runs" / PIPELINE
    manifest_paths = sorted(runs_dir.glob("*.json"), key=lambda path: path.stat().st_mtime)
    if not manifest_paths:
        sys.exit(f"no run manifest under {runs_dir}")
    return json.loads(manifest_paths[-1].read_text())


def served_values(domain: str) -> tuple:
    """Return the four field values the test server sends for a domain."""
    data = company_data(domain)
    return (
        data["company"]["name"],
        data["company"]["industry"],
        data["metrics"]["employees"],
        data["geo"]["country"],
    )


def field_values(row: dict) -> tuple:
    return tuple(row[column] for column in FIELD_COLUMNS)


def check_outputs(work_dir: Path, domain_count: int, server_stats: dict) -> tuple[int, list[str]]:
    """Count the lost domains and list every problem found in the outputs and the server's counters.

    A domain is lost when firmographics has no row for it with status `found`
    and all four fields set.
    """
    problems = []
    expected = expected_domains(domain_count)
    for table in ("firmographics", "contacts_enriched"):
        if not (table_dir(work_dir, table) / "_delta_log").is_dir():
            return domain_count, [f"the run wrote no {table} table, so all {domain_count} domains are lost"]
    firmographics = pl.read_delta(str(table_dir(work_dir, "firmographics")))
    found = firmographics.filter(
        (pl.col("status") == "found") & pl.all_horizontal(pl.col(FIELD_COLUMNS).is_not_null())
    )
    found_domains = set(found["domain"].to_list())
    lost = len(expected - found_domains)
    wrong_values = []
    for row in found.select("domain", *FIELD_COLUMNS).iter_rows(named=True):
        if field_values(row) != served_values(row["domain"]):
            wrong_values.append(row["domain"])
    if wrong_values:
        problems.append(
            f"{len(wrong_values)} domains have other field values than the server sent, e.g. {wrong_values[:3]}"
        )
    if firmographics.height != domain_count:
        problems.append(f"firmographics has {firmographics.height} rows, expected {domain_count}")
    duplicates = firmographics.height - firmographics["domain"].n_unique()
    if duplicates:
        problems.append(f"firmographics has {duplicates} repeated domains")
    unexpected = set(firmographics["domain"].to_list()) - expected
    if unexpected:
        examples = sorted(unexpected)[:3]
        problems.append(f"firmographics has {len(unexpected)} domains that no contact has, e.g. {examples}")
    if lost:
        statuses = dict(firmographics.group_by("status").len().iter_rows())
        problems.append(f"{lost} domains lost: firmographics statuses {statuses}")

    enriched = pl.read_delta(str(table_dir(work_dir, "contacts_enriched")))
    with_company = enriched.filter(pl.col("company_name").is_not_null()).height
    if enriched.height != domain_count or with_company != domain_count:
        problems.append(
            f"contacts_enriched has {enriched.height} rows, {with_company} with company_name; expected {domain_count}"
        )
    served = server_stats["distinct_domains_served"]
    if served != domain_count:
        problems.append(f"the server returned 200 for {served} distinct domains, expected {domain_count}")
    if server_stats["unauthorized"]:
        problems.append(f"the server rejected {server_stats['unauthorized']} requests without a valid API key")
    if server_stats["other_errors"]:
        problems.append(f"the server rejected {server_stats['other_errors']} invalid requests, see its log")
    return lost, problems


def time_run(
    args: argparse.Namespace, nightshift: Path, work_dir: Path, concurrency: int, repetition: int
) -> RunResult:
    """Run the pipeline once against a new server and return its figures and checks."""
    log_dir = work_dir / "logs"
    log_dir.mkdir(exist_ok=True)
    stem = f"nightshift-c{concurrency}-{repetition}"
    server_stem = f"server-c{concurrency}-{repetition}"
    api_key = secrets.token_hex(16)
    server = Server(args, api_key, log_dir / f"{server_stem}.json", log_dir / f"{server_stem}.log")
    (work_dir / "pipelines" / f"{PIPELINE}.toml").write_text(
        ENRICH_PIPELINE.format(
            port=server.port,
            key_env=API_KEY_ENV,
            rate=args.pipeline_rate,
            concurrency=concurrency,
            timeout_seconds=args.timeout_seconds,
            max_retries=args.max_retries,
        )
    )
    reset_enrichment_state(work_dir)
    warn_if_machine_busy()

    report_path = log_dir / f"{stem}.time"
    command = [str(nightshift), "run", PIPELINE, "--force"]
    print(f"+ {' '.join(command)}  (concurrency {concurrency}, round {repetition})", file=sys.stderr, flush=True)
    python = Path(sys.executable).name
    benchmark_commands = {nightshift.name, f"{python} {SERVER_SCRIPT.name}", f"{python} {Path(__file__).name}"}
    sampler = RunSampler(excluded_commands=benchmark_commands)
    sampler.start()
    environment = dict(os.environ, **{API_KEY_ENV: api_key})
    with open(log_dir / f"{stem}.stdout", "wb") as stdout, open(log_dir / f"{stem}.stderr", "wb") as stderr:
        process = subprocess.Popen(
            [GNU_TIME, "-v", "-o", str(report_path), *command],
            cwd=work_dir,
            stdout=stdout,
            stderr=stderr,
            env=environment,
        )
        sampler.time_pid = process.pid
        exit_code = process.wait()
    cpu_use = sampler.stop(log_dir / f"{stem}-rss.csv")
    server_stats = server.stop()
    measurement = parse_gnu_time_report(report_path.read_text())
    manifest = newest_manifest(work_dir)

    problems = []
    if exit_code != 0:
        problems.append(f"nightshift exited with code {exit_code}, see {log_dir / (stem + '.stderr')}")
    if manifest["status"] != "succeeded":
        problems.append(f"the run manifest has status {manifest['status']!r}: {manifest.get('error')}")
    lost, output_problems = check_outputs(work_dir, args.domains, server_stats)
    problems.extend(output_problems)
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    return RunResult(concurrency, repetition, exit_code, measurement, cpu_use, manifest, server_stats, lost, problems)


def format_results(args: argparse.Namespace, results: list[RunResult]) -> str:
    """Format the runs as markdown tables: timing, HTTP figures, and CPU use of the machine."""
    ideal = args.domains / args.rate
    lines = [
        f"Ideal wall time: {args.domains:,} domains / {args.rate:g} requests per second = {ideal:,.1f} s; "
        f"target: at most {args.target_ratio:.2f} times the ideal.",
        "",
        "| concurrency | round | wall time (s) | ratio to ideal | target met | http.seconds "
        "| wall time outside HTTP (s) | CPU time (s) | max RSS (MiB) | lost domains |",
        "| ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for result in results:
        wall = result.measurement.wall_seconds
        http = result.manifest["metrics"].get("http", {})
        http_seconds = http.get("seconds", float("nan"))
        target_met = "yes" if wall <= ideal * args.target_ratio else "no"
        lines.append(
            f"| {result.concurrency} | {result.repetition} | {wall:.1f} | {wall / ideal:.4f} | {target_met} "
            f"| {http_seconds:.1f} | {wall - http_seconds:.1f} | {result.measurement.cpu_seconds:.1f} "
            f"| {result.measurement.max_rss_kib / 1024:.0f} | {result.lost_domains} |"
        )
    lines += [
        "",
        "| concurrency | round | http.requests | http.retries | http.throttled | domains_found | domains_error "
        "| cache_by_status | server: requests | server: 429s | server: distinct domains | server: max in flight "
        "| server: max event loop lag (ms) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for result in results:
        metrics = result.manifest["metrics"]
        http = metrics.get("http", {})
        stats = result.server_stats
        lines.append(
            f"| {result.concurrency} | {result.repetition} | {http.get('requests')} | {http.get('retries')} "
            f"| {http.get('throttled')} | {metrics.get('domains_found', 0)} | {metrics.get('domains_error', 0)} "
            f"| {json.dumps(metrics.get('cache_by_status'))} | {stats['requests']} | {stats['throttled']} "
            f"| {stats['distinct_domains_served']} | {stats['max_in_flight']} "
            f"| {stats['max_loop_lag_seconds'] * 1000:.1f} |"
        )
    lines += [
        "",
        "| concurrency | round | machine CPU busy, mean (cores) | busy, max over 2 s (cores) "
        "| CPU time of other processes (s) | other processes with the most CPU time (s) |",
        "| ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for result in results:
        cpu = result.cpu_use
        top = ", ".join(f"{command} {seconds:.0f}" for command, seconds in cpu.other_commands[:3]) or "none"
        lines.append(
            f"| {result.concurrency} | {result.repetition} | {cpu.busy_cores_mean:.2f} | {cpu.busy_cores_max:.2f} "
            f"| {cpu.other_cpu_seconds:.0f} | {top} |"
        )
    return "\n".join(lines)


def describe_setup(args: argparse.Namespace, nightshift: Path, work_dir: Path) -> str:
    nightshift_version = run_checked([str(nightshift), "--version"], cwd=work_dir).strip()
    return "\n".join(
        [
            f"- {args.domains:,} contacts, each with its own company_domain",
            f"- server: {args.rate:g} requests per second, burst {args.burst}, {args.latency_ms:g} ms latency",
            f"- pipeline: requests_per_second {args.pipeline_rate:g}, timeout_seconds {args.timeout_seconds:g}, "
            f"max_retries {args.max_retries}",
            f"- {nightshift_version}, Polars {pl.__version__}, Python {platform.python_version()}, "
            f"{os.cpu_count()} cores",
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
        results = []
        started = time.monotonic()
        for repetition in range(1, args.repetitions + 1):
            for concurrency in args.concurrency:
                results.append(time_run(args, nightshift, work_dir, concurrency, repetition))
        print(f"timed runs took {time.monotonic() - started:.0f} s in total", file=sys.stderr)

        print(describe_setup(args, nightshift, work_dir))
        print()
        print(format_results(args, results))
        if any(result.problems for result in results):
            sys.exit("some runs failed or lost domains, see the problems above")
        succeeded = True
    finally:
        if created_work_dir and succeeded:
            shutil.rmtree(work_dir, ignore_errors=True)
        elif created_work_dir:
            print(f"kept {work_dir} for inspection", file=sys.stderr)


if __name__ == "__main__":
    main()
