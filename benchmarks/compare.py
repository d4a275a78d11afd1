"""distkm against scikit-learn (in memory) and dask-ml (same zarr store, same cluster), in one run.

Run by hand (never in the test suite), with the bench extra installed (``pip install -e ".[bench]"``)::

    .venv/bin/python benchmarks/compare.py mnist aug1m aug8m [--k 10] [--iterations 5]

Stores are built if missing: ``data/mnist.zarr`` from the shipped IDX files, ``data/augNm.zarr``
with ``distkm augment``. For each store, on a LocalCluster of 2 workers x 1 thread (distkm's
worker settings), from the same initial centers (k seeded random rows):

* read: a pass that only reads and decodes every chunk (the floor for an out-of-core iteration), as
  distkm reads (:mod:`distkm.io.zarr_chunks`), and as ``dask.array.from_zarr`` reads (zarr's event loop);
* distkm out-of-core (``cache=False``: the store is re-read every iteration) and cached (``cache=True``;
  skipped when the chunks exceed the share of the workers' memory that ``cache="auto"`` allows);
* dask-ml ``KMeans`` on the same store (as float32), its per-iteration times from its own log;
* scikit-learn ``KMeans(algorithm="lloyd")`` on the rows in RAM as float32, in its own process
  (skipped when they would not fit in memory); per iteration = (fit with 1 + m iterations minus
  fit with 1) / m, best of two each after a warm-up, so loading and validation cancel out.

Then the initialisations: distkm's k-means|| and k-means++ (on a sample), dask-ml's default
(k-means||), scikit-learn's k-means++ (in memory), with the converged inertia of a full fit from
each of distkm's and from scikit-learn's k-means++.

Peak RSS is summed over every process of a measurement (this one, the scheduler and the workers;
or scikit-learn's process), sampled every 20 ms.

``--smoke``: a 4,000-row MNIST store in a temporary folder, k=4, 2 iterations, one read pass each.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil

DISTKM = str(Path(sys.executable).with_name("distkm"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _measure import PeakRSS, run_measured  # noqa: E402
from _smoke import DATA, data_folder, parse_args  # noqa: E402

SKLEARN = """
import json, sys, time, numpy as np, zarr
from sklearn.cluster import KMeans
path, k, m, init_path, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
X = zarr.open_array(path + "/images", mode="r")[...].astype(np.float32)
init = np.load(init_path).astype(np.float32)
def fit_seconds(n_iter):
    t = time.perf_counter(); KMeans(k, init=init, n_init=1, max_iter=n_iter, tol=0, algorithm="lloyd").fit(X)
    return time.perf_counter() - t
fit_seconds(1)  # warm up: thread pool, first touch of the pages
out = {"per_iteration": (min(fit_seconds(1 + m) for _ in range(2)) - min(fit_seconds(1) for _ in range(2))) / m}
if seed >= 0:
    t = time.perf_counter(); model = KMeans(k, init="k-means++", n_init=1, random_state=seed).fit(X)
    out.update(fit_seconds=time.perf_counter() - t, inertia=float(model.inertia_), n_iter=int(model.n_iter_))
    from sklearn.cluster import kmeans_plusplus
    t = time.perf_counter(); kmeans_plusplus(X, k, random_state=seed); out["init_seconds"] = time.perf_counter() - t
print(json.dumps(out))
"""


#: The smoke run's parameters (tiny and quick), in place of the real run's defaults.
SMOKE = {"stores": ["mnist"], "k": 4, "iterations": 2, "repeats": 1}


def ensure_store(name, data=DATA):
    """``<data>/<name>.zarr``, built if missing: mnist from the IDX files, augNm with distkm augment."""
    store = data / f"{name}.zarr"
    mnist = data / "mnist.zarr"
    if not mnist.exists():
        subprocess.run([DISTKM, "ingest", "mnist", "--out", str(mnist)], check=True)
    if not store.exists():
        n = int(name.removeprefix("aug").removesuffix("m")) * 1_000_000
        subprocess.run([DISTKM, "augment", str(mnist), "--n", str(n), "--out", str(store), "--n-workers", "2"],
                       check=True)
    return store


def _touch(block, weights=None):
    return block.shape[0]


def _sum(*parts):
    return sum(parts)


def read_pass(x):
    from distkm import config
    from distkm.engine.graph import map_reduce
    from distkm.engine.run import compute

    compute(map_reduce(x, _touch, _sum, name="read", split_every=config.split_every()).result)


class DaskMLTimes(logging.Handler):
    """Collects dask-ml's own 'Finished Lloyd loop N in 0:00:01.23' timings."""

    def __init__(self):
        super().__init__()
        self.lloyd = []

    def emit(self, record):
        if record.msg.startswith("Finished %s") and str(record.args[0]).startswith("Lloyd loop"):
            self.lloyd.append(record.args[1].total_seconds())


