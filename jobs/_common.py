"""What the job scripts in ``jobs/`` share: their arguments, and running distkm commands.

A job script is a thin, readable sequence of ``distkm`` commands. Each one
takes ``--cluster-config FILE`` or ``--scheduler ADDRESS`` (else a
LocalCluster), prints the Dask dashboard link, writes a self-contained Dask
performance report into its output folder, and the script exits non-zero
as soon as a command fails.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def job_parser(doc, *, out):
    """An argument parser with the options every job takes."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--cluster-config", help="cluster-config YAML (cluster-configs/): local, address, tls, "
                                                "ssh, slurm, kubernetes")
    where.add_argument("--scheduler", help="address of a running Dask scheduler")
    parser.add_argument("--out", default=out, help=f"output folder (default {out})")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def cluster_args(args):
    """The ``--cluster-config`` / ``--scheduler`` options to pass on to every command."""
    if args.cluster_config:
        return ["--cluster-config", args.cluster_config]
    if args.scheduler:
        return ["--scheduler", args.scheduler]
    return []


def distkm(*argv):
    """Run one ``distkm`` command in this process; stop the job with its exit code if it fails."""
    from distkm.cli import main

    argv = [str(a) for a in argv]
    print(f"$ distkm {' '.join(argv)}", flush=True)
    started = time.perf_counter()
    code = main(argv)
    if code:
        print(f"job failed: `distkm {argv[0]}` exited with {code}", file=sys.stderr)
        sys.exit(code)
    print(f"({argv[0]} took {time.perf_counter() - started:.1f} s)", flush=True)


def ensure_mnist(store):
    """Ingest the shipped MNIST into ``store`` unless it is there already."""
    if not Path(store).exists():
        distkm("ingest", "mnist", "--out", store)
