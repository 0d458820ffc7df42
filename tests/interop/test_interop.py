"""Interop tests: tables written by the nightshift binary, read back by other tools.

Each warehouse, one in a local folder and one on the S3 test server that
scripts/test starts, is filled through the command line alone: two contact
ingests, two email event ingests and two runs of the `suppression` pipeline.
Every table then has versions 0 and 1. Python deltalake and Polars read every
table at both versions, pandas and DuckDB read the suppression list, and
`nightshift path` and `nightshift history` must report what deltalake reports.
The tests at the end each fill a warehouse of their own: rejected rows, a run
skipped because its inputs are unchanged, and concurrent commits.

The inputs are the small CSV files below, so each expected row is computed by
hand from them.
"""

import csv
import json
import os
import re
import shlex
import subprocess
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import boto3
import duckdb
import polars as pl
import pyarrow as pa
import pytest
from deltalake import DeltaTable

CLI_TIMEOUT_SECONDS = 300

# --- Inputs ------------------------------------------------------------------

CONTACT_COLUMNS = [
    "contact_id",
    "email",
    "first_name",
    "last_name",
    "phone",
    "company",
    "company_domain",
    "job_title",
    "country",
    "city",
    "postcode",
    "source",
    "lifecycle_stage",
    "created_at",
    "updated_at",
]


def contact_row(contact_id: str, email: str, first: str, stage: str, updated_at: str) -> list[str]:
    return [
        contact_id,
        email,
        first,
        "Tester",
        "+44 20 7946 0000",
        "Example Ltd",
        "example.com",
        "Marketing Manager",
        "GB",
        "London",
        "EC1A 1BB",
        "webinar",
        stage,
        "2025-12-01T09:00:00Z",
        updated_at,
    ]


CONTACTS_FIRST = [
    contact_row("c001", "alice@example.com", "Alice", "lead", "2025-12-01T09:00:00Z"),
    contact_row("c002", "bob@example.com", "Bob", "lead", "2025-12-01T09:00:00Z"),
    contact_row("c003", "carol@example.com", "Carol", "customer", "2025-12-01T09:00:00Z"),
    contact_row("c004", "dave@example.com", "Dave", "lead", "2025-12-01T09:00:00Z"),
    contact_row("c005", "erin@example.com", "Erin", "subscriber", "2025-12-01T09:00:00Z"),
]

# Upserted by contact_id: c002 changes stage, c006 is new.
CONTACTS_SECOND = [
    contact_row("c002", "bob@example.com", "Bob", "customer", "2026-01-08T09:00:00Z"),
    contact_row("c006", "frank@example.org", "Frank", "lead", "2026-01-08T09:00:00Z"),
]

EVENT_COLUMNS = [
    "event_id",
    "contact_id",
    "email",
    "event_type",
    "bounce_type",
    "reason",
    "campaign_id",
    "occurred_at",
]

# Empty strings are written as empty CSV fields, which ingest stores as null.
EVENTS_FIRST = [
    ["E001", "c001", "alice@example.com", "delivered", "", "", "cmp-1", "2026-01-01T08:00:00Z"],
    ["E002", "c001", "Alice@Example.com", "complaint", "", "marked as spam", "cmp-1", "2026-01-01T09:00:00Z"],
    ["E003", "c001", " alice@example.com ", "bounce", "hard", "550 5.1.1 user unknown", "cmp-2", "2026-01-02T08:00:00Z"],
    ["E004", "c002", "bob@example.com", "bounce", "soft", "mailbox full", "cmp-1", "2026-01-01T10:00:00Z"],
    ["E005", "c002", "bob@example.com", "bounce", "block", "blocked by policy", "cmp-2", "2026-01-02T10:00:00Z"],
    ["E006", "c003", "carol@example.com", "unsubscribe", "", "", "cmp-1", "2026-01-03T10:00:00Z"],
    # E007 and E008 share occurred_at, so the smaller event_id (E007) is first.
    ["E007", "c004", "dave@example.com", "bounce", "hard", "mailbox does not exist", "cmp-2", "2026-01-02T12:00:00Z"],
    ["E008", "c004", "DAVE@example.com", "complaint", "", "", "cmp-2", "2026-01-02T12:00:00Z"],
    ["E009", "c005", "erin@example.com", "open", "", "", "cmp-1", "2026-01-01T11:00:00Z"],
    ["E010", "c005", "erin@example.com", "click", "", "", "cmp-1", "2026-01-01T11:05:00Z"],
    # Triggering events without a usable address are counted, not suppressed.
    ["E011", "c007", "", "complaint", "", "", "cmp-1", "2026-01-02T09:00:00Z"],
    ["E012", "c008", "   ", "unsubscribe", "", "", "cmp-1", "2026-01-02T09:30:00Z"],
    ["E013", "c006", "frank@example.org", "bounce", "hard", "domain not found", "cmp-2", "2026-01-04T07:30:00Z"],
    ["E014", "c001", "alice@example.com", "sent", "", "", "cmp-3", "2026-01-04T08:00:00Z"],
]