def fmt_bytes(n):
    return f"{n / 2**20:,.0f} MiB" if n < 10 * 2**30 else f"{n / 2**30:,.1f} GiB"


def bench_store(name, k, iterations, *, with_dask_ml, with_sklearn, with_init, seed=0, data=DATA, repeats=3):
    """Measure and print everything for the store ``<data>/<name>.zarr``; ``repeats`` read passes (median) each."""
    import dask.array as da
    import zarr
    from distributed import wait

    from distkm import KMeans, config
    from distkm.cluster.client import dask_client
    from distkm.engine.cache import cluster_memory, should_cache
    from distkm.engine.init import init_centers, take_rows
    from distkm.io.stores import open_store

    store = ensure_store(name, data)
    images = zarr.open_array(store / "images", mode="r")
    n, d = images.shape
    print(f"\n## {name}: {n:,} x {d} uint8, chunks of {images.chunks[0]:,} rows, k={k}, "
          f"2 workers x 1 thread", flush=True)
    times, peaks, notes = {}, {}, {}
    rss = PeakRSS()
    with dask_client(n_workers=2, threads_per_worker=1) as client:
        x = open_store(store).images
        init = take_rows(x, np.sort(np.random.RandomState(seed).choice(n, k, replace=False)))

        read = []
        with rss.measure(peaks, "read"):
            for _ in range(repeats):
                t = time.perf_counter()
                read_pass(x)
                read.append(time.perf_counter() - t)
        times["read"] = statistics.median(read)

        for label, cache in (("distkm out-of-core", False), ("distkm cached", True)):
            # e.g. aug32m: 25 GB of chunks
            if cache and not should_cache(x.nbytes, client, cache_fraction=config.cache_fraction()):
                notes[label] = (f"skipped: {fmt_bytes(x.nbytes)} of chunks exceed {config.cache_fraction():.0%} of the "
                                f"workers' memory ({fmt_bytes(cluster_memory(client))})")
                continue
            with rss.measure(peaks, label):
                model = KMeans(k, init=init, max_iter=iterations, tol=0, cache=cache).fit(x)
            times[label] = statistics.median(h["seconds"] for h in model.history_)

        # The same pass through zarr's own read path (its event loop), as dask.array.from_zarr reads;
        # after distkm's fits: zarr's decode threads would keep memory (malloc arenas) in their RSS.
        read = []
        with rss.measure(peaks, "read via zarr's event loop"):
            for _ in range(repeats):
                t = time.perf_counter()
                read_pass(da.from_zarr(images))
                read.append(time.perf_counter() - t)
        times["read via zarr's event loop"] = statistics.median(read)

        if with_dask_ml:
            try:
                from dask_ml.cluster import KMeans as DaskMLKMeans
            except ImportError:
                notes["dask-ml"] = "not installed (pip install -e '.[bench]')"
            else:
                handler = DaskMLTimes()
                logging.getLogger("dask_ml.cluster.k_means").addHandler(handler)
                logging.getLogger("dask_ml.cluster.k_means").setLevel(logging.INFO)
                x32 = da.from_zarr(str(store / "images")).astype(np.float32)
                with rss.measure(peaks, "dask-ml KMeans"):
                    DaskMLKMeans(k, init=init, max_iter=min(iterations, 3), tol=0).fit(x32)
                times["dask-ml KMeans"] = statistics.median(handler.lloyd)

        if with_init:
            inits = {}
            fits = should_cache(x.nbytes, client, cache_fraction=config.cache_fraction())
            cached = client.persist(x) if fits else x  # the converged fits below read it again and again
            wait(cached)
            runs = [("distkm k-means|| (out-of-core)", "k-means||", x)]
            runs += [("distkm k-means|| (cached)", "k-means||", cached)] if fits else []
            runs += [("distkm k-means++ (sample)", "k-means++", x)]
            for label, method, data in runs:
                t = time.perf_counter()
                centers = init_centers(data, k, method, np.random.RandomState(seed), split_every=config.split_every(),
                                       block_rows=config.block_rows())
                seconds = time.perf_counter() - t
                model = KMeans(k, init=centers).fit(cached)
                inits[label] = {"seconds": seconds, "inertia": model.inertia_, "n_iter": model.n_iter_}
            del cached
            if with_dask_ml and "dask-ml KMeans" in times:
                from dask_ml.cluster.k_means import k_init
                from dask_ml.utils import check_random_state

                x32 = da.from_zarr(str(store / "images")).astype(np.float32)
                t = time.perf_counter()  # what dask-ml's KMeans.fit calls first
                k_init(x32, k, init="k-means||", random_state=check_random_state(seed))
                inits["dask-ml k-means|| (default)"] = {"seconds": time.perf_counter() - t}

    ref = {}
    if with_sklearn:
        need = n * d * 4 * 2.2  # float32 copy, and scikit-learn's centred copy
        if need > psutil.virtual_memory().available:
            notes["scikit-learn"] = f"skipped: needs ~{fmt_bytes(need)} of RAM"
        else:
            init_path = store.parent / f".init-{name}-k{k}.npy"
            np.save(init_path, init)
            _, peak, out = run_measured([sys.executable, "-c", SKLEARN, str(store), str(k), str(iterations),
                                         str(init_path), str(seed if with_init else -1)])
            init_path.unlink()
            ref = json.loads(out.strip().splitlines()[-1])
            times["scikit-learn (RAM, float32)"] = ref["per_iteration"]
            peaks["scikit-learn (RAM, float32)"] = peak

    _print_iterations(times, peaks, notes)
    if with_init:
        if ref.get("init_seconds") is not None:
            inits["scikit-learn k-means++ (RAM)"] = {"seconds": ref["init_seconds"], "inertia": ref["inertia"],
                                                     "n_iter": ref["n_iter"]}
        _print_inits(inits, ref.get("inertia"))


