"""The pruned Lloyd kernel gives partial_stats' statistics and assign_labels' labels to the bit, every iteration."""

import gzip
from pathlib import Path

import numpy as np
import pytest

import distkm
from distkm import kernels
from distkm.kernels import margins, pruned
from distkm.kernels.assign import prepare_centers

MNIST_IMAGES = Path(distkm.__file__).parent / "io" / "mnist" / "t10k-images-idx3-ubyte.gz"


@pytest.fixture(scope="module")
def digits():
    """2,000 MNIST test images, (2000, 784) uint8, read straight from the shipped IDX file."""
    with gzip.open(MNIST_IMAGES, "rb") as f:
        raw = f.read(16 + 2000 * 784)
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(2000, 784).copy()


@pytest.fixture(params=["cost", "groups", "full"], autouse=True)
def route(request, monkeypatch):
    """How rows the bounds leave get their distances: by the kernel's cost model, or forced through the
    gathered GEMMs (per group, or all centers) with the upper bound tightened first, which on these
    small chunks the cost model would mostly leave to Lloyd's own block GEMM."""
    if request.param != "cost":
        monkeypatch.setattr(pruned, "TIGHTEN_MIN_K", 1)
        monkeypatch.setattr(pruned, "_GATHER_COST", -1)  # cheaper than the block GEMM even when every row fails
        monkeypatch.setattr(pruned, "_CALL_COST", 0 if request.param == "groups" else 10**12)
    return request.param


def blobs(n=1500, d=8, k=6, spread=0.3, seed=0):
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=10.0, size=(k, d))
    return means[rng.integers(0, k, n)] + rng.normal(scale=spread, size=(n, d))


def check_pass(X, bounds, c64, prev, groups, dtype, weights, block_rows, shared=False):
    """One iteration of both kernels at centers ``c64``: identical statistics and labels, else the test fails."""
    c, half = prepare_centers(c64, dtype)
    shifts = None if prev is None else margins.center_shifts(prev, c)
    snapshot = None if bounds is None else [a.copy() for a in bounds]
    new, stats, n_distances = pruned.pruned_partial_stats(X, bounds, c, half, shifts, groups, weights,
                                                          block_rows=block_rows, shared_fallback=shared)
    plain = kernels.partial_stats(X, c, half, weights, block_rows=block_rows)
    np.testing.assert_array_equal(stats.sums, plain.sums, strict=True)
    np.testing.assert_array_equal(stats.weights, plain.weights, strict=True)
    np.testing.assert_array_equal(new.labels, kernels.assign_labels(X, c, half, block_rows=block_rows), strict=True)
    if snapshot is not None:  # the previous bounds are not modified (a retried task sees them intact)
        for before, after in zip(snapshot, bounds):
            np.testing.assert_array_equal(before, after)
    assert 0 <= n_distances
    assert bounds is not None or n_distances == X.shape[0] * c.shape[0]
    return new, stats, n_distances, c


