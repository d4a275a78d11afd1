"""Exact pruned Lloyd: the statistics of :func:`~distkm.kernels.lloyd.partial_stats`, most distances skipped.

Nothing here imports dask (numpy only, and the per-block helpers it shares
with :mod:`distkm.kernels.lloyd`). A worker keeps, for every row of a chunk it
holds, a few bounds between iterations (:class:`Bounds`); at the next
iteration they prove, for most rows, that the nearest center has not changed,
and only the other rows' distances are computed.

The bounds
----------
As in Hamerly (2010), "Making k-means even faster" (SDM), each row keeps an
upper bound ``ub >= ||x - c_label||``; as in the Yinyang k-means of Ding et al.
(2015), "Yinyang K-Means: A Drop-In Replacement of the Classic K-Means with
Consistent Speedup" (ICML), the centers are split once per fit into ``G``
groups (:func:`center_groups`: a few k-means iterations on the initial
centers) and each row keeps, per group ``g``, a lower bound ``lb_g`` on its
distance to every center of ``g`` other than its own. When the centers move by
``delta_j`` (:func:`center_shifts`), the triangle inequality keeps them valid
as ``ub += delta_label`` and ``lb_g -= max_{j in g} delta_j`` (Ding et al.'s
rule; for the row's own group, the maximum over the other centers, as in
Hamerly's), clamped at 0. ``G = 1`` is Hamerly's single lower bound; with more
groups a center that jumps far (an empty cluster's relocation) only loosens
its own group's bound. A row whose bounds fail (``min_g lb_g <= ub``) gets its
upper bound tightened (its distance to its own center) when ``k`` is large
enough for that to pay, then the distances to the centers of the groups whose
bound still fails, and always of its own group (Ding et al.'s group filter),
or to all the centers, or the block gets Lloyd's own GEMM, whichever costs
least (numpy gathers rows before a GEMM: a gathered row costs about what 40 of
its distances cost). Its bounds are rebuilt from the scores computed.

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
the factor 2 leaves room for the float64 evaluation of the tests below. If
``r_j - r_label > 2 err`` for every ``j != label``, no rounding can make Lloyd's
computed argmin anything but ``label``. With ``D_j`` the exact distances (of the
row and centers as cast to the compute dtype),
``r_j - r_label = (D_j^2 - D_label^2) / 2 + dh_j - dh_label`` where
``dh_j = h_j - 0.5||c_j||^2`` is the rounding of the given half norms (known), so a
row is skipped when ``min_g lb_g^2 - ub^2 > 4 (err + max |dh|)``. Bounds built
from a GEMM's scores are widened by the same ``err``
(``D_j^2 = 2 (r_j - dh_j) + ||x||^2``), and every bound stored in float32 is
rounded outward (times ``1 +- 2**-20``).

A row that is not proven gets its scores from a GEMM on gathered rows, which
may round differently from Lloyd's GEMM on the whole block. Its argmin is
taken only when the gap to the second best exceeds ``4 err`` (both GEMMs are
within ``err`` of the exact scores). Otherwise (a near tie) the candidate
centers' exact scores are computed in float64 with a per-pair error bound (the
products' count and magnitudes, see :func:`_dot_error`), which settles most;
the rows still unsettled, exact ties included (duplicate rows or centers),
take their labels from the block's scores computed exactly as
:func:`~distkm.kernels.lloyd.partial_stats` computes them
(:func:`~distkm.kernels.lloyd.block_scores` on the same block buffer), so they
are Lloyd's by construction. In float32 such rows are not rare (about 10 of
MNIST's 60,000 rows at k=256 each iteration, in a few blocks); the
``shared_fallback`` option gathers them into one block-shaped GEMM instead.
The per-cluster sums are then :func:`~distkm.kernels.lloyd.accumulate_block`
of the same labels on the same blocks, in the same order: bit-identical.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from distkm.kernels.assign import BLOCK_ROWS, row_blocks
from distkm.kernels.lloyd import PartialStats, accumulate_block, block_scores, stats_block_rows

#: Bytes a row the bounds take besides the G lower bounds: label, upper bound, norm (4 each).
FIXED_ROW_BYTES = 12

#: Relative widening of a float64 bound before its float32 storage: covers the cast's rounding (2**-24)
#: and the float64 arithmetic before it, with room.
_OUTWARD = 2.0**-20

#: Lower bounds below this are stored as 0: the outward factor does not cover a subnormal float32 cast.
_TINY_LOWER = 1e-30

_U64 = np.finfo(np.float64).eps / 2

#: From this many centers on, a row the bounds leave first gets its upper bound tightened (its distance to
#: its own center), as in Hamerly's and Ding et al.'s algorithms. In numpy that costs the row's gather, its
#: center's, a subtraction and a sum, more than it saves: on MNIST at k=256 it proved a quarter of the rows
#: it was tried on and made an iteration 10 to 20 % slower, so by default only very large k get it.
TIGHTEN_MIN_K = 4096

#: Cost of gathering a row for a GEMM, in distances computed by Lloyd's block GEMM (measured inside the
#: kernel on MNIST, k=256: about 0.4 us a gathered row against 9 ns a distance in float32).
_GATHER_COST = 40

#: Cost of a GEMM call on gathered rows and of the numpy calls around it (about 20 us), in distances.
_CALL_COST = 2000


class Bounds(NamedTuple):
    """Per-row state of one chunk, kept by the worker between iterations.

    Attributes
    ----------
    labels : ndarray of shape (m,), int32
        Each row's nearest center (Lloyd's computed argmin) among the centers the bounds refer to.
    upper : ndarray of shape (m,), float32
        Upper bound on ``||x - c_label||`` (exact distance of the row as cast to the compute dtype).
    lower : ndarray of shape (m, G), float32
        Lower bound on the distance to every center of group ``g`` other than ``label``
        (Fortran order: a group's bounds are contiguous, which the per-row minimum needs to be fast).
    norms : ndarray of shape (m,), float32
        ``||x||`` of the row in the compute dtype, rounded to nearest: scales the rounding margin.
    """

    labels: np.ndarray
    upper: np.ndarray
    lower: np.ndarray
    norms: np.ndarray

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays: ``FIXED_ROW_BYTES + 4 G`` a row."""
        return sum(a.nbytes for a in self)


def n_groups(k, d, itemsize):
    """Number of center groups ``G`` for ``k`` centers of rows of ``d`` values of ``itemsize`` bytes.

    ``k // 10`` as Ding et al. (2015) advise, at least 1 (Hamerly's single
    lower bound, for ``k < 20``), capped so that the bounds take less than a
    quarter of a row's bytes (``FIXED_ROW_BYTES + 4 G < d * itemsize / 4``: under
    196 bytes a row for MNIST's 784 uint8 pixels, so ``G <= 45``). Rows of 64
    bytes or fewer cannot meet that rule; they get ``G = 1``.
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
    """What every block of one call needs: the centers in group order, the rounding constants, the groups.

    Scores of gathered rows are computed transposed, (k, rows), the centers in
    group order (``order``): a group is a slice of contiguous rows, and its
    minimum per row an elementwise minimum of a few arrays.
    """

    centers: np.ndarray       # (k, d) compute dtype
    centers_t: np.ndarray     # (d, k) contiguous, as partial_stats passes them to the GEMM
    half: np.ndarray          # (k,) compute dtype, as given
    centers_p: np.ndarray     # (k, d) contiguous, in group order
    centers_tp: np.ndarray    # (d, k) contiguous, columns in group order
    half_p: np.ndarray        # (k,) in group order
    c64p: np.ndarray          # (k, d) float64, in group order
    h64p: np.ndarray          # (k,) float64, in group order
    u: float                  # unit roundoff of the compute dtype
    tiny: float               # smallest normal number of the compute dtype
    err_slope: float          # err = err_slope * ||x||_hi + err_offset, see the module notes
    err_offset: float
    tight_factor: float       # ||x - c||^2 <= tight_factor * (its value computed from the differences)
    dh: float                 # max_j |h_j - 0.5||c_j||^2|, rounded up
    groups: np.ndarray        # (k,) group of each center
    order: np.ndarray         # centers sorted by group (stable)
    inverse: np.ndarray       # column of each center in group order
    sizes: np.ndarray         # (G,) centers per group
    spans: list               # per non-empty group: (group, first position, end position, its centers (k_g, d))
    n_groups: int


def _context(centers, half_sq_norms, groups):
    k, d = centers.shape
    dtype = centers.dtype
    finfo = np.finfo(dtype)
    u = float(finfo.eps) / 2
    if 4 * (d + 2) * u >= 1:  # the gamma factors below need n u < 1/2 with room
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
    # Differences rounded once (1 / (1 - u)^2 on their squares), then d squares summed in any order (gamma_{d+1}).
    gamma1 = (d + 1) * u / (1 - (d + 1) * u)
    tight_factor = 1 / ((1 - u) ** 2 * (1 - gamma1)) * (1 + 1e-12)
    # h_j as given versus 0.5||c_j||^2 computed in float64 (relative error below (d + 1) * 2**-53).
    dh = float(np.abs(h64 - 0.5 * csq).max(initial=0.0)) + 1.01 * (d + 2) * _U64 * 0.5 * float(csq.max(initial=0.0))
    groups = np.asarray(groups).astype(np.intp).reshape(-1)
    if groups.shape != (k,) or groups.min(initial=0) < 0:
        raise ValueError(f"groups must hold a group number >= 0 for each of the {k} centers")
    n_groups = int(groups.max(initial=0)) + 1
    order = np.argsort(groups, kind="stable")
    inverse = np.empty(k, dtype=np.intp)
    inverse[order] = np.arange(k)
    sizes = np.bincount(groups, minlength=n_groups)
    centers_p = np.ascontiguousarray(centers[order])
    half_p = np.ascontiguousarray(np.asarray(half_sq_norms)[order])
    spans, end = [], 0
    for g in np.flatnonzero(sizes):
        start, end = end, end + int(sizes[g])
        spans.append((int(g), start, end, centers_p[start:end]))
    return _Context(centers, np.ascontiguousarray(centers.T), half_sq_norms, centers_p,
                    np.ascontiguousarray(centers_p.T), half_p, c64[order], h64[order], u, float(finfo.tiny), err_slope,
                    err_offset, tight_factor, dh, groups, order, inverse, sizes, spans, n_groups)


class _Buffers(NamedTuple):
    """Arrays reused by every block of a call."""

    block: np.ndarray         # (block_rows, d): the block in the compute dtype, as partial_stats casts it
    scores: np.ndarray        # (block_rows, k): Lloyd's block scores, as partial_stats computes them
    rows: np.ndarray          # (block_rows, d): rows the bounds leave, gathered
    tmp: np.ndarray           # (block_rows, d): their own centers (tightening), then rows gathered for a GEMM
    sT: np.ndarray            # (k, block_rows): gathered rows' scores, centers in group order


class _Drift(NamedTuple):
    """How far the bounds move this iteration: per center, and per group for the lower bounds."""

    shifts: np.ndarray        # (k,) rounded up
    group_max: np.ndarray     # (G,) largest shift in each group
    group_argmax: np.ndarray  # (G,) the center that moved it (-1 for an empty group)
    group_second: np.ndarray  # (G,) the largest shift of the group's other centers


def _drift(ctx, shifts, d):
    """:class:`_Drift` from the caller's shifts, rounded up to cover their float64 computation."""
    # The caller's float64 differences, sum of d squares and square root: relative error below
    # (d / 2 + 2) * 2**-53 (Higham 2002, eq. 3.5); rounded up by twice that.
    shifts = np.asarray(shifts, dtype=np.float64).reshape(-1) * (1 + (d + 8) * _U64)
    if shifts.shape != ctx.groups.shape:
        raise ValueError(f"shifts has {shifts.shape[0]} entries for {ctx.groups.shape[0]} centers")
    group_max, group_second = np.zeros(ctx.n_groups), np.zeros(ctx.n_groups)
    group_argmax = np.full(ctx.n_groups, -1, dtype=np.intp)
    for g, a, b, _ in ctx.spans:  # G <= 45: a loop over groups, once per call
        members = ctx.order[a:b]
        top = int(np.argmax(shifts[members]))
        group_max[g], group_argmax[g] = shifts[members[top]], members[top]
        group_second[g] = np.delete(shifts[members], top).max(initial=0.0)
    return _Drift(shifts, group_max, group_argmax, group_second)


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


def _group_min(ctx, sT):
    """Per group, the smallest of the scores ``sT`` (k, r), rows in group order: (G, r), inf for an empty group."""
    gmin = np.full((ctx.n_groups, sT.shape[1]), np.inf, dtype=sT.dtype)
    for g, a, b, _ in ctx.spans:
        np.minimum.reduce(sT[a:b], axis=0, out=gmin[g])  # contiguous rows: an elementwise minimum, fast
    return gmin


def _own_and_others(ctx, sT, pos):
    """Each row's score at ``pos`` (its label, in group order) and per group the smallest of the others.

    ``sT`` (k, r) holds the rows' scores as columns, in group order; it is overwritten at ``pos``.
    """
    at = np.arange(sT.shape[1])
    own = sT[pos, at].astype(np.float64)
    sT[pos, at] = np.inf
    return own, _group_min(ctx, sT)


def _bounds_from_scores(ctx, own, gmin, err, norms):
    """Upper and group lower bounds (float64 distances) of rows from a GEMM's computed scores.

    ``own`` is the score of each row's label, ``gmin`` (G, r) per group the
    smallest score of the other centers (``inf`` for a group not computed: the
    caller keeps the old bound). ``D_j^2 = 2 (r_j - dh_j) + ||x||^2`` with
    ``|s_j - r_j| <= err``; the last term (4 float64 roundings of terms up to
    ``2|s| + 2e + ||x||^2``) covers the float64 arithmetic here, which cancels
    when a row sits on a center. Returns ``upper`` (r,) and ``lower`` (r, G).
    """
    e = err + ctx.dh
    nu = norms.astype(np.float64)
    sqn_hi = nu * nu * (1 + 2.0**-21) + 1e-74
    sqn_lo = nu * nu * (1 - 2.0**-21)
    up2 = 2 * (own + e) + sqn_hi
    up2 += 4 * _U64 * (2 * np.abs(own) + 2 * e + sqn_hi)
    gmin = gmin.astype(np.float64)
    lo2 = 2 * (gmin - e) + sqn_lo
    lo2 -= 4 * _U64 * (2 * np.minimum(np.abs(gmin), 1e300) + (2 * e + sqn_hi))
    return np.sqrt(np.maximum(up2, 0.0)), np.sqrt(np.maximum(lo2, 0.0)).T


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
    """Exact-score estimates of pairs (row ``ri`` of ``Xr``, column ``cj`` in group order) and their allowances.

    Returns ``r`` (float64 scores ``h_j - x.c_j``) and ``E``: ``|s - r_exact| + |r - r_exact|``
    for Lloyd's computed score ``s``, so that ``r_j - r_b > E_j + E_b`` proves ``s_j > s_b``.
    """
    P = Xr[ri].astype(np.float64)
    P *= ctx.c64p[cj]  # exact for float32 operands (48-bit products)
    dot_err, nnz, absP = _dot_error(ctx, P, sorted_bound)
    r = ctx.h64p[cj] - P.sum(axis=1)
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


def _settle_near_ties(ctx, sp, err, Xr, max_pairs):
    """Lloyd's label of rows whose computed best two scores are within ``4 err``, where it can be proven.

    ``sp`` holds the rows' full scores from some GEMM (columns in group order).
    Candidates are the centers within ``4 err`` of the best (any other one is
    beaten by the best candidate in Lloyd's scores too); their exact scores are
    computed in float64 (:func:`_pair_scores`), then for the rows still unsettled
    with the sharper sorted bound.

    Returns
    -------
    labels : ndarray of shape (r,), intp
        Lloyd's label where proven, -1 elsewhere.
    n_pairs : int
        Exact (row, center) scores computed.
    """
    n = sp.shape[0]
    labels = np.full(n, -1, dtype=np.intp)
    best = sp.min(axis=1).astype(np.float64)
    near = sp.astype(np.float64) - best[:, None] <= 4 * err[:, None]
    ri, cj = np.nonzero(near)
    if ri.size > max_pairs:  # cheaper to compute Lloyd's block GEMM
        return labels, 0
    starts = np.searchsorted(ri, np.arange(n))
    r, E = _pair_scores(ctx, Xr, ri, cj, sorted_bound=False)
    lead, ok = _settle(r, E, starts, n)
    n_pairs = ri.size
    if not ok.all():
        # The sharper bound (a sort per pair) only for the few rows still unsettled.
        again = np.flatnonzero(~ok)
        keep = np.isin(ri, again)
        ri2, cj2 = np.searchsorted(again, ri[keep]), cj[keep]
        r2, E2 = _pair_scores(ctx, Xr[again], ri2, cj2, sorted_bound=True)
        lead2, ok2 = _settle(r2, E2, np.searchsorted(ri2, np.arange(again.size)), again.size)
        n_pairs += ri2.size
        ok[again] = ok2
        lead[again] = np.flatnonzero(keep)[lead2]
    labels[ok] = ctx.order[cj[lead[ok]]]
    return labels, n_pairs


def _max_pairs(n, k):
    """Exact pair scores worth computing in a block of ``n`` rows rather than its GEMM (~100 times slower each)."""
    return max(16, n * k // 128)


def pruned_partial_stats(X, bounds, centers, half_sq_norms, shifts, groups, weights=None, *, block_rows=BLOCK_ROWS,
                         shared_fallback=False):
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
    shared_fallback : bool
        How the rows no bound or error margin settles (near ties) get Lloyd's own scores. False
        (exact by construction): their block's GEMM, computed exactly as ``partial_stats`` does.
        True: one block-shaped buffer holds such rows of all blocks, each at its own position in its
        block, the other rows zero, and its GEMM is computed the same way: one GEMM instead of one
        per such block, exact provided that a row's computed scores do not depend on the other rows'
        values (only on the shapes and its position), an assumption on the BLAS rather than a
        construction, which OpenBLAS's packed kernels satisfy.

    Returns
    -------
    new_bounds : Bounds
        The bounds for the next iteration, referring to ``centers``.
    stats : PartialStats
    n_distances : int
        (row, center) distances computed: ``m * k`` at the first pass; then one per row whose upper
        bound was tightened, those of the groups a row had to check, ``k`` per row whose
        distances were all computed, ``n * k`` per block (or shared buffer) of ``n`` rows whose
        scores were computed as ``partial_stats`` does, and one per exact score that settled a near tie.
    """
    k, d = centers.shape
    m = X.shape[0]
    dtype = centers.dtype
    ctx = _context(centers, half_sq_norms, groups)
    sums = np.zeros((k, d), dtype=np.float64)
    cluster_weights = np.zeros(k, dtype=np.float64)
    new = Bounds(np.empty(m, dtype=np.int32), np.empty(m, dtype=np.float32),
                 np.empty((m, ctx.n_groups), dtype=np.float32, order="F"), np.empty(m, dtype=np.float32))
    if m == 0:
        return new, PartialStats(sums, cluster_weights), 0
    block_rows = stats_block_rows(X, dtype, weights, block_rows)
    # The buffers of partial_stats: the block in the compute dtype, its scores when Lloyd's own GEMM is needed;
    # and those of the rows the bounds leave (reused: fresh arrays of megabytes cost page faults every block).
    buf = _Buffers(np.empty((block_rows, d), dtype=dtype), np.empty((block_rows, k), dtype=dtype),
                   np.empty((block_rows, d), dtype=dtype), np.empty((block_rows, d), dtype=dtype),
                   np.empty((k, block_rows), dtype=dtype))
    block, scores = buf.block, buf.scores
    ones = np.ones(block_rows, dtype=dtype)
    n_distances = 0
    if bounds is None:
        for rows in row_blocks(m, block_rows):
            n = rows.stop - rows.start
            Xb = block[:n]
            np.copyto(Xb, X[rows], casting="unsafe")
            new.norms[rows] = np.sqrt(np.einsum("ij,ij->i", Xb, Xb, dtype=np.float64))  # to nearest float32
            every = np.arange(n)
            S = block_scores(Xb, ctx.centers_t, ctx.half, scores[:n])  # Lloyd's own: exact labels, tight bounds
            labels = _lloyd_rows(ctx, S, every, new, rows.start + every, buf.sT)
            n_distances += n * k
            accumulate_block(sums, cluster_weights, labels, Xb, ones, None if weights is None else weights[rows])
        return new, PartialStats(sums, cluster_weights), n_distances
    if bounds.labels.shape != (m,) or bounds.lower.shape != (m, ctx.n_groups):
        raise ValueError("bounds do not match the chunk or the groups")
    drift = _drift(ctx, shifts, d)
    new.norms[:] = bounds.norms
    if not shared_fallback:
        # Block by block: the bounds' tests, the distances they leave, Lloyd's own block GEMM for the rows
        # no margin settles (on this very block: exact by construction), then the block's sums.
        for rows in row_blocks(m, block_rows):
            n = rows.stop - rows.start
            Xb = block[:n]
            np.copyto(Xb, X[rows], casting="unsafe")
            left, count = _prune_block(ctx, X, Xb, buf, bounds, rows, drift, new)
            n_distances += count
            if left.size:
                S = block_scores(Xb, ctx.centers_t, ctx.half, scores[:n])
                _lloyd_rows(ctx, S, left, new, rows.start + left, buf.sT)
                n_distances += n * k
            accumulate_block(sums, cluster_weights, new.labels[rows], Xb, ones,
                             None if weights is None else weights[rows])
        return new, PartialStats(sums, cluster_weights), int(n_distances)
    # Shared fallback: first the labels and bounds of every block (rows gathered from X), then Lloyd's
    # scores of the rows no margin settles, for all blocks at once, then the sums in block order.
    unsettled = []
    for rows in row_blocks(m, block_rows):
        left, count = _prune_block(ctx, X, None, buf, bounds, rows, drift, new)
        unsettled.append(left)
        n_distances += count
    n_distances += _shared_fallback(ctx, X, buf, unsettled, block_rows, new)
    for rows in row_blocks(m, block_rows):
        Xb = block[:rows.stop - rows.start]
        np.copyto(Xb, X[rows], casting="unsafe")
        accumulate_block(sums, cluster_weights, new.labels[rows], Xb, ones, None if weights is None else weights[rows])
    return new, PartialStats(sums, cluster_weights), int(n_distances)


def _scores_by_group(ctx, S, idx, out):
    """Rows ``idx`` of block scores ``S`` (n, k), transposed into ``out`` (k, >= r) with the centers in group order.

    Transposed a few rows at a time: numpy's transposing copy of the whole
    array is four to eight times slower (it strides through memory).
    """
    P = (S if idx.size == S.shape[0] else S.take(idx, axis=0)).take(ctx.order, axis=1)
    sT = out[:, :idx.size]
    for i in range(0, idx.size, 32):
        sT[:, i:i + 32] = P[i:i + 32].T
    return sT


def _lloyd_rows(ctx, S, idx, new, at, out):
    """Labels and bounds of rows ``idx`` of Lloyd's own block scores ``S`` (exact labels), rows ``at`` of ``new``.

    ``out`` (k, >= len(idx)) is a buffer for the scores by group.
    """
    labels = S[idx].argmin(axis=1)
    norms = new.norms[at]
    own, gmin = _own_and_others(ctx, _scores_by_group(ctx, S, idx, out), ctx.inverse[labels])
    upper, lower = _bounds_from_scores(ctx, own, gmin, _row_error(ctx, norms), norms)
    new.labels[at] = labels
    new.upper[at] = _up32(upper)
    new.lower[at] = _down32(lower)
    return labels


def _shared_fallback(ctx, X, buf, unsettled, block_rows, new):
    """Lloyd's scores of the unsettled rows of all blocks from shared block-shaped buffers (``shared_fallback``)."""
    m, k = X.shape[0], ctx.centers.shape[0]
    rows = np.concatenate(unsettled) + np.repeat(np.arange(len(unsettled)) * block_rows,
                                                 [u.size for u in unsettled])
    if rows.size == 0:
        return 0
    count = 0
    last = (m - 1) // block_rows * block_rows  # the last block may be shorter: buffers of its own shape
    for part in (rows[rows < last], rows[rows >= last]):
        if part.size == 0:
            continue
        n = block_rows if part[0] < last else m - last
        pos = part % block_rows
        # The i-th row at a position goes to the i-th buffer: within a buffer, positions are distinct.
        sorter = np.argsort(pos, kind="stable")
        rank = np.empty(part.size, dtype=np.intp)
        first = np.searchsorted(pos[sorter], pos[sorter])
        rank[sorter] = np.arange(part.size) - first
        for r in range(int(rank.max()) + 1):
            these, at = part[rank == r], pos[rank == r]
            Xb = buf.block[:n]
            Xb[:] = 0
            Xb[at] = X[these]
            S = block_scores(Xb, ctx.centers_t, ctx.half, buf.scores[:n])
            _lloyd_rows(ctx, S, at, new, these, buf.sT)
            count += n * k
    return count


def _row_taker(X, Xb, rows):
    """``take(idx, out)``: rows ``idx`` of the block as cast to the compute dtype, into the buffer ``out``.

    Gathered from the chunk ``X`` and cast alike when its values are narrower
    than the compute dtype's (8-bit pixels: an eighth of the memory traffic of
    gathering float64 rows, and the chunk's block stays in cache), else from
    the block already cast (``Xb``); into reused buffers, as fresh arrays of
    megabytes cost page faults at every block.
    """
    if Xb is not None and X.dtype.itemsize >= Xb.dtype.itemsize:
        return lambda idx, out: np.take(Xb, idx, axis=0, out=out[:idx.size], mode="clip")
    chunk = X[rows]

    def take(idx, out):
        np.copyto(out[:idx.size], np.take(chunk, idx, axis=0), casting="unsafe")
        return out[:idx.size]

    return take


def _prune_block(ctx, X, Xb, buf, bounds, rows, drift, new):
    """Labels and bounds of one block from its bounds and the distances they leave, into ``new``.

    ``Xb`` is the block already cast to the compute dtype, or None (rows are then
    gathered from ``X`` and cast). Returns the rows (within the block) no margin
    settles, whose labels and bounds the caller gets from Lloyd's own scores, and
    the distances computed.
    """
    k = ctx.centers.shape[0]
    labels = bounds.labels[rows].astype(np.intp)
    upper = bounds.upper[rows].astype(np.float64) + drift.shifts[labels]
    # Yinyang's update, with Hamerly's refinement: a row whose own center moved most in its group
    # subtracts the group's second largest shift from that group's bound (the bound excludes the own center).
    old_lower = bounds.lower[rows]
    lower = old_lower.astype(np.float64) - drift.group_max
    own_group = ctx.groups[labels]
    top = np.flatnonzero(labels == drift.group_argmax[own_group])
    lower[top, own_group[top]] = old_lower[top, own_group[top]] - drift.group_second[own_group[top]]
    np.maximum(lower, 0.0, out=lower)
    norms = bounds.norms[rows]
    err = _row_error(ctx, norms)
    lower2 = lower * lower
    lmin2 = lower2.min(axis=1)
    up2 = upper * upper
    # 4 (err + dh) (module notes), plus the float64 rounding of lmin^2 - upper^2 (inf: no other center).
    margin = 4 * (err + ctx.dh) + 8 * _U64 * (np.minimum(lmin2, 1e300) + up2)
    failing = np.flatnonzero(~(lmin2 - up2 > margin))
    count = 0
    unsettled = failing[:0]
    take = _row_taker(X, Xb, rows)
    if failing.size and k >= TIGHTEN_MIN_K:
        # Tighten (Hamerly; Ding et al.): the distance to the own center, from the differences in the
        # compute dtype (see _Context.tight_factor); underflow absolutely, once per operation.
        nf = failing.size
        diff = np.take(ctx.centers, labels[failing], axis=0, out=buf.tmp[:nf], mode="clip")
        np.subtract(take(failing, buf.rows), diff, out=diff)
        q = np.einsum("ij,ij->i", diff, diff).astype(np.float64)
        tight = np.sqrt(q * ctx.tight_factor + 2 * diff.shape[1] * ctx.tiny)
        upper[failing] = np.minimum(upper[failing], tight)
        up2[failing] = upper[failing] ** 2
        count += nf
        failing = failing[lmin2[failing] - up2[failing] <= margin[failing]]  # margin: the looser upper's
    if failing.size:
        count_redo, unsettled = _redo_rows(ctx, X, Xb, take, buf, rows, failing, labels, upper, lower, lower2, up2,
                                           err, norms)
        count += count_redo
    new.labels[rows] = labels
    new.upper[rows] = _up32(upper)
    new.lower[rows] = _down32(lower)
    return unsettled, count


def _redo_rows(ctx, X, Xb, take, buf, rows, redo, labels, upper, lower, lower2, up2, err, norms):
    """Distances of the rows ``redo`` the bounds leave: new labels and bounds in place; unsettled rows back.

    ``take`` gathers rows of the block (:func:`_row_taker`); ``Xb`` is the block already cast, or None
    (then cast into ``buf.block`` if Lloyd's block GEMM is chosen).
    """
    n, k = rows.stop - rows.start, ctx.centers.shape[0]
    nr = redo.size
    errR = err[redo]
    # The groups each row must check (Ding et al.'s group filter), and always its own center's group.
    lower2R = lower2[redo]
    need = lower2R - up2[redo, None] <= (4 * (errR + ctx.dh) + 8 * _U64 * up2[redo])[:, None] + \
        8 * _U64 * np.minimum(lower2R, 1e300)
    need[np.arange(nr), ctx.groups[labels[redo]]] = True
    # Costs in distances computed by a GEMM: a gathered row costs _GATHER_COST, a GEMM call _CALL_COST.
    cost_block = n * k + _CALL_COST
    cost_full = nr * (_GATHER_COST + k) + _CALL_COST
    n_calls = int(need.any(axis=0).sum())
    cost_groups = int(need.sum()) * _GATHER_COST + int((need @ ctx.sizes).sum()) + n_calls * _CALL_COST
    if ctx.n_groups == 1:
        cost_groups = cost_full
    settled = np.ones(nr, dtype=bool)
    if cost_block <= min(cost_full, cost_groups):
        # Lloyd's GEMM on the block: exact labels by construction.
        if Xb is None:
            Xb = buf.block[:n]
            np.copyto(Xb, X[rows], casting="unsafe")
        S = block_scores(Xb, ctx.centers_t, ctx.half, buf.scores[:n])
        count = n * k
        labR = S[redo].argmin(axis=1)
        own, gmin = _own_and_others(ctx, _scores_by_group(ctx, S, redo, buf.sT), ctx.inverse[labR])
        need[:] = True
    else:
        sT = buf.sT[:, :nr]  # (k, nr): a group's scores in contiguous rows
        if cost_full <= cost_groups:
            np.matmul(ctx.centers_p, take(redo, buf.tmp).T, out=sT)
            np.subtract(ctx.half_p[:, None], sT, out=sT)
            count = nr * k
            need[:] = True
        else:
            sT.fill(np.inf)  # inf: not computed
            count = 0
            for g, a, b, cg in ctx.spans:
                idx = np.flatnonzero(need[:, g])
                if idx.size:
                    part = np.matmul(cg, take(redo[idx], buf.tmp).T)
                    np.subtract(ctx.half_p[a:b, None], part, out=part)
                    sT[a:b, idx] = part
                    count += idx.size * (b - a)
        gbest = _group_min(ctx, sT)
        best = gbest.min(axis=0)
        pos = (sT == best).argmax(axis=0)  # the first center at the minimum (argmin along axis 0 is slow)
        own, gmin = _own_and_others(ctx, sT, pos)
        labR = ctx.order[pos]
        # Both this GEMM and Lloyd's are within err of the exact scores: a gap over 4 err is the same in both.
        # (Groups not computed hold no rival: their bounds prove them worse than the previous label.)
        unsure = np.flatnonzero(~(gmin.min(axis=0) - own > 4 * errR))
        if unsure.size:
            # Near ties: the rows' full scores, then their candidates' exact scores.
            XU = take(redo[unsure], buf.rows)
            spU = np.matmul(XU, ctx.centers_tp)
            np.subtract(ctx.half_p, spU, out=spU)
            count += unsure.size * k
            labU, n_pairs = _settle_near_ties(ctx, spU, errR[unsure], XU, _max_pairs(n, k))
            count += n_pairs
            ok = labU >= 0
            settled[unsure[~ok]] = False
            if ok.any():
                # Their bounds from these full scores (the label may not be this GEMM's argmin).
                done = unsure[ok]
                own[done], gmin[:, done] = _own_and_others(ctx, np.ascontiguousarray(spU[ok].T),
                                                           ctx.inverse[labU[ok]])
                labR[done] = labU[ok]
                need[done] = True
    upR, loR = _bounds_from_scores(ctx, own, gmin, errR, norms[redo])
    same = labR == labels[redo]
    upper[redo] = np.where(same, np.minimum(upR, upper[redo]), upR)
    lower[redo] = np.where(need, loR, lower[redo])
    labels[redo] = labR
    return count, redo[~settled]