EVENTS_SECOND = [
    ["E101", "c001", "ALICE@example.com", "bounce", "hard", "550 user unknown", "cmp-3", "2026-01-10T08:00:00Z"],
    # Bob's unsubscribe is earlier than his complaint, so it is his first event.
    ["E102", "c002", "bob@example.com", "complaint", "", "", "cmp-3", "2026-01-11T09:00:00Z"],
    ["E103", "c002", "Bob@Example.com", "unsubscribe", "", "", "cmp-3", "2026-01-09T09:00:00Z"],
    ["E104", "c009", "grace@example.net", "delivered", "", "", "cmp-3", "2026-01-10T09:00:00Z"],
    # Arrives late: older than Carol's first event, yet her first event stays.
    ["E105", "c003", "carol@example.com", "unsubscribe", "", "", "cmp-3", "2026-01-02T09:00:00Z"],
    ["E106", "c010", "heidi@example.com", "bounce", "soft", "mailbox full", "cmp-3", "2026-01-10T11:00:00Z"],
    ["E107", "c011", "", "bounce", "hard", "no address", "cmp-3", "2026-01-10T12:00:00Z"],
    ["E108", "c004", "dave@example.com", "click", "", "", "cmp-3", "2026-01-10T13:00:00Z"],
]

PIPELINE_FILE = """\
kind = "suppression"
description = "Moves hard bounces, complaints and unsubscribes to the suppression list"

[inputs]
events = "email_events"

[outputs]
list = "suppression_list"
changes = "suppression_changes"

[params]
export_csv = "exports/suppression_list.csv"

[[gates]]
output = "list"
min_rows = 1
"""

# --- Expected outputs, computed by hand from the inputs ----------------------


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def suppression_row(
    email_normalized: str,
    email: str,
    reason: str,
    event_id: str,
    first: str,
    last: str,
    count: int,
) -> dict[str, Any]:
    return {
        "email_normalized": email_normalized,
        "email": email,
        "reason": reason,
        "source": "email_events",
        "event_id": event_id,
        "first_suppressed_at": utc(first),
        "last_event_at": utc(last),
        "event_count": count,
        "expires_at": None,
    }


ALICE_FIRST = suppression_row(
    "alice@example.com", "Alice@Example.com", "complaint", "E002",
    "2026-01-01T09:00:00Z", "2026-01-02T08:00:00Z", 2,
)
CAROL_FIRST = suppression_row(
    "carol@example.com", "carol@example.com", "unsubscribe", "E006",
    "2026-01-03T10:00:00Z", "2026-01-03T10:00:00Z", 1,
)
DAVE = suppression_row(
    "dave@example.com", "dave@example.com", "hard_bounce", "E007",
    "2026-01-02T12:00:00Z", "2026-01-02T12:00:00Z", 2,
)
FRANK = suppression_row(
    "frank@example.org", "frank@example.org", "hard_bounce", "E013",
    "2026-01-04T07:30:00Z", "2026-01-04T07:30:00Z", 1,
)
ALICE_SECOND = {**ALICE_FIRST, "last_event_at": utc("2026-01-10T08:00:00Z"), "event_count": 3}
BOB = suppression_row(
    "bob@example.com", "Bob@Example.com", "unsubscribe", "E103",
    "2026-01-09T09:00:00Z", "2026-01-11T09:00:00Z", 2,
)
CAROL_SECOND = {**CAROL_FIRST, "event_count": 2}