def lloyd(X, c64, dtype, *, weights=None, block_rows=256, iters=8, groups=None, shared=False, move=None):
    """Lloyd iterations checked by :func:`check_pass`; ``move(it, centers)`` may displace centers.

    Returns the distances computed at each iteration.
    """
    k = c64.shape[0]
    if groups is None:
        groups = margins.center_groups(c64, max(2, k // 10) if k >= 20 else 1)
    bounds, prev, counts = None, None, []
    for it in range(iters):
        bounds, stats, n_distances, prev = check_pass(X, bounds, c64, prev, groups, dtype, weights, block_rows, shared)
        counts.append(n_distances)
        w = stats.weights
        c64 = np.where(w[:, None] > 0, stats.sums / np.where(w > 0, w, 1)[:, None], c64)  # empty: keep its center
        if move is not None:
            c64 = move(it, c64.copy())
    return counts


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k", [3, 10, 64])
def test_blobs_match_plain_lloyd_every_iteration(dtype, k):
    X = blobs(n=1200, k=max(k, 6), spread=0.5)
    w = np.random.default_rng(1).uniform(0.5, 2.0, len(X))
    c64 = X[np.random.default_rng(2).choice(len(X), k, replace=False)]
    counts = lloyd(X, c64, dtype, weights=w, iters=8)
    m = len(X)
    assert counts[0] == m * k
    assert counts[-1] < m * k  # the bounds prune


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k", [3, 10, 64])
def test_digits_match_plain_lloyd_every_iteration(digits, dtype, k, route):
    X = digits[:1500]
    c64 = X[np.random.default_rng(k).choice(len(X), k, replace=False)].astype(np.float64)
    counts = lloyd(X, c64, dtype, iters=6)
    if route != "cost":  # (on so few rows the cost model leaves most blocks to Lloyd's block GEMM)
        assert counts[-1] < len(X) * k


def test_weighted_digits_and_shared_fallback(digits):
    X = digits[:1300]  # a last block shorter than the others
    w = np.random.default_rng(3).integers(1, 4, len(X)).astype(np.float64)
    c64 = X[:16].astype(np.float64)
    for dtype in (np.float32, np.float64):
        lloyd(X, c64, dtype, weights=w, iters=5, shared=True)
        lloyd(X, c64, dtype, weights=w, iters=5, shared=False, block_rows=1300)


def test_well_separated_data_prunes_most_distances():
    X = blobs(n=2000, d=10, k=8, spread=0.05)
    c64 = X[np.random.default_rng(0).choice(len(X), 8, replace=False)]
    counts = lloyd(X, c64, np.float64, iters=8)
    assert counts[-1] < 0.2 * len(X) * 8


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_duplicate_rows_and_duplicate_centers(dtype):
    base = blobs(n=300, k=5, spread=1.0)
    X = np.concatenate([base, base, base[:100]])  # duplicate rows
    c64 = np.concatenate([X[:4], X[:2]])  # centers 4, 5 equal centers 0, 1: exact ties
    for shared in (False, True):
        lloyd(X, c64, dtype, iters=6, shared=shared)
    # Two copies of a center in the same group and in different groups.
    lloyd(X, c64, dtype, iters=4, groups=np.array([0, 1, 1, 0, 0, 1]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exact_ties_at_the_same_position_of_several_blocks(dtype, monkeypatch):
    v = blobs(n=2, d=6, k=2, spread=3.0)
    pick = np.random.default_rng(4).integers(0, 2, 256)
    X = np.tile(v[pick], (3, 1))[:700]  # rows i, i + 256, i + 512 equal: shared buffers must not collide
    c64 = v[[0, 0, 1, 1]]  # every row at distance 0 of two centers; the second of each pair stays empty
    for shared in (False, True):
        lloyd(X, c64, dtype, iters=4, shared=shared)
    monkeypatch.setattr(pruned, "_max_pairs", lambda n, k: 0)  # too many near ties to settle one by one
    lloyd(X, c64, dtype, iters=3, shared=True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_all_rows_identical(dtype):
    X = np.tile(np.arange(12, dtype=np.float64) * 3.5, (700, 1))
    lloyd(X, X[:4].copy(), dtype, iters=4)  # k identical centers: every row an exact k-way tie
    c64 = X[:3] + np.array([[0.0], [1.0], [-2.0]])
    lloyd(X, c64, dtype, iters=4)
    lloyd(np.zeros((600, 5)), np.zeros((3, 5)), dtype, iters=3)  # zero rows, zero centers: no rounding margin


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_empty_cluster_and_a_center_jumping_far(digits, dtype):
    X = digits[:1200]
    c64 = X[:10].astype(np.float64)
    c64[3] = 5000.0  # far from every row: stays empty

    def relocate(it, centers):
        if it == 2:
            centers[3] = X[777]  # as an empty-cluster relocation moves a center onto a row
        if it == 4:
            centers[5] = -centers[5]  # an arbitrary jump
        return centers

    lloyd(X, c64, dtype, iters=7, move=relocate)


def test_float_rows_cast_to_float32_and_tiny_chunks():
    X = blobs(n=700, d=5, spread=2.0) * 1e3 + 1e-3  # float64 rows, computed in float32
    lloyd(X, X[:7].copy(), np.float32, iters=5, block_rows=100)
    far = blobs(n=900, d=30, k=5, spread=3.0) + 2e4  # float32 scores cancel: near ties everywhere
    lloyd(far, far[:12].copy(), np.float32, iters=5)
    lloyd(X[:1], X[:1].copy(), np.float32, iters=3)  # one row, one center
    lloyd(X[:50], X[:1].copy(), np.float64, iters=3)  # k = 1: nothing to prune
    c, half = prepare_centers(X[:3], np.float32)
    groups = margins.center_groups(X[:3], 1)
    new, stats, n = pruned.pruned_partial_stats(X[:0], None, c, half, None, groups)
    assert new.labels.shape == (0,) and n == 0 and not stats.weights.any()


def test_bounds_memory_under_a_quarter_of_a_uint8_row(digits):
    d = digits.shape[1]
    for k, expected in ((10, 1), (64, 6), (256, 25), (10_000, 45)):
        G = margins.n_groups(k, d, 1)
        assert G == expected
        assert margins.FIXED_ROW_BYTES + 4 * G < d / 4
    assert margins.n_groups(256, 3, 1) == 1  # pixels: no room, a single bound
    X = digits[:512]
    c64 = X[:64].astype(np.float64)
    groups = margins.center_groups(c64, margins.n_groups(64, d, 1))
    c, half = prepare_centers(c64, np.float32)
    bounds, _, _ = pruned.pruned_partial_stats(X, None, c, half, None, groups)
    assert bounds.lower.shape == (512, 6)
    assert bounds.nbytes / len(X) == margins.FIXED_ROW_BYTES + 4 * 6 < d / 4


def test_center_groups_are_deterministic_and_compact():
    c = blobs(n=256, d=6, k=20, spread=0.1)
    a, b = margins.center_groups(c, 25), margins.center_groups(c, 25)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (256,) and a.min() == 0
    assert np.array_equal(np.unique(a), np.arange(a.max() + 1))  # no empty group
    assert not margins.center_groups(c[:5], 1).any()


def test_mismatched_bounds_are_refused(digits):
    X = digits[:300]
    c, half = prepare_centers(X[:12].astype(np.float64), np.float32)
    groups = margins.center_groups(X[:12].astype(np.float64), 1)
    bounds, _, _ = pruned.pruned_partial_stats(X, None, c, half, None, groups)
    with pytest.raises(ValueError):
        pruned.pruned_partial_stats(X[:200], bounds, c, half, np.zeros(12), groups)
    with pytest.raises(ValueError):
        pruned.pruned_partial_stats(X, bounds, c, half, np.zeros(12), np.arange(12) % 2)
