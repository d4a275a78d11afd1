"""Evaluate a clustering out-of-core: one map-reduce pass per split of a store.

Every chunk, under the fitted centers, contributes a contingency table
(cluster x true class), its inertia, its nearest and random members per
cluster and a slice of a uniform sample (:mod:`distkm.kernels.evaluation`);
a fixed tree adds them up; the scores come from the tables
(:mod:`distkm.evaluation.metrics`). Only tables and a few hundred rows reach the client.

Held-out evaluation: each cluster is mapped to the most frequent true class
among its members in the *mapping split* (``train`` when the store has one),
and that mapping scores every split, so the test accuracy is honest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import numpy as np

from distkm import config
from distkm.engine.graph import map_reduce, row_offsets
from distkm.engine.run import compute
from distkm.evaluation.metrics import majority_mapping, mapped_accuracy, scores_from_table
from distkm.io import locations
from distkm.io.outputs import write_text_atomic
from distkm.io.stores import printable
from distkm.kernels.assign import assign_labels, prepare_centers
from distkm.kernels.evaluation import evaluate_chunk, merge_evaluations, silhouette_score
from distkm.kernels.sampling import TopRows

#: Known class names of the shipped datasets (a store may carry its own ``label_names``).
CLASS_NAMES = {
    "fashion-mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"],
}


@dataclass
class SplitEvaluation:
    """The evaluation of the rows of one split.

    Attributes
    ----------
    name : str
        Split name (``train``, ``test``) or ``all``.
    rows : int
    row_range : tuple of int
        ``[start, stop)`` of the split in the store.
    inertia : float
    table : ndarray of shape (k, n_classes), int64
        Contingency table (one column when the store has no labels).
    scores : dict or None
        :func:`distkm.evaluation.metrics.scores_from_table`, plus ``accuracy`` under the
        mapping learnt on the mapping split; None without labels.
    silhouette : float or None
        Silhouette score of a uniform sample of the split's rows.
    silhouette_sample : int
        Rows in that sample.
    nearest, random : TopRows or None
        Per cluster, members nearest the center and random members (store row indices).
    """

    name: str
    rows: int
    row_range: tuple
    inertia: float
    table: np.ndarray
    scores: dict | None
    silhouette: float | None
    silhouette_sample: int
    nearest: TopRows | None = None
    random: TopRows | None = None

    @property
    def cluster_sizes(self):
        return self.table.sum(axis=1)

    def to_dict(self):
        out = {"rows": self.rows, "row_range": list(self.row_range), "inertia": self.inertia,
               "inertia_per_row": self.inertia / self.rows, "cluster_sizes": self.cluster_sizes.tolist()}
        out.update(self.scores or {})
        out["silhouette"] = self.silhouette
        out["silhouette_sample"] = self.silhouette_sample
        out["contingency"] = self.table.tolist()
        return out


@dataclass
class Evaluation:
    """Scores of one clustering on every split of a store.

    Attributes
    ----------
    splits : dict of str -> SplitEvaluation
    mapping_split : str
        Split whose majority labels define ``cluster_to_class``.
    cluster_to_class : ndarray of shape (k,) or None
        Class index of every cluster (-1: empty there); None without labels.
    class_names : list of str or None
    store : str
    """

    splits: dict
    mapping_split: str
    cluster_to_class: np.ndarray | None
    class_names: list | None
    store: str

    @property
    def labelled(self):
        return self.cluster_to_class is not None

    def to_dict(self):
        return {
            "store": self.store,
            "mapping_split": self.mapping_split,
            "class_names": self.class_names,
            "cluster_to_class": None if self.cluster_to_class is None else self.cluster_to_class.tolist(),
            "splits": {name: part.to_dict() for name, part in self.splits.items()},
        }

    def write_json(self, path):
        """Write :meth:`to_dict` as JSON, atomically."""
        write_text_atomic(path, json.dumps(self.to_dict(), indent=2) + "\n")

    def table(self):
        """The scores as a plain-text table, one line per split."""
        columns = [("split", "{}"), ("rows", "{:,}"), ("inertia/row", "{:.6g}")]
        if self.labelled:
            columns += [("accuracy", "{:.4f}"), ("NMI", "{:.4f}"), ("ARI", "{:.4f}"), ("homog.", "{:.4f}"),
                        ("compl.", "{:.4f}"), ("V", "{:.4f}")]
        columns += [("silhouette", "{:.4f}")]
        lines = []
        for part in self.splits.values():
            values = [printable(part.name), part.rows, part.inertia / part.rows]
            if self.labelled:
                s = part.scores
                values += [s["accuracy"], s["nmi"], s["ari"], s["homogeneity"], s["completeness"], s["v_measure"]]
            values.append(part.silhouette)
            lines.append(["-" if v is None else fmt.format(v) for (_, fmt), v in zip(columns, values)])
        header = [name for name, _ in columns]
        widths = [max(len(h), *(len(row[i]) for row in lines)) for i, h in enumerate(header)]
        text = [" ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(header, widths)))]
        text += [" ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(row, widths)))
                 for row in lines]
        if self.labelled:
            rows = "rows" if self.mapping_split == "all" else f"{printable(self.mapping_split)} rows"
            text.append(f"accuracy: each cluster labelled with the majority class of its {rows}")
        return "\n".join(text)


class EvaluationPlan(NamedTuple):
    """What evaluating a store means: its splits, the split clusters are mapped on, and each split's settings."""

    splits: dict  # name -> (start, stop)
    mapping_split: str
    n_classes: int
    class_names: list | None
    settings: dict  # name -> keyword arguments of distkm.kernels.evaluate_assignment (but the clusters and offset)


