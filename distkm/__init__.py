"""distkm: out-of-core k-means on chunked zarr image stores, with Dask.

>>> from distkm import KMeans

``KMeans`` is imported on first use (PEP 562): the workers import only the
modules their tasks need (the numpy kernels, the chunk reader), not
scikit-learn, which keeps every worker process about 90 MB smaller.
"""

from distkm import config  # noqa: F401  (registers distkm's defaults with dask.config)

__version__ = "0.1.0"
__all__ = ["KMeans", "load_model", "open_store", "__version__"]


def __getattr__(name):
    if name in ("KMeans", "load_model"):
        from distkm import estimator

        return getattr(estimator, name)
    if name == "open_store":  # a store, or one split of it (split="train"), as lazy dask arrays
        from distkm.io.stores import open_store

        return open_store
    raise AttributeError(f"module 'distkm' has no attribute {name!r}")