SUPPRESSION_LIST = {0: [ALICE_FIRST, CAROL_FIRST, DAVE, FRANK], 1: [ALICE_SECOND, BOB, CAROL_SECOND, DAVE, FRANK]}
SUPPRESSION_CHANGES = {0: [ALICE_FIRST, CAROL_FIRST, DAVE, FRANK], 1: [BOB]}
# Addresses whose row the second run changed, so their run_id is the second run's.
CHANGED_BY_SECOND_RUN = {"alice@example.com", "bob@example.com", "carol@example.com"}

# Rows of every table at each version.
EXPECTED_ROWS = {
    "contacts": {0: 5, 1: 6},
    "email_events": {0: len(EVENTS_FIRST), 1: len(EVENTS_FIRST) + len(EVENTS_SECOND)},
    "suppression_list": {version: len(rows) for version, rows in SUPPRESSION_LIST.items()},
    "suppression_changes": {version: len(rows) for version, rows in SUPPRESSION_CHANGES.items()},
}
TABLES = sorted(EXPECTED_ROWS)
SUPPRESSION_EXTRA_TABLES = {"suppression_held", "sendable_contacts"}
KEY_COLUMNS = {
    "contacts": "contact_id",
    "email_events": "event_id",
    "suppression_list": "email_normalized",
    "suppression_changes": "email_normalized",
}
EVENTS_WITHOUT_EMAIL = {0: 2, 1: 1}

# Data files sit directly in the table folder as part-<uuid>.parquet.
DATA_FILE_NAME = re.compile(
    r"part-[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}\.parquet"
)
UTC_MICROS = pa.timestamp("us", tz="UTC")

# --- Warehouse access ----------------------------------------------------------


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def is_string_type(data_type: pa.DataType) -> bool:
    return (
        pa.types.is_string(data_type)
        or pa.types.is_large_string(data_type)
        or pa.types.is_string_view(data_type)
    )


@dataclass
class Warehouse:
    """Warehouse that the binary fills and the other readers check."""

    backend: str
    url: str
    project: Path
    binary: Path
    storage_options: dict[str, str] | None = None
    bucket: str | None = None
    prefix: str | None = None
    s3_client: Any = None
    # Run ids of the stored manifests, oldest first.
    run_ids: list[str] = field(default_factory=list)
    # What `nightshift run --json` printed for each run.
    reported_runs: list[dict[str, Any]] = field(default_factory=list)

    def nightshift(self, *args: str, expected_code: int = 0) -> subprocess.CompletedProcess:
        """Run the binary in the project folder against this warehouse."""
        command = [str(self.binary), "--warehouse", self.url, *args]
        result = subprocess.run(
            command,
            cwd=self.project,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT_SECONDS,
            env={**os.environ, "RUST_BACKTRACE": "1"},
        )
        if result.returncode != expected_code:
            raise AssertionError(
                f"`{shlex.join(command)}` (in {self.project}) exited with "
                f"{result.returncode}, expected {expected_code}\n"
                f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
            )
        return result

    def nightshift_json(self, *args: str) -> Any:
        result = self.nightshift(*args, "--json")
        try:
            return json.loads(result.stdout)
        except json.JSONDecodeError as e:
            raise AssertionError(
                f"`nightshift {shlex.join(args)} --json` printed invalid JSON ({e}):\n{result.stdout}"
            ) from e

    def table_uri(self, table: str) -> str:
        if self.backend == "local":
            return str(Path(self.url.removeprefix("file://")) / "tables" / table)
        return f"{self.url}/tables/{table}"

    def delta(self, table: str, version: int | None = None) -> DeltaTable:
        return DeltaTable(self.table_uri(table), version=version, storage_options=self.storage_options)

    def read_polars(self, table: str, version: int | None = None) -> pl.DataFrame:
        if self.storage_options is None:
            return pl.read_delta(self.table_uri(table), version=version)
        return pl.read_delta(
            self.table_uri(table),
            version=version,
            storage_options=self.storage_options,
            credential_provider=None,
        )

    def list_children(self, relative: str) -> list[str]:
        """Return the names of files and folders directly under `relative`."""
        if self.backend == "local":
            folder = Path(self.url.removeprefix("file://")) / relative
            return sorted(p.name for p in folder.iterdir())
        prefix = f"{self.prefix}/{relative}/"
        names = set()
        paginator = self.s3_client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix, Delimiter="/"):
            for common in page.get("CommonPrefixes", []):
                names.add(common["Prefix"][len(prefix):].rstrip("/"))
            for item in page.get("Contents", []):
                names.add(item["Key"][len(prefix):])
        return sorted(names)

    def read_bytes(self, relative: str) -> bytes:
        if self.backend == "local":
            return (Path(self.url.removeprefix("file://")) / relative).read_bytes()
        response = self.s3_client.get_object(Bucket=self.bucket, Key=f"{self.prefix}/{relative}")
        return response["Body"].read()

    def local_copy(self, uri: str, folder: Path) -> Path:
        """Return a local path with the content of the data file `uri`."""
        if self.backend == "local":
            return Path(uri.removeprefix("file://"))
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        target = folder / Path(key).name
        self.s3_client.download_file(bucket, key, str(target))
        return target

    def manifests(self) -> list[dict[str, Any]]:
        """Return the suppression pipeline's run manifests, oldest first."""
        names = [n for n in self.list_children("runs/suppression") if n.endswith(".json")]
        return [json.loads(self.read_bytes(f"runs/suppression/{name}")) for name in names]


