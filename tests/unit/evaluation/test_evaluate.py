"""Evaluation out-of-core: contingency-based scores, members, sample, held-out mapping, against in-memory truth."""

import dask.array as da
import numpy as np
import pytest
from sklearn import metrics

from distkm import KMeans
from distkm.evaluation.evaluate import evaluate_store
from distkm.evaluation.metrics import majority_mapping, mapped_accuracy, scores_from_table
from distkm.io.stores import open_store, write_store
from distkm.kernels.sampling import merge_top_rows, random_keys, top_rows
from tests.helpers import random_rows


def _labels_of(model, x):
    return np.asarray(model.predict(x)).astype(np.int64)


# --------------------------------------------------------------------------- #
# scores from a contingency table
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("case", ["random", "perfect", "one_cluster", "one_class", "both_single", "large"])
def test_scores_from_table_equal_sklearn(case):
    rng = np.random.default_rng(1)
    n = {"large": 3_000_000}.get(case, 5000)
    y = rng.integers(0, 10, n)
    pred = {"random": rng.integers(0, 7, n), "perfect": (y + 3) % 10, "one_cluster": np.zeros(n, int),
            "one_class": rng.integers(0, 4, n), "both_single": np.zeros(n, int),
            "large": (y + (rng.random(n) < 0.3) * rng.integers(0, 10, n)) % 12}[case]
    if case in ("one_class", "both_single"):
        y = np.zeros(n, int)
    table = metrics.cluster.contingency_matrix(y, pred).T  # clusters in rows, as distkm builds it
    scores = scores_from_table(table)
    h, c, v = metrics.homogeneity_completeness_v_measure(y, pred)
    expected = {"nmi": metrics.normalized_mutual_info_score(y, pred), "ari": metrics.adjusted_rand_score(y, pred),
                "homogeneity": h, "completeness": c, "v_measure": v}
    for name, value in expected.items():
        assert scores[name] == pytest.approx(value, abs=1e-12), name
    # majority accuracy by counting, exactly
    majority = {j: np.bincount(y[pred == j]).argmax() for j in np.unique(pred)}
    assert scores["accuracy"] == np.mean([majority[p] == t for p, t in zip(pred, y)])


def test_mapping_learnt_on_one_table_scores_another():
    train = np.array([[5, 1, 0], [0, 0, 7], [2, 9, 1], [0, 0, 0]])  # cluster 3 is empty
    mapping = majority_mapping(train)
    assert mapping.tolist() == [0, 2, 1, -1]
    test = np.array([[3, 1, 1], [0, 2, 2], [1, 1, 4], [0, 5, 0]])
    assert mapped_accuracy(test, mapping) == (3 + 2 + 1) / 20  # the empty cluster's rows count as wrong


# --------------------------------------------------------------------------- #
# kernels: top-m per group, random keys
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("m", [1, 7, 40, 199, 200, 300])
def test_top_rows_of_one_group_equal_the_sort_of_all_rows(m):
    """A one-group draw sorts only the rows up to the m-th key: the rows, keys and ties of a full sort."""
    rng = np.random.default_rng(1)
    X = rng.integers(0, 255, (200, 3), dtype=np.uint8)
    keys = rng.integers(0, 20, 200).astype(float)  # ties, broken by the row index
    keys[rng.choice(200, 30, replace=False)] = np.inf  # rows that are never drawn
    index = rng.permutation(np.arange(1000, 1200, dtype=np.int64))  # not in row order
    one = top_rows(X, np.zeros(200, dtype=np.int64), keys, index, n_groups=1, m=m)
    two = top_rows(X, np.zeros(200, dtype=np.int64), keys, index, n_groups=2, m=m)  # the general path
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a[0], b[0])
    expected = np.lexsort((index, keys))[:m]
    np.testing.assert_array_equal(one.index[0, :len(expected)], index[expected])


