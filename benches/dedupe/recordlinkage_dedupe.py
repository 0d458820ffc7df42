"""Deduplicate a FEBRL CSV with recordlinkage's standard unsupervised setup.

Usage: recordlinkage_dedupe.py FEBRL.csv OUT.csv

Runs in its own virtual environment (benches/dedupe/.venv, from
benches/dedupe/requirements-recordlinkage.txt), because recordlinkage 0.16
requires pandas < 3 and the other benchmark scripts use pandas 3.

The setup follows recordlinkage's FEBRL3 deduplication example
(examples/dedup_deterministic.py in the recordlinkage repository) for
indexing and comparison, with its unsupervised ECM classifier
(examples/unsupervised_learning_prob.py) in place of the hand-set weights:

- candidate pairs: blocks on given_name, on surname and on soc_sec_id;
- binary features: exact given_name, date_of_birth, suburb and state;
  Jaro-Winkler at 0.85 on surname; string similarity (the default
  Damerau-Levenshtein) at 0.85 on address_1 and address_2;
- ECMClassifier with its defaults, whose predict() links the pairs with a
  match probability above 0.5.

recordlinkage predicts pairs and does not cluster, so OUT lists the predicted
pairs (id_l, id_r). A JSON line on stdout reports the candidate and predicted
pairs and the time of each step.
"""

from __future__ import annotations

import argparse
import json
import time

import pandas as pd
import recordlinkage as rl
from recordlinkage.compare import Exact, String
from recordlinkage.index import Block


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help="FEBRL CSV file")
    parser.add_argument("out", help="CSV file for the predicted pairs")
    args = parser.parse_args()

    steps: dict[str, float] = {}
    started = time.perf_counter()
    frame = pd.read_csv(args.input, dtype=str, skipinitialspace=True, keep_default_na=False)
    frame.columns = [name.strip() for name in frame.columns]
    frame = frame.apply(lambda column: column.str.strip()).replace("", None).set_index("rec_id")
    steps["load"] = time.perf_counter() - started

    indexer = rl.Index()
    indexer.add(Block("given_name"))
    indexer.add(Block("surname"))
    indexer.add(Block("soc_sec_id"))
    candidates = indexer.index(frame)
    steps["index"] = time.perf_counter() - started - sum(steps.values())

    comparer = rl.Compare()
    comparer.add(Exact("given_name", "given_name", label="given_name"))
    comparer.add(String("surname", "surname", method="jarowinkler", threshold=0.85, label="surname"))
    comparer.add(Exact("date_of_birth", "date_of_birth", label="date_of_birth"))
    comparer.add(Exact("suburb", "suburb", label="suburb"))
    comparer.add(Exact("state", "state", label="state"))
    comparer.add(String("address_1", "address_1", threshold=0.85, label="address_1"))
    comparer.add(String("address_2", "address_2", threshold=0.85, label="address_2"))
    features = comparer.compute(candidates, frame)
    steps["compare"] = time.perf_counter() - started - sum(steps.values())

    classifier = rl.ECMClassifier()
    classifier.fit(features)
    links = classifier.predict(features)
    steps["classify"] = time.perf_counter() - started - sum(steps.values())

    pd.DataFrame({"id_l": links.get_level_values(0), "id_r": links.get_level_values(1)}).to_csv(args.out, index=False)
    report = {
        "recordlinkage_version": rl.__version__,
        "candidate_pairs": len(candidates),
        "predicted_pairs": len(links),
        "steps": steps,
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
