"""The pure-numpy kernels, checked against brute-force numpy and scikit-learn's rules."""

import numpy as np
import pytest

from distkm import kernels
from distkm.kernels.assign import prepare_centers


@pytest.fixture
def chunk():
    rng = np.random.RandomState(0)
    return rng.randint(0, 256, size=(3000, 50)).astype(np.uint8)


def brute_labels(X, centers):
    d = ((X[:, None, :].astype(np.float64) - centers[None].astype(np.float64)) ** 2).sum(-1)
    return d.argmin(1), d.min(1)


def test_partial_stats_sums_integer_pixels_exactly_in_float32(chunk):
    centers = chunk[:7].astype(np.float64) + 0.5
    c, half = prepare_centers(centers, np.float32)
    stats = kernels.partial_stats(chunk, c, half, block_rows=1024)
    labels = kernels.assign_labels(chunk, c, half)
    expected = np.stack([chunk[labels == j].sum(0, dtype=np.int64) for j in range(7)])
    assert stats.sums.dtype == np.float64
    np.testing.assert_array_equal(stats.sums, expected)
    np.testing.assert_array_equal(stats.weights, np.bincount(labels, minlength=7))


def test_partial_stats_labels_and_inertia_match_brute_force(chunk):
    centers = chunk[:5].astype(np.float64)
    c, half = prepare_centers(centers, np.float64)
    labels, mins = brute_labels(chunk, centers)
    np.testing.assert_array_equal(kernels.assign_labels(chunk, c, half, block_rows=700), labels)
    stats = kernels.partial_stats(chunk, c, half, block_rows=700)
    sq = (chunk.astype(np.float64) ** 2).sum()
    assert kernels.assignment_inertia(stats, centers, sq) == pytest.approx(mins.sum(), rel=1e-12)
    _, final = kernels.final_stats(chunk, c, half, block_rows=700)
    assert final.inertia == pytest.approx(mins.sum(), rel=1e-12)
    np.testing.assert_array_equal(final.sizes, np.bincount(labels, minlength=5))


def test_weighted_partial_stats(chunk):
    w = np.random.RandomState(1).rand(len(chunk))
    centers = chunk[:4].astype(np.float64)
    c, half = prepare_centers(centers, np.float32)
    stats = kernels.partial_stats(chunk, c, half, w)
    labels = kernels.assign_labels(chunk, c, half)
    for j in range(4):
        np.testing.assert_allclose(stats.sums[j], (chunk[labels == j] * w[labels == j, None]).sum(0), rtol=1e-12)
        assert stats.weights[j] == pytest.approx(w[labels == j].sum(), rel=1e-12)


def test_merged_partials_equal_whole_chunk(chunk):
    c, half = prepare_centers(chunk[:6].astype(np.float64), np.float32)
    whole = kernels.partial_stats(chunk, c, half)
    parts = [kernels.partial_stats(chunk[i:i + 500], c, half) for i in range(0, len(chunk), 500)]
    merged = kernels.merge_partial_stats(*parts)
    np.testing.assert_array_equal(merged.sums, whole.sums)
    np.testing.assert_array_equal(merged.weights, whole.weights)


def test_summary_merge_matches_numpy():
    X = np.random.RandomState(2).normal(3.0, 2.0, size=(1001, 6))
    parts = [kernels.summarize_chunk(X[i:i + 97]) for i in range(0, len(X), 97)]
    total = kernels.merge_summaries(*parts)
    assert total.n == len(X)
    np.testing.assert_allclose(total.mean, X.mean(0), rtol=1e-12)
    np.testing.assert_allclose(total.m2 / total.n, X.var(0), rtol=1e-10)
    assert total.weighted_sq_norm == pytest.approx((X**2).sum(), rel=1e-12)


