"""Exact pruned Lloyd: the statistics of :func:`~distkm.kernels.lloyd.partial_stats`, most distances skipped.

Nothing here imports dask (numpy only, and the shared per-block helpers of
:mod:`distkm.kernels.lloyd`). A worker keeps, for every row of a chunk it
holds, a few bounds between iterations (:class:`Bounds`); at the next
iteration they prove, for most rows, that the nearest center has not changed,
and only the other rows' distances are computed.

The bounds
----------
As in Hamerly (2010), "Making k-means even faster" (SDM), each row keeps an
upper bound ``u >= ||x - c_label||``; as in the Yinyang k-means of Ding et al.
(2015), "Yinyang K-Means: A Drop-In Replacement of the Classic K-Means with
Consistent Speedup" (ICML), the centers are split once per fit into ``G``
groups (:func:`center_groups`: a few k-means iterations on the initial
centers) and each row keeps, per group ``g``, a lower bound ``l_g`` on its
distance to every center of ``g`` other than its own. When the centers move by
``delta_j`` (:func:`center_shifts`), the triangle inequality keeps them valid
as ``u += delta_label`` and ``l_g -= max_{j in g} delta_j`` (Ding et al.'s
rule; the maximum includes the row's own center, which only loosens the bound),
clamped at 0. ``G = 1`` is Hamerly's single lower bound; with more groups a
center that jumps far (an empty cluster's relocation) only loosens its own
group's bound. A row whose bounds do not prove its label gets, as in both
papers, its upper bound tightened first (its exact distance to its own center),
and only then, if still unproven, its distances to all the centers (a GEMM on
just those rows, from which its bounds are rebuilt).

Exactness
---------
Lloyd's labels are the argmin of the scores ``0.5||c_j||^2 - x.c_j`` as a GEMM
in the compute dtype computes them, with rounding; the pruned pass must give
the same labels, hence the same sums, to the bit. With ``r_j = h_j - x.c_j`` the
exact score (``h_j`` the given ``half_sq_norms``), any GEMM's computed score
``s_j`` is within ``err`` of ``r_j``, where (Higham, "Accuracy and Stability of
Numerical Algorithms", 2002, eq. 3.5, for a dot product summed in any order)

    err = 2 * ((gamma_d + u (1 + gamma_d)) ||x|| ||c||_max + u max_j h_j),  gamma_d = d u / (1 - d u),

``u`` the unit roundoff of the compute dtype: ``gamma_d ||x|| ||c_j||`` bounds the
dot product's error (Cauchy-Schwarz), ``u (h_j + |x.c_j|)`` the subtraction's;
the factor 2 covers the second-order terms and the float64 evaluation of the
tests below. If ``r_j - r_label > 2 err`` for every ``j != label``, no rounding can
make Lloyd's computed argmin anything but ``label``. With ``D_j`` the exact
distances, ``r_j - r_label = (D_j^2 - D_label^2) / 2 + dh_j - dh_label`` where
``dh_j = h_j - 0.5||c_j||^2`` is the rounding of the given half norms (known), so a
row is skipped when ``min_g l_g^2 - u^2 > 4 (err + max |dh|)``. Bounds built from
a GEMM's scores are widened by the same ``err`` (``D_j^2 = 2 (r_j - dh_j) + ||x||^2``),
and every bound stored in float32 is rounded outward (times ``1 +- 2**-20``).

A row that is not proven gets its scores from a GEMM on the gathered failing
rows, which may round differently from Lloyd's GEMM on the whole block. Its
argmin is taken only when the gap to the second best exceeds ``4 err``
(both GEMMs are within ``err`` of the exact scores). Otherwise (a near tie)
the candidate centers' exact scores are computed in float64 with a
per-pair error bound (the products' count and magnitudes, see
:func:`_dot_error`), which settles most; the rows still unsettled, exact ties
included (duplicate rows or centers), take their labels from the block's
scores computed exactly as :func:`~distkm.kernels.lloyd.partial_stats` computes
them (:func:`~distkm.kernels.lloyd.block_scores` on the same block buffer), so
they are Lloyd's by construction. Such rows are flagged, and the next pass
computes their block's scores that way directly. The per-cluster sums are then
:func:`~distkm.kernels.lloyd.accumulate_block` of the same labels on the same
blocks: bit-identical.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from distkm.kernels.assign import BLOCK_ROWS, row_blocks
from distkm.kernels.lloyd import PartialStats, accumulate_block, block_scores, stats_block_rows

#: Bytes a row the bounds take besides the G lower bounds: label, upper bound, norm (4 each), near-tie flag (1).
FIXED_ROW_BYTES = 13

#: Relative widening of a float64 bound before its float32 storage: covers the cast's rounding (2**-24)
#: and the float64 arithmetic before it, with room.
_OUTWARD = 2.0**-20

#: Lower bounds below this are stored as 0: the outward factor does not cover a subnormal float32 cast.
_TINY_LOWER = 1e-30

_U64 = np.finfo(np.float64).eps / 2


class Bounds(NamedTuple):
    """Per-row state of one chunk, kept by the worker between iterations.

    Attributes
    ----------
    labels : ndarray of shape (m,), int32
        Each row's nearest center (Lloyd's computed argmin) among the centers the bounds refer to.
    upper : ndarray of shape (m,), float32
        Upper bound on ``||x - c_label||`` (exact distance of the row as cast to the compute dtype).
    lower : ndarray of shape (m, G), float32
        Lower bound on the distance to every center of group ``g`` other than ``label``.
    norms : ndarray of shape (m,), float32
        ``||x||`` of the row in the compute dtype, rounded to nearest: scales the rounding margin.
    near_tie : ndarray of shape (m,), bool
        The row's label needed Lloyd's own block GEMM last time (an exact or near tie): its
        block's scores are computed that way directly next time.
    """

    labels: np.ndarray
    upper: np.ndarray
    lower: np.ndarray
    norms: np.ndarray
    near_tie: np.ndarray

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays: ``FIXED_ROW_BYTES + 4 G`` a row."""
        return sum(a.nbytes for a in self)


