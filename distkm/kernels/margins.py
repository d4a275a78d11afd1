"""The rounding-safe side of the pruned Lloyd kernel: per-row bounds, their drift, and near ties.

What :mod:`distkm.kernels.pruned` needs to prune exactly: the per-row
:class:`Bounds` a chunk keeps between iterations and their size
(:func:`n_groups`), the center groups (:func:`center_groups`) and how far
centers moved (:func:`center_shifts`); the per-pass :class:`Context` of the
centers, the bounds' drift, the rigorous error margins of BLOCK scores and the
bounds rebuilt from them; and the exact certification of near ties
(:func:`settle_near_ties`). The module docstring of :mod:`distkm.kernels.pruned`
gives the arithmetic and why each margin holds.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

#: Bytes a row the bounds take besides the G lower bounds: label, upper bound, norm (4 each).
FIXED_ROW_BYTES = 12

#: Relative widening of a float64 bound before its float32 storage: covers the cast's rounding (2**-24)
#: and the float64 arithmetic before it, with room.
_OUTWARD = 2.0**-20

#: Lower bounds below this are stored as 0: the outward factor does not cover a subnormal float32 cast.
_TINY_LOWER = 1e-30

U64 = np.finfo(np.float64).eps / 2



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


class Context(NamedTuple):
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


def context(centers, half_sq_norms, groups):
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
    dh = float(np.abs(h64 - 0.5 * csq).max(initial=0.0)) + 1.01 * (d + 2) * U64 * 0.5 * float(csq.max(initial=0.0))
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
    return Context(centers, np.ascontiguousarray(centers.T), half_sq_norms, centers_p,
                    np.ascontiguousarray(centers_p.T), half_p, c64[order], h64[order], u, float(finfo.tiny), err_slope,
                    err_offset, tight_factor, dh, groups, order, inverse, sizes, spans, n_groups)


class Buffers(NamedTuple):
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


def bound_drift(ctx, shifts, d):
    """:class:`_Drift` from the caller's shifts, rounded up to cover their float64 computation."""
    # The caller's float64 differences, sum of d squares and square root: relative error below
    # (d / 2 + 2) * 2**-53 (Higham 2002, eq. 3.5); rounded up by twice that.
    shifts = np.asarray(shifts, dtype=np.float64).reshape(-1) * (1 + (d + 8) * U64)
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


def row_error(ctx, norms):
    """``err`` of the module notes per row: a bound on any GEMM's score error, float64."""
    return ctx.err_slope * _norm_hi(norms) + ctx.err_offset


def up32(v):
    """float32 upper bounds from float64 ones, rounded up."""
    return (v * (1 + _OUTWARD) + 1e-30).astype(np.float32)


def down32(v):
    """float32 lower bounds from float64 ones, rounded down (0 below ``_TINY_LOWER``; inf stays inf)."""
    return np.where(v < _TINY_LOWER, 0.0, v * (1 - _OUTWARD)).astype(np.float32)


def group_min(ctx, sT):
    """Per group, the smallest of the scores ``sT`` (k, r), rows in group order: (G, r), inf for an empty group."""
    gmin = np.full((ctx.n_groups, sT.shape[1]), np.inf, dtype=sT.dtype)
    for g, a, b, _ in ctx.spans:
        np.minimum.reduce(sT[a:b], axis=0, out=gmin[g])  # contiguous rows: an elementwise minimum, fast
    return gmin


def own_and_others(ctx, sT, pos):
    """Each row's score at ``pos`` (its label, in group order) and per group the smallest of the others.

    ``sT`` (k, r) holds the rows' scores as columns, in group order; it is overwritten at ``pos``.
    """
    at = np.arange(sT.shape[1])
    own = sT[pos, at].astype(np.float64)
    sT[pos, at] = np.inf
    return own, group_min(ctx, sT)


def bounds_from_scores(ctx, own, gmin, err, norms):
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
    up2 += 4 * U64 * (2 * np.abs(own) + 2 * e + sqn_hi)
    gmin = gmin.astype(np.float64)
    lo2 = 2 * (gmin - e) + sqn_lo
    lo2 -= 4 * U64 * (2 * np.minimum(np.abs(gmin), 1e300) + (2 * e + sqn_hi))
    return np.sqrt(np.maximum(up2, 0.0)), np.sqrt(np.maximum(lo2, 0.0)).T


def dot_error(ctx, P, sorted_bound):
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
    dot_err, nnz, absP = dot_error(ctx, P, sorted_bound)
    r = ctx.h64p[cj] - P.sum(axis=1)
    A = absP.sum(axis=1)
    d = P.shape[1]
    # Lloyd's score s = fl(h - fl(x.c)): |s - r_exact| <= u |r_exact| + (1 + u) dot_err (+ underflow).
    lloyd = ctx.u * np.abs(r) + (1 + ctx.u) * dot_err + (2 * d + 2) * ctx.tiny
    # This float64 evaluation: the sum of n products, then the subtraction.
    here = (nnz + 1) * U64 * A + 2 * U64 * np.abs(r)
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


def settle_near_ties(ctx, sp, err, Xr, max_pairs):
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
