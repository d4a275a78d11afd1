"""Reads from object storage against reads from local disk, in one run (issue 22).

Run by hand (never in the test suite), with the test extra installed (s3fs, moto)::

    .venv/bin/python benchmarks/object_storage.py aug1m [--k 10] [--iterations 4]

Starts the S3-compatible server the tests use (moto's, on 127.0.0.1, see
``tests/services.py``), uploads ``data/<name>.zarr`` into it, then on a
LocalCluster of 2 workers x 1 thread, from the same initial centers:

* read: a pass that only reads and decodes every chunk, from disk and from ``s3://``;
* an out-of-core Lloyd iteration (``cache=False``), from disk and from ``s3://``: the median of
  the iterations after the first (which also warms the workers' connection pools).

moto serves from one Python process on the same 2 cores as the workers, so the S3 numbers are
a floor for what the client side costs, not a measurement of a cloud service's bandwidth.
Without moto or s3fs installed, it says so and measures nothing.

``--smoke``: a 4,000-row MNIST store in a temporary folder, k=4, 3 iterations, one read pass per location.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _smoke import data_folder, parse_args  # noqa: E402
from compare import ensure_store, read_pass  # noqa: E402

#: The smoke run's parameters (tiny and quick), in place of the real run's defaults.
SMOKE = {"store": "mnist", "k": 4, "iterations": 3, "repeats": 1}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store", nargs="?", default="aug1m")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="read passes per location (median)")
    args = parse_args(parser, SMOKE)
    missing = [name for name in ("moto", "s3fs") if importlib.util.find_spec(name) is None]
    if missing:  # the test extra: the server and distkm's s3:// client
        print(f"skipped: {' and '.join(missing)} not installed (pip install -e '.[test]')")
        return
    with data_folder(args.smoke) as data:
        measure(ensure_store(args.store, data), args)


def measure(store, args):
    """Upload ``store`` to a local S3 server, then time reads and Lloyd iterations from disk and from there."""
    from tests.services import s3_server  # here: the test extra's pytest too, which a skipped run need not have

    with tempfile.TemporaryDirectory() as logs, s3_server(Path(logs)) as s3:
        os.environ.update(s3.environ())  # for this process and the workers it starts
        from distkm import KMeans
        from distkm.cluster.client import dask_client
        from distkm.io import locations
        from distkm.io.stores import open_store

        url = f"s3://{s3.bucket}/{store.name}"
        t = time.perf_counter()
        locations.upload(store, url)
        upload = time.perf_counter() - t
        size = locations.disk_usage(url)
        print(f"{store.name}: {size / 2**20:,.0f} MiB stored, uploaded to {url} in {upload:.1f} s", flush=True)
        places = {"local disk": str(store), "s3:// (moto, 127.0.0.1)": url}
        x = open_store(store).images
        init = np.asarray(x[np.random.RandomState(0).choice(x.shape[0], args.k, replace=False)].compute(),
                          dtype=np.float64)
        rows = {}
        with dask_client(n_workers=2, threads_per_worker=1):
            for label, where in places.items():
                images = open_store(where).images
                read_pass(images)  # warm-up: connection pools, page cache
                reads = []
                for _ in range(args.repeats):
                    t = time.perf_counter()
                    read_pass(images)
                    reads.append(time.perf_counter() - t)
                model = KMeans(args.k, init=init, n_init=1, max_iter=args.iterations + 1, tol=0, cache=False).fit(where)
                iteration = statistics.median(h["seconds"] for h in model.history_[1:])
                rows[label] = (statistics.median(reads), iteration, model.cluster_centers_)
        print()
        print(f"| {store.name}, 2 workers x 1 thread | read pass | MB/s (stored) | Lloyd iteration, out of core | "
              "/ read |")
        print("|---|---|---|---|---|")
        for label, (read, iteration, _) in rows.items():
            print(f"| {label} | {read:.2f} s | {size / read / 1e6:,.0f} | {iteration:.2f} s | {iteration / read:.2f} |")
        (disk_read, disk_it, disk_c), (s3_read, s3_it, s3_c) = rows.values()
        print(f"\ns3 / disk: read {s3_read / disk_read:.2f}x, iteration {s3_it / disk_it:.2f}x; "
              f"centers bit-identical: {np.array_equal(disk_c, s3_c)}")


if __name__ == "__main__":
    main()
