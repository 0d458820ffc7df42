"""Deduplicate a person file with Splink's standard unsupervised setup (DuckDB backend).

Usage: splink_dedupe.py INPUT OUT.parquet [--threshold 0.9] [--count-pairs] [--blocking febrl3|nightshift]

INPUT is a FEBRL CSV (rec_id, given_name, surname, ...) or a Parquet file of
generate_people.py (rec_id, first_name, last_name, ...). The setup is the one
of Splink's FEBRL3 deduplication example (docs/demos/examples/duckdb/febrl3 in
the Splink repository, Splink 5.0.0):

- blocking rules for prediction: soc_sec_id, first name, last name,
  date_of_birth, postcode, each on its own (a pair is a candidate when any
  rule matches);
- comparisons: NameComparison on first and last name, DateOfBirthComparison
  (string, %Y%m%d), DamerauLevenshteinAtThresholds(soc_sec_id, [2]), and
  ExactMatch with term frequency adjustments on street_number and postcode;
- the probability that two random records match, from three deterministic
  rules at recall 0.9: equal soc_sec_id, equal names and date of birth, and
  swapped names with equal date of birth;
- u by random sampling (max_pairs 1e6, seed 2), then m by expectation
  maximisation on the pairs blocked on date_of_birth, then on postcode.

With `--blocking nightshift`, prediction uses the default blocking rules of
nightshift's dedupe job instead, where the file has their columns. A pair is
a candidate when it agrees on any of:
- postcode, first name and the first letter of the last name;
- postcode, last name and the first letter of the first name;
- the first 3 letters of the first or of the last name, with the date of
  birth;
- the first 3 letters of both names, with the birth year and month;
- soc_sec_id, or its first 4 digits with the birth year and month;
- street and street number, or the first 5 letters of the street with the
  postcode;
- email; phone.
EM then blocks on the first 3 letters of the first name with the date of
birth, and on postcode and last name, because the blocks on date of birth
and on postcode alone grow with the square of the records. The comparisons
and the other steps stay as above.

The pairs at or above --threshold are predicted, and clustered as connected
components at the same threshold. The output has one row per record:
record_id, cluster_id. A JSON line on stdout reports the number of predicted
pairs and the time of each step. With --count-pairs, the script counts the
candidate pairs of the blocking rules exactly instead, and does nothing else.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import duckdb
import splink
import splink.comparison_library as cl
from splink import DuckDBAPI, Linker, SettingsCreator, block_on
from splink.blocking_analysis import count_comparisons_from_blocking_rules


def load(connection: duckdb.DuckDBPyConnection, path: str) -> duckdb.DuckDBPyRelation:
    """Load INPUT with the column names of generate_people.py, all values as trimmed strings."""
    if path.endswith(".parquet"):
        return connection.sql(f"select * from read_parquet('{path}')")
    relation = connection.read_csv(path, all_varchar=True, header=True)
    renames = {"given_name": "first_name", "surname": "last_name", "suburb": "city"}
    columns = []
    for name in relation.columns:
        target = renames.get(name.strip(), name.strip())
        columns.append(f"nullif(trim(\"{name}\"), '') as {target}")
    return connection.sql(f"select {', '.join(columns)} from relation")


def blocking_rules(blocking: str, columns: list[str]) -> list:
    if blocking == "nightshift":
        contact_rules = [block_on(column) for column in ["email", "phone"] if column in columns]
        return [
            block_on("postcode", "first_name", "substr(last_name, 1, 1)"),
            block_on("postcode", "last_name", "substr(first_name, 1, 1)"),
            block_on("substr(first_name, 1, 3)", "date_of_birth"),
            block_on("substr(last_name, 1, 3)", "date_of_birth"),
            block_on("substr(first_name, 1, 3)", "substr(last_name, 1, 3)", "substr(date_of_birth, 1, 6)"),
            block_on("soc_sec_id"),
            block_on("substr(soc_sec_id, 1, 4)", "substr(date_of_birth, 1, 6)"),
            block_on("address_1", "street_number"),
            block_on("substr(address_1, 1, 5)", "postcode"),
            *contact_rules,
        ]
    return [
        block_on("soc_sec_id"),
        block_on("first_name"),
        block_on("last_name"),
        block_on("date_of_birth"),
        block_on("postcode"),
    ]


def em_blocking_rules(blocking: str) -> list:
    if blocking == "nightshift":
        return [block_on("substr(first_name, 1, 3)", "date_of_birth"), block_on("postcode", "last_name")]
    return [block_on("date_of_birth"), block_on("postcode")]


def settings(blocking: str, columns: list[str]) -> SettingsCreator:
    return SettingsCreator(
        unique_id_column_name="rec_id",
        link_type="dedupe_only",
        blocking_rules_to_generate_predictions=blocking_rules(blocking, columns),
        comparisons=[
            cl.NameComparison("first_name"),
            cl.NameComparison("last_name"),
            cl.DateOfBirthComparison("date_of_birth", input_is_string=True, datetime_format="%Y%m%d"),
            cl.DamerauLevenshteinAtThresholds("soc_sec_id", [2]),
            cl.ExactMatch("street_number").configure(term_frequency_adjustments=True),
            cl.ExactMatch("postcode").configure(term_frequency_adjustments=True),
        ],
        retain_intermediate_calculation_columns=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help="FEBRL CSV or generate_people.py Parquet file")
    parser.add_argument("out", nargs="?", help="Parquet file for record_id, cluster_id")
    parser.add_argument("--threshold", type=float, default=0.9, help="match probability for prediction and clustering")
    parser.add_argument("--count-pairs", action="store_true", help="only count the candidate pairs, exactly")
    parser.add_argument(
        "--blocking",
        choices=["febrl3", "nightshift"],
        default="febrl3",
        help="blocking rules: those of Splink's FEBRL3 example (default) or nightshift's defaults",
    )
    args = parser.parse_args()
    if not args.count_pairs and not args.out:
        sys.exit("OUT is missing: give the Parquet file for the clusters, or --count-pairs")

    steps: dict[str, float] = {}
    started = time.perf_counter()
    connection = duckdb.connect()
    frame = load(connection, args.input)
    db_api = DuckDBAPI(connection=connection)
    records = db_api.register(frame)
    steps["load"] = time.perf_counter() - started

    if args.count_pairs:
        counts = count_comparisons_from_blocking_rules(
            records,
            blocking_rules=blocking_rules(args.blocking, frame.columns),
            link_type="dedupe_only",
            unique_id_column_name="rec_id",
            record_sample_proportion=1.0,
        )
        pairs = counts[-1]["cumulative_comparison_count"]
        print(json.dumps({"candidate_pairs": int(pairs), "seconds": time.perf_counter() - started}))
        return

    linker = Linker(records, settings(args.blocking, frame.columns))
    deterministic_rules = [
        block_on("soc_sec_id"),
        block_on("first_name", "last_name", "date_of_birth"),
        "l.first_name = r.last_name and l.last_name = r.first_name and l.date_of_birth = r.date_of_birth",
    ]
    linker.training.estimate_probability_two_random_records_match(deterministic_rules, recall=0.9)
    linker.training.estimate_u_using_random_sampling(max_pairs=1e6, seed=2)
    for rule in em_blocking_rules(args.blocking):
        linker.training.estimate_parameters_using_expectation_maximisation(rule)
    steps["train"] = time.perf_counter() - started - sum(steps.values())

    predictions = linker.inference.predict(threshold_match_probability=args.threshold)
    predicted_pairs = predictions.as_duckdbpyrelation().count("*").fetchall()[0][0]
    steps["predict"] = time.perf_counter() - started - sum(steps.values())

    clusters = linker.clustering.cluster_pairwise_predictions_at_threshold(
        predictions, threshold_match_probability=args.threshold
    )
    clusters.as_duckdbpyrelation().select("rec_id as record_id, cast(cluster_id as varchar) as cluster_id").write_parquet(
        args.out
    )
    steps["cluster"] = time.perf_counter() - started - sum(steps.values())
    print(json.dumps({"splink_version": splink.__version__, "predicted_pairs": int(predicted_pairs), "steps": steps}))


if __name__ == "__main__":
    main()
