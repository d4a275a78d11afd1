"""Pure-numpy kernels of the k-means|| initialisation: what one chunk contributes to a round.

Nothing here imports dask. k-means|| (Bahmani et al., "Scalable K-Means++",
2012) grows a set of candidate centers in a few passes over the data: each
round adds about ``l`` rows drawn with probability proportional to their
squared distance to the candidates so far; a last pass counts the rows
nearest each candidate, and a weighted k-means++ on the (few hundred)
candidates gives the ``k`` initial centers.

Two choices make it cheap and reproducible out-of-core:

* Every chunk keeps a small state between rounds, the squared distance of
  each row to its nearest candidate and that candidate's number (8 bytes a
  row, beside 784 of pixels), so a round computes distances to the new
  candidates only, not to all of them again.
* A round draws exactly ``l`` rows by an exponential race: row ``i`` gets the
  key ``-log(u_i) / (w_i d_i^2)``, ``u_i`` a hash of the seed, the round and
  the global row index (:func:`distkm.kernels.sampling.random_keys`); the ``l``
  smallest keys are a weighted sample without replacement. It merges as a
  top-``l`` in the tree reduction and does not depend on chunking or workers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from distkm.kernels.assign import BLOCK_ROWS, assign_block, row_blocks
from distkm.kernels.sampling import TopRows, merge_top_rows, random_keys, top_rows

#: Salt of the round keys (one stream per round: the salt plus the round number).
_ROUND_SALT = 0x6B6D7C7C


@dataclass
class NearestCandidate:
    """State of a chunk between rounds (a class, not a tuple: dask would take a tuple for a task).

    Attributes
    ----------
    sq_norms : ndarray of shape (m,), float64
        ``||x||^2`` of every row, computed in the first round only.
    sq_distances : ndarray of shape (m,), float64
        Squared distance of every row to its nearest candidate so far.
    nearest : ndarray of shape (m,), int32
        Number of that candidate.
    """

    sq_norms: np.ndarray
    sq_distances: np.ndarray
    nearest: np.ndarray


class RoundPartial(NamedTuple):
    """What a chunk contributes to a round.

    Attributes
    ----------
    sample : TopRows
        One group: the rows of smallest exponential key (the round's draw).
    cost : float
        ``sum_i w_i d_i^2`` to the candidates so far (the k-means cost of the candidates).
    weights : ndarray of shape (n_candidates,), float64
        Sum of the sample weights of the rows nearest each candidate.
    """

    sample: TopRows
    cost: float
    weights: np.ndarray


def kmeans_parallel_round(X, state, new_candidates, half_sq_norms, weights=None, *, first_candidate, n_candidates,
                          n_draws, seed, round_number, row_offset, block_rows=BLOCK_ROWS):
    """Update a chunk's nearest candidates with the new ones, then draw the round's sample.

    Parameters
    ----------
    X : ndarray of shape (m, d)
        One chunk of rows. Not modified.
    state : NearestCandidate or None
        From the previous round (``None`` in the first).
    new_candidates : ndarray of shape (c, d)
        Candidates added since the previous round, in the compute dtype.
    half_sq_norms : ndarray of shape (c,)
        ``0.5 * ||c||^2`` of the new candidates (:func:`distkm.engine.lloyd.prepare_centers`), once per round.
    weights : ndarray of shape (m,), optional
    first_candidate : int
        Number of the first new candidate (how many there were before).
    n_candidates : int
        Number of candidates including the new ones.
    n_draws : int
        Rows drawn in this round (0 in the last pass, which only counts).
    seed, round_number : int
        Make the random keys of this round.
    row_offset : int
        Global index of the chunk's first row.
    block_rows : int
        Rows processed at a time.

    Returns
    -------
    state : NearestCandidate
    partial : RoundPartial
    """
    m = X.shape[0]
    first = state is None
    if first:
        state = NearestCandidate(np.empty(m), np.full(m, np.inf), np.zeros(m, dtype=np.int32))
    sq_norms, sq_distances, nearest = state.sq_norms, state.sq_distances.copy(), state.nearest.copy()
    dtype = new_candidates.dtype
    block = np.empty((max(1, min(block_rows, m)), X.shape[1]), dtype=dtype)  # reused, as in partial_stats
    for rows in row_blocks(m, block_rows):
        Xb = block[:rows.stop - rows.start]
        np.copyto(Xb, X[rows], casting="unsafe")
        labels, best = assign_block(Xb, new_candidates, half_sq_norms)
        # ||x - c||^2 = ||x||^2 + 2 min(0.5||c||^2 - x.c); the rounding of the expansion only nudges
        # the draw probabilities (negative values, for a row that is a candidate, become 0).
        if first:  # in the compute dtype, as the GEMM: 0.4 ms a block, not 1.7 ms summing in float64
            sq_norms[rows] = np.einsum("ij,ij->i", Xb, Xb)
        d2 = sq_norms[rows] + 2.0 * best
        np.maximum(d2, 0.0, out=d2)
        closer = d2 < sq_distances[rows]
        sq_distances[rows] = np.where(closer, d2, sq_distances[rows])
        nearest[rows] = np.where(closer, labels + first_candidate, nearest[rows])
    w = np.ones(m) if weights is None else np.asarray(weights, dtype=np.float64)
    wd2 = w * sq_distances
    index = np.arange(row_offset, row_offset + m, dtype=np.int64)
    with np.errstate(divide="ignore"):  # u = 0, d = 0 or w = 0: key inf, never drawn
        keys = -np.log(random_keys(index, seed, _ROUND_SALT + round_number)) / wd2
    sample = top_rows(X, np.zeros(m, dtype=np.int64), keys, index, n_groups=1, m=n_draws)
    counts = np.bincount(nearest, weights=w, minlength=n_candidates)
    return NearestCandidate(sq_norms, sq_distances, nearest), RoundPartial(sample, float(wd2.sum()), counts)


def merge_round_partials(*parts):
    """Combine :class:`RoundPartial` results (a combine step of the tree reduction)."""
    return RoundPartial(merge_top_rows(*(p.sample for p in parts)), sum(p.cost for p in parts),
                        np.sum([p.weights for p in parts], axis=0))