def write_project(folder: Path, warehouse_url: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    config = f'warehouse = "{warehouse_url}"\npipelines = "pipelines"\n'
    (folder / "nightshift.toml").write_text(config, encoding="utf-8")
    (folder / "pipelines").mkdir(exist_ok=True)
    (folder / "pipelines" / "suppression.toml").write_text(PIPELINE_FILE, encoding="utf-8")


def fill_warehouse(warehouse: Warehouse, inputs: Path) -> None:
    """Ingest both batches and run the suppression pipeline after each."""
    inputs.mkdir(parents=True, exist_ok=True)
    contacts_first = write_csv(inputs / "contacts_1.csv", CONTACT_COLUMNS, CONTACTS_FIRST)
    contacts_second = write_csv(inputs / "contacts_2.csv", CONTACT_COLUMNS, CONTACTS_SECOND)
    events_first = write_csv(inputs / "email_events_1.csv", EVENT_COLUMNS, EVENTS_FIRST)
    events_second = write_csv(inputs / "email_events_2.csv", EVENT_COLUMNS, EVENTS_SECOND)

    warehouse.nightshift("ingest", "contacts", str(contacts_first), "--format", "csv")
    warehouse.nightshift("ingest", "email_events", str(events_first), "--format", "csv")
    warehouse.reported_runs += warehouse.nightshift_json("run", "suppression")

    warehouse.nightshift(
        "ingest", "contacts", str(contacts_second), "--format", "csv",
        "--mode", "upsert", "--key", "contact_id",
    )
    second_source = str(events_second)
    if warehouse.backend == "s3":
        # Ingest reads URLs too: the second batch comes from the bucket.
        key = f"{warehouse.prefix}/inbox/email_events_2.csv"
        warehouse.s3_client.upload_file(str(events_second), warehouse.bucket, key)
        second_source = f"s3://{warehouse.bucket}/{key}"
    warehouse.nightshift("ingest", "email_events", second_source, "--format", "csv")
    warehouse.reported_runs += warehouse.nightshift_json("run", "suppression")

    warehouse.run_ids = [m["run_id"] for m in warehouse.manifests()]


def s3_storage_options(endpoint: str) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ALLOW_HTTP": "true",
        "AWS_S3_ALLOW_UNSAFE_RENAME": "true",
        "AWS_ACCESS_KEY_ID": os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
        "AWS_SECRET_ACCESS_KEY": os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
        "AWS_REGION": os.environ.get("AWS_REGION", "us-east-1"),
    }


def s3_client(endpoint: str):
    options = s3_storage_options(endpoint)
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=options["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=options["AWS_SECRET_ACCESS_KEY"],
        region_name=options["AWS_REGION"],
    )


def new_warehouse(request, tmp: Path, binary: Path, backend: str) -> Warehouse:
    if backend == "local":
        url = f"file://{tmp / 'warehouse'}"
        warehouse = Warehouse(backend, url, tmp / "project", binary)
    else:
        endpoint = request.getfixturevalue("s3_endpoint")
        bucket = request.getfixturevalue("s3_bucket")
        prefix = f"interop-{uuid.uuid4().hex[:12]}"
        warehouse = Warehouse(
            backend,
            f"s3://{bucket}/{prefix}",
            tmp / "project",
            binary,
            storage_options=s3_storage_options(endpoint),
            bucket=bucket,
            prefix=prefix,
            s3_client=s3_client(endpoint),
        )
    write_project(warehouse.project, warehouse.url)
    return warehouse