def _print_iterations(times, peaks, notes):
    read, sk, dml = times.get("read"), times.get("scikit-learn (RAM, float32)"), times.get("dask-ml KMeans")
    print(f"| {'per Lloyd iteration':30s} | {'median':>8s} | {'/ read':>7s} | {'/ sklearn':>9s} | "
          f"{'dask-ml /':>9s} | {'peak RSS, all processes':>23s} |")
    print(f"|{'-' * 32}|{'-' * 10}:|{'-' * 8}:|{'-' * 10}:|{'-' * 10}:|{'-' * 24}:|")
    for label, t in times.items():
        print(f"| {label:30s} | {t:7.3f}s | {t / read:7.2f} | "
              f"{(f'{t / sk:9.2f}' if sk else '-'):>9s} | {(f'{dml / t:9.1f}' if dml else '-'):>9s} | "
              f"{fmt_bytes(peaks.get(label, 0)):>23s} |")
    for label, note in notes.items():
        print(f"{label}: {note}")


def _print_inits(inits, sk_inertia):
    print(f"\n| {'initialisation':32s} | {'seconds':>8s} | {'converged inertia':>17s} | {'/ sklearn':>9s} | "
          f"{'iterations':>10s} |")
    print(f"|{'-' * 34}|{'-' * 10}:|{'-' * 19}:|{'-' * 11}:|{'-' * 12}:|")
    dml = inits.get("dask-ml k-means|| (default)", {}).get("seconds")
    for label, r in inits.items():
        inertia = r.get("inertia")
        ratio = f"{inertia / sk_inertia:.4f}" if inertia and sk_inertia else "-"
        speed = f" ({dml / r['seconds']:.0f}x faster than dask-ml)" if dml and "dask-ml" not in label else ""
        print(f"| {label:32s} | {r['seconds']:7.2f}s | {(f'{inertia:.5e}' if inertia else '-'):>17s} | "
              f"{ratio:>9s} | {r.get('n_iter', '-')!s:>10s} |{speed}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stores", nargs="*", default=["mnist", "aug1m"])
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--no-dask-ml", action="store_true")
    parser.add_argument("--no-sklearn", action="store_true")
    parser.add_argument("--no-init", action="store_true", help="skip the initialisation comparison")
    parser.add_argument("--repeats", type=int, default=3, help="read passes per measurement (median)")
    args = parse_args(parser, SMOKE)
    with data_folder(args.smoke) as data:
        for name in args.stores:
            bench_store(name, args.k, args.iterations, with_dask_ml=not args.no_dask_ml,
                        with_sklearn=not args.no_sklearn, with_init=not args.no_init, data=data, repeats=args.repeats)


if __name__ == "__main__":
    main()
