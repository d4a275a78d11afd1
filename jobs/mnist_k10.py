#!/usr/bin/env python
"""MNIST, k=10: fit on the 60,000 training images, score on train and on the 10,000 test images.

Writes OUT/ (model, labels, evaluation.json, pictures/, report.md) and OUT/performance-report.html.

    python jobs/mnist_k10.py                                        # LocalCluster
    python jobs/mnist_k10.py --cluster-config cluster-configs/slurm.yaml
    python jobs/mnist_k10.py --scheduler tcp://scheduler-host:8786
"""

from _common import cluster_args, distkm, ensure_mnist, job_parser


def main(argv=None):
    parser = job_parser(__doc__, out="runs/mnist-k10")
    parser.add_argument("--store", default="data/mnist.zarr", help="MNIST store (ingested if missing)")
    parser.add_argument("--max-iter", type=int, default=300)
    args = parser.parse_args(argv)
    ensure_mnist(args.store)
    distkm("fit", args.store, "--split", "train", "--k", 10, "--seed", args.seed, "--max-iter", args.max_iter,
           "--out", args.out, "--overwrite", "--performance-report", *cluster_args(args))


if __name__ == "__main__":
    main()
