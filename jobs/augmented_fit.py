#!/usr/bin/env python
"""A big set: generate N augmented MNIST images on the cluster (resumable), then fit k on them.

Writes the store (skipped if complete), OUT/ with the run and OUT/performance-report.html.

    python jobs/augmented_fit.py --n 8000000 --cluster-config cluster-configs/slurm.yaml
"""

from pathlib import Path

from _common import cluster_args, distkm, ensure_mnist, job_parser


def main(argv=None):
    parser = job_parser(__doc__, out="runs/aug-k10")
    parser.add_argument("--source", default="data/mnist.zarr", help="MNIST store (ingested if missing)")
    parser.add_argument("--n", type=int, default=1_000_000, help="rows of the augmented store")
    parser.add_argument("--store", help="augmented store (default data/aug<N>.zarr)")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--max-iter", type=int, default=100)
    args = parser.parse_args(argv)
    store = args.store or f"data/aug{args.n}.zarr"
    ensure_mnist(args.source)
    if not Path(store).exists():  # an interrupted generation (STORE.partial) is resumed by augment itself
        distkm("augment", args.source, "--n", args.n, "--seed", args.seed, "--split", "train", "--out", store,
               *cluster_args(args))
    distkm("fit", store, "--k", args.k, "--seed", args.seed, "--max-iter", args.max_iter, "--out", args.out,
           "--overwrite", "--performance-report", *cluster_args(args))


if __name__ == "__main__":
    main()
