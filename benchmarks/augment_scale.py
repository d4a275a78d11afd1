"""Generation of augmented stores and Lloyd iterations on them, at scale.

Run by hand:  .venv/bin/python benchmarks/augment_scale.py 1000000 8000000
For each size: generate data/augN.zarr from data/mnist.zarr (if missing) with `distkm augment`
on a LocalCluster of 2 workers x 1 thread, then run `distkm fit --k 10 --max-iter 5 --tol 0`
on it; print throughput, size on disk, compression ratio, per-iteration median and peak RSS
summed over all processes (workers included).

``--smoke``: 6,000 rows generated from a 4,000-row MNIST store, in chunks of 1,000, in a temporary folder.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _measure import run_measured
from _smoke import data_folder, parse_args

DISTKM = str(Path(sys.executable).with_name("distkm"))
#: The smoke run's parameters (tiny and quick), in place of the real run's defaults.
SMOKE = {"sizes": [6000], "chunk_rows": 1000}


def label(n):
    return f"aug{n // 1_000_000}m" if n % 1_000_000 == 0 else f"aug{n}"


def main(sizes, data, chunk_rows=None):
    """Generate ``<data>/augN.zarr`` for each size N (if missing), fit it, print what both cost.

    Parameters
    ----------
    sizes : list of int
    data : Path
        Folder of the stores; its mnist.zarr is the source (ingested if missing).
    chunk_rows : int, optional
        Rows per chunk of the generated stores (default ``distkm.chunk-rows``).
    """
    source = data / "mnist.zarr"
    if not source.exists():
        subprocess.run([DISTKM, "ingest", "mnist", "--out", str(source)], check=True)
    chunks = ["--chunk-rows", str(chunk_rows)] if chunk_rows else []
    for n in sizes:
        store = data / f"{label(n)}.zarr"
        if not store.exists():
            seconds, peak, out = run_measured([DISTKM, "augment", str(source), "--n", str(n), "--out", str(store),
                                               "--n-workers", "2", "--quiet", *chunks])
            print(f"{label(n)} generation: {seconds:.1f} s command, {out.strip().splitlines()[-1]}; "
                  f"peak RSS {peak / 2**20:.0f} MiB", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            run = Path(tmp) / "run"
            seconds, peak, _ = run_measured([DISTKM, "fit", str(store), "--k", "10", "--seed", "0", "--max-iter", "5",
                                             "--tol", "0", "--n-workers", "2", "--quiet", "--out", str(run)])
            meta = json.loads((run / "model.json").read_text())
        per_iter = statistics.median(h["seconds"] for h in meta["history"])
        print(f"{label(n)} fit k=10, 5 iterations: command {seconds:.1f} s, per iteration median {per_iter:.2f} s "
              f"({per_iter / n * 1e9:.0f} ns/row), peak RSS {peak / 2**20:.0f} MiB", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sizes", nargs="*", type=int, default=[1_000_000], help="rows of each store (default 1000000)")
    parser.add_argument("--chunk-rows", type=int, help="rows per chunk of the generated stores "
                                                       "(default distkm.chunk-rows)")
    args = parse_args(parser, SMOKE)
    with data_folder(args.smoke) as data:
        main(args.sizes, data, args.chunk_rows)