@pytest.fixture(scope="module", params=["local", "s3"])
def warehouse(request, tmp_path_factory, nightshift_bin) -> Warehouse:
    """Return a warehouse filled by two ingests and two runs, shared by this module's tests."""
    tmp = tmp_path_factory.mktemp(f"warehouse-{request.param}")
    warehouse = new_warehouse(request, tmp, nightshift_bin, request.param)
    fill_warehouse(warehouse, tmp / "inputs")
    return warehouse


def rows_of(table: pa.Table, columns: list[str]) -> list[dict[str, Any]]:
    return table.select(columns).to_pylist()


def file_names(uris: list[str]) -> list[str]:
    return sorted(uri.rstrip("/").rsplit("/", 1)[-1] for uri in uris)


# --- Tables and protocol -----------------------------------------------------


def test_tables_folder_contains_expected_tables(warehouse):
    found = warehouse.list_children("tables")
    for table in TABLES:
        assert table in found, f"table {table} missing under {warehouse.url}/tables/: {found}"
    for name in found:
        if name in TABLES:
            continue
        if name in SUPPRESSION_EXTRA_TABLES:
            # Written by the suppression job too: held hard bounces (none
            # here) and the sendable contacts.
            warehouse.delta(name).to_pyarrow_table()
            continue
        # Besides the expected tables, only tables of rejected rows may exist,
        # and they must be empty because every input row is valid.
        assert name.endswith("_rejected"), f"unexpected table {name} under {warehouse.url}/tables/"
        assert warehouse.delta(name).count() == 0, f"{name} has rows, but every input row is valid"


@pytest.mark.parametrize("table", TABLES)
def test_table_protocol_and_files(warehouse, table):
    delta = warehouse.delta(table)
    protocol = delta.protocol()
    assert protocol.min_reader_version == 1
    assert protocol.min_writer_version == 2
    paths = delta.get_add_actions(flatten=True).column("path").to_pylist()
    assert paths, f"{table} has no data files"
    for path in paths:
        assert DATA_FILE_NAME.fullmatch(path), f"{table}: data file {path!r} is not part-<uuid>.parquet"


@pytest.mark.parametrize("table", TABLES)
def test_latest_version_is_one(warehouse, table):
    assert warehouse.delta(table).version() == 1


@pytest.mark.parametrize("table", TABLES)
def test_row_counts_every_version(warehouse, table):
    for version, expected in EXPECTED_ROWS[table].items():
        delta = warehouse.delta(table, version)
        assert delta.version() == version
        assert delta.to_pyarrow_table().num_rows == expected, f"{table} v{version} via deltalake"
        assert warehouse.read_polars(table, version).height == expected, f"{table} v{version} via polars"


@pytest.mark.parametrize("table", TABLES)
def test_polars_and_deltalake_agree(warehouse, table):
    key = KEY_COLUMNS[table]
    for version in EXPECTED_ROWS[table]:
        from_delta = pl.from_arrow(warehouse.delta(table, version).to_pyarrow_table()).sort(key)
        from_polars = warehouse.read_polars(table, version).sort(key)
        assert from_polars.columns == from_delta.columns, f"{table} v{version}"
        assert from_polars.schema == from_delta.schema, f"{table} v{version}"
        assert from_polars.equals(from_delta), f"{table} v{version}: rows differ"


# --- Suppression outputs -----------------------------------------------------

SUPPRESSION_COLUMNS = [
    "email_normalized",
    "email",
    "reason",
    "source",
    "event_id",
    "first_suppressed_at",
    "last_event_at",
    "event_count",
    "expires_at",
]


@pytest.mark.parametrize("version", [0, 1])
def test_suppression_list_rows(warehouse, version):
    data = warehouse.delta("suppression_list", version).to_pyarrow_table()
    assert rows_of(data, SUPPRESSION_COLUMNS) == SUPPRESSION_LIST[version]


@pytest.mark.parametrize("version", [0, 1])
def test_suppression_changes_rows(warehouse, version):
    data = warehouse.delta("suppression_changes", version).to_pyarrow_table()
    assert rows_of(data, SUPPRESSION_COLUMNS) == SUPPRESSION_CHANGES[version]