def test_top_rows_merge_equals_top_rows_of_everything():
    rng = np.random.default_rng(0)
    X = rng.integers(0, 255, (1000, 4), dtype=np.uint8)
    groups = rng.integers(0, 6, 1000)
    keys = rng.integers(0, 50, 1000).astype(float)  # many ties: broken by the row index
    index = np.arange(1000, dtype=np.int64)
    whole = top_rows(X, groups, keys, index, n_groups=7, m=15)  # group 6 has no rows: padding
    parts = [top_rows(X[s], groups[s], keys[s], index[s], n_groups=7, m=15)
             for s in (slice(0, 123), slice(123, 600), slice(600, 1000))]
    merged = merge_top_rows(*parts)
    for a, b in zip(whole, merged):
        np.testing.assert_array_equal(a, b)
    assert whole.counts.tolist()[-1] == 0 and (whole.index[6] == -1).all()
    for g in range(6):
        members = np.flatnonzero(groups == g)
        expected = members[np.lexsort((members, keys[members]))][:15]
        np.testing.assert_array_equal(whole.index[g], expected)
        np.testing.assert_array_equal(whole.rows[g], X[expected])


def test_random_keys_depend_only_on_seed_and_row():
    index = np.arange(100_000, dtype=np.int64)
    keys = random_keys(index, 7, 1)
    assert keys.min() >= 0 and keys.max() < 1
    assert abs(keys.mean() - 0.5) < 0.01
    np.testing.assert_array_equal(random_keys(index[500:600], 7, 1), keys[500:600])
    assert not np.array_equal(random_keys(index, 8, 1), keys)
    assert not np.array_equal(random_keys(index, 7, 2), keys)


# --------------------------------------------------------------------------- #
# the evaluation pass on real stores and a real cluster
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def model_and_eval(mnist_test_store, mnist_test, cluster):
    from distributed import Client

    x, _ = mnist_test
    with Client(cluster):
        model = KMeans(10, init=random_rows(x, 10), n_init=1, max_iter=15).fit(x)
        evaluation = evaluate_store(model, open_store(mnist_test_store), n_members=20, silhouette_sample=1500,
                                    seed=3)
    return model, evaluation


def test_contingency_scores_equal_sklearn_in_memory(model_and_eval, mnist_test):
    x, y = mnist_test
    model, evaluation = model_and_eval
    part = evaluation.splits["test"]
    pred = _labels_of(model, x)
    y = y.astype(np.int64)
    # counting results: exactly
    np.testing.assert_array_equal(part.table, metrics.cluster.contingency_matrix(y, pred).T)
    np.testing.assert_array_equal(part.cluster_sizes, np.bincount(pred, minlength=10))
    assert part.rows == 10_000
    majority = np.array([np.bincount(y[pred == j], minlength=10).argmax() for j in range(10)])
    assert part.scores["accuracy"] == np.mean(majority[pred] == y)
    np.testing.assert_array_equal(evaluation.cluster_to_class, majority)
    # information scores: to rounding
    h, c, v = metrics.homogeneity_completeness_v_measure(y, pred)
    assert part.scores["nmi"] == pytest.approx(metrics.normalized_mutual_info_score(y, pred), abs=1e-12)
    assert part.scores["ari"] == pytest.approx(metrics.adjusted_rand_score(y, pred), abs=1e-12)
    assert [part.scores[n] for n in ("homogeneity", "completeness", "v_measure")] == pytest.approx([h, c, v],
                                                                                                  abs=1e-12)
    centers = model.cluster_centers_.astype(np.float64)
    assert part.inertia == pytest.approx(((x - centers[pred]) ** 2).sum(), rel=1e-6)  # float32 distances
    assert evaluation.class_names == [str(i) for i in range(10)]


def test_silhouette_is_sklearns_on_the_seeded_sample(model_and_eval, mnist_test):
    x, _ = mnist_test
    model, evaluation = model_and_eval
    part = evaluation.splits["test"]
    assert part.silhouette_sample == 1500
    sample = np.sort(np.argsort(random_keys(np.arange(10_000), 3, 0x73616D70))[:1500])
    rows = x[sample].astype(np.float64)
    expected = metrics.silhouette_score(rows, _labels_of(model, x[sample]))
    # Computed in the model's float32: scikit-learn sums in float64 blocks, the score agrees to ~1e-7.
    assert part.silhouette == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("dtype, rel", [(np.float64, 1e-12), (np.float32, 1e-5)])