def plan_evaluation(store, *, mapping_split=None, n_members=20, silhouette_sample=None, seed=0):
    """The :class:`EvaluationPlan` of a store opened without a split (see :func:`evaluate_store`)."""
    x, y = store.images, store.labels
    splits = {name: tuple(bounds) for name, bounds in store.attrs.get("splits", {}).items()}
    if not splits or sum(stop - start for start, stop in splits.values()) != x.shape[0]:
        splits = {"all": (0, x.shape[0])}
    if mapping_split is None:
        mapping_split = "train" if "train" in splits else next(iter(splits))
    if mapping_split not in splits:
        raise ValueError(f"store {locations.public_url(store.path)!r} has no split {mapping_split!r} "
                         f"(it has: {', '.join(splits)})")
    sample = config.get("silhouette-sample") if silhouette_sample is None else silhouette_sample
    n_classes, class_names = _classes(store) if y is not None else (1, None)
    settings = {name: {"n_classes": n_classes, "n_members": n_members if name == mapping_split else 0,
                       "sample_size": sample, "seed": seed} for name in splits}
    return EvaluationPlan(splits, mapping_split, n_classes, class_names, settings)


def evaluate_store(model, store, *, mapping_split=None, n_members=20, silhouette_sample=None, seed=0,
                   split_every=None, block_rows=None, plan=None, known=None):
    """Evaluate a fitted model on every split of a store, out-of-core.

    Parameters
    ----------
    model : distkm.KMeans
        Fitted.
    store : distkm.io.stores.ImageStore
        Opened without a split (:func:`distkm.io.stores.open_store`): all its splits are evaluated.
    mapping_split : str, optional
        Split on which clusters are mapped to classes (default ``train`` if
        the store has it, else all rows).
    n_members : int
        Nearest and random members kept per cluster (of the mapping split), for pictures.
    silhouette_sample : int, optional
        Rows sampled per split for the silhouette score (default
        ``distkm.silhouette-sample``; 0 skips it).
    seed : int
        Seed of the random members and the sample.
    split_every, block_rows : int, optional
        Tree fan-in and kernel block size (defaults from ``distkm`` config).
    plan : EvaluationPlan, optional
        From :func:`plan_evaluation` (instead of the four parameters above).
    known : dict, optional
        ``{split: ChunkEvaluation}`` already tabulated (by the final pass of
        the fit, with the plan's settings): those splits are not read again.

    Returns
    -------
    Evaluation
    """
    if plan is None:
        plan = plan_evaluation(store, mapping_split=mapping_split, n_members=n_members,
                               silhouette_sample=silhouette_sample, seed=seed)
    x, y = store.images, store.labels
    centers = np.asarray(model.cluster_centers_)
    dtype = model.cluster_centers_.dtype
    known = dict(known or {})
    jobs = {}
    for name, (start, stop) in plan.splits.items():
        if name not in known:
            jobs[name] = evaluation_pass(x[start:stop], None if y is None else y[start:stop], centers, dtype,
                                         row_offset=start, split_every=split_every, block_rows=block_rows,
                                         **plan.settings[name])
    if jobs:
        known.update(zip(jobs, compute(*jobs.values(), label=f"evaluation pass ({', '.join(jobs)})")))
    results = {name: known[name] for name in plan.splits}
    mapping = majority_mapping(results[plan.mapping_split].table) if y is not None else None
    parts = {}
    for name, result in results.items():
        scores = None
        if mapping is not None:
            scores = scores_from_table(result.table)
            scores["majority_accuracy"] = scores["accuracy"]  # each cluster labelled by this split's own majority
            scores["accuracy"] = mapped_accuracy(result.table, mapping)
        silhouette, used = _silhouette(result.sample, centers, dtype)
        mapped = name == plan.mapping_split
        parts[name] = SplitEvaluation(name, int(result.table.sum()), plan.splits[name], float(result.inertia),
                                      result.table, scores, silhouette, used,
                                      result.nearest if mapped else None, result.random if mapped else None)
    return Evaluation(parts, plan.mapping_split, mapping, plan.class_names, locations.public_url(store.path))


