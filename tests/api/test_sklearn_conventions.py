"""A drop-in for scikit-learn's KMeans: each convention checked against scikit-learn itself, numpy and dask input.

Fits run on dask's synchronous scheduler (small data, one chunk unless said otherwise), so that
scikit-learn's rules for data held in one array apply to the letter.
"""

import re
import warnings

import dask
import dask.array as da
import numpy as np
import pytest
from sklearn.cluster import KMeans as SKKMeans
from sklearn.exceptions import ConvergenceWarning

from distkm import KMeans


@pytest.fixture(autouse=True)
def _sync():
    with dask.config.set(scheduler="sync"):
        yield


def as_input(X, kind):
    return X if kind == "numpy" else da.from_array(X, chunks=X.shape)


def computed(a):
    return a.compute() if hasattr(a, "compute") else a


@pytest.fixture
def small_integers():
    """Small integer-valued float data, where float32 and float64 results differ visibly."""
    return np.random.RandomState(0).randint(0, 7, size=(60, 3)).astype(np.float64)


def init_without_ties(X, k=4):
    """k initial centers near rows of X that leave no row equidistant from two of them.

    scikit-learn centers the data before computing distances (copy_x), which breaks exact ties by
    rounding noise; distkm breaks them by the lower index: on rows without ties both agree.
    """
    init = X[:k].astype(np.float64) + np.linspace(0.11, 0.37, X.shape[1])
    d = ((X[:, None, :] - init[None]) ** 2).sum(-1)
    assert ((d == d.min(1, keepdims=True)).sum(1) == 1).all()
    return init


