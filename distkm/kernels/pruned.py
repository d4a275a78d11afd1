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
products' count and magnitudes, see :func:`dot_error`), which settles most;
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

import numpy as np

from distkm.kernels.assign import BLOCK_ROWS, row_blocks
from distkm.kernels.lloyd import PartialStats, accumulate_block, block_scores, stats_block_rows
from distkm.kernels.margins import (
    U64,
    Bounds,
    Buffers,
    bound_drift,
    bounds_from_scores,
    context,
    down32,
    group_min,
    own_and_others,
    row_error,
    settle_near_ties,
    up32,
)

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
    ctx = context(centers, half_sq_norms, groups)
    sums = np.zeros((k, d), dtype=np.float64)
    cluster_weights = np.zeros(k, dtype=np.float64)
    new = Bounds(np.empty(m, dtype=np.int32), np.empty(m, dtype=np.float32),
                 np.empty((m, ctx.n_groups), dtype=np.float32, order="F"), np.empty(m, dtype=np.float32))
    if m == 0:
        return new, PartialStats(sums, cluster_weights), 0
    block_rows = stats_block_rows(X, dtype, weights, block_rows)
    # The buffers of partial_stats: the block in the compute dtype, its scores when Lloyd's own GEMM is needed;
    # and those of the rows the bounds leave (reused: fresh arrays of megabytes cost page faults every block).
    buf = Buffers(np.empty((block_rows, d), dtype=dtype), np.empty((block_rows, k), dtype=dtype),
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
    drift = bound_drift(ctx, shifts, d)
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
    own, gmin = own_and_others(ctx, _scores_by_group(ctx, S, idx, out), ctx.inverse[labels])
    upper, lower = bounds_from_scores(ctx, own, gmin, row_error(ctx, norms), norms)
    new.labels[at] = labels
    new.upper[at] = up32(upper)
    new.lower[at] = down32(lower)
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
    err = row_error(ctx, norms)
    lower2 = lower * lower
    lmin2 = lower2.min(axis=1)
    up2 = upper * upper
    # 4 (err + dh) (module notes), plus the float64 rounding of lmin^2 - upper^2 (inf: no other center).
    margin = 4 * (err + ctx.dh) + 8 * U64 * (np.minimum(lmin2, 1e300) + up2)
    failing = np.flatnonzero(~(lmin2 - up2 > margin))
    count = 0
    unsettled = failing[:0]
    take = _row_taker(X, Xb, rows)
    if failing.size and k >= TIGHTEN_MIN_K:
        # Tighten (Hamerly; Ding et al.): the distance to the own center, from the differences in the
        # compute dtype (see Context.tight_factor); underflow absolutely, once per operation.
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
    new.upper[rows] = up32(upper)
    new.lower[rows] = down32(lower)
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
    need = lower2R - up2[redo, None] <= (4 * (errR + ctx.dh) + 8 * U64 * up2[redo])[:, None] + \
        8 * U64 * np.minimum(lower2R, 1e300)
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
        own, gmin = own_and_others(ctx, _scores_by_group(ctx, S, redo, buf.sT), ctx.inverse[labR])
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
        gbest = group_min(ctx, sT)
        best = gbest.min(axis=0)
        pos = (sT == best).argmax(axis=0)  # the first center at the minimum (argmin along axis 0 is slow)
        own, gmin = own_and_others(ctx, sT, pos)
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
            labU, n_pairs = settle_near_ties(ctx, spU, errR[unsure], XU, _max_pairs(n, k))
            count += n_pairs
            ok = labU >= 0
            settled[unsure[~ok]] = False
            if ok.any():
                # Their bounds from these full scores (the label may not be this GEMM's argmin).
                done = unsure[ok]
                own[done], gmin[:, done] = own_and_others(ctx, np.ascontiguousarray(spU[ok].T),
                                                           ctx.inverse[labU[ok]])
                labR[done] = labU[ok]
                need[done] = True
    upR, loR = bounds_from_scores(ctx, own, gmin, errR, norms[redo])
    same = labR == labels[redo]
    upper[redo] = np.where(same, np.minimum(upR, upper[redo]), upR)
    lower[redo] = np.where(need, loR, lower[redo])
    labels[redo] = labR
    return count, redo[~settled]