def evaluation_pass(x, y, centers, dtype, *, n_classes, n_members, sample_size, seed, row_offset=0,
                    split_every=None, block_rows=None):
    """Lazy :class:`~distkm.kernels.evaluation.ChunkEvaluation` of all rows of ``x`` (tasks ``distkm-evaluation``)."""
    c, half = prepare_centers(centers, dtype)
    offsets = row_offsets(x) + row_offset
    chunk = partial(evaluate_chunk, n_classes=n_classes, n_members=n_members, sample_size=sample_size, seed=seed,
                    block_rows=block_rows or config.block_rows())
    return map_reduce(x, chunk, merge_evaluations, name="evaluation", constants=(c, half), weights=y,
                      split_every=split_every or config.split_every(),
                      per_chunk=lambda i: {"row_offset": int(offsets[i])}).result


def _classes(store):
    """Number of classes and their names: the store's ``label_names``, a known dataset's, or 0..max."""
    names = store.attrs.get("label_names") or CLASS_NAMES.get(store.attrs.get("source", {}).get("dataset"))
    top = int(store.labels.max().compute())
    if store.labels.dtype.kind not in "ui" or int(store.labels.min().compute()) < 0:
        raise ValueError(f"store {locations.public_url(store.path)!r}: labels must be non-negative integers")
    if names is None or len(names) <= top:
        names = [str(i) for i in range(top + 1)]
    return len(names), [printable(name) for name in names]  # they reach the terminal, the report, the pictures


def _silhouette(sample, centers, dtype):
    """Silhouette score of the sampled rows under their nearest centers (None if undefined)."""
    used = int(sample.counts[0])
    if used < 3:
        return None, used
    rows = sample.rows[0, :used]
    c, half = prepare_centers(centers, dtype)
    labels = assign_labels(rows, c, half)
    if not 2 <= np.unique(labels).shape[0] <= used - 1:
        return None, used
    # In the compute dtype (float32: within ~1e-7 of float64 on MNIST samples, twice as fast).
    return silhouette_score(rows.astype(dtype), labels), used
