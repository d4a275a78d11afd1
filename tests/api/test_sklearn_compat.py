"""scikit-learn's own estimator checks, run on distkm.KMeans (dask's synchronous scheduler)."""

import dask
import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from distkm import KMeans

# scikit-learn marks this check as an expected failure for its own KMeans: weighted rows and
# repeated rows give different k-means++ draws, hence different local optima.
EXPECTED_FAILURES = {
    "check_sample_weight_equivalence_on_dense_data": "sample_weight is not equivalent to repeating samples "
                                                     "(k-means++ draws differ), as for sklearn's KMeans",
}


@pytest.fixture(autouse=True)
def _sync():
    with dask.config.set(scheduler="sync"):
        yield


@parametrize_with_checks([KMeans(n_clusters=3, n_init=2, max_iter=5),  # the default: dtype follows the input
                          KMeans(n_clusters=3, n_init=2, max_iter=5, dtype="float64")],
                         expected_failed_checks=lambda est: EXPECTED_FAILURES)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)