# --------------------------------------------------------------------------- #
# 1. dtype follows floating input; integers compute in float32; dtype= overrides
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("kind", ["numpy", "dask"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_the_compute_dtype_follows_floating_input(small_integers, kind, dtype):
    X = small_integers.astype(dtype)
    init = init_without_ties(X)
    ours = KMeans(4, init=init, max_iter=1).fit(as_input(X, kind))
    theirs = SKKMeans(4, init=init.astype(dtype), n_init=1, max_iter=1).fit(X)
    assert ours.cluster_centers_.dtype == theirs.cluster_centers_.dtype == dtype
    assert computed(ours.transform(as_input(X, kind))).dtype == dtype
    assert computed(KMeans(4, init=init, max_iter=1).fit_transform(as_input(X, kind))).dtype == dtype
    rtol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(ours.cluster_centers_, theirs.cluster_centers_, rtol=rtol)


def test_integer_input_computes_in_float32_and_dtype_overrides(small_integers):
    X = small_integers.astype(np.uint8)
    init = init_without_ties(X)
    assert KMeans(4, init=init, max_iter=2).fit(X).cluster_centers_.dtype == np.float32
    ours = KMeans(4, init=init, max_iter=2, dtype="float64").fit(X)
    theirs = SKKMeans(4, init=init, n_init=1, max_iter=2).fit(X)
    assert ours.cluster_centers_.dtype == np.float64
    np.testing.assert_allclose(ours.cluster_centers_, theirs.cluster_centers_, rtol=1e-12)
    assert KMeans(4, init=init, dtype="float32").fit(small_integers).cluster_centers_.dtype == np.float32


def test_tags_tell_the_truth():
    assert KMeans().__sklearn_tags__().transformer_tags.preserves_dtype == ["float64", "float32"]
    assert KMeans(dtype="float64").__sklearn_tags__().transformer_tags.preserves_dtype == ["float64"]


# --------------------------------------------------------------------------- #
# 2. and 3. duplicates: the warning, and empty clusters relocated as scikit-learn does
# --------------------------------------------------------------------------- #
def warning_texts(record):
    return [str(w.message) for w in record if issubclass(w.category, ConvergenceWarning)]


@pytest.mark.parametrize("kind", ["numpy", "dask"])
def test_fewer_distinct_points_than_clusters_warns_as_sklearn(kind):
    X = np.repeat(np.array([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]]), 10, axis=0)
    with warnings.catch_warnings(record=True) as ours:
        warnings.simplefilter("always")
        KMeans(4, random_state=0).fit(as_input(X, kind))
    with warnings.catch_warnings(record=True) as theirs:
        warnings.simplefilter("always")
        SKKMeans(4, random_state=0, n_init=1).fit(X)
    assert warning_texts(ours) == warning_texts(theirs) == [
        "Number of distinct clusters (3) found smaller than n_clusters (4). Possibly due to duplicate points in X."]


DUPLICATES = np.concatenate([np.zeros((20, 2)), np.ones((20, 2))])


@pytest.mark.parametrize("kind", ["numpy", "dask"])
@pytest.mark.parametrize("init", [
    [[0.1, 0.1], [1.0, 1.0], [5.0, 5.0]],  # rows tied at the largest distance: which one moves
    [[0.0, 0.0], [1.0, 1.0], [0.5, 0.4]],  # every row on its center: nothing moves, the empty cluster goes
], ids=["ties", "all-on-centers"])  # to the heaviest one's place
def test_empty_clusters_on_duplicates_are_relocated_as_sklearn_does(kind, init):
    init = np.array(init)
    with warnings.catch_warnings(record=True) as ours_warned:
        warnings.simplefilter("always")
        ours = KMeans(3, init=init).fit(as_input(DUPLICATES, kind))
    with warnings.catch_warnings(record=True) as theirs_warned:
        warnings.simplefilter("always")
        theirs = SKKMeans(3, init=init, n_init=1).fit(DUPLICATES)
    np.testing.assert_array_equal(ours.cluster_centers_, theirs.cluster_centers_)
    np.testing.assert_array_equal(computed(ours.labels_), theirs.labels_)
    assert ours.n_iter_ == theirs.n_iter_
    assert ours.inertia_ == pytest.approx(theirs.inertia_, abs=1e-12)
    assert warning_texts(ours_warned) == warning_texts(theirs_warned)


# --------------------------------------------------------------------------- #
# 4. parameters scikit-learn users pass
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("copy_x", [True, False])
def test_copy_x_is_accepted_and_the_input_never_changes(small_integers, copy_x):
    X = small_integers.copy()
    model = KMeans(3, random_state=0, copy_x=copy_x).fit(X)
    np.testing.assert_array_equal(X, small_integers)
    assert model.get_params()["copy_x"] is copy_x


def test_a_callable_init_is_called_as_sklearn_calls_it(small_integers):
    seen = {}

    def init(X, n_clusters, random_state):
        seen.update(type=type(X), n_clusters=n_clusters, random_state=type(random_state))
        return np.array(X[:n_clusters])  # a copy: scikit-learn writes into the centers it is given

    X = np.random.RandomState(4).rand(80, 3)
    ours = KMeans(4, init=init, random_state=0).fit(X)
    theirs = SKKMeans(4, init=init, random_state=0, n_init=1).fit(X)
    assert seen == {"type": np.ndarray, "n_clusters": 4, "random_state": np.random.RandomState}
    np.testing.assert_allclose(ours.cluster_centers_, theirs.cluster_centers_, rtol=1e-12)


@pytest.mark.parametrize("bad", [np.zeros((3, 3)), np.zeros((4, 2))], ids=["clusters", "features"])
@pytest.mark.parametrize("how", ["array", "callable"])
def test_a_wrong_init_shape_gets_sklearns_message(small_integers, bad, how):
    init = bad if how == "array" else (lambda X, n_clusters, random_state: bad)
    with pytest.raises(ValueError) as theirs:
        SKKMeans(4, init=init, n_init=1).fit(small_integers)
    with pytest.raises(ValueError, match=re.escape(str(theirs.value))):
        KMeans(4, init=init).fit(small_integers)


def test_elkan_is_accepted_and_gives_lloyds_results(small_integers):
    lloyd = KMeans(4, random_state=0).fit(small_integers)
    elkan = KMeans(4, random_state=0, algorithm="elkan").fit(small_integers)
    assert elkan.cluster_centers_.tobytes() == lloyd.cluster_centers_.tobytes()
    assert (elkan.inertia_, elkan.n_iter_) == (lloyd.inertia_, lloyd.n_iter_)


@pytest.mark.parametrize("kind", ["numpy", "dask"])
def test_boolean_input_is_accepted(kind):
    X = np.random.RandomState(1).rand(50, 6) > 0.5
    init = X[:3].astype(np.float64)
    ours = KMeans(3, init=init, dtype="float64").fit(as_input(X, kind))
    theirs = SKKMeans(3, init=init, n_init=1).fit(X)
    np.testing.assert_allclose(ours.cluster_centers_, theirs.cluster_centers_, rtol=1e-12)
    np.testing.assert_array_equal(computed(ours.labels_), theirs.labels_)


# --------------------------------------------------------------------------- #
# 5. init="random": scikit-learn's rows for the same random_state
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("kind", ["numpy", "dask"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_random_init_draws_sklearns_rows(kind, weighted, dtype):
    X = np.random.RandomState(2).rand(200, 4).astype(dtype)
    weights = np.random.RandomState(3).rand(200) + 0.5 if weighted else None
    for seed in range(5):
        # max_iter=1 from the drawn rows: the centers tell which rows were drawn
        ours = KMeans(6, init="random", n_init=1, max_iter=1, random_state=seed).fit(
            as_input(X, kind), sample_weight=weights)
        theirs = SKKMeans(6, init="random", n_init=1, max_iter=1, random_state=seed).fit(X, sample_weight=weights)
        np.testing.assert_array_equal(computed(ours.labels_), theirs.labels_)
        np.testing.assert_allclose(ours.cluster_centers_, theirs.cluster_centers_, rtol=1e-5)


# --------------------------------------------------------------------------- #
# 6. verbose: scikit-learn's lines
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("tol", [0.0, 1e-2], ids=["strict", "tolerance"])
def test_verbose_prints_sklearns_lines(capsys, tol):
    X = np.random.RandomState(5).rand(100, 3)
    init = X[:4]
    KMeans(4, init=init, tol=tol, verbose=1).fit(X)
    ours = capsys.readouterr().out.splitlines()
    SKKMeans(4, init=init, tol=tol, verbose=1, n_init=1).fit(X)
    theirs = capsys.readouterr().out.splitlines()

    def shape(lines):  # the words, without the numbers (inertia and shifts agree to ~1e-12, not to the digit)
        return [re.sub(r"\d+(\.\d+)?(e[-+]\d+)?", "#", line) for line in lines]

    assert shape(ours) == shape(theirs)
    assert ours[0] == "Initialization complete" and ours[-1].startswith("Converged at iteration")


# --------------------------------------------------------------------------- #
# dask input: zero-row chunks are accepted; labels keep the input's row chunks
# --------------------------------------------------------------------------- #
def test_dask_chunks_of_zero_rows_and_labels_in_the_inputs_chunks():
    data = np.random.RandomState(6).rand(60, 3)
    X = da.from_array(data, chunks=((25, 0, 20, 15), 3))
    assert 0 in X.chunks[0]
    init = data[:4]
    model = KMeans(4, init=init).fit(X)
    theirs = SKKMeans(4, init=init, n_init=1).fit(data)
    np.testing.assert_allclose(model.cluster_centers_, theirs.cluster_centers_, rtol=1e-12)
    assert model.labels_.chunks == (X.chunks[0],) and model.predict(X).chunks == (X.chunks[0],)
    np.testing.assert_array_equal(model.labels_.compute(), theirs.labels_)
    assert model.predict(X).compute().tolist() == theirs.labels_.tolist()