def test_silhouette_kernel_is_sklearns_with_singletons_gaps_and_duplicates(dtype, rel):
    from distkm.kernels.evaluation import silhouette_score

    rng = np.random.RandomState(7)
    X = np.concatenate([rng.normal(c, 1.0, size=(60, 5)) for c in (0.0, 4.0, 9.0)])
    X[10] = X[11]  # duplicate rows
    labels = np.repeat([0, 2, 5], 60)  # label values with gaps
    labels[-1] = 7  # a cluster of one: its coefficient is 0
    expected = metrics.silhouette_score(X, labels)
    assert silhouette_score(X.astype(dtype), labels, block_rows=50) == pytest.approx(expected, rel=rel)


def test_nearest_members_are_the_nearest_by_brute_force(model_and_eval, mnist_test):
    x, _ = mnist_test
    model, evaluation = model_and_eval
    part = evaluation.splits["test"]
    pred = _labels_of(model, x)
    centers = model.cluster_centers_
    dist = ((x.astype(np.float32) - centers[pred]) ** 2).sum(axis=1, dtype=np.float64)
    for j in range(10):
        members = np.flatnonzero(pred == j)
        expected = members[np.lexsort((members, dist[members]))][:20]
        np.testing.assert_array_equal(part.nearest.index[j], expected)
        np.testing.assert_array_equal(part.nearest.rows[j], x[expected])
        np.testing.assert_allclose(part.nearest.keys[j], dist[expected], rtol=1e-6)
        # random members: 20 distinct members of the cluster
        chosen = part.random.index[j]
        assert len(set(chosen.tolist())) == 20 and (pred[chosen] == j).all()
        np.testing.assert_array_equal(part.random.rows[j], x[chosen])


def test_members_and_scores_do_not_depend_on_chunking(model_and_eval, mnist_test, tmp_path, client):
    x, y = mnist_test
    model, evaluation = model_and_eval
    path = tmp_path / "uneven.zarr"
    write_store(path, x, y, {"splits": {"test": [0, 10_000]}, "image_shape": [28, 28]}, chunk_rows=1700)
    again = evaluate_store(model, open_store(path), n_members=20, silhouette_sample=1500, seed=3)
    a, b = evaluation.splits["test"], again.splits["test"]
    np.testing.assert_array_equal(a.table, b.table)
    for top_a, top_b in ((a.nearest, b.nearest), (a.random, b.random)):
        np.testing.assert_array_equal(top_a.index, top_b.index)
    assert a.silhouette == b.silhouette


def test_held_out_accuracy_uses_the_train_mapping(mnist_store, client):
    store = open_store(mnist_store)
    y = store.labels.compute().astype(np.int64)
    x_train = store.images[:60_000]
    model = KMeans(12, init=random_rows(store.images[:5000].compute(), 12), n_init=1, max_iter=5).fit(x_train)
    evaluation = evaluate_store(model, store, silhouette_sample=0)
    assert list(evaluation.splits) == ["train", "test"] and evaluation.mapping_split == "train"
    pred = _labels_of(model, store.images).astype(np.int64)
    mapping = np.array([np.bincount(y[:60_000][pred[:60_000] == j], minlength=10).argmax() for j in range(12)])
    np.testing.assert_array_equal(evaluation.cluster_to_class, mapping)
    assert evaluation.splits["train"].scores["accuracy"] == np.mean(mapping[pred[:60_000]] == y[:60_000])
    assert evaluation.splits["test"].scores["accuracy"] == np.mean(mapping[pred[60_000:]] == y[60_000:])
    assert evaluation.splits["test"].rows == 10_000 and evaluation.splits["test"].silhouette is None


def test_unlabelled_data_gets_inertia_and_sizes_only(tmp_path, client):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 5)) + np.repeat(np.eye(5)[:3] * 8, 1000, axis=0)
    path = tmp_path / "points.zarr"
    import zarr

    zarr.create_array(path, shape=x.shape, chunks=(700, 5), dtype=x.dtype)[:] = x
    model = KMeans(3, random_state=0).fit(da.from_array(x, chunks=700))
    evaluation = evaluate_store(model, open_store(path), silhouette_sample=500)
    part = evaluation.splits["all"]
    assert not evaluation.labelled and part.scores is None
    assert sorted(part.cluster_sizes.tolist()) == [1000, 1000, 1000]
    assert part.silhouette > 0.7  # three well separated blobs
    assert "accuracy" not in evaluation.table()
