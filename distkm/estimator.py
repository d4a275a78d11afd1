"""The scikit-learn estimator: ``distkm.KMeans``.

Input is checked here, once, at the door (parameters through scikit-learn's
``_parameter_constraints``, data-dependent checks in ``_check_*``), and
distkm's configuration is read here into one
:class:`~distkm.engine.loop.FitSettings`; :func:`distkm.engine.loop.fit` and
the kernels below it assume valid input.
"""

from __future__ import annotations

import logging
import os
import warnings
from numbers import Integral, Real

import dask.array as da
import numpy as np
import zarr
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, ClusterMixin, TransformerMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from distkm import config
from distkm.cluster import dashboard
from distkm.engine import loop
from distkm.engine.final import assign_lazy, distances_lazy, final_stats
from distkm.engine.loop import FitRows, FitSettings, prepare_rows
from distkm.io.checkpoint import Checkpoint
from distkm.io.model import read_model
from distkm.io.stores import as_dask_array, as_dask_weights

logger = logging.getLogger("distkm")


class KMeans(ClassNamePrefixFeaturesOutMixin, TransformerMixin, ClusterMixin, BaseEstimator):
    """K-means clustering of data larger than memory, by map-reduce Lloyd iterations on Dask.

    The interface and defaults are scikit-learn's ``KMeans(algorithm="lloyd")``.
    Each iteration is one pass over the data: every chunk of rows yields
    per-cluster partial sums, weights and inertia on the worker that holds
    it, a fixed tree reduction adds them up, and the centers are updated on
    the client. The data never travels to the client. Computation runs on
    the current Dask client if there is one, else on dask's local scheduler.

    Parameters
    ----------
    n_clusters : int, default=8
        Number of clusters.
    init : {"k-means++", "k-means||", "random"}, callable or array-like of shape (n_clusters, n_features), \
default="k-means++"
        "k-means++" runs scikit-learn's k-means++ on a uniform sample of
        ``init_sample_size`` rows (all rows when there are fewer), gathered
        chunk by chunk: one pass. "k-means||" (scalable k-means++, Bahmani et
        al. 2012) looks at every row: ``distkm.init-rounds`` passes each draw
        ``distkm.init-oversampling * n_clusters`` candidates in proportion to
        their squared distance to the previous ones, a last pass weights them,
        and k-means++ on the weighted candidates gives the centers (see
        :func:`distkm.engine.init.kmeans_parallel`). "random" picks ``n_clusters``
        distinct rows: on data in one chunk the rows scikit-learn picks for
        the same ``random_state`` (``RandomState.choice`` with uniform
        probabilities), on more chunks ``RandomState.choice(n, k,
        replace=False)`` (with ``sample_weight``: in proportion to the
        weights, as scikit-learn). A callable is called as scikit-learn calls
        it, ``init(X, n_clusters, random_state=random_state)``, with ``X`` as
        given to ``fit`` (a numpy array, or a dask array for anything else),
        and must return an array of shape (n_clusters, n_features).
    n_init : "auto" or int, default="auto"
        Number of initialisations; the run with the lowest inertia is kept.
        "auto" is 1 for "k-means++", "k-means||" or an array, 10 for "random".
    max_iter : int, default=300
        Maximum number of Lloyd iterations of one run.
    tol : float, default=1e-4
        Relative tolerance: stop when the squared center shift is at most
        ``tol`` times the mean per-feature variance of the data.
    verbose : int, default=0
        Print scikit-learn's progress lines ("Initialization complete",
        "Iteration i, inertia v.", "Converged at iteration i: ...").
    random_state : int, RandomState instance or None, default=None
        Seeds the initialisation. Results for a given seed are bit-identical
        whatever the number of workers or threads.
    dtype : {"float32", "float64"} or None, default=None
        Compute dtype of distances and centers. ``None`` follows the input as
        scikit-learn does (float64 in, float64 out; float32 in, float32 out;
        wider integers in float64), except for 8-bit pixels (uint8, int8,
        bool), computed in float32: see "Differences from scikit-learn".
        Per-cluster sums are always accumulated in float64 (exactly, for 8-bit pixels).
    split_every : int, optional
        Fan-in of the reduction tree (default ``distkm.split-every``).
    init_sample_size : int, optional
        Rows k-means++ runs on (default ``distkm.init-sample-size``).
    checkpoint : str or Path, optional
        Folder where the state of the fit is saved after every iteration
        (JSON and ``.npy`` files, each written atomically). A fit given a folder that holds a
        checkpoint of the same parameters and data resumes from it and ends
        bit-identical to an uninterrupted fit; one made otherwise is refused.
    algorithm : {"auto", "lloyd", "elkan", "minibatch"}, default="auto"
        "lloyd": every iteration is a pass over all rows that computes the
        distance of every row to every center, as scikit-learn's ``KMeans``.
        "elkan": the same iterations with fewer distances: per-row bounds,
        kept on the workers beside their rows, prove most rows' nearest
        center without computing it (Hamerly's and Yinyang's bounds, see
        :mod:`distkm.kernels.pruned`); the results are those of "lloyd" to the
        bit, as scikit-learn's Elkan gives Lloyd's. "auto" (the default): the
        faster of the two as measured: "elkan" in float64 (unless the bounds
        would not fit the workers' memory), "lloyd" in float32, whose wider
        rounding margin leaves too many rows to recompute for the bounds to
        pay (see docs/performance.md). "minibatch": each step updates the centers from
        ``batch_chunks`` random row chunks, as scikit-learn's
        ``MiniBatchKMeans`` does from random rows (see :mod:`distkm.engine.minibatch`);
        ``max_iter`` then counts passes over the data, and the run stops early
        when a pass moves the centers by at most the tolerance. One or two
        passes give a usable answer on a huge store; Lloyd's is better.
    batch_chunks : int, optional
        Row chunks per mini-batch step (default ``distkm.minibatch-chunks``).
    cache : {"auto", True, False}, default="auto"
        Keep the data's chunks in the workers' memory for the fit, so that
        every iteration after the first skips reading and decoding the store.
        "auto" does it when a distributed client is active and the data takes
        at most ``distkm.cache-fraction`` of the workers' memory (see :mod:`distkm.engine.cache`). The
        results do not change.
    copy_x : bool, default=True
        Accepted for scikit-learn's sake: distkm never modifies its input
        (every kernel reads the rows and writes its own buffers), so there is
        nothing to copy.

    Attributes
    ----------
    cluster_centers_ : ndarray of shape (n_clusters, n_features)
        Centers, in the compute dtype.
    labels_ : ndarray or dask.array.Array of shape (n_samples,)
        Cluster of every training row: a numpy array for numpy input, a
        lazy dask array for dask, zarr or store-path input.
    inertia_ : float
        Sum of (weighted) squared distances of rows to their closest center.
    n_iter_ : int
        Iterations run by the kept initialisation.
    n_features_in_ : int
        Number of features seen during fit.
    cluster_sizes_ : ndarray of shape (n_clusters,)
        Number of training rows in each cluster.
    tolerance_ : float
        The absolute tolerance the squared center shift was compared with
        (``tol`` times the mean per-feature variance of the data).
    history_ : list of dict
        Per iteration of the kept run: inertia, squared center shift,
        relocated empty clusters.
    evaluation_tables_ : distkm.kernels.ChunkEvaluation or None
        Only after ``fit(..., final=...)`` (what ``distkm fit`` does): the
        evaluation tables tabulated by the pass after convergence.

    Notes
    -----
    **Differences from scikit-learn.** Deliberate, and the only ones:

    * 8-bit input (uint8 and int8 pixels, booleans) is computed in float32,
      not float64: its per-cluster sums are exact in float32 blocks, and the
      distances' GEMM runs twice as fast on half the memory. Pass
      ``dtype="float64"`` for scikit-learn's arithmetic.
    * ``init="k-means||"`` (scalable k-means++) and k-means++ on a sample of
      ``init_sample_size`` rows when there are more: both avoid passes over
      all rows per center. On up to ``init_sample_size`` rows, k-means++
      gives scikit-learn's centers for the same ``random_state``.
    * ``cache``, ``checkpoint``, ``split_every``, ``batch_chunks``,
      ``algorithm="minibatch"``, and the attributes ``cluster_sizes_`` and
      ``history_``.
    * ``labels_``, ``predict`` and ``transform`` return lazy dask arrays for
      dask, zarr or store-path input, chunked as the input's rows (chunks of
      zero rows included).
    * ``init="random"`` on data in more than one chunk, see ``init``.
    * Exact ties: scikit-learn subtracts the data's mean before computing
      distances, so a row exactly equidistant from two centers goes where
      the rounding of the centered values sends it; distkm, which reads the
      rows as they are, gives it to the lower-numbered center. So do both on
      the farthest rows an empty cluster may take when their distances tie
      across chunks. Without exact ties the results agree (float64 centers to
      ~1e-12 from the same initial centers).

    Examples
    --------
    >>> from distkm import KMeans
    >>> model = KMeans(n_clusters=10, random_state=0).fit("data/mnist.zarr")  # doctest: +SKIP
    >>> model.labels_  # a lazy dask array over the store  # doctest: +SKIP
    """

    _parameter_constraints: dict = {
        "n_clusters": [Interval(Integral, 1, None, closed="left")],
        "init": [StrOptions({"k-means++", "k-means||", "random"}), callable, "array-like"],
        "n_init": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "verbose": ["verbose"],
        "random_state": ["random_state"],
        "dtype": [None, StrOptions({"float32", "float64"}), type],
        "split_every": [None, Interval(Integral, 2, None, closed="left")],
        "init_sample_size": [None, Interval(Integral, 1, None, closed="left")],
        "checkpoint": [None, str, os.PathLike],
        "cache": [StrOptions({"auto"}), "boolean"],
        "algorithm": [StrOptions({"auto", "lloyd", "elkan", "minibatch"})],
        "batch_chunks": [None, Interval(Integral, 1, None, closed="left")],
        "copy_x": ["boolean"],
    }

    def __init__(self, n_clusters=8, *, init="k-means++", n_init="auto", max_iter=300, tol=1e-4, verbose=0,
                 random_state=None, dtype=None, split_every=None, init_sample_size=None, checkpoint=None,
                 cache="auto", algorithm="auto", batch_chunks=None, copy_x=True):
        self.n_clusters = n_clusters
        self.init = init
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.verbose = verbose
        self.random_state = random_state
        self.dtype = dtype
        self.split_every = split_every
        self.init_sample_size = init_sample_size
        self.checkpoint = checkpoint
        self.cache = cache
        self.algorithm = algorithm
        self.batch_chunks = batch_chunks
        self.copy_x = copy_x

    # ------------------------------------------------------------------ #
    # public API
    # ------------------------------------------------------------------ #
    def fit(self, X, y=None, sample_weight=None, *, progress=None, final=None):
        """Compute k-means clustering.

        Parameters
        ----------
        X : array-like, dask array, zarr array or group, str/Path, or FitRows of shape (n_samples, n_features)
            Training rows (uint8, integer or float). A path opens the
            ``images`` array of a distkm zarr store. Rows prepared by
            :func:`distkm.engine.loop.prepare_rows` are used as prepared
            (cached and summarised once for several fits, as a sweep does).
        y : Ignored
        sample_weight : array-like or dask array of shape (n_samples,), optional
            Weight of each row; ``None`` gives every row weight 1.
        progress : callable, optional
            ``progress(event, **info)`` hears how the fit goes (see :func:`distkm.engine.loop.fit`).
        final : dict, optional
            More work for the pass after convergence, which then also writes
            the labels and tabulates the evaluation (see
            :func:`distkm.engine.loop.fit`); its tables are in ``evaluation_tables_``.

        Returns
        -------
        self : KMeans
        """
        self._validate_params()
        rows = X if isinstance(X, FitRows) else None
        x = rows.source if rows is not None else as_dask_array(X)
        n_samples, n_features = x.shape
        if n_samples < self.n_clusters:
            raise ValueError(f"n_samples={n_samples} should be >= n_clusters={self.n_clusters}.")
        dtype = self._compute_dtype(x)
        weights = as_dask_weights(sample_weight, x)
        init, n_init = self._check_init(X, x, n_features)
        settings = FitSettings.resolve(
            n_clusters=self.n_clusters, init=init, n_init=n_init, max_iter=self.max_iter, tol=self.tol, dtype=dtype,
            algorithm=self.algorithm, split_every=self.split_every, init_sample_size=self.init_sample_size,
            batch_chunks=self.batch_chunks, cache=self.cache, random_state=self.random_state)
        if rows is None or weights is not None or (rows.cached is not None and (
                self.cache is False or rows.split_every != settings.split_every)):
            # rows held in other blocks (or to be weighted): prepared again, as given
            rows = prepare_rows(x, weights=weights, cache=settings.cache, split_every=settings.split_every,
                                cache_fraction=settings.cache_fraction)
        checkpoint = None if self.checkpoint is None else Checkpoint(self.checkpoint)
        result = loop.fit(rows, settings, check_random_state(self.random_state), checkpoint=checkpoint, final=final,
                          progress=self._listener(progress))

        self.cluster_centers_ = result.centers
        self.n_iter_ = result.n_iter
        self.tolerance_ = result.tolerance
        self.inertia_ = result.inertia
        self.cluster_sizes_ = result.sizes
        self.history_ = result.history
        self.n_features_in_ = n_features
        self._n_features_out = self.n_clusters
        if final:
            self.evaluation_tables_ = result.tables
        self.labels_ = self._output(X, assign_lazy(x, self.cluster_centers_, dtype,
                                                         block_rows=settings.block_rows))
        distinct = int(np.count_nonzero(self.cluster_sizes_))
        if distinct < self.n_clusters:
            warnings.warn(f"Number of distinct clusters ({distinct}) found smaller than n_clusters "
                          f"({self.n_clusters}). Possibly due to duplicate points in X.", ConvergenceWarning,
                          stacklevel=2)
        return self

    def _listener(self, progress):
        """What hears the fit's events: the dashboard's /distkm page, ``progress``, and with ``verbose`` stdout.

        The verbose lines are scikit-learn's (iterations counted from 0; strict
        convergence is unchanged labels, which leave the centers exactly where they were).
        """
        def listen(event, **info):
            if event == "checkpoint":
                info["path"] = self.checkpoint
            if event == "iteration":
                dashboard.publish("iteration", {**info["record"], "run": info["run"], "n_clusters": self.n_clusters})
            if progress is not None:
                progress(event, **info)
            if self.verbose and event == "initialized":
                print("Initialization complete")
            elif self.verbose and event == "iteration":
                _print_iteration(info["record"], info["tol"])
        return listen

    def fit_predict(self, X, y=None, sample_weight=None):
        """Fit, then return the cluster of every row (``labels_``)."""
        return self.fit(X, sample_weight=sample_weight).labels_

    def predict(self, X):
        """Index of the closest center for every row.

        Returns
        -------
        labels : ndarray or dask.array.Array of shape (n_samples,), int32
            Lazy (dask) for dask, zarr or store-path input.
        """
        x = self._check_test_data(X)
        return self._output(X, assign_lazy(x, self.cluster_centers_, self.cluster_centers_.dtype,
                                                 block_rows=config.block_rows()))

    def transform(self, X):
        """Euclidean distance of every row to every center, shape (n_samples, n_clusters)."""
        x = self._check_test_data(X)
        return self._output(X, distances_lazy(x, self.cluster_centers_, self.cluster_centers_.dtype,
                                                    block_rows=config.block_rows()))

    def score(self, X, y=None, sample_weight=None):
        """Opposite of the inertia of ``X`` under the fitted centers (one pass)."""
        x = self._check_test_data(X)
        weights = as_dask_weights(sample_weight, x)
        stats = final_stats(x, self.cluster_centers_, self.cluster_centers_.dtype, weights=weights,
                            split_every=self.split_every or config.split_every(),
                            block_rows=config.block_rows())
        return -float(stats.inertia)

    # ------------------------------------------------------------------ #
    # checks at the door
    # ------------------------------------------------------------------ #
    def _compute_dtype(self, x):
        """``dtype``, or the input's float dtype (float32 for 8-bit pixels: see the class docstring)."""
        if self.dtype is None:
            if x.dtype in (np.float32, np.float64):
                return x.dtype
            return np.dtype(np.float32 if x.dtype.kind in "uib" and x.dtype.itemsize == 1 else np.float64)
        dtype = np.dtype(self.dtype)
        if dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")
        return dtype

    def _check_init(self, X, x, n_features):
        """The init (a name, or centers as float64) and the number of runs, with scikit-learn's checks."""
        init = self.init
        if isinstance(init, str):
            n_init = (10 if init == "random" else 1) if self.n_init == "auto" else self.n_init
            return init, n_init
        if callable(init):
            given = X if isinstance(X, np.ndarray) else x
            init = init(given, self.n_clusters, random_state=check_random_state(self.random_state))
        init = np.asarray(init)
        if init.ndim != 2:
            raise ValueError(f"The initial centers must be a 2-D array of shape (n_clusters, n_features), got shape "
                             f"{init.shape}.")
        # scikit-learn's words (_validate_center_shape), so that code matching on them keeps working
        if init.shape[0] != self.n_clusters:
            raise ValueError(f"The shape of the initial centers {init.shape} does not match the number of clusters "
                             f"{self.n_clusters}.")
        if init.shape[1] != n_features:
            raise ValueError(f"The shape of the initial centers {init.shape} does not match the number of features "
                             f"of the data {n_features}.")
        if init.dtype.kind not in "buif" or not np.isfinite(init).all():
            raise ValueError("init array must hold finite real numbers (it has NaN, inf or non-numbers)")
        if self.n_init not in ("auto", 1):
            warnings.warn(f"Explicit initial center position passed: performing only one init in {type(self).__name__} "
                          f"instead of n_init={self.n_init}.", RuntimeWarning, stacklevel=3)
        return init.astype(np.float64), 1

    def _check_test_data(self, X):
        check_is_fitted(self)
        x = X.source if isinstance(X, FitRows) else as_dask_array(X)
        if x.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {x.shape[1]} features, but {type(self).__name__} is expecting "
                             f"{self.n_features_in_} features as input.")
        return x

    @staticmethod
    def _output(X, result):
        """numpy in, numpy out; dask, zarr or a path in, lazy dask out."""
        if isinstance(X, (da.Array, zarr.Array, zarr.Group, str, FitRows)) or hasattr(X, "__fspath__"):
            return result
        return result.compute()

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        # dtype=None follows floating input; an explicit dtype is what comes out, whatever came in.
        tags.transformer_tags.preserves_dtype = (["float64", "float32"] if self.dtype is None
                                                 else [np.dtype(self.dtype).name])
        return tags


