"""Augmented image sets of any size, generated chunk by chunk on the workers.

Output row chunk ``i`` depends only on (source, seed, i): its random stream is
``SeedSequence(seed, spawn_key=(i,))``, it draws one window of source rows
(one source chunk's worth) and distorts images sampled from it. So the same
command writes byte-identical stores on any number of workers, each task
holds only a source window and one output chunk, and a killed generation
resumes by writing the missing chunks only.

The store is generated at ``OUT.partial`` (marked incomplete, which ``fit``
refuses with the command that resumes it) and renamed to ``OUT`` when every
chunk is written.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from functools import partial

import numpy as np
import zarr

from distkm import config
from distkm.engine.run import run_chunk_tasks
from distkm.io import locations
from distkm.io.outputs import ResumableOutput
from distkm.io.stores import (
    blosc_compressor,
    chunks_done,
    compressor_settings,
    create_store,
    discard_unfinished_writes,
    mark_complete,
    open_store,
    write_chunk,
    zarr_location,
)
from distkm.kernels.distort import distort, random_distortions


@dataclass(frozen=True)
class AugmentPlan:
    """Everything that determines the content of an augmented store (compared on resume)."""

    #: Where the source is read from: an absolute path, or the URL as given (it may carry credentials, so
    #: only ``recorded_source`` is ever written).
    source: str
    source_split: str | None
    source_rows: tuple
    image_shape: tuple
    n: int
    seed: int
    chunk_rows: int
    compressor: dict
    originals: bool
    strength: float
    #: The source's other splits, copied untouched after the ``n`` generated rows: (name, start, stop).
    carried: tuple = ()

    @property
    def n_originals(self):
        return min(self.source_rows[1] - self.source_rows[0], self.n) if self.originals else 0

    @property
    def n_total(self):
        return self.n + sum(stop - start for _, start, stop in self.carried)

    @property
    def n_chunks(self):
        return -(-self.n_total // self.chunk_rows)

    def chunk_rows_of(self, i):
        return min(self.chunk_rows, self.n_total - i * self.chunk_rows)

    def splits(self):
        """The output's splits: the generated rows under the source split's name, then the carried ones."""
        if self.source_split is None:
            return {"original": [0, self.n_originals], "augmented": [self.n_originals, self.n]}
        splits, start = {self.source_split: [0, self.n]}, self.n
        for name, lo, hi in self.carried:
            splits[name] = [start, start + hi - lo]
            start += hi - lo
        return splits

    def carried_rows(self, start, stop):
        """Source rows of the output rows ``[start, stop)`` (all at or after ``n``), in order."""
        index, offset = [], self.n
        for _, lo, hi in self.carried:
            a, b = max(start, offset), min(stop, offset + hi - lo)
            if a < b:
                index.append(np.arange(lo + a - offset, lo + b - offset))
            offset += hi - lo
        return np.concatenate(index)

    @property
    def recorded_source(self):
        """The source as it is recorded: an absolute path, or the URL without credentials."""
        return locations.recorded(self.source)

    def to_attrs(self):
        attrs = {**asdict(self), "source": self.recorded_source}
        attrs["source_rows"], attrs["image_shape"] = list(self.source_rows), list(self.image_shape)
        attrs["carried"] = [list(c) for c in self.carried]
        return attrs


def augment_store(source, out, n, *, seed=0, split=None, chunk_rows=None, compressor=None, originals=True,
                  strength=1.0, image_shape=None, overwrite=False, progress=True):
    """Generate an augmented store of ``n`` rows from a source store, on the current Dask cluster.

    Parameters
    ----------
    source : str or Path
        A distkm store (with ``image_shape`` in its attributes, or pass ``image_shape``).
    out : str or Path
        The store to create.
    n : int
        Rows of the output; the first rows are the source's originals unless ``originals=False``.
    seed : int
        Chunk ``i`` is a function of (source, seed, i) only.
    split : str, optional
        Draw from this split of the source only (e.g. "train", to keep "test" held out).
    chunk_rows : int, optional
        Rows per output chunk (default ``distkm.chunk-rows``).
    compressor : str or dict, optional
        Blosc settings, e.g. "zstd:1" (default ``distkm.compressor``).
    originals : bool
        Start with the source rows themselves.
    strength : float
        Scales every distortion range (0 gives copies).
    image_shape : tuple, optional
        (h, w) or (h, w, c) of a row, when the source does not declare it.
    overwrite : bool
        Replace an existing complete ``out`` (only once the new one is complete).
    progress : bool
        Show a progress bar of rows written.

    Returns
    -------
    dict
        ``rows``, ``seconds``, ``rows_written`` (this call), ``resumed_chunks``, ``bytes_on_disk``,
        ``bytes_raw``, ``compression_ratio``.
    """
    start = time.perf_counter()
    plan = check_request(source, out, n, seed=seed, split=split, chunk_rows=chunk_rows, compressor=compressor,
                         originals=originals, strength=strength, image_shape=image_shape, overwrite=overwrite)
    with ResumableOutput(out, inputs=[source], overwrite=overwrite) as output:  # a second augment is refused
        resumed = _resume_or_create(output.work, plan)
        done = chunks_done(output.work)
        todo = [i for i in range(plan.n_chunks) if not done[i]]
        rows = [plan.chunk_rows_of(i) for i in todo]
        run_chunk_tasks(partial(_augment_chunk, plan=plan, out=str(output.work)), todo, rows, name="augment",
                        progress=progress, desc="augment")
        mark_complete(output.work)
        output.publish()
    size = locations.disk_usage(out)
    raw = plan.n_total * (int(np.prod(plan.image_shape)) + 1 + 8)
    return {"rows": plan.n_total, "rows_written": int(sum(rows)), "resumed_chunks": int(done.sum()) if resumed else 0,
            "seconds": time.perf_counter() - start, "bytes_on_disk": size, "bytes_raw": raw,
            "compression_ratio": raw / max(size, 1)}


def check_request(source, out, n, *, seed=0, split=None, chunk_rows=None, compressor=None, originals=True,
                  strength=1.0, image_shape=None, overwrite=False):
    """Refuse, before a cluster starts or a chunk is written, what :func:`augment_store` would refuse.

    Parameters are those of :func:`augment_store`; only the source's metadata is read.

    Returns
    -------
    AugmentPlan
        What the generation will write, chunk by chunk.
    """
    plan = _plan(source, n, seed=seed, split=split, chunk_rows=chunk_rows, compressor=compressor,
                 originals=originals, strength=strength, image_shape=image_shape)
    ResumableOutput(out, inputs=[source], overwrite=overwrite)  # checks OUT and OUT.partial
    return plan


def _plan(source, n, *, seed, split, chunk_rows, compressor, originals, strength, image_shape):
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive number of rows, got {n!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not np.isfinite(strength) or strength < 0:
        raise ValueError(f"strength must be a non-negative number, got {strength!r}")
    store = open_store(source, split=split)
    x = store.images
    if x.dtype != np.uint8:
        raise TypeError(f"augment needs uint8 images; {source} holds {x.dtype}")
    shape = tuple(image_shape or store.attrs.get("image_shape") or ())
    if not shape:
        raise ValueError(f"{source} does not declare its image_shape; pass image_shape=HxW (or HxWxC)")
    if int(np.prod(shape)) != x.shape[1] or len(shape) not in (2, 3):
        raise ValueError(f"{source}: rows have {x.shape[1]} values, but the declared image shape "
                         f"{'x'.join(map(str, shape))} has {int(np.prod(shape))}")
    splits = store.attrs.get("splits", {})
    lo, hi = splits.get(split, [0, x.shape[0]]) if split else (0, x.shape[0])
    # With a split, the source's other splits (the held-out test rows) come along untouched, after the
    # generated rows: fit on the augmented train, score on the same test rows.
    carried = tuple((name, int(a), int(b)) for name, (a, b) in sorted(splits.items(), key=lambda kv: kv[1][0])
                    if split and name != split)
    settings = compressor_settings(compressor)
    chunk_rows = int(chunk_rows or config.get("chunk-rows"))
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be positive, got {chunk_rows}")
    read_from = str(source) if locations.is_url(source) else locations.recorded(source)  # workers: absolute
    return AugmentPlan(read_from, split, (int(lo), int(hi)), shape, int(n), int(seed), chunk_rows,
                       settings, bool(originals), float(strength), carried)


def _resume_or_create(work, plan):
    """Resume a partial store made by the same plan; refuse one made by another; else create it."""
    if locations.exists(work):
        try:
            attrs = dict(zarr.open_group(zarr_location(work), mode="r").attrs["distkm"])
        except Exception:
            attrs = {}
        if attrs.get("augment") == plan.to_attrs():
            discard_unfinished_writes(work)
            return True
        if attrs.get("augment"):
            differ = sorted(k for k, v in plan.to_attrs().items() if attrs["augment"].get(k) != v)
            raise ValueError(f"{work} is an unfinished generation with other parameters ({', '.join(differ)} "
                             f"differ); remove it, or rerun the command that started it")
        raise ValueError(f"{work} exists and is not an unfinished distkm augment; remove it first")
    source = zarr.open_group(zarr_location(plan.source), mode="r")
    has_labels = "labels" in source.array_keys()
    create_store(work, n=plan.n_total, n_features=int(np.prod(plan.image_shape)), chunk_rows=plan.chunk_rows,
                         labels=has_labels, source_index=True,
                         compressor=blosc_compressor(plan.compressor),
                         attrs={"image_shape": list(plan.image_shape), "splits": plan.splits(),
                                "augment": plan.to_attrs(),
                                "source": {"store": plan.recorded_source, "split": plan.source_split}})
    return False


def _augment_chunk(i, *, plan, out):
    """Write output row chunk ``i`` (runs on a worker; needs only the plan)."""
    source = zarr.open_group(zarr_location(plan.source), mode="r")
    src_images = source["images"]
    src_labels = source["labels"] if "labels" in source.array_keys() else None
    lo, hi = plan.source_rows
    start, end = i * plan.chunk_rows, i * plan.chunk_rows + plan.chunk_rows_of(i)
    stop = min(end, plan.n)  # generated rows [start, stop); carried rows [stop, end)
    images = np.empty((end - start, src_images.shape[1]), dtype=np.uint8)
    labels = np.zeros(end - start, dtype=np.uint8)
    index = np.empty(end - start, dtype=np.int64)
    if end > stop:  # the source's other splits, copied as they are
        carried = plan.carried_rows(max(start, plan.n), end)
        first = max(start, plan.n) - start
        index[first:] = carried
        images[first:] = src_images.oindex[carried, :]
        if src_labels is not None:
            labels[first:] = src_labels.oindex[carried]
    n_orig = max(0, min(stop, plan.n_originals) - start) if stop > start else 0
    if n_orig:
        index[:n_orig] = np.arange(lo + start, lo + start + n_orig)
        images[:n_orig] = src_images[index[0]: index[0] + n_orig]
        if src_labels is not None:
            labels[:n_orig] = src_labels[index[0]: index[0] + n_orig]
    m = max(0, stop - start - n_orig)
    if m:
        rng = np.random.default_rng(np.random.SeedSequence(plan.seed, spawn_key=(i,)))
        window = src_images.chunks[0]
        n_windows = -(-(hi - lo) // window)
        w0 = lo + int(rng.integers(n_windows)) * window
        w1 = min(w0 + window, hi)
        pick = rng.integers(0, w1 - w0, m)
        shape = plan.image_shape
        originals = src_images[w0:w1][pick].reshape(m, *shape)
        params = random_distortions(rng, m, shape[:2], plan.strength)
        generated = slice(n_orig, n_orig + m)
        images[generated] = distort(originals, params).reshape(m, -1)
        index[generated] = w0 + pick
        if src_labels is not None:
            labels[generated] = src_labels[w0:w1][pick]
    return write_chunk(out, i, images, labels if src_labels is not None else None, index)

