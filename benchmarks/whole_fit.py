"""Whole fits to convergence: distkm's pruned and plain Lloyd against scikit-learn's Lloyd and Elkan, in one run.

Run by hand (never in the test suite)::

    .venv/bin/python benchmarks/whole_fit.py                       # MNIST train k=256, aug1m k=10 and k=64
    .venv/bin/python benchmarks/whole_fit.py --cases mnist:256 aug1m:10

Stores are built if missing (``data/mnist.zarr``, ``data/aug1m.zarr``, as benchmarks/compare.py
builds them: 10,000-row chunks, lz4hc). Every fit starts from the same initial centers (k seeded
rows of the fitted split) and runs to convergence (tol 1e-4, max_iter 300):

* distkm default (``algorithm="auto"``: plain Lloyd in float32, pruned in float64;
  ``cache="auto"``: the rows held on the workers),
* distkm out of core (``cache=False``: the store is read every iteration),
* distkm ``algorithm="lloyd"`` (every distance, cached) and ``algorithm="elkan"`` (pruned, cached),

each on a LocalCluster of 2 workers x 1 thread started for the case; scikit-learn
``KMeans(algorithm="lloyd")`` and ``"elkan"`` on the rows in RAM as float32, 2 threads, each in a
process of its own. Printed per fit: seconds (the whole ``fit`` call: caching, summary, iterations
and the final pass; scikit-learn: ``fit`` on rows already in RAM), iterations, inertia, the ratio to
the faster scikit-learn algorithm, and the peak RSS summed over every process of the fit (this
one, the scheduler and the workers; or scikit-learn's). Then, for the pruned fit, the share of
distances skipped per iteration, and for the out-of-core fit its mean iteration against a bare
read pass of the same store.

``--smoke``: the train split (3,000 rows) of a 4,000-row MNIST store in a temporary folder, k=8.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _measure import PeakRSS, run_measured  # noqa: E402
from _smoke import DATA, data_folder, parse_args  # noqa: E402
from compare import ensure_store, read_pass  # noqa: E402

SKLEARN = """
import json, sys, time, numpy as np, zarr
from sklearn.cluster import KMeans
path, start, stop, init_path, algorithm = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
X = zarr.open_array(path + "/images", mode="r")[start:stop].astype(np.float32)
init = np.load(init_path).astype(np.float32)
t = time.perf_counter()
model = KMeans(len(init), init=init, n_init=1, max_iter=300, tol=1e-4, algorithm=algorithm).fit(X)
print(json.dumps({"seconds": time.perf_counter() - t, "n_iter": int(model.n_iter_), "inertia": float(model.inertia_)}))
"""
#: The smoke run's parameters (tiny and quick), in place of the real run's defaults.
SMOKE = {"cases": ["mnist:8"]}


def split_rows(store):
    import zarr

    group = zarr.open_group(str(store), mode="r")
    splits = dict(group.attrs.get("distkm", {})).get("splits", {})
    return tuple(splits["train"]) if "train" in splits else (0, group["images"].shape[0])


def sklearn_fit(store, rows, init, algorithm):
    init_path = store.parent / f".init-whole-fit-{os.getpid()}.npy"
    np.save(init_path, init)
    env = {**os.environ, "OMP_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2"}
    try:
        _, peak, out = run_measured([sys.executable, "-c", SKLEARN, str(store), str(rows[0]), str(rows[1]),
                                     str(init_path), algorithm], env=env)
    finally:
        init_path.unlink(missing_ok=True)
    result = json.loads(out.strip().splitlines()[-1])
    return {**result, "peak": peak}


def distkm_fits(store, rows, init):
    from distkm import KMeans
    from distkm.cluster.client import dask_client
    from distkm.io.stores import open_store

    fits = {}
    rss = PeakRSS()
    runs = [("distkm default (cached)", {}),
            ("distkm cache=False (out of core)", {"cache": False}),
            ("distkm algorithm='lloyd' (cached)", {"algorithm": "lloyd"}),
            ("distkm algorithm='elkan' (cached, pruned)", {"algorithm": "elkan"})]
    for label, params in runs:
        # A cluster per fit: no fit finds the rows another one cached, or memory another one left.
        with dask_client(n_workers=2, threads_per_worker=1):
            x = open_store(store).images[rows[0]:rows[1]]
            if "cache=False" in label:
                read_pass(x)  # warm-up: the page cache, as for every other fit
                reads = []
                for _ in range(3):
                    t = time.perf_counter()
                    read_pass(x)
                    reads.append(time.perf_counter() - t)
            peaks = {}
            with rss.measure(peaks, label):
                t = time.perf_counter()
                model = KMeans(len(init), init=init, n_init=1, max_iter=300, tol=1e-4, **params).fit(x)
                seconds = time.perf_counter() - t
            fits[label] = {"seconds": seconds, "n_iter": model.n_iter_, "inertia": model.inertia_,
                           "peak": peaks[label], "history": model.history_, "centers": model.cluster_centers_}
            if "cache=False" in label:
                fits[label]["read"] = statistics.median(reads)
    rss.stop()
    return fits


def bench(name, k, seed=0, data=DATA):
    """Print the whole fits of ``<data>/<name>.zarr`` (its train split if it has one) from ``k`` seeded rows."""
    store = ensure_store(name, data)
    rows = split_rows(store)
    import zarr

    images = zarr.open_array(str(store / "images"), mode="r")
    pick = np.sort(np.random.RandomState(seed).choice(rows[1] - rows[0], k, replace=False)) + rows[0]
    init = images.get_orthogonal_selection((pick, slice(None))).astype(np.float64)
    print(f"\n## {name} rows {rows[0]:,}-{rows[1]:,}, k={k}: whole fits from the same {k} seeded rows, "
          f"tol 1e-4, 2 workers x 1 thread / scikit-learn 2 threads", flush=True)
    results = {f"scikit-learn {a} (RAM, float32)": sklearn_fit(store, rows, init, a) for a in ("lloyd", "elkan")}
    results.update(distkm_fits(store, rows, init))
    best = min(results[f"scikit-learn {a} (RAM, float32)"]["seconds"] for a in ("lloyd", "elkan"))
    print(f"| {'whole fit':42s} | seconds | iterations | inertia | / faster sklearn | peak RSS |")
    print(f"|{'-' * 44}|---|---|---|---|---|")
    for label, r in results.items():
        print(f"| {label:42s} | {r['seconds']:7.1f} | {r['n_iter']:10d} | {r['inertia']:.6e} | "
              f"{r['seconds'] / best:16.2f} | {r['peak'] / 2**20:,.0f} MiB |")
    plain, pruned = results["distkm algorithm='lloyd' (cached)"], results["distkm algorithm='elkan' (cached, pruned)"]
    print(f"\nalgorithm='elkan' and 'lloyd' bit-identical: {np.array_equal(pruned['centers'], plain['centers'])}"
          f" (iterations {pruned['n_iter']} and {plain['n_iter']})")
    skipped = [h.get("skipped", 0.0) for h in pruned["history"]]
    print("distances skipped per iteration (elkan fit): "
          + " ".join(f"{s:.0%}" for s in skipped[:12]) + (" ..." if len(skipped) > 12 else "")
          + f"; mean {np.mean(skipped):.1%}")
    ooc = results["distkm cache=False (out of core)"]
    per_iter = statistics.mean(h["seconds"] for h in ooc["history"])
    print(f"out of core: mean iteration {per_iter:.3f} s, bare read pass {ooc['read']:.3f} s: "
          f"{per_iter / ooc['read']:.2f}x the read")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["mnist:256", "aug1m:10", "aug1m:64"],
                        help="STORE:K pairs (default: mnist:256 aug1m:10 aug1m:64)")
    args = parse_args(parser, SMOKE)
    with data_folder(args.smoke) as data:
        for case in args.cases:
            name, k = case.split(":")
            bench(name, int(k), data=data)


if __name__ == "__main__":
    main()