def test_suppression_list_read_by_polars(warehouse):
    frame = warehouse.read_polars("suppression_list")
    assert frame["email_normalized"].to_list() == [r["email_normalized"] for r in SUPPRESSION_LIST[1]]
    alice = frame.filter(pl.col("email_normalized") == "alice@example.com").row(0, named=True)
    assert alice["event_count"] == 3
    assert alice["reason"] == "complaint"
    assert alice["last_event_at"] == utc("2026-01-10T08:00:00Z")
    old = warehouse.read_polars("suppression_list", version=0)
    assert "bob@example.com" not in old["email_normalized"].to_list()


def test_suppression_list_read_by_pandas(warehouse):
    frame = warehouse.delta("suppression_list").to_pandas().set_index("email_normalized")
    assert list(frame.index) == [r["email_normalized"] for r in SUPPRESSION_LIST[1]]
    assert frame.loc["bob@example.com", "event_id"] == "E103"
    assert frame.loc["bob@example.com", "event_count"] == 2
    assert frame.loc["dave@example.com", "reason"] == "hard_bounce"
    assert frame["expires_at"].isna().all()


def test_suppression_list_schema(warehouse):
    schema = warehouse.delta("suppression_list").to_pyarrow_table().schema
    assert [n for n in schema.names if n in SUPPRESSION_COLUMNS] == SUPPRESSION_COLUMNS
    assert is_string_type(schema.field("rule").type), schema.field("rule").type
    event_ids = schema.field("event_ids").type
    assert pa.types.is_list(event_ids) or pa.types.is_large_list(event_ids), event_ids
    assert is_string_type(event_ids.value_type), event_ids
    assert schema.field("expired_at").type == UTC_MICROS
    for name in ["email_normalized", "email", "reason", "source", "event_id", "run_id"]:
        assert is_string_type(schema.field(name).type), f"{name}: {schema.field(name).type}"
    for name in ["first_suppressed_at", "last_event_at", "expires_at"]:
        assert schema.field(name).type == UTC_MICROS, f"{name}: {schema.field(name).type}"
    assert schema.field("event_count").type == pa.int64()


def test_suppression_run_ids(warehouse):
    first_run, second_run = warehouse.run_ids
    old = warehouse.delta("suppression_list", 0).to_pyarrow_table()
    assert set(old.column("run_id").to_pylist()) == {first_run}
    latest = warehouse.delta("suppression_list").to_pyarrow_table()
    for row in rows_of(latest, ["email_normalized", "run_id"]):
        expected = second_run if row["email_normalized"] in CHANGED_BY_SECOND_RUN else first_run
        assert row["run_id"] == expected, row["email_normalized"]
    changes = warehouse.delta("suppression_changes").to_pyarrow_table()
    assert changes.column("run_id").to_pylist() == [second_run]


def test_suppression_csv_export(warehouse):
    exported = pl.read_csv(warehouse.read_bytes("exports/suppression_list.csv"))
    assert exported["email_normalized"].to_list() == [r["email_normalized"] for r in SUPPRESSION_LIST[1]]
    assert exported["event_count"].to_list() == [r["event_count"] for r in SUPPRESSION_LIST[1]]


# --- Input tables ------------------------------------------------------------


def test_email_events_appended(warehouse):
    first = warehouse.delta("email_events", 0)
    latest = warehouse.delta("email_events", 1)
    first_ids = sorted(first.to_pyarrow_table().column("event_id").to_pylist())
    latest_ids = sorted(latest.to_pyarrow_table().column("event_id").to_pylist())
    assert first_ids == sorted(row[0] for row in EVENTS_FIRST)
    assert latest_ids == sorted(row[0] for row in EVENTS_FIRST + EVENTS_SECOND)
    # An append keeps every file of the previous version.
    assert set(file_names(first.file_uris())) < set(file_names(latest.file_uris()))


def test_email_events_values(warehouse):
    data = warehouse.delta("email_events").to_pyarrow_table()
    assert data.schema.field("occurred_at").type == UTC_MICROS
    events = {row["event_id"]: row for row in data.to_pylist()}
    assert events["E003"]["bounce_type"] == "hard"
    assert events["E003"]["occurred_at"] == utc("2026-01-02T08:00:00Z")
    assert events["E001"]["bounce_type"] is None
    assert events["E102"]["event_type"] == "complaint"
    assert events["E102"]["campaign_id"] == "cmp-3"


