"""The fit in one place: rows prepared once, then for each initialisation a single run, the best kept.

The shape is scikit-learn's ``KMeans.fit`` (``sklearn/cluster/_kmeans.py``):
the single-run function is picked once by algorithm (Lloyd's passes, pruned
or not, or mini-batch steps), called for each of the ``n_init`` initial
centers, and the run with the lowest inertia wins. What distkm adds lives here
too, so that the estimator and the commands share it:

* :func:`prepare_rows` caches the rows on the workers when they fit and
  summarises them (one pass), once for any number of fits (a sweep of k);
* every run is checkpointed after every iteration when asked, and a fit
  given the same checkpoint continues where it stopped, to the same bits;
* the pass after convergence also writes the labels and tabulates the
  evaluation when the caller asks (``final``), so a command reads its rows
  once more, not three times.

Below the door, nothing reads distkm's configuration: :class:`FitSettings`
carries every choice, resolved once by its caller (:meth:`FitSettings.resolve`).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from functools import partial

import numpy as np
from dask.utils import format_bytes

from distkm import config
from distkm.engine import lloyd
from distkm.engine.cache import CachedRows, cache_on_client
from distkm.engine.final import final_pass
from distkm.engine.init import init_centers
from distkm.engine.minibatch import minibatch

logger = logging.getLogger("distkm")


@dataclass(frozen=True)
class FitSettings:
    """Every choice a fit makes, resolved once (config read in :meth:`resolve`, nowhere deeper).

    Attributes
    ----------
    n_clusters, max_iter, tol, n_init, algorithm :
        As :class:`distkm.KMeans` (``tol`` relative; ``n_init`` resolved from "auto").
    init : str or ndarray of shape (n_clusters, n_features)
        "k-means++", "k-means||", "random", or the initial centers (float64).
    dtype : numpy.dtype
        Compute dtype (float32 or float64).
    split_every : int
        Fan-in of every reduction tree.
    block_rows : int
        Rows per block inside the kernels.
    init_sample_size, init_oversampling, init_rounds :
        k-means++'s sample; k-means||'s candidates per round and rounds.
    batch_chunks : int
        Chunks per mini-batch step.
    cache_fraction : float
        Share of the workers' memory that cached rows and pruning bounds may take.
    iteration_batch_seconds : float
        A pass that is one task runs iterations in batches of about this long.
    cache : {"auto", True, False}
        Hold the rows on the workers (:mod:`distkm.engine.cache`).
    random_state : int, None or RandomState
        As given (it is part of a checkpoint's fingerprint).
    """

    n_clusters: int
    init: object
    n_init: int
    max_iter: int
    tol: float
    dtype: np.dtype
    algorithm: str
    split_every: int
    block_rows: int
    init_sample_size: int
    init_oversampling: float
    init_rounds: int
    batch_chunks: int
    cache_fraction: float
    iteration_batch_seconds: float
    cache: object = "auto"
    random_state: object = None

    @classmethod
    def resolve(cls, **given):
        """Settings from ``given``, with what is ``None`` or missing taken from distkm's configuration."""
        defaults = {"split_every": config.split_every(), "block_rows": config.block_rows(),
                    "init_sample_size": config.get("init-sample-size"),
                    "init_oversampling": config.get("init-oversampling"), "init_rounds": config.get("init-rounds"),
                    "batch_chunks": config.get("minibatch-chunks"), "cache_fraction": config.cache_fraction(),
                    "iteration_batch_seconds": config.get("iteration-batch-seconds", 0.0)}
        given = {name: value for name, value in given.items() if value is not None}
        return cls(**{**defaults, **given})

    def fingerprint(self):
        """What a checkpoint must have been written with to be resumed (JSON-able)."""
        random_state = self.random_state if isinstance(self.random_state, (int, type(None))) else "RandomState"
        init = self.init if isinstance(self.init, str) else digest(self.init)
        return {"n_clusters": self.n_clusters, "init": init, "n_init": self.n_init, "max_iter": self.max_iter,
                "tol": self.tol, "random_state": random_state, "dtype": np.dtype(self.dtype).name,
                "split_every": self.split_every, "init_sample_size": self.init_sample_size,
                "block_rows": self.block_rows, "init_rounds": self.init_rounds,
                "init_oversampling": self.init_oversampling, "algorithm": self.algorithm,
                "batch_chunks": self.batch_chunks}


@dataclass(frozen=True)
class FitRows:
    """Rows ready to fit, any number of times: where the passes read them, and what one pass found.

    Made by :func:`prepare_rows`; :meth:`distkm.KMeans.fit` takes one in
    place of an array (a sweep prepares its rows once for every k).

    Attributes
    ----------
    source : dask.array.Array
        The rows as given (lazy labels are built on it, so they do not pin the cache).
    x : dask.array.Array
        What the passes read: the cached blocks, or ``source``.
    weights : dask.array.Array or None
        Sample weights, chunked like ``x``.
    cached : distkm.engine.cache.CachedRows or None
    summary : distkm.kernels.DataSummary
    split_every : int
        The fan-in the cached blocks were made for.
    """

    source: object
    x: object
    weights: object
    cached: CachedRows | None
    summary: object
    split_every: int

    @property
    def shape(self):
        return self.source.shape

    @property
    def dtype(self):
        return self.source.dtype


def prepare_rows(x, *, weights=None, cache="auto", split_every, cache_fraction):
    """Cache ``x`` on the workers when it fits (and ``cache`` allows), then summarise it (one pass).

    Parameters
    ----------
    x : dask.array.Array of shape (n, d)
    weights : dask.array.Array of shape (n,), optional
    cache : {"auto", True, False}
    split_every : int
        Fan-in of the reductions (blocks of that many chunks are cached).
    cache_fraction : float
        See :class:`FitSettings`.

    Returns
    -------
    FitRows

    Raises
    ------
    ValueError
        ``x`` holds NaN or infinite values.
    """
    cached = cache_on_client(x, cache, split_every, weights, cache_fraction=cache_fraction)
    data = x if cached is None else cached.array
    summary = lloyd.summarize(data, weights, split_every=split_every, cached=cached)
    if summary.n_nonfinite:
        raise ValueError(f"X contains {summary.n_nonfinite} NaN or infinite value(s); k-means needs finite data")
    if cached is not None:  # said once the rows are known good
        logger.info("data cached on the workers (%s)", format_bytes(x.nbytes))
    return FitRows(x, data, weights, cached, summary, split_every)


@dataclass
class RunState:
    """Where a fit stands after an iteration: what a checkpoint saves and a resumed fit continues from.

    Attributes
    ----------
    fingerprint : dict
        Settings and data summary the fit was started with (a resumed fit must match them).
    run : int
        Index of the initialisation in progress (``n_init`` runs).
    centers : ndarray of shape (k, d), float64
        Centers after ``len(history)`` iterations of this run.
    history : list of dict
    converged : bool
        This run's loop has ended (tolerance or ``max_iter``).
    rng_state : tuple
        ``RandomState.get_state()`` right after this run's initialisation.
    best : dict or None
        Best finished run so far: ``inertia``, ``n_iter``, ``history``, ``sizes`` and ``centers``.
    """

    fingerprint: dict
    run: int
    centers: np.ndarray
    history: list
    converged: bool
    rng_state: tuple
    best: dict | None = field(default=None)


def digest(array):
    """Short content hash of an array (for fingerprints)."""
    array = np.ascontiguousarray(array)
    return hashlib.sha256(array.tobytes() + str((array.dtype, array.shape)).encode()).hexdigest()[:16]


@dataclass
class FitResult:
    """The best of a fit's runs.

    Attributes
    ----------
    centers : ndarray of shape (k, d), in the compute dtype
    n_iter : int
    inertia : float
        Exact, from the pass after convergence.
    sizes : ndarray of shape (k,), int64
    history : list of dict
        The winning run's iteration records (see :class:`distkm.engine.lloyd.LloydResult`).
    tolerance : float
        The absolute tolerance the runs stopped at.
    tables : distkm.kernels.ChunkEvaluation or None
        The evaluation tables of the best run, when ``final`` asked for them.
    """

    centers: np.ndarray
    n_iter: int
    inertia: float
    sizes: np.ndarray
    history: list
    tolerance: float
    tables: object = None


def fit(rows, settings, random_state, *, checkpoint=None, final=None, progress=None):
    """k-means on prepared rows: ``settings.n_init`` runs from their initial centers, the best kept.

    Parameters
    ----------
    rows : FitRows
    settings : FitSettings
    random_state : numpy.random.RandomState
        Consumed as scikit-learn's fit consumes it (initialisation, then mini-batch order).
    checkpoint : object, optional
        Where the fit's :class:`RunState` goes after every iteration and comes
        back from: ``checkpoint.save(state)``, and ``checkpoint.load(fingerprint)``
        (the saved fields as a dict, or ``None``); see :class:`distkm.io.checkpoint.Checkpoint`.
        A fit given the checkpoint of an interrupted one continues it, to the same bits.
    final : dict, optional
        More work for the pass after convergence (keyword arguments of
        :func:`distkm.engine.final.final_pass`: ``labels_to``, ``classes``,
        ``evaluation``, ``row_offset``); done for the best run only.
    progress : callable, optional
        ``progress(event, **info)`` hears how the fit goes: ``"checkpoint"``
        (``resumed``: ``(run, iteration)`` or None), ``"init"``
        (``run``, ``n_init``, ``init``) and ``"initialized"`` (``run``) around
        an initialisation, ``"iteration"`` (``record``, ``tol``, ``run``),
        ``"end"`` (``converged``, ``n_iter``, ``inertia``).

    Returns
    -------
    FitResult

    Raises
    ------
    ValueError
        The rows hold values too large for the compute dtype (:func:`check_range`).
    """
    report = progress or (lambda event, **info: None)
    summary, dtype = rows.summary, np.dtype(settings.dtype)
    check_range(summary, dtype, rows.dtype)
    tol = lloyd.tolerance(summary, settings.tol)
    passes = dict(split_every=settings.split_every, block_rows=settings.block_rows)
    single_run = _single_run(rows, settings, tol)
    fingerprint = resumed = None
    if checkpoint is not None:
        fingerprint = {"params": settings.fingerprint(), "data": _data_fingerprint(rows)}
        saved = checkpoint.load(fingerprint)
        resumed = None if saved is None else RunState(**saved)
        report("checkpoint", resumed=None if resumed is None else (resumed.run, len(resumed.history)))
    best = resumed.best if resumed is not None else None
    n_init, tables = settings.n_init, None
    for run in range(resumed.run if resumed is not None else 0, n_init):
        if resumed is not None and run == resumed.run:
            random_state.set_state(resumed.rng_state)
            centers, history, done = resumed.centers, resumed.history, resumed.converged
        else:
            report("init", run=run, n_init=n_init,
                   init=settings.init if isinstance(settings.init, str) else "given array")
            centers = init_centers(rows.x, settings.n_clusters, settings.init, random_state, weights=rows.weights,
                                   sample_size=settings.init_sample_size, dtype=dtype,
                                   oversampling=settings.init_oversampling, rounds=settings.init_rounds, **passes)
            history, done = [], False
            report("initialized", run=run)
        rng_state = random_state.get_state()  # the state a resumed run must continue from
        on_iteration = None
        if checkpoint is not None:
            def on_iteration(centers, history, converged, run=run, rng_state=rng_state, best=best):
                checkpoint.save(RunState(fingerprint, run, centers, history, converged, rng_state, best))
        on_record = partial(_report_record, report, run=run, tol=tol)
        result = single_run(centers, random_state, history=history, converged=done, on_record=on_record,
                            on_iteration=on_iteration)
        # With one run, its final pass is the last: it does what ``final`` asks too.
        last = final_pass(rows.x, result.centers, dtype, weights=rows.weights, cached=rows.cached, **passes,
                          **(final if n_init == 1 and final else {}))
        report("end", converged=result.converged, n_iter=result.n_iter, inertia=last.stats.inertia)
        if best is None or last.stats.inertia < best["inertia"]:
            best = {"inertia": float(last.stats.inertia), "n_iter": result.n_iter, "history": result.history,
                    "sizes": last.stats.sizes, "centers": result.centers}
            tables = last.evaluation
    if final and n_init > 1:  # the best of several runs is known only now
        tables = final_pass(rows.x, best["centers"], dtype, weights=rows.weights, cached=rows.cached, **passes,
                            **final).evaluation
    return FitResult(best["centers"].astype(dtype), best["n_iter"], best["inertia"],
                     np.asarray(best["sizes"], dtype=np.int64), best["history"], tol, tables)


def check_range(summary, dtype, data_dtype):
    """Refuse data whose squared norms the compute dtype cannot hold (distances would be inf, then NaN).

    A dot product of a row and a center is at most the sum of the rows'
    squared norms, so when that sum fits (with room for the factor 2 of the
    distances and the GEMM's partial sums) no distance can overflow.
    """
    limit = float(np.finfo(dtype).max) / 16
    if np.isfinite(summary.weighted_sq_norm) and summary.weighted_sq_norm <= limit and np.isfinite(summary.m2).all():
        return
    advice = ("pass dtype='float64'" if dtype == np.float32 else
              "scale the data down (k-means is scale-equivariant)")
    raise ValueError(f"X holds values too large for k-means in {dtype.name} (data dtype {data_dtype}): the sum of "
                     f"squared row norms exceeds {limit:.1e}, so distances would overflow; {advice}")


def _single_run(rows, settings, tol):
    """The function that runs one initialisation to the end, picked once by algorithm (as scikit-learn's)."""
    dtype = np.dtype(settings.dtype)
    passes = dict(split_every=settings.split_every, block_rows=settings.block_rows)
    if settings.algorithm == "minibatch":
        def run_minibatch(centers, random_state, *, history, converged, on_record, on_iteration):
            if converged:  # resumed after it ended: checkpointed once finished
                return lloyd.LloydResult(np.asarray(centers, dtype=np.float64), len(history), True, history)
            # A killed mini-batch run restarts (it is one or two passes), so it is checkpointed once finished.
            result = minibatch(rows.x, centers, summary=rows.summary, max_passes=settings.max_iter, tol=tol,
                               dtype=dtype, random_state=random_state, batch_chunks=settings.batch_chunks,
                               weights=rows.weights, callback=on_record, **passes)
            if on_iteration is not None:
                on_iteration(result.centers, result.history, True)
            return result
        return run_minibatch
    # "auto" prunes where it measured faster: in float64. In float32 the rounding margin that keeps the
    # pruned assignment Lloyd's to the bit leaves so many rows to recompute that the passes took longer
    # (MNIST k=256: 13.2 s against 10.3 s for 60 iterations; float64: 15.4 s against 22.8 s).
    pruning = (settings.algorithm == "elkan" or settings.algorithm == "auto" and dtype == np.float64) \
        and lloyd.bounds_fit(rows.x, settings.n_clusters, rows.cached, cache_fraction=settings.cache_fraction)

    def run_lloyd(centers, random_state, *, history, converged, on_record, on_iteration):
        return lloyd.lloyd(rows.x, centers, summary=rows.summary, max_iter=settings.max_iter, tol=tol, dtype=dtype,
                           weights=rows.weights, callback=on_record, history=history, converged=converged,
                           on_iteration=on_iteration, cached=rows.cached, pruning=pruning,
                           batch_seconds=settings.iteration_batch_seconds, **passes)
    return run_lloyd


def _report_record(report, record, *, run, tol):
    report("iteration", record=record, tol=tol, run=run)


def _data_fingerprint(rows):
    """What identifies the rows of a checkpointed fit: shape, layout and content (through the summary)."""
    summary = rows.summary
    return {"shape": list(rows.shape), "dtype": rows.dtype.name, "row_chunks": digest(np.asarray(rows.x.chunks[0])),
            "content": digest(np.concatenate([summary.mean, summary.m2,
                                              [summary.weighted_sq_norm, summary.weight_sum]])),
            "weighted": rows.weights is not None}
