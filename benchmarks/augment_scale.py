"""Generation of augmented stores and Lloyd iterations on them, at scale.

Run by hand:  .venv/bin/python benchmarks/augment_scale.py 1000000 8000000
For each size: generate data/augN.zarr from data/mnist.zarr (if missing) with `distkm augment`
on a LocalCluster of 2 workers x 1 thread, then run `distkm fit --k 10 --max-iter 5 --tol 0`
on it; print throughput, size on disk, compression ratio, per-iteration median and peak RSS
summed over all processes (workers included).
"""

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _measure import run_measured

ROOT = Path(__file__).resolve().parents[1]
DISTKM = str(Path(sys.executable).with_name("distkm"))
SOURCE = ROOT / "data" / "mnist.zarr"


def label(n):
    return f"aug{n // 1_000_000}m" if n % 1_000_000 == 0 else f"aug{n}"


def main(sizes):
    if not SOURCE.exists():
        subprocess.run([DISTKM, "ingest", "mnist", "--out", str(SOURCE)], check=True)
    for n in sizes:
        store = ROOT / "data" / f"{label(n)}.zarr"
        if not store.exists():
            seconds, peak, out = run_measured([DISTKM, "augment", str(SOURCE), "--n", str(n), "--out", str(store),
                                               "--n-workers", "2", "--quiet"])
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
    main([int(v) for v in sys.argv[1:]] or [1_000_000])