def test_summary_of_a_chunk_larger_than_a_block_is_the_merge_of_its_blocks():
    X = np.random.RandomState(3).randint(0, 256, size=(1000, 8)).astype(np.float64)
    blocked = kernels.summarize_chunk(X, block_rows=128)
    whole = kernels.summarize_chunk(X, block_rows=4096)
    assert blocked.n == whole.n == 1000 and blocked.weighted_sq_norm == whole.weighted_sq_norm  # integers: exact
    np.testing.assert_allclose(blocked.mean, X.mean(0), rtol=1e-12)
    np.testing.assert_allclose(blocked.m2, whole.m2, rtol=1e-10)


@pytest.mark.parametrize("dtype, weighted", [(np.uint8, False), (np.uint8, True), (np.int8, True)])
def test_summary_of_bytes_is_exact(dtype, weighted):
    """Byte rows are summarised from exact integer sums: the sums of x and x**2 to the bit."""
    info = np.iinfo(dtype)
    X = np.random.RandomState(4).randint(info.min, info.max + 1, size=(3001, 784)).astype(dtype)
    X[:, 0] = info.max  # a constant column of the largest value: m2 exactly 0
    w = np.random.RandomState(5).rand(len(X)) if weighted else None
    s = kernels.summarize_chunk(X, w)
    exact = X.astype(np.int64)
    sq_norms = (exact**2).sum(1)
    assert s.n == len(X) and s.n_nonfinite == 0
    np.testing.assert_array_equal(s.mean, exact.sum(0) / len(X))  # exact sums, rounded once
    assert s.m2[0] == 0
    np.testing.assert_allclose(s.m2 / len(X), X.astype(np.float64).var(0), rtol=1e-13)
    if weighted:
        assert s.weight_sum == w.sum() and s.weighted_sq_norm == pytest.approx(sq_norms @ w, rel=1e-15)
    else:
        assert s.weight_sum == len(X) and s.weighted_sq_norm == sq_norms.sum()


def test_summary_counts_nonfinite_values():
    X = np.ones((10, 3))
    X[2, 1], X[5, 0] = np.nan, np.inf
    assert kernels.summarize_chunk(X).n_nonfinite == 2


def test_farthest_points_are_sklearns_in_one_chunk_and_the_same_rows_in_many(chunk):
    c, half = prepare_centers(chunk[:3].astype(np.float64), np.float64)
    whole = kernels.farthest_points(chunk, c, half, n_points=4, row_offset=0)
    parts = [kernels.farthest_points(chunk[i:i + 400], c, half, n_points=4, row_offset=i)
             for i in range(0, len(chunk), 400)]
    merged = kernels.merge_farthest_points(*parts, n_points=4)
    labels, _ = brute_labels(chunk, chunk[:3])
    # scikit-learn's _relocate_empty_clusters_dense: which rows, in which order
    distances = ((chunk.astype(np.float64) - c[labels]) ** 2).sum(axis=1)
    np.testing.assert_array_equal(whole.index, np.argpartition(distances, -4)[:-5:-1])
    np.testing.assert_array_equal(merged.index, np.lexsort((np.arange(len(chunk)), -distances))[:4])
    assert set(merged.index) == set(whole.index)
    np.testing.assert_array_equal(merged.rows, chunk[merged.index])


def test_relocation_follows_sklearn_rule():
    sums = np.array([[10.0, 10.0], [0.0, 0.0], [4.0, 2.0]])
    weights = np.array([3.0, 0.0, 2.0])
    far = kernels.FarPoints(np.array([9.0]), np.array([7]), np.array([[5.0, 6.0]]), np.array([1.0]),
                            np.array([0], dtype=np.int32))
    empty = kernels.relocate_empty_clusters(sums, weights, far)
    assert empty.tolist() == [1]
    np.testing.assert_array_equal(sums, [[5.0, 4.0], [5.0, 6.0], [4.0, 2.0]])
    np.testing.assert_array_equal(weights, [2.0, 1.0, 2.0])
    np.testing.assert_array_equal(kernels.update_centers(sums, weights),
                                  [[2.5, 2.0], [5.0, 6.0], [2.0, 1.0]])
