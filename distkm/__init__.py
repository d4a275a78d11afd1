"""distkm: out-of-core k-means on chunked zarr image stores, with Dask.

>>> from distkm import KMeans
"""

from . import config  # noqa: F401  (registers distkm's defaults with dask.config)
from .estimator import KMeans

__version__ = "0.1.0"
__all__ = ["KMeans", "__version__"]
