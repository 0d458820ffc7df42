"""Read the scoring model and the list definitions from nightshift pipeline files.

Both reference scripts take the same pipeline files as nightshift, so the
three tools score with one model and refresh one set of lists. Only the
parameters that the benchmark pipelines use are read: as_of, the groups with
their points, decay and cap, the fit rules, engagement_cap, fit_cap, bands,
mql_threshold and the lists' id and filter.
"""

from __future__ import annotations

import dataclasses
import datetime
import tomllib
from pathlib import Path

MICROS_PER_DAY = 86_400_000_000
UNIX_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


@dataclasses.dataclass
class Group:
    """A rule group: points per event key from one source, decayed and capped together."""

    name: str
    source: str
    points: dict[str, float]
    decay: dict
    cap: float | None


@dataclasses.dataclass
class FitRule:
    """A SQL boolean over contact columns and the points it gives."""

    name: str
    rule: str
    points: float


@dataclasses.dataclass
class Model:
    """The parameters of a `scoring` pipeline."""

    as_of_micros: int
    groups: list[Group]
    fit_rules: list[FitRule]
    engagement_cap: float | None
    fit_cap: float | None
    bands: list[tuple[str, float]]
    mql_threshold: float | None

    def output_columns(self) -> list[str]:
        """Return the columns that the benchmark compares, in the order the references write them."""
        return [
            "contact_id",
            *(f"engagement_{group.name}" for group in self.groups),
            *(f"fit_{rule.name}" for rule in self.fit_rules),
            "engagement_score",
            "fit_score",
            "score",
            "grade",
            "mql",
        ]


def parse_as_of(value: str) -> int:
    """Return an RFC 3339 timestamp with a time zone as microseconds since the Unix epoch."""
    moment = datetime.datetime.fromisoformat(value.strip())
    if moment.tzinfo is None:
        raise ValueError(f"as_of {value!r} has no time zone; write it with Z or an offset")
    return (moment - UNIX_EPOCH) // datetime.timedelta(microseconds=1)


def load_model(pipeline_file: Path) -> Model:
    """Read the model of a `scoring` pipeline file; it must set as_of."""
    params = tomllib.loads(pipeline_file.read_text())["params"]
    if "as_of" not in params:
        raise ValueError(f"{pipeline_file} sets no as_of, so the references cannot reproduce its scores")
    # nightshift keeps the groups in a BTreeMap, so it adds the engagement
    # columns in the order of their names. The same order here gives the
    # same floating-point sums.
    groups = [
        Group(
            name=name,
            source=group["source"],
            points={key: float(points) for key, points in group["points"].items()},
            decay=group.get("decay", {"kind": "none"}),
            cap=group.get("cap"),
        )
        for name, group in sorted(params.get("groups", {}).items())
    ]
    fit_rules = [FitRule(rule["name"], rule["rule"], float(rule["points"])) for rule in params.get("fit", [])]
    bands = [(band["grade"], float(band["min"])) for band in params.get("bands", [])]
    return Model(
        as_of_micros=parse_as_of(params["as_of"]),
        groups=groups,
        fit_rules=fit_rules,
        engagement_cap=params.get("engagement_cap"),
        fit_cap=params.get("fit_cap"),
        bands=sorted(bands, key=lambda band: band[1], reverse=True),
        mql_threshold=params.get("mql_threshold"),
    )


def load_lists(pipeline_file: Path) -> list[tuple[str, str]]:
    """Return the (id, filter) pairs of a `list_refresh` pipeline file, in file order."""
    params = tomllib.loads(pipeline_file.read_text())["params"]
    lists = [(entry["id"], entry["filter"]) for entry in params["lists"]]
    if any(entry.get("include_suppressed") for entry in params["lists"]):
        raise ValueError(f"{pipeline_file}: the references have no suppression input, so include_suppressed is unsupported")
    return lists