def n_groups(k, d, itemsize):
    """Number of center groups ``G`` for ``k`` centers of rows of ``d`` values of ``itemsize`` bytes.

    ``k // 10`` as Ding et al. (2015) advise, at least 1 (Hamerly's single
    lower bound, for ``k < 20``), capped so that the bounds take less than a
    quarter of a row's bytes (``FIXED_ROW_BYTES + 4 G < d * itemsize / 4``: under
    196 bytes a row for MNIST's 784 uint8 pixels). Rows of fewer than 68
    bytes cannot meet that rule; they get ``G = 1``.
    """
    budget = d * itemsize / 4
    cap = int(np.ceil((budget - FIXED_ROW_BYTES) / 4)) - 1  # the largest G with FIXED_ROW_BYTES + 4 G < budget
    return int(max(1, min(k // 10, cap)))


def center_groups(centers, n_groups, *, n_iter=5, seed=0):
    """Group the centers for the group lower bounds: a few k-means iterations on the centers themselves.

    As in Ding et al. (2015), computed once per fit (on the initial centers)
    and kept: any grouping gives exact statistics, a good one only prunes
    more. Deterministic for given centers (fixed seed).

    Parameters
    ----------
    centers : ndarray of shape (k, d)
    n_groups : int
        Wanted number of groups (:func:`n_groups`); fewer come back if some end up empty.
    n_iter : int
        Lloyd iterations on the centers.
    seed : int
        Seed of the choice of the first group means among the centers.

    Returns
    -------
    ndarray of shape (k,), intp
        Group of each center, in ``range(G)``, every group non-empty.
    """
    c = np.asarray(centers, dtype=np.float64)
    k = c.shape[0]
    g = min(max(int(n_groups), 1), k)
    if g == 1:
        return np.zeros(k, dtype=np.intp)
    means = c[np.sort(np.random.default_rng(seed).choice(k, g, replace=False))]
    sq = np.einsum("ij,ij->i", c, c)
    for step in range(n_iter + 1):
        labels = (np.einsum("ij,ij->i", means, means) - 2.0 * c @ means.T + sq[:, None]).argmin(axis=1)
        if step == n_iter:
            break
        counts = np.bincount(labels, minlength=g)
        sums = np.zeros_like(means)
        np.add.at(sums, labels, c)
        full = counts > 0  # an empty group keeps its mean
        means[full] = sums[full] / counts[full, None]
    return np.unique(labels, return_inverse=True)[1].astype(np.intp).reshape(k)


def center_shifts(old_centers, new_centers):
    """How far each center moved, from the centers as cast to the compute dtype, in float64.

    The ``shifts`` of :func:`pruned_partial_stats`: pass the prepared (cast)
    centers of the previous and of this iteration.
    """
    diff = np.asarray(new_centers, dtype=np.float64) - np.asarray(old_centers, dtype=np.float64)
    return np.sqrt(np.einsum("ij,ij->i", diff, diff))


class _Context(NamedTuple):
    """What every block of one call needs: the centers in float64, the rounding constants, the groups."""

    centers: np.ndarray       # (k, d) compute dtype
    centers_t: np.ndarray     # (d, k) contiguous, as partial_stats passes them to the GEMM
    half: np.ndarray          # (k,) compute dtype, as given
    c64: np.ndarray           # (k, d) float64
    h64: np.ndarray           # (k,) float64
    u: float                  # unit roundoff of the compute dtype
    tiny: float               # smallest normal number of the compute dtype
    err_slope: float          # err = err_slope * ||x||_hi + err_offset, see the module notes
    err_offset: float
    dh: float                 # max_j |h_j - 0.5||c_j||^2|, rounded up
    order: np.ndarray         # centers sorted by group (stable)
    inverse: np.ndarray       # position of each center in ``order``
    starts: np.ndarray        # first position in ``order`` of each non-empty group
    nonempty: np.ndarray      # ids of the non-empty groups
    n_groups: int


def _context(centers, half_sq_norms, groups):
    k, d = centers.shape
    dtype = centers.dtype
    finfo = np.finfo(dtype)
    u = float(finfo.eps) / 2
    if d * u >= 0.01:
        raise ValueError(f"{d} features are too many for exact pruning in {dtype}")
    c64 = centers.astype(np.float64)
    h64 = np.asarray(half_sq_norms, dtype=np.float64)
    csq = np.einsum("ij,ij->i", c64, c64)
    # ||c||_max from a float64 sum of d squares (relative error below d * 2**-53): rounded up by far.
    cmax = float(np.sqrt(csq.max(initial=0.0))) * (1 + 1e-9)
    hmax = float(np.abs(h64).max(initial=0.0))
    gamma = d * u / (1 - d * u)
    # Underflow: with gradual underflow or flush-to-zero, each of the 2d + 2 operations of a score
    # errs by at most the smallest normal number, absolutely.
    err_offset = 2 * u * hmax + (2 * d + 2) * float(finfo.tiny)
    err_slope = 2 * (gamma + u * (1 + gamma)) * cmax
    # h_j as given versus 0.5||c_j||^2 computed in float64 (relative error below (d + 1) * 2**-53).
    dh = float(np.abs(h64 - 0.5 * csq).max(initial=0.0)) + 1.01 * (d + 2) * _U64 * 0.5 * float(csq.max(initial=0.0))
    groups = np.asarray(groups).reshape(-1)
    if groups.shape != (k,):
        raise ValueError(f"groups has {groups.shape[0]} entries for {k} centers")
    n_groups = int(groups.max(initial=0)) + 1
    order = np.argsort(groups, kind="stable")
    inverse = np.empty(k, dtype=np.intp)
    inverse[order] = np.arange(k)
    sizes = np.bincount(groups, minlength=n_groups)
    nonempty = np.flatnonzero(sizes)
    starts = (np.cumsum(sizes) - sizes)[nonempty]
    return _Context(centers, np.ascontiguousarray(centers.T), half_sq_norms, c64, h64, u, float(finfo.tiny),
                    err_slope, err_offset, dh, order, inverse, starts, nonempty, n_groups)


def _norm_hi(norms):
    """Upper bound on ``||x||`` from the stored norm: rounded to nearest from a float64 sum, so within 2**-23."""
    return norms.astype(np.float64) * (1 + 2.0**-22) + 1e-37


def _row_error(ctx, norms):
    """``err`` of the module notes per row: a bound on any GEMM's score error, float64."""
    return ctx.err_slope * _norm_hi(norms) + ctx.err_offset


def _up32(v):
    """float32 upper bounds from float64 ones, rounded up."""
    return (v * (1 + _OUTWARD) + 1e-30).astype(np.float32)


def _down32(v):
    """float32 lower bounds from float64 ones, rounded down (0 below ``_TINY_LOWER``; inf stays inf)."""
    return np.where(v < _TINY_LOWER, 0.0, v * (1 - _OUTWARD)).astype(np.float32)


def _rebuild(ctx, sc, labels, err, norms):
    """Upper and group lower bounds, float64 distances, of rows whose scores ``sc`` a GEMM computed.

    ``D_j^2 = 2 (r_j - dh_j) + ||x||^2`` with ``|s_j - r_j| <= err``; the last term
    (4 float64 roundings of terms up to ``2|s| + 2e + ||x||^2``) covers the float64
    arithmetic here, which can cancel when a row sits on a center.
    """
    n = sc.shape[0]
    e = err + ctx.dh
    nu = norms.astype(np.float64)
    sqn_hi = nu * nu * (1 + 2.0**-21) + 1e-74
    sqn_lo = nu * nu * (1 - 2.0**-21)
    own = sc[np.arange(n), labels].astype(np.float64)
    up2 = 2 * (own + e) + sqn_hi
    up2 += 4 * _U64 * (2 * np.abs(own) + 2 * e + sqn_hi)
    upper = np.sqrt(np.maximum(up2, 0.0))
    # Group minima over the other centers: scores in group order, the row's own center masked.
    sp = sc[:, ctx.order]
    sp[np.arange(n), ctx.inverse[labels]] = np.inf
    gmin = np.minimum.reduceat(sp, ctx.starts, axis=1).astype(np.float64)
    lo2 = 2 * (gmin - e[:, None]) + sqn_lo[:, None]
    lo2 -= 4 * _U64 * (2 * np.minimum(np.abs(gmin), 1e300) + (2 * e + sqn_hi)[:, None])
    lower = np.full((n, ctx.n_groups), np.inf)
    lower[:, ctx.nonempty] = np.sqrt(np.maximum(lo2, 0.0))
    return upper, lower


def _dot_error(ctx, P, sorted_bound):
    """Bound on the error of the compute dtype's ``x.c`` (summed in any order) from the exact products ``P``.

    Per pair (row of ``P``): only the ``n`` non-zero products can err (a zero
    product, and adding it, are exact). In any summation tree a product
    accumulates at most ``1 + depth`` roundings, so the error is at most
    ``gamma_n sum |p|`` (Higham 2002, eq. 3.5). With ``sorted_bound``, the
    sharper ``u sum_i |p|_(i) w_i``, ``|p|`` sorted decreasing, ``w = (n, n, n-1, ..., 2)``:
    the depths of any binary tree of ``n`` leaves, sorted decreasing, have partial
    sums at most those of the sequential sum's ``(n-1, n-1, n-2, ..., 1)``
    (induction on the two subtrees), and the largest products deepest is the
    worst arrangement.
    """
    absP = np.abs(P)
    nnz = np.count_nonzero(absP, axis=1)
    u = ctx.u
    if sorted_bound:
        absP = -np.sort(-absP, axis=1)
        depth = np.arange(P.shape[1])
        w = np.maximum(nnz[:, None] - np.maximum(depth - 1, 0), 0)
        total = np.einsum("ij,ij->i", absP, w.astype(np.float64))
        bound = u / (1 - (nnz + 1) * u) * total
    else:
        bound = nnz * u / (1 - nnz * u) * absP.sum(axis=1)
    return bound, nnz, absP


def _pair_scores(ctx, Xr, ri, cj, sorted_bound):
    """Exact-score estimates of pairs (row ``ri`` of ``Xr``, center ``cj``) and their error allowances.

    Returns ``r`` (float64 scores ``h_j - x.c_j``) and ``E``: ``|s - r_exact| + |r - r_exact|``
    for Lloyd's computed score ``s``, so that ``r_j - r_b > E_j + E_b`` proves ``s_j > s_b``.
    """
    P = Xr[ri].astype(np.float64)
    P *= ctx.c64[cj]  # exact for float32 operands (48-bit products)
    dot_err, nnz, absP = _dot_error(ctx, P, sorted_bound)
    r = ctx.h64[cj] - P.sum(axis=1)
    A = absP.sum(axis=1)
    d = P.shape[1]
    # Lloyd's score s = fl(h - fl(x.c)): |s - r_exact| <= u |r_exact| + (1 + u) dot_err (+ underflow).
    lloyd = ctx.u * np.abs(r) + (1 + ctx.u) * dot_err + (2 * d + 2) * ctx.tiny
    # This float64 evaluation: the sum of n products, then the subtraction.
    here = (nnz + 1) * _U64 * A + 2 * _U64 * np.abs(r)
    return r, 1.01 * (lloyd + here)


def _settle(r, E, starts, n_rows):
    """Rows (segments of pairs) whose exact-score leader beats every other candidate by more than the errors.

    Returns the leader's pair index per row and whether it is proven.
    """
    counts = np.diff(np.append(starts, r.shape[0]))
    seg = np.repeat(np.arange(n_rows), counts)
    rmin = np.minimum.reduceat(r, starts)
    at_min = np.flatnonzero(r == rmin[seg])
    lead = at_min[np.unique(seg[at_min], return_index=True)[1]]  # first pair at the minimum, per row
    ok = r - rmin[seg] > E + E[lead][seg]
    ok[lead] = True
    return lead, np.logical_and.reduceat(ok, starts)


def _resolve(ctx, sc, err, Xr, max_pairs):
    """Labels of rows from a GEMM's scores ``sc`` and whether each is proven to be Lloyd's computed argmin.

    Returns
    -------
    labels : ndarray of shape (n,), intp
    proven : ndarray of shape (n,), bool
    n_pairs : int
        Exact (row, center) scores computed to settle near ties.
    """
    n, k = sc.shape
    labels = sc.argmin(axis=1)
    if k == 1:
        return labels, np.ones(n, dtype=bool), 0
    two = np.partition(sc, 1, axis=1)[:, :2].astype(np.float64)
    reach = 4 * err
    # Both this GEMM and Lloyd's are within err of the exact scores: a gap over 4 err is the same in both.
    proven = two[:, 1] - two[:, 0] > reach
    unsure = np.flatnonzero(~proven)
    if unsure.size == 0:
        return labels, proven, 0
    # Candidates: the centers that may be Lloyd's argmin; the others are beaten by the best candidate.
    near = sc[unsure].astype(np.float64) - two[unsure, :1] <= reach[unsure, None]
    ri, cj = np.nonzero(near)
    if ri.size > max_pairs:  # cheaper to compute Lloyd's block GEMM
        return labels, proven, 0
    starts = np.searchsorted(ri, np.arange(unsure.size))
    r, E = _pair_scores(ctx, Xr[unsure], ri, cj, sorted_bound=False)
    lead, ok = _settle(r, E, starts, unsure.size)
    n_pairs = ri.size
    if not ok.all():
        # The sharper bound (a sort per pair) only for the few rows still unsettled.
        again = np.flatnonzero(~ok)
        keep = np.isin(ri, again)
        ri2, cj2 = np.searchsorted(again, ri[keep]), cj[keep]
        r2, E2 = _pair_scores(ctx, Xr[unsure[again]], ri2, cj2, sorted_bound=True)
        lead2, ok2 = _settle(r2, E2, np.searchsorted(ri2, np.arange(again.size)), again.size)
        n_pairs += ri2.size
        ok[again] = ok2
        lead[again] = np.flatnonzero(keep)[lead2]
    labels[unsure[ok]] = cj[lead[ok]]
    proven[unsure] = ok
    return labels, proven, n_pairs


def pruned_partial_stats(X, bounds, centers, half_sq_norms, shifts, groups, weights=None, *, block_rows=BLOCK_ROWS):
    """The :class:`~distkm.kernels.lloyd.PartialStats` of one Lloyd iteration, skipping the distances bounds settle.

    Bit-identical to ``partial_stats(X, centers, half_sq_norms, weights, block_rows=block_rows)``,
    and the new bounds' labels to ``assign_labels`` (see the module notes).

    Parameters
    ----------
    X : ndarray of shape (m, d)
        One chunk of rows (any real dtype). Not modified.
    bounds : Bounds or None
        This chunk's bounds from the previous iteration, or ``None`` at the first
        one (then every distance is computed and the bounds are built). Not modified.
    centers : ndarray of shape (k, d)
        Current centers in the compute dtype (float32 or float64), as from ``prepare_centers``.
    half_sq_norms : ndarray of shape (k,)
        ``0.5 * ||c||^2`` in the compute dtype, as from ``prepare_centers``.
    shifts : ndarray of shape (k,), float64
        How far each center moved since the centers ``bounds`` refer to (:func:`center_shifts`).
        Ignored when ``bounds`` is None.
    groups : ndarray of shape (k,), int
        Group of each center (:func:`center_groups`), the same at every iteration of a fit.
    weights : ndarray of shape (m,), optional
        Sample weights of the rows; ``None`` means all ones.
    block_rows : int
        Rows cast to the compute dtype at a time, as for ``partial_stats`` (the same blocks).

    Returns
    -------
    new_bounds : Bounds
        The bounds for the next iteration, referring to ``centers``.
    stats : PartialStats
    n_distances : int
        (row, center) distances computed: ``m * k`` at the first pass; then one per row whose upper
        bound was tightened, ``k`` per row whose distances were all computed, ``n * k`` per block of
        ``n`` rows whose scores were computed as ``partial_stats`` does, and one per exact score that
        settled a near tie.
    """
    k, d = centers.shape
    m = X.shape[0]
    dtype = centers.dtype
    ctx = _context(centers, half_sq_norms, groups)
    sums = np.zeros((k, d), dtype=np.float64)
    cluster_weights = np.zeros(k, dtype=np.float64)
    new = Bounds(np.empty(m, dtype=np.int32), np.empty(m, dtype=np.float32),
                 np.empty((m, ctx.n_groups), dtype=np.float32), np.empty(m, dtype=np.float32),
                 np.zeros(m, dtype=bool))
    if bounds is not None:
        if bounds.labels.shape != (m,) or bounds.lower.shape != (m, ctx.n_groups):
            raise ValueError("bounds do not match the chunk or the groups")
        # A float64 sum of d squares and a square root: relative error below (d + 4) * 2**-53; rounded up by far.
        shifts = np.asarray(shifts, dtype=np.float64) * (1 + 2.0**-30)
        group_shift = np.zeros(ctx.n_groups)
        np.maximum.at(group_shift, np.asarray(groups).reshape(-1), shifts)
        new.norms[:] = bounds.norms
    block_rows = stats_block_rows(X, dtype, weights, block_rows)
    # The buffers of partial_stats: the block in the compute dtype, its scores when Lloyd's own GEMM is needed.
    block = np.empty((block_rows, d), dtype=dtype)
    scores = np.empty((block_rows, k), dtype=dtype)
    ones = np.ones(block_rows, dtype=dtype)
    n_distances = 0
    for rows in row_blocks(m, block_rows):
        n = rows.stop - rows.start
        Xb = block[:n]
        np.copyto(Xb, X[rows], casting="unsafe")
        if bounds is None:
            labels, upper, lower, near_tie, count = _first_block(ctx, Xb, scores[:n], new.norms[rows], max_pairs=m * k)
        else:
            labels, upper, lower, near_tie, count = _next_block(ctx, Xb, scores[:n], bounds, rows, shifts,
                                                                group_shift)
        n_distances += count
        accumulate_block(sums, cluster_weights, labels, Xb, ones, None if weights is None else weights[rows])
        new.labels[rows] = labels
        new.upper[rows] = _up32(upper)
        new.lower[rows] = _down32(lower)
        new.near_tie[rows] = near_tie
    return new, PartialStats(sums, cluster_weights), int(n_distances)


def _max_pairs(n, k):
    """Exact pair scores worth computing in a block rather than its GEMM (~100 times slower per pair)."""
    return max(16, n * k // 128)


def _first_block(ctx, Xb, scores, norms_out, max_pairs):
    """Labels and bounds of a block from Lloyd's own block GEMM; stores the rows' norms in ``norms_out``."""
    n, k = scores.shape
    sq = np.einsum("ij,ij->i", Xb, Xb, dtype=np.float64)
    norms_out[:] = np.sqrt(sq)  # to nearest float32
    S = block_scores(Xb, ctx.centers_t, ctx.half, scores)
    labels = S.argmin(axis=1)
    err = _row_error(ctx, norms_out)
    # Lloyd's own scores: the labels are exact; _resolve only tells which rows are near ties.
    _, proven, n_pairs = _resolve(ctx, S, err, Xb, _max_pairs(n, k))
    upper, lower = _rebuild(ctx, S, labels, err, norms_out)
    return labels, upper, lower, ~proven, n * k + n_pairs


def _next_block(ctx, Xb, scores, bounds, rows, shifts, group_shift):
    """Labels and updated bounds of a block: the bounds' tests, then distances for the rows they leave."""
    n, k = scores.shape
    labels = bounds.labels[rows].astype(np.intp)
    upper = bounds.upper[rows].astype(np.float64) + shifts[labels]
    lower = np.maximum(bounds.lower[rows].astype(np.float64) - group_shift, 0.0)
    norms = bounds.norms[rows]
    near_tie = np.zeros(n, dtype=bool)
    err = _row_error(ctx, norms)
    margin = 4 * (err + ctx.dh)
    lmin = lower.min(axis=1)
    lmin2 = lmin * lmin
    failing = np.flatnonzero(lmin2 - upper * upper <= margin)
    if failing.size == 0:
        return labels, upper, lower, near_tie, 0
    count = failing.size
    # Tighten: the exact distance to the own center (differences in the compute dtype, summed in float64).
    XF = Xb[failing]
    diff = ctx.centers[labels[failing]]
    np.subtract(XF, diff, out=diff)
    q = np.einsum("ij,ij->i", diff, diff, dtype=np.float64)
    d = Xb.shape[1]
    # (x - c) rounded once (relative u), squared and summed in float64; underflow absolutely.
    tight = np.sqrt(q * (1 + 2.01 * ctx.u) * (1 + 1.01 * (d + 2) * _U64) + d * ctx.tiny)
    upper[failing] = np.minimum(upper[failing], tight)
    still = lmin2[failing] - upper[failing] ** 2 <= margin[failing]
    redo = failing[still]
    if redo.size == 0:
        return labels, upper, lower, near_tie, count
    XR = XF[still]
    errR = err[redo]
    if bounds.near_tie[rows][redo].any():
        # A near tie last time, likely again: Lloyd's block GEMM directly, its argmin exact by construction.
        S = block_scores(Xb, ctx.centers_t, ctx.half, scores)
        count += n * k
        sc = S[redo]
        labR = sc.argmin(axis=1)
        _, proven, n_pairs = _resolve(ctx, sc, errR, XR, _max_pairs(n, k))
        count += n_pairs
    else:
        sc = np.matmul(XR, ctx.centers_t)
        np.subtract(ctx.half, sc, out=sc)
        count += redo.size * k
        labR, proven, n_pairs = _resolve(ctx, sc, errR, XR, _max_pairs(n, k))
        count += n_pairs
        if not proven.all():
            # Near ties this GEMM cannot settle: Lloyd's own block GEMM decides them.
            S = block_scores(Xb, ctx.centers_t, ctx.half, scores)
            count += n * k
            labR[~proven] = S[redo[~proven]].argmin(axis=1)
    upR, loR = _rebuild(ctx, sc, labR, errR, norms[redo])
    same = labR == labels[redo]
    upper[redo] = np.where(same, np.minimum(upR, upper[redo]), upR)
    lower[redo] = loR
    labels[redo] = labR
    near_tie[redo] = ~proven
    return labels, upper, lower, near_tie, count
