"""distkm: out-of-core k-means on chunked zarr image stores, with Dask.

>>> from distkm import KMeans

``KMeans`` is imported on first use (PEP 562): the workers import only the
modules their tasks need (the numpy kernels, the chunk reader), not
scikit-learn, which keeps every worker process about 90 MB smaller.
"""

from distkm import config  # noqa: F401  (registers distkm's defaults with dask.config)

__version__ = "0.1.0"
__all__ = ["KMeans", "__version__"]


def __getattr__(name):
    if name == "KMeans":
        from distkm.estimator import KMeans

        return KMeans
    raise AttributeError(f"module 'distkm' has no attribute {name!r}")
