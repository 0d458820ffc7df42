"""Pair precision, recall and F1 of a clustering against the truth in the record ids.

Record ids follow FEBRL's convention, which generate_people.py also uses:
`rec-N-org` is an original and `rec-N-dup-K` its K-th duplicate, so two records
are the same person when they share N. A clustering predicts every pair of
records inside one cluster, and the truth is every pair of records of one
person. Pairs are counted from group sizes (k records give k(k-1)/2 pairs), so
nothing of the size of the pairs is built.
"""

from __future__ import annotations

import dataclasses

import polars as pl


@dataclasses.dataclass
class PairAccuracy:
    predicted_pairs: int
    true_pairs: int
    correct_pairs: int

    @property
    def precision(self) -> float:
        return self.correct_pairs / self.predicted_pairs if self.predicted_pairs else 1.0

    @property
    def recall(self) -> float:
        return self.correct_pairs / self.true_pairs if self.true_pairs else 1.0

    @property
    def f1(self) -> float:
        total = self.precision + self.recall
        return 2 * self.precision * self.recall / total if total else 0.0


def _pairs_in_groups(frame: pl.DataFrame, keys: list[str]) -> int:
    sizes = frame.group_by(keys).len()["len"].cast(pl.Int64)
    return int((sizes * (sizes - 1) // 2).sum())


def person_of(record_id: pl.Expr) -> pl.Expr:
    """Return the person number N of `rec-N-org` and `rec-N-dup-K`."""
    return record_id.str.split("-").list.get(1)


def score_clusters(clusters: pl.DataFrame) -> PairAccuracy:
    """Score a frame with one row per record: `record_id` and `cluster_id`.

    A record missing from the frame counts as a cluster of its own, so it
    adds true pairs but no predicted ones.
    """
    frame = clusters.select(
        pl.col("record_id").cast(pl.String),
        pl.col("cluster_id").cast(pl.String),
    ).with_columns(person_of(pl.col("record_id")).alias("person"))
    if frame["record_id"].n_unique() != frame.height:
        raise ValueError("the clustering lists a record more than once")
    return PairAccuracy(
        predicted_pairs=_pairs_in_groups(frame, ["cluster_id"]),
        true_pairs=0,
        correct_pairs=_pairs_in_groups(frame, ["cluster_id", "person"]),
    )


def _true_pairs(all_record_ids: pl.Series) -> int:
    people = all_record_ids.cast(pl.String).to_frame("record_id").select(person_of(pl.col("record_id")).alias("person"))
    return _pairs_in_groups(people, ["person"])


def score(clusters: pl.DataFrame, all_record_ids: pl.Series) -> PairAccuracy:
    """Score `clusters` against the truth over every record in `all_record_ids`."""
    accuracy = score_clusters(clusters)
    accuracy.true_pairs = _true_pairs(all_record_ids)
    return accuracy


def score_pairs(pairs: pl.DataFrame, all_record_ids: pl.Series) -> PairAccuracy:
    """Score a frame of predicted pairs (`id_l`, `id_r`), each unordered pair once."""
    unique_pairs = pairs.select(
        pl.min_horizontal("id_l", "id_r").alias("a"),
        pl.max_horizontal("id_l", "id_r").alias("b"),
    ).unique()
    correct = unique_pairs.filter(person_of(pl.col("a")) == person_of(pl.col("b"))).height
    return PairAccuracy(
        predicted_pairs=unique_pairs.height,
        true_pairs=_true_pairs(all_record_ids),
        correct_pairs=correct,
    )
