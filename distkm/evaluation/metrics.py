"""Clustering scores from a contingency table (cluster x true class).

Every external score of a clustering against true labels depends on the
data only through the contingency table, which a map-reduce builds chunk by
chunk; so the scores of any store size are computed here from a table of a
few KB. The mutual information is scikit-learn's own
(``mutual_info_score(contingency=...)``); entropies come from the table's
margins; the adjusted Rand index follows scikit-learn's
``pair_confusion_matrix``. The results equal scikit-learn's functions on the
full label vectors up to floating-point rounding.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import entropy
from sklearn.metrics import mutual_info_score


def majority_mapping(table):
    """Most frequent true class of every cluster (ties: the lower class); -1 for an empty cluster."""
    table = np.asarray(table)
    mapping = table.argmax(axis=1)
    mapping[table.sum(axis=1) == 0] = -1
    return mapping


def mapped_accuracy(table, mapping):
    """Share of rows whose true class is the class their cluster maps to.

    Parameters
    ----------
    table : ndarray of shape (k, n_classes)
        Contingency table of the rows being scored.
    mapping : ndarray of shape (k,)
        Class of every cluster, e.g. learnt on another split by :func:`majority_mapping`.
    """
    table = np.asarray(table)
    n = int(table.sum())
    if n == 0:
        return float("nan")
    known = (mapping >= 0) & (mapping < table.shape[1])
    correct = int(table[np.flatnonzero(known), mapping[known]].sum())
    return correct / n


def _pair_confusion(contingency):
    """scikit-learn's ``pair_confusion_matrix`` from a (true x predicted) table, as Python ints."""
    c = np.asarray(contingency, dtype=np.int64)
    n = int(c.sum())
    n_c, n_k = c.sum(axis=1), c.sum(axis=0)
    sum_squares = int((c**2).sum())
    tp = sum_squares - n
    fp = int((c @ n_k).sum()) - sum_squares
    fn = int((c.T @ n_c).sum()) - sum_squares
    tn = n * n - fp - fn - sum_squares
    return tn, fp, fn, tp


def adjusted_rand(contingency):
    """Adjusted Rand index from a (true x predicted) contingency table."""
    tn, fp, fn, tp = _pair_confusion(contingency)
    if fn == 0 and fp == 0:
        return 1.0
    return 2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn))


def scores_from_table(table, *, beta=1.0):
    """External scores of a clustering from its contingency table.

    Parameters
    ----------
    table : ndarray of shape (k, n_classes)
        Rows of each cluster (row) per true class (column).
    beta : float
        Weight of homogeneity in the V-measure, as in scikit-learn.

    Returns
    -------
    dict
        ``accuracy`` (majority label), ``nmi`` (arithmetic normalisation, scikit-learn's
        default), ``ari``, ``homogeneity``, ``completeness``, ``v_measure``.
    """
    table = np.asarray(table, dtype=np.int64)
    contingency = table.T  # scikit-learn's orientation: true classes in rows
    n = int(table.sum())
    classes, clusters = contingency.sum(axis=1), contingency.sum(axis=0)
    h_true = float(entropy(classes[classes > 0])) if n else 0.0
    h_pred = float(entropy(clusters[clusters > 0])) if n else 0.0
    mi = float(mutual_info_score(None, None, contingency=contingency)) if n else 0.0
    homogeneity = mi / h_true if h_true else 1.0
    completeness = mi / h_pred if h_pred else 1.0
    v_measure = (0.0 if homogeneity + completeness == 0
                 else (1 + beta) * homogeneity * completeness / (beta * homogeneity + completeness))
    n_classes, n_clusters = np.count_nonzero(classes), np.count_nonzero(clusters)
    if n_classes == n_clusters and n_classes <= 1:
        nmi = 1.0  # scikit-learn: neither labelling splits the data, a perfect match
    else:
        nmi = 0.0 if mi == 0 else mi / np.mean([h_true, h_pred])
    return {
        "accuracy": mapped_accuracy(table, majority_mapping(table)),
        "nmi": float(nmi),
        "ari": float(adjusted_rand(contingency)),
        "homogeneity": float(homogeneity),
        "completeness": float(completeness),
        "v_measure": float(v_measure),
    }
