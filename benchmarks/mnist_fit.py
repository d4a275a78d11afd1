"""distkm fit on MNIST 70k, k=10, against scikit-learn KMeans in memory, measured in one run.

Run by hand (never in the test suite):  .venv/bin/python benchmarks/mnist_fit.py
It ingests data/mnist.zarr if missing, then times the whole `distkm fit` command
(process start, LocalCluster start, fit, labels and results written) and a
scikit-learn fit of the same rows in memory, each in its own process, with the
peak RSS summed over every process each one started.

Then the small job: `distkm fit` on MNIST-10k (the test split), k=10, as a whole
command (median of 3), with its evaluation and pictures and without them, and
the Python start with the modules the command imports, timed alone.

``--smoke``: a 4,000-row MNIST store (3,000 train, 1,000 test) in a temporary folder, float32 only, each
command run once.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _measure import run_measured
from _smoke import data_folder, parse_args

DISTKM = str(Path(sys.executable).with_name("distkm"))
#: The smoke run's parameters (tiny and quick), in place of the real run's defaults.
SMOKE = {"repeats": 1, "dtypes": ["float32"]}

SKLEARN = """
import json, sys, time, numpy as np, zarr
from sklearn.cluster import KMeans
X = zarr.open_array(sys.argv[1] + "/images", mode="r")[...].astype(sys.argv[2])
t = time.perf_counter(); m = KMeans(10, random_state=0).fit(X); s = time.perf_counter() - t
print(json.dumps({"fit_seconds": s, "n_iter": int(m.n_iter_), "inertia": float(m.inertia_)}))
"""


def main(store, dtypes=("float32", "float64"), repeats=3):
    """Time distkm and scikit-learn on ``store`` (ingested if missing), then the small job.

    Parameters
    ----------
    store : Path
    dtypes : sequence of str
        Compute dtypes of the fits (distkm's ``--dtype``, scikit-learn's input).
    repeats : int
        Runs of each small-job command.
    """
    if not store.exists():
        subprocess.run([DISTKM, "ingest", "mnist", "--out", str(store)], check=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in dtypes:
            out = Path(tmp) / f"run-{dtype}"
            seconds, peak, _ = run_measured([DISTKM, "fit", str(store), "--k", "10", "--seed", "0", "--quiet",
                                             "--dtype", dtype, "--out", str(out)])
            meta = json.loads((out / "model.json").read_text())
            fit = meta["timings"]["fit_seconds"]
            rows.append(("distkm fit (2 workers x 1 thread)", dtype, seconds, fit, meta["n_iter"],
                         fit / meta["n_iter"], peak, meta["inertia"]))
            seconds, peak, out_text = run_measured([sys.executable, "-c", SKLEARN, str(store), dtype])
            ref = json.loads(out_text.strip().splitlines()[-1])
            rows.append(("sklearn KMeans in memory", dtype, seconds, ref["fit_seconds"], ref["n_iter"],
                         ref["fit_seconds"] / ref["n_iter"], peak, ref["inertia"]))
    header = (f"{'what':36s} {'dtype':8s} {'command s':>9s} {'fit s':>7s} {'iters':>5s} {'s/iter':>7s} "
              f"{'peak RSS':>9s} {'inertia':>12s}")
    print(header)
    print("-" * len(header))
    for name, dtype, cmd, fit, n_iter, per_iter, peak, inertia in rows:
        print(f"{name:36s} {dtype:8s} {cmd:9.2f} {fit:7.2f} {n_iter:5d} {per_iter:7.3f} {peak / 2**20:7.0f}MiB "
              f"{inertia:12.5g}")
    for dtype in dtypes:
        ours, ref = [r for r in rows if r[1] == dtype]
        print(f"{dtype}: per-iteration ratio distkm/sklearn = {ours[5] / ref[5]:.2f}, "
              f"peak RSS ratio = {ours[6] / ref[6]:.2f}")
    small_job(store, repeats)


IMPORTS = ("import distkm.cli, distkm.io.stores, distkm.estimator, distkm.io.model, distkm.cluster.client, "
           "distkm.evaluation.report, distkm.evaluation.evaluate, distkm.evaluation.pictures")


def small_job(store, repeats=3):
    """Whole `distkm fit` commands on the store's test rows (MNIST's 10,000: the brief's "small jobs stay quick")."""
    def median_seconds(command):
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True)
            times.append(time.perf_counter() - started)
        return statistics.median(times), min(times)

    print(f"\ndistkm fit on {store.name}'s test split (--split test --k 10 --seed 0), whole command, "
          f"median (best) of {repeats}")
    with tempfile.TemporaryDirectory() as tmp:
        for label, flags in (("with evaluation and pictures", []), ("--no-evaluate --no-pictures",
                                                                      ["--no-evaluate", "--no-pictures"])):
            command = [DISTKM, "fit", str(store), "--split", "test", "--k", "10", "--seed", "0", "--quiet",
                       "--overwrite", "--out", str(Path(tmp) / "small"), *flags]
            median, best = median_seconds(command)
            print(f"  {label:30s} {median:6.2f} s ({best:.2f})")
    median, best = median_seconds([sys.executable, "-c", IMPORTS])
    print(f"  {'of which Python + imports':30s} {median:6.2f} s ({best:.2f})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64"], choices=["float32", "float64"])
    parser.add_argument("--repeats", type=int, default=3, help="runs of each small-job command (median)")
    args = parse_args(parser, SMOKE)
    with data_folder(args.smoke) as data:
        main(data / "mnist.zarr", args.dtypes, args.repeats)
