"""The pictures and the one-page Markdown report of a run folder.

``distkm fit`` and ``distkm evaluate`` call :func:`report_run`, which runs the
evaluation pass and :func:`write_run_report`; they add to the run folder::

    evaluation.json   scores per split, contingency tables, cluster -> class
    pictures/         centroids.png, members*.png, confusion.png, convergence.png
    report.md         parameters, convergence, scores and pictures on one page
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np

from distkm import config
from distkm.evaluation.evaluate import evaluate_store, plan_evaluation
from distkm.io import locations
from distkm.io.outputs import write_text_atomic
from distkm.io.stores import printable

logger = logging.getLogger("distkm")

PICTURES = "pictures"


def evaluation_plan_for(store, split, *, pictures=True, n_members=None, silhouette_sample=None, seed=0):
    """How a run fitted on ``split`` of ``store`` is evaluated (:func:`~distkm.evaluation.evaluate.plan_evaluation`).

    Clusters are mapped to classes on the fitted split (else on ``train``);
    members are kept for the pictures only.
    """
    members = config.get("members") if n_members is None else n_members
    return plan_evaluation(store, mapping_split=split if split in store.attrs.get("splits", {}) else None,
                           n_members=members if pictures else 0, silhouette_sample=silhouette_sample, seed=seed)


def report_run(run_dir, model, meta, store, *, evaluate=True, pictures=True, n_members=None,
               silhouette_sample=None, seed=0, known=None, name=None):
    """Evaluate a fitted run on its store (all splits) and write its evaluation, pictures and report.

    Parameters
    ----------
    run_dir : Path
        The run folder (``model.json`` and ``centroids.zarr`` already there).
    model : distkm.KMeans
    meta : dict
        The run's ``model.json``.
    store : distkm.data.ImageStore
        Opened without a split.
    evaluate : bool
        Run the evaluation pass (else only the convergence and centroid pictures and the report).
    pictures : bool
    n_members, silhouette_sample, seed
        See :func:`distkm.evaluation.evaluate.evaluate_store`.
    known : dict, optional
        Evaluation tables of splits already read (by the fit's final pass), see
        :func:`distkm.evaluation.evaluate.evaluate_store`.

    Returns
    -------
    distkm.evaluation.evaluate.Evaluation or None
    """
    evaluation = None
    if evaluate:
        plan = evaluation_plan_for(store, meta.get("data", {}).get("split"), pictures=pictures, n_members=n_members,
                                   silhouette_sample=silhouette_sample, seed=seed)
        evaluation = evaluate_store(model, store, plan=plan, known=known)
    image_shape = image_shape_for(model.cluster_centers_.shape[1], store.attrs.get("image_shape"))
    write_run_report(run_dir, meta, model, evaluation, image_shape=image_shape, pictures=pictures, name=name)
    return evaluation


def image_shape_for(n_features, declared=None):
    """Shape of one row as an image, or None when the rows are not images.

    The store's declared ``image_shape`` wins when it matches; otherwise a
    square grayscale image is assumed when ``n_features`` is a square (784 -> 28x28).
    """
    if declared and math.prod(declared) == n_features and len(declared) in (2, 3):
        return tuple(int(v) for v in declared)
    side = math.isqrt(n_features)
    if side >= 4 and side * side == n_features:
        return (side, side)
    return None


def write_run_report(run_dir, meta, model, evaluation=None, *, image_shape=None, pictures=True, name=None):
    """Write the evaluation, the pictures and ``report.md`` into a run folder.

    Parameters
    ----------
    run_dir : Path
    meta : dict
        The run's ``model.json``.
    model : distkm.KMeans
        Fitted.
    evaluation : distkm.evaluation.evaluate.Evaluation, optional
    image_shape : tuple, optional
        Shape of a row as an image, or None for non-image data (no image pictures).
    pictures : bool
        Draw the PNGs.

    Returns
    -------
    dict of str -> list of Path
        The pictures written, by kind.
    """
    run_dir = locations.local_path(run_dir)
    if evaluation is not None:
        evaluation.write_json(run_dir / "evaluation.json")
    drawn = {}
    notes = []
    if pictures:
        drawn, notes = _draw(run_dir, meta, model, evaluation, image_shape)
        for note in notes:
            logger.info("%s", note)
    write_text_atomic(run_dir / "report.md", render_report(meta, evaluation, drawn, notes, name or run_dir))
    return drawn


def _draw(run_dir, meta, model, evaluation, image_shape):
    from distkm.evaluation import pictures as pics

    # Drawn into a fresh folder that then replaces pictures/: no mix of old and new pages.
    tmp = Path(tempfile.mkdtemp(prefix=f".{PICTURES}.tmp-", dir=run_dir))
    tmp.chmod(0o755)  # mkdtemp makes 0o700; run folders are meant to be shared
    drawn, notes = {}, []
    try:
        if meta.get("history"):
            drawn["convergence"] = [pics.plot_convergence(meta["history"], tmp / "convergence.png",
                                                          tol=meta.get("tolerance"))]
        titles = _cluster_titles(model, evaluation)
        if image_shape is None:
            notes.append(f"no image pictures: rows of {model.cluster_centers_.shape[1]} features are not images "
                         "of a known shape")
        else:
            split = f" ({printable(evaluation.mapping_split)} rows)" if evaluation is not None else ""
            drawn["centroids"] = [pics.plot_centroids(model.cluster_centers_, image_shape, tmp / "centroids.png",
                                                      titles=titles, suptitle=f"the {len(titles)} centroids{split}")]
            part = evaluation.splits[evaluation.mapping_split] if evaluation is not None else None
            if part is not None and part.nearest is not None and part.nearest.keys.shape[1]:
                drawn["members"] = pics.plot_members(part.nearest, part.random, image_shape, tmp / "members",
                                                     titles=titles)
        if evaluation is not None and evaluation.labelled:
            part = evaluation.splits[evaluation.mapping_split]
            drawn["confusion"] = [pics.plot_confusion(part.table, evaluation.class_names,
                                                      evaluation.cluster_to_class, tmp / "confusion.png",
                                                      title=f"clusters vs true labels ({printable(part.name)} rows)")]
        final = run_dir / PICTURES
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    drawn = {kind: [final / p.name for p in paths] for kind, paths in drawn.items()}
    return drawn, notes


def _cluster_titles(model, evaluation):
    k = model.cluster_centers_.shape[0]
    if evaluation is None:
        return [f"#{j}" for j in range(k)]
    sizes = evaluation.splits[evaluation.mapping_split].cluster_sizes
    if not evaluation.labelled:
        return [f"#{j} ({sizes[j]:,})" for j in range(k)]
    names = evaluation.class_names
    return [f"#{j} → {names[c] if c >= 0 else '∅'}" for j, c in enumerate(evaluation.cluster_to_class)]


def render_report(meta, evaluation, drawn, notes, run_dir):
    """The Markdown text of ``report.md`` (``run_dir``: the run's folder or URL, which names it in the title)."""
    name = str(run_dir).rstrip("/").rsplit("/", 1)[-1].removesuffix(".partial")
    data = meta.get("data", {})
    split = f" (split {printable(data['split'])})" if data.get("split") else ""
    lines = [f"# distkm run `{printable(name)}`: k={meta['n_clusters']} on "
             f"`{printable(data.get('path', '?'))}`{split}", ""]
    lines += [f"Created {meta.get('created', '?')} by distkm {meta.get('versions', {}).get('distkm', '?')}.", ""]
    lines += ["## Parameters", "", "| parameter | value |", "|---|---|"]
    lines += [f"| {name} | `{value}` |" for name, value in meta.get("params", {}).items()]
    if isinstance(data.get("n_samples"), int):
        lines.append(f"| rows x features | {data['n_samples']:,} x {data.get('n_features', '?')} |")
    lines.append("")
    lines += _convergence_section(meta, drawn)
    if evaluation is not None:
        lines += _evaluation_section(evaluation)
    if drawn.get("centroids"):
        lines += ["## Centroids", "", f"![centroids]({PICTURES}/{drawn['centroids'][0].name})", ""]
    if drawn.get("members"):
        lines += ["## Members", "", "For each cluster: the members nearest its center, then random members.", ""]
        lines += [f"![members]({PICTURES}/{p.name})" for p in drawn["members"]] + [""]
    if drawn.get("confusion"):
        lines += ["## Confusion matrix", "", f"![confusion]({PICTURES}/{drawn['confusion'][0].name})", ""]
    if notes:
        lines += ["## Notes", ""] + [f"- {note}" for note in notes] + [""]
    return "\n".join(lines)


def _convergence_section(meta, drawn):
    history = meta.get("history", [])
    timings = meta.get("timings", {})
    lines = ["## Convergence", ""]
    summary = f"{meta.get('n_iter', '?')} iterations, final inertia {meta.get('inertia', float('nan')):.6g}"
    if "fit_seconds" in timings:
        summary += (f"; fit {timings['fit_seconds']:.1f} s "
                    f"({timings.get('seconds_per_iteration', float('nan')):.3f} s per iteration)")
    pruned = any(h.get("skipped") for h in history)
    if pruned:  # the share of the n x k distances that the bounds made unnecessary (the results are Lloyd's)
        summary += (f"; the pruned passes skipped {sum(h['skipped'] for h in history) / len(history):.0%} of the "
                    "row-center distances (results identical to computing them all)")
    lines += [summary + ".", ""]
    if drawn.get("convergence"):
        lines += [f"![convergence]({PICTURES}/{drawn['convergence'][0].name})", ""]
    if history:
        shown = history if len(history) <= 30 else history[:10] + [None] + history[-10:]
        extra = ["distances skipped"] if pruned else []
        lines += ["| " + " | ".join(["iteration", "inertia", "squared center shift", *extra, "seconds"]) + " |",
                  "|" + "---:|" * (4 + len(extra))]
        for h in shown:
            cells = ["…", *[""] * (3 + len(extra))] if h is None else [
                str(h["iteration"]), f"{h['inertia']:.6g}", f"{h['center_shift']:.3g}",
                *([f"{h.get('skipped', 0):.0%}"] if pruned else []), f"{h.get('seconds', float('nan')):.3f}"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def _evaluation_section(evaluation):
    lines = ["## Scores", ""]
    names = ["rows", "inertia per row"]
    if evaluation.labelled:
        names += ["accuracy", "NMI", "ARI", "homogeneity", "completeness", "V-measure"]
    names += ["silhouette (sample)"]
    lines += ["| split | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for part in evaluation.splits.values():
        cells = [f"{part.rows:,}", f"{part.inertia / part.rows:.6g}"]
        if evaluation.labelled:
            s = part.scores
            cells += [f"{s[key]:.4f}" for key in ("accuracy", "nmi", "ari", "homogeneity", "completeness",
                                                   "v_measure")]
        cells.append("-" if part.silhouette is None else f"{part.silhouette:.4f} ({part.silhouette_sample:,})")
        lines.append(f"| {printable(part.name)} | " + " | ".join(cells) + " |")
    lines.append("")
    if evaluation.labelled:
        rows = "rows" if evaluation.mapping_split == "all" else f"{printable(evaluation.mapping_split)} rows"
        lines += [f"Accuracy: every cluster is labelled with the most frequent true class of its {rows}, and that "
                  "labelling scores every split.", ""]
        mapping = evaluation.cluster_to_class
        names_of = [evaluation.class_names[c] if c >= 0 else "∅" for c in mapping]
        counts = np.bincount(mapping[mapping >= 0], minlength=len(evaluation.class_names))
        missing = [evaluation.class_names[c] for c in np.flatnonzero(counts == 0)]
        lines += [f"Clusters → classes: {', '.join(f'#{j} → {n}' for j, n in enumerate(names_of))}."]
        if missing:
            lines += ["", f"No cluster stands for: {', '.join(missing)}."]
        lines.append("")
    return lines