def test_contacts_upsert(warehouse):
    first = {r["contact_id"]: r for r in warehouse.delta("contacts", 0).to_pyarrow_table().to_pylist()}
    latest = {r["contact_id"]: r for r in warehouse.delta("contacts", 1).to_pyarrow_table().to_pylist()}
    assert sorted(first) == ["c001", "c002", "c003", "c004", "c005"]
    assert sorted(latest) == ["c001", "c002", "c003", "c004", "c005", "c006"]
    assert first["c002"]["lifecycle_stage"] == "lead"
    assert latest["c002"]["lifecycle_stage"] == "customer"
    assert latest["c002"]["updated_at"] == utc("2026-01-08T09:00:00Z")
    assert latest["c001"]["lifecycle_stage"] == "lead"
    assert latest["c006"]["email"] == "frank@example.org"


# --- nightshift path and history against deltalake --------------------------


@pytest.mark.parametrize("table", TABLES)
def test_path_matches_deltalake(warehouse, table):
    latest = warehouse.nightshift_json("path", table)
    assert latest["table"] == table
    assert latest["version"] == warehouse.delta(table).version()
    assert latest["uri"].rstrip("/").endswith(f"/tables/{table}")
    for version in EXPECTED_ROWS[table]:
        reported = warehouse.nightshift_json("path", table, "--version", str(version))
        assert reported["table"] == table
        assert reported["version"] == version
        assert reported["rows"] == EXPECTED_ROWS[table][version], f"{table} v{version}"
        expected_files = file_names(warehouse.delta(table, version).file_uris())
        assert file_names(reported["files"]) == expected_files, f"{table} v{version}"


@pytest.mark.parametrize("table", TABLES)
def test_history_matches_deltalake(warehouse, table):
    reported = warehouse.nightshift_json("history", table)
    assert isinstance(reported, list), f"history --json is not a JSON array: {reported!r}"
    by_version = {entry["version"]: entry for entry in reported}
    delta_history = {entry["version"]: entry for entry in warehouse.delta(table).history()}
    assert sorted(by_version) == sorted(delta_history)
    for version, entry in by_version.items():
        expected_rows = warehouse.delta(table, version).to_pyarrow_table().num_rows
        assert entry["num_rows"] == expected_rows, f"{table} v{version}"
        assert entry["operation"] == delta_history[version].get("operation"), f"{table} v{version}"


@pytest.mark.parametrize("table", ["suppression_list", "suppression_changes"])
def test_history_names_runs(warehouse, table):
    reported = {entry["version"]: entry for entry in warehouse.nightshift_json("history", table)}
    assert reported[0]["run_id"] == warehouse.run_ids[0]
    assert reported[1]["run_id"] == warehouse.run_ids[1]


@pytest.mark.parametrize("version", [0, 1])
def test_duckdb_reads_path_files(warehouse, tmp_path, version):
    reported = warehouse.nightshift_json("path", "suppression_list", "--version", str(version))
    local_files = [str(warehouse.local_copy(uri, tmp_path)) for uri in reported["files"]]
    assert local_files, "path --json listed no files"
    connection = duckdb.connect()
    count, total_events = connection.execute(
        "SELECT count(*), sum(event_count) FROM read_parquet(?)", [local_files]
    ).fetchone()
    assert count == len(SUPPRESSION_LIST[version])
    assert total_events == sum(r["event_count"] for r in SUPPRESSION_LIST[version])
    first_seen = connection.execute(
        "SELECT first_suppressed_at FROM read_parquet(?) WHERE email_normalized = 'dave@example.com'",
        [local_files],
    ).fetchone()[0]
    assert first_seen == DAVE["first_suppressed_at"]


# --- Run manifests -----------------------------------------------------------


def test_run_manifests(warehouse):
    manifests = warehouse.manifests()
    assert len(manifests) == 2
    for index, manifest in enumerate(manifests):
        assert manifest["pipeline"] == "suppression"
        assert manifest["kind"] == "suppression"
        assert manifest["status"] == "succeeded", manifest.get("error")
        assert manifest["metrics"]["events_without_email"] == EVENTS_WITHOUT_EMAIL[index]
        outputs = {o["table"]: o for o in manifest["outputs"]}
        assert outputs["suppression_list"]["version"] == index
        assert outputs["suppression_list"]["rows"] == len(SUPPRESSION_LIST[index])
        inputs = {i["table"]: i for i in manifest["inputs"]}
        assert inputs["email_events"]["version"] == index
    reported = [run["manifest"] for run in warehouse.reported_runs]
    assert [m["run_id"] for m in reported] == [m["run_id"] for m in manifests]
    assert [run["dry_run"] for run in warehouse.reported_runs] == [False, False]
    assert [m["status"] for m in reported] == ["succeeded", "succeeded"]
    second_inputs = {i["table"]: i for i in manifests[1]["inputs"]}
    # The second run reads only the events appended after version 0.
    assert second_inputs["email_events"]["incremental_from"] == 0


