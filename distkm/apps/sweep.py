"""Choose k: fit and evaluate a list of k on one store, with one cluster and one read of the data.

The store is cached on the workers when it fits (:mod:`distkm.engine.cache`), so
the ten or so fits of a sweep read it once. Each k gets a small run folder
(``k=010/``: model, evaluation) that ``distkm evaluate`` can picture later;
the sweep itself writes a table and an elbow plot.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from contextlib import contextmanager

import dask.array as da

from distkm import config
from distkm.engine.loop import prepare_rows
from distkm.estimator import KMeans
from distkm.evaluation.evaluate import evaluate_store
from distkm.io import locations
from distkm.io.model import save_model
from distkm.io.outputs import atomic_output, staged_locally, write_text_atomic

logger = logging.getLogger("distkm")

#: Columns of the sweep table: (key, header, format).
COLUMNS = [
    ("k", "k", "{:d}"),
    ("inertia", "inertia", "{:.5g}"),
    ("train_accuracy", "train acc.", "{:.4f}"),
    ("test_accuracy", "test acc.", "{:.4f}"),
    ("nmi", "NMI", "{:.4f}"),
    ("ari", "ARI", "{:.4f}"),
    ("silhouette", "silhouette", "{:.4f}"),
    ("n_iter", "iterations", "{:d}"),
    ("fit_seconds", "fit s", "{:.1f}"),
]


@contextmanager
def sweep_folder(out, *, overwrite=False, inputs=()):
    """A local folder to build a sweep in; it becomes ``out`` (a folder, or a URL) when the block succeeds.

    Only the client writes a sweep (models, tables, pictures), so for a URL
    it is built locally, uploaded into a hidden prefix, then published whole.
    """
    with atomic_output(out, overwrite=overwrite, inputs=inputs) as built, staged_locally(built) as folder:
        yield folder


def parse_ks(text):
    """``"2,5,10"`` -> ``[2, 5, 10]`` (sorted, without repeats), with a clear error for anything else."""
    try:
        ks = sorted({int(v) for v in str(text).split(",") if v.strip()})
    except ValueError:
        raise ValueError(f"k must be a comma-separated list of integers, e.g. 2,5,10; got {text!r}") from None
    if not ks or ks[0] < 1:
        raise ValueError(f"k needs positive integers, got {text!r}")
    return ks


def sweep(store, ks, *, split=None, out=None, fit_params=None, silhouette_sample=None, seed=0, on_result=None,
          progress=None,
          cache="auto"):
    """Fit and evaluate every k of ``ks`` on a store.

    Parameters
    ----------
    store : distkm.data.ImageStore
        Opened without a split.
    ks : list of int
    split : str, optional
        Split to fit on (``train``); all splits are evaluated, with clusters
        mapped to classes on this split.
    out : Path, optional
        Folder that receives a ``k=NNN`` run folder per k.
    fit_params : dict, optional
        More :class:`~distkm.KMeans` parameters (``random_state``, ``max_iter``, ``dtype``...).
    silhouette_sample : int, optional
        See :func:`distkm.evaluation.evaluate.evaluate_store`.
    seed : int
        Seed of the evaluation's sample.
    on_result : callable, optional
        Called with each row as soon as its k is done.
    progress : callable, optional
        Hears every fit's events, iterations included (see :func:`distkm.engine.loop.fit`).
    cache : {"auto", True, False}
        Hold the rows of the fitted split on the workers (see :mod:`distkm.engine.cache`),
        once for every k; the evaluation reads them there too.

    Returns
    -------
    list of dict
        One row per k: the :data:`COLUMNS` and more (homogeneity, completeness, V-measure, cluster sizes).
    """
    splits = store.attrs.get("splits", {})
    if split is not None and split not in splits:
        raise ValueError(f"store {locations.public_url(store.path)!r} has no split {split!r} "
                         f"(it has: {', '.join(splits) or 'none'})")
    start, stop = splits[split] if split else (0, store.images.shape[0])
    x = store.images[start:stop]
    if ks[-1] > x.shape[0]:
        raise ValueError(f"n_samples={x.shape[0]} should be >= n_clusters={ks[-1]} (the largest k of the sweep).")
    held_out = [name for name in splits if name != split] if split else []
    fit_params = dict(fit_params or {})
    # Cached once, in the blocks a fit would make (one task per block an iteration; a small split is
    # one block, whose iterations then run in batches inside its task), summarised once, and held for every k.
    prepared = prepare_rows(x, cache=cache, split_every=fit_params.get("split_every") or config.split_every(),
                            cache_fraction=config.cache_fraction())
    scored = store if prepared.cached is None else _with_rows(store, start, stop, prepared.x)
    rows = []
    for k in ks:
        model = KMeans(n_clusters=k, **{**fit_params, "cache": prepared.cached is not None})
        began = time.perf_counter()
        model.fit(prepared, progress=progress)
        fit_seconds = time.perf_counter() - began
        evaluation = evaluate_store(model, scored, mapping_split=split, n_members=0,
                                    silhouette_sample=silhouette_sample, seed=seed)
        trained = evaluation.splits[evaluation.mapping_split]
        row = {"k": k, "inertia": model.inertia_, "n_iter": int(model.n_iter_), "fit_seconds": fit_seconds,
               "silhouette": trained.silhouette, "cluster_sizes": model.cluster_sizes_.tolist()}
        if evaluation.labelled:
            scores = trained.scores
            row.update(train_accuracy=scores["accuracy"], nmi=scores["nmi"], ari=scores["ari"],
                       homogeneity=scores["homogeneity"], completeness=scores["completeness"],
                       v_measure=scores["v_measure"])
            if held_out:
                row["test_accuracy"] = evaluation.splits[held_out[0]].scores["accuracy"]
                row["test_split"] = held_out[0]
        if out is not None:
            run_dir = locations.local_path(out) / f"k={k:03d}"
            run_dir.mkdir()
            data = {"path": locations.recorded(store.path), "split": split, "array": "images",
                    "n_samples": int(x.shape[0]), "n_features": int(x.shape[1])}
            save_model(run_dir, model, data=data, extra={"timings": {"fit_seconds": fit_seconds}})
            evaluation.write_json(run_dir / "evaluation.json")
        rows.append(row)
        if on_result is not None:
            on_result(row)
    return rows


def format_table(rows, *, markdown=False):
    """The sweep rows as a text (or Markdown) table; columns without values are left out."""
    columns = [c for c in COLUMNS if any(r.get(c[0]) is not None for r in rows)]
    cells = [[("-" if r.get(key) is None else fmt.format(r[key])) for key, _, fmt in columns] for r in rows]
    headers = [header for _, header, _ in columns]
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "---:|" * len(headers)]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(headers)]
    return "\n".join(" ".join(v.rjust(w) for v, w in zip(line, widths)) for line in [headers, *cells])


def write_sweep(out, rows, *, store, split, pictures=True):
    """Write ``sweep.json``, ``sweep.md``, ``sweep.csv`` and ``elbow.png`` into ``out``."""
    out = locations.local_path(out)
    doc = {"store": locations.recorded(store.path), "split": split, "rows": rows}
    write_text_atomic(out / "sweep.json", json.dumps(doc, indent=2) + "\n")
    keys = [key for key, _, _ in COLUMNS if any(r.get(key) is not None for r in rows)]
    csv = [",".join(keys)] + [",".join("" if r.get(key) is None else repr(r[key]) for key in keys) for r in rows]
    write_text_atomic(out / "sweep.csv", "\n".join(csv) + "\n")
    text = [f"# k-means sweep on `{doc['store']}`" + (f" (fitted on split {split})" if split else ""), "",
            format_table(rows, markdown=True), ""]
    if pictures:
        from distkm.evaluation.pictures import plot_sweep

        plot_sweep(rows, out / "elbow.png")
        text += ["![inertia and scores against k](elbow.png)", ""]
    text += ["Accuracy: every cluster is labelled with the most frequent true class of its training rows; "
             "the test accuracy applies that labelling to the held-out rows.", ""]
    write_text_atomic(out / "sweep.md", "\n".join(text))


def _with_rows(store, start, stop, rows):
    """The store with its rows ``start:stop`` taken from ``rows`` (the cached ones), the others from disk."""
    images = store.images
    parts = [part for part in (images[:start], rows, images[stop:]) if part.shape[0]]
    return dataclasses.replace(store, images=parts[0] if len(parts) == 1 else da.concatenate(parts))