def _print_iteration(record, tol):
    """scikit-learn's verbose lines for one iteration (or mini-batch step)."""
    i, shift = record["iteration"] - 1, record["center_shift"]
    if "pass" in record:  # a mini-batch step, as MiniBatchKMeans says it
        print(f"Minibatch step {i + 1}: mean batch inertia: {record['inertia'] / record['rows']}")
        return
    print(f"Iteration {i}, inertia {record['inertia']}.")
    if shift == 0 and i > 0:
        print(f"Converged at iteration {i}: strict convergence.")
    elif shift <= tol:
        print(f"Converged at iteration {i}: center shift {shift} within tolerance {tol}.")


def load_model(run_dir):
    """A fitted :class:`KMeans` from a run folder written by ``distkm fit``, and its ``model.json``.

    Nothing is unpickled: the centers and the JSON are read and checked
    (:func:`distkm.io.model.read_model`).

    Returns
    -------
    model : KMeans
    meta : dict
    """
    centers, meta = read_model(run_dir)
    k, d = centers.shape
    model = KMeans(n_clusters=k, dtype=centers.dtype.name)
    model.cluster_centers_ = centers
    model.n_features_in_ = d
    model._n_features_out = k
    model.n_iter_ = int(meta.get("n_iter", 0))
    model.inertia_ = float(meta.get("inertia", np.nan))
    model.cluster_sizes_ = np.asarray(meta.get("cluster_sizes", []), dtype=np.int64)
    model.history_ = list(meta.get("history", []))
    return model, meta
