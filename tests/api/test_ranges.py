"""Values at the edges of the number types: computed right, or refused up front, never NaN with exit 0."""

import dask
import numpy as np
import pytest
import zarr
from sklearn.cluster import KMeans as SKKMeans

from distkm import KMeans
from distkm.cli import main
from tests.helpers import DISTKM

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")  # refused in words, not in numpy warnings


@pytest.fixture(autouse=True)
def _sync():
    with dask.config.set(scheduler="sync"):
        yield


def test_int64_near_2_to_the_62_is_computed_in_float64_as_sklearn():
    rs = np.random.RandomState(0)
    X = (rs.randint(0, 2**20, size=(200, 5)).astype(np.int64) << 42) + rs.randint(0, 2**20, size=(200, 5))
    assert X.max() > 2**61
    init = X[:3].astype(np.float64)
    ours = KMeans(3, init=init).fit(X)
    theirs = SKKMeans(3, init=init, n_init=1).fit(X)
    assert ours.cluster_centers_.dtype == np.float64 and np.isfinite(ours.cluster_centers_).all()
    np.testing.assert_allclose(ours.cluster_centers_, theirs.cluster_centers_, rtol=1e-9)
    assert ours.inertia_ == pytest.approx(theirs.inertia_, rel=1e-9)
    np.testing.assert_array_equal(ours.labels_, theirs.labels_)


@pytest.mark.parametrize("X, dtype, advice", [
    (np.full((50, 4), 1e200) * np.arange(1, 51)[:, None], None, "scale the data down"),
    (np.full((50, 4), 3e19) * np.arange(1, 51)[:, None], "float32", "pass dtype='float64'"),
], ids=["float64 near 1e200", "float32 asked for 1e21"])
def test_values_whose_distances_overflow_are_refused_up_front(X, dtype, advice):
    with pytest.raises(ValueError, match="values too large for k-means") as error:
        KMeans(3, random_state=0, dtype=dtype).fit(X)
    assert advice in str(error.value)


def test_the_cli_refuses_them_in_one_line(tmp_path, capsys):
    store = tmp_path / "huge.zarr"
    z = zarr.create_array(store=store, shape=(60, 4), chunks=(20, 4), dtype="float64")
    z[:] = np.linspace(1e199, 1e200, 240).reshape(60, 4)
    before = (store / "zarr.json").read_bytes()
    code = main(["fit", str(store), "--k", "3", "--out", str(tmp_path / "run"), "--quiet", "--n-workers", "1"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "values too large" in err, err
    assert not (tmp_path / "run").exists() and not (tmp_path / "run.partial").exists()
    assert (store / "zarr.json").read_bytes() == before


def test_inf_in_a_store_is_one_line_and_no_numpy_warning(tmp_path):
    import subprocess

    store = tmp_path / "inf.zarr"
    z = zarr.create_array(store=store, shape=(60, 4), chunks=(20, 4), dtype="float64")
    values = np.random.RandomState(0).rand(60, 4)
    values[7, 2], values[45, 0] = np.inf, -np.inf
    z[:] = values
    result = subprocess.run([DISTKM, "fit", str(store), "--k", "3", "--out", str(tmp_path / "run"), "--quiet",
                             "--n-workers", "1"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "distkm: error: X contains 2 NaN or infinite value(s); k-means needs finite data"], result.stderr