# --- Single-purpose warehouses -------------------------------------------------


def test_rejected_rows_kept_apart(tmp_path, nightshift_bin, request):
    warehouse = new_warehouse(request, tmp_path, nightshift_bin, "local")
    rows = [
        EVENTS_FIRST[1],
        ["E900", "c001", "alice@example.com", "open", "", "", "cmp-9", "not a timestamp"],
        EVENTS_FIRST[5],
    ]
    source = write_csv(tmp_path / "events_with_bad_row.csv", EVENT_COLUMNS, rows)
    warehouse.nightshift(
        "ingest", "email_events", str(source), "--format", "csv", "--max-rejected", "1"
    )
    accepted = warehouse.delta("email_events").to_pyarrow_table()
    assert sorted(accepted.column("event_id").to_pylist()) == ["E002", "E006"]
    rejected = warehouse.delta("email_events_rejected").to_pyarrow_table().to_pylist()
    assert len(rejected) == 1
    assert rejected[0]["source_file"].endswith("events_with_bad_row.csv")
    assert rejected[0]["reason"], "a rejected row must say why"
    assert "E900" in rejected[0]["record"]


def test_unchanged_inputs_skip_run(tmp_path, nightshift_bin, request):
    warehouse = new_warehouse(request, tmp_path, nightshift_bin, "local")
    source = write_csv(tmp_path / "email_events.csv", EVENT_COLUMNS, EVENTS_FIRST)
    warehouse.nightshift("ingest", "email_events", str(source), "--format", "csv")
    warehouse.nightshift("run", "suppression")
    [second] = warehouse.nightshift_json("run", "suppression")
    assert second["manifest"]["status"] == "skipped"
    assert warehouse.delta("suppression_list").version() == 0
    statuses = [m["status"] for m in warehouse.manifests()]
    assert statuses == ["succeeded", "skipped"]

    warehouse.nightshift("run", "suppression", "--force")
    forced = warehouse.manifests()[-1]
    assert forced["status"] == "succeeded"
    assert forced["forced"] is True
    # A forced run re-reads the same events, so the list keeps its rows.
    latest = warehouse.delta("suppression_list").to_pyarrow_table()
    assert rows_of(latest, SUPPRESSION_COLUMNS) == SUPPRESSION_LIST[0]


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_concurrent_ingests_commit_once(tmp_path, nightshift_bin, request, backend):
    warehouse = new_warehouse(request, tmp_path, nightshift_bin, backend)
    writers = 4
    processes = []
    for index in range(writers):
        row = [f"R{index}", "c001", f"race{index}@example.com", "delivered", "", "", "cmp-r", "2026-01-05T00:00:00Z"]
        source = write_csv(tmp_path / f"race_{index}.csv", EVENT_COLUMNS, [row])
        command = [
            str(nightshift_bin), "--warehouse", warehouse.url,
            "ingest", "email_events", str(source), "--format", "csv",
        ]
        processes.append(
            subprocess.Popen(
                command, cwd=warehouse.project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    committed = []
    for index, process in enumerate(processes):
        _stdout, stderr = process.communicate(timeout=CLI_TIMEOUT_SECONDS)
        assert process.returncode in (0, 1), f"writer {index} exited {process.returncode}:\n{stderr}"
        if process.returncode == 0:
            committed.append(f"R{index}")
        else:
            assert "conflict" in stderr, f"writer {index} failed for another reason:\n{stderr}"

    # Whichever writers win, each commit is one whole version and a writer
    # that lost the race leaves none of its rows visible.
    assert committed, "no writer committed"
    delta = warehouse.delta("email_events")
    assert delta.version() == len(committed) - 1
    assert sorted(delta.to_pyarrow_table().column("event_id").to_pylist()) == sorted(committed)
