"""What many tests share besides fixtures: the one way to run the ``distkm`` command, and small helpers."""

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from dask.utils import key_split

from distkm.io.datasets import SHIPPED_MNIST

#: The repository's root.
ROOT = Path(__file__).resolve().parents[1]
#: The ``distkm`` console script of the Python running the tests.
DISTKM = str(Path(sys.executable).with_name("distkm"))
#: The official MNIST files that come with the repository.
MNIST_DIR = SHIPPED_MNIST


def distkm(*args, env=None, timeout=300, check=False):
    """Run ``distkm ARGS...`` in a subprocess, as a user would; returns the CompletedProcess.

    Parameters
    ----------
    env : dict, optional
        Variables added to this process's environment (``None``: the variable removed).
    timeout : float
        Seconds before the command counts as hung.
    check : bool
        Assert that it exited 0 (its stderr is the message when not).
    """
    result = subprocess.run([DISTKM, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                            env={k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None})
    if check:
        assert result.returncode == 0, result.stderr
    return result


def random_rows(x, k, seed=0):
    """k distinct rows of x chosen with a seed, as float64: a shared initialisation."""
    return np.asarray(x[np.random.RandomState(seed).choice(len(x), k, replace=False)], dtype=np.float64)


def tree_md5(*paths):
    """md5 of every file under ``paths`` (a missing path is recorded as missing)."""
    digests = {}
    for root in map(Path, paths):
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        if not root.exists():
            digests[str(root)] = None
        for f in files:
            digests[str(f)] = hashlib.md5(f.read_bytes()).hexdigest()
    return digests


def partial_stats_passes(stream):
    """Lloyd passes in a task stream: the distinct tokens of the distkm-partial-stats tasks (a pass with
    per-chunk state has a result task beside its chunk tasks)."""
    return len({re.search(r"distkm-partial-stats-([0-9a-f]+)", str(t["key"])).group(1) for t in stream.data
                if key_split(t["key"]) == "distkm-partial-stats"})
