"""The Lloyd kernel on one core: its parts, its FLOP rate, and the per-row cost of its peers.

Run by hand (never in the test suite), with the bench extra installed::

    .venv/bin/python benchmarks/kernel.py [--store data/aug1m.zarr] [--rows 80000] [--k 10]

Everything runs in this process on one thread (BLAS and OpenMP limited to 1), on the first
``--rows`` rows of the store, 10,000-row chunks, from k seeded random rows as centers:

* ``distkm.kernels.partial_stats`` (what a Lloyd task runs per chunk), and its parts: the
  uint8 -> float32 copy, the distance GEMM (with its FLOP rate: ``2 k d`` per row), the argmin,
  the per-cluster sums;
* scikit-learn's Lloyd iteration on the same rows in RAM as float32 (its fused Cython loop, one thread);
* a fused compiled kernel (numba, if importable; not a distkm dependency): copy, distances,
  argmin and integer sums in one loop over the rows, to see what leaving numpy would give.

An iteration over n rows on c cores takes at least ``n * (per-row cost) / c``: the printout
gives that for 1M rows on 2 cores, the shape of ``benchmarks/compare.py``'s aug1m run.

``--smoke``: the first 4,000 rows of a tiny MNIST store in a temporary folder, k=4, one timed repeat.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
from _smoke import data_folder, parse_args
from threadpoolctl import threadpool_limits

CHUNK = 10_000
#: The smoke run's parameters (tiny and quick), in place of the real run's defaults.
SMOKE = {"rows": 4000, "k": 4, "block_rows": 512, "repeat": 1}


def per_row_us(run, rows, repeat=7):
    """Median microseconds per row of ``run()``, which processes ``rows`` rows (``repeat`` timed runs)."""
    run()  # warm up (first touch, JIT)
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return 1e6 * statistics.median(times) / rows


def chunks(X):
    return [X[i:i + CHUNK] for i in range(0, X.shape[0], CHUNK)]


def distkm_parts(X, centers, half, block_rows, repeat):
    """Per-row cost of the kernel, then of each step timed alone (GEMM, argmin, sums: on one block, kept warm)."""
    from distkm import kernels
    from distkm.kernels.lloyd import _membership  # private: the sparse sums partial_stats does per block

    n, d = X.shape
    k = centers.shape[0]
    out = {"distkm kernel (partial_stats)": per_row_us(
        lambda: [kernels.partial_stats(c, centers, half, block_rows=block_rows) for c in chunks(X)], n, repeat)}
    block = np.empty((block_rows, d), np.float32)
    scores = np.empty((block_rows, k), np.float32)
    centers_t = np.ascontiguousarray(centers.T)
    ones = np.ones(block_rows, np.float32)
    starts = range(0, n - block_rows + 1, block_rows)
    rows = len(starts) * block_rows
    np.copyto(block, X[:block_rows], casting="unsafe")
    labels = (half - block @ centers_t).argmin(axis=1)
    out["  uint8 -> float32 copy"] = per_row_us(
        lambda: [np.copyto(block, X[s:s + block_rows], casting="unsafe") for s in starts], rows, repeat)
    out["  distance GEMM"] = per_row_us(lambda: [np.matmul(block, centers_t, out=scores) for _ in starts], rows,
                                        repeat)
    out["  argmin"] = per_row_us(lambda: [scores.argmin(axis=1) for _ in starts], rows, repeat)
    out["  per-cluster sums (sparse)"] = per_row_us(
        lambda: [_membership(labels, k, ones) @ block for _ in starts], rows, repeat)
    return out


def sklearn_per_row(X, centers, repeat):
    """scikit-learn's Lloyd iteration on one thread (its private Cython loop, as ``KMeans.fit`` calls it)."""
    from sklearn.cluster._k_means_lloyd import lloyd_iter_chunked_dense

    Xf = X.astype(np.float32)
    centers = centers.astype(np.float32)
    new_centers, cluster_weights = np.empty_like(centers), np.empty(centers.shape[0], np.float32)
    labels, shift = np.empty(X.shape[0], np.int32), np.empty(centers.shape[0], np.float32)
    weights = np.ones(X.shape[0], np.float32)
    return per_row_us(lambda: lloyd_iter_chunked_dense(Xf, weights, centers, new_centers, cluster_weights, labels,
                                                       shift, 1, True), X.shape[0], repeat)


def numba_fused_per_row(X, centers, half, repeat):
    """A fused compiled kernel (numba), or None when numba is not installed."""
    try:
        import numba
    except ImportError:
        return None

    @numba.njit(fastmath=True)
    def fused(X, C, half):
        m, d = X.shape
        k = C.shape[0]
        sums = np.zeros((k, d), np.int64)
        counts = np.zeros(k, np.int64)
        row = np.empty(d, np.float32)
        score = 0.0
        for i in range(m):
            for f in range(d):
                row[f] = X[i, f]
            best, nearest = np.inf, 0
            for j in range(k):
                dot = np.float32(0.0)
                for f in range(d):
                    dot += row[f] * C[j, f]
                if half[j] - dot < best:
                    best, nearest = half[j] - dot, j
            counts[nearest] += 1
            score += best
            for f in range(d):
                sums[nearest, f] += X[i, f]
        return sums, counts, score

    return per_row_us(lambda: [fused(c, centers, half) for c in chunks(X)], X.shape[0], repeat)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", help="default: data/aug1m.zarr")
    parser.add_argument("--rows", type=int, default=80_000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--block-rows", type=int, default=2048)
    parser.add_argument("--repeat", type=int, default=7, help="timed runs per measurement (median)")
    args = parse_args(parser, SMOKE)
    with data_folder(args.smoke) as data:
        # The real run's default is the big augmented store; a smoke run has only its tiny MNIST one.
        measure(Path(args.store or data / ("mnist.zarr" if args.smoke else "aug1m.zarr")), args)


def measure(store, args):
    """Measure and print every per-row cost on the first ``args.rows`` rows of ``store``."""
    import zarr

    from distkm.kernels.assign import prepare_centers

    X = np.asarray(zarr.open_array(str(store / "images"), mode="r")[:args.rows])
    n, d = X.shape
    seeds = np.sort(np.random.RandomState(0).choice(n, args.k, replace=False))
    centers, half = prepare_centers(X[seeds], np.float32)
    print(f"{store.name}: {n:,} rows x {d}, k={args.k}, one thread, "
          f"{(X != 0).mean():.0%} of the pixels non-zero\n")
    with threadpool_limits(limits=1):
        results = distkm_parts(X, centers, half, args.block_rows, args.repeat)
        results["scikit-learn Lloyd iteration (float32 in RAM)"] = sklearn_per_row(X, centers, args.repeat)
        fused = numba_fused_per_row(X, centers, half, args.repeat)
        if fused is not None:
            results["fused compiled kernel (numba)"] = fused
    flops = 2 * args.k * d
    print(f"| {'per row, one core':46s} |       µs | 1M rows on 2 cores |")
    print(f"|{'-' * 48}|---------:|-------------------:|")
    for name, us in results.items():
        print(f"| {name:46s} | {us:8.3f} | {us / 2:16.3f} s |")
    if fused is None:
        print("fused compiled kernel (numba): skipped, numba is not installed")
    gemm = results["  distance GEMM"]
    print(f"\ndistance GEMM: {flops:,} flops a row, {flops / gemm / 1e3:.1f} GFLOP/s on one core")


if __name__ == "__main__":
    main()
