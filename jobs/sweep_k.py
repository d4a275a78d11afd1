#!/usr/bin/env python
"""Choose k on MNIST: fit and score k = 2 ... 256 on one cluster (the store is read once, then cached).

Writes OUT/sweep.md, sweep.csv, elbow.png, one run folder per k, and OUT/performance-report.html.

    python jobs/sweep_k.py --cluster-config cluster-configs/slurm.yaml
"""

from _common import cluster_args, distkm, ensure_mnist, job_parser


def main(argv=None):
    parser = job_parser(__doc__, out="runs/sweep-mnist")
    parser.add_argument("--store", default="data/mnist.zarr", help="MNIST store (ingested if missing)")
    parser.add_argument("--k", default="2,5,8,10,12,16,20,25,64,256")
    args = parser.parse_args(argv)
    ensure_mnist(args.store)
    distkm("sweep", args.store, "--k", args.k, "--seed", args.seed, "--out", args.out, "--overwrite",
           "--performance-report", *cluster_args(args))


if __name__ == "__main__":
    main()
