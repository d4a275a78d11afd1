"""Every benchmark in benchmarks/ runs end to end in its ``--smoke`` mode, so that none of them rots.

A smoke run is the benchmark's own code path on a tiny store it builds in a temporary folder
(benchmarks/_smoke.py); its timings measure nothing, but the numbers it prints must still be
there and make sense (finite, positive), and the results it compares must still agree.
"""

import math
import os
import re
import subprocess
import sys

import pytest

from tests.helpers import ROOT

NUMBER = r"([-+\w.,]+)"  # wide enough to catch nan and inf, which the checks then refuse

#: Per benchmark: patterns its printout must match, every group a finite positive number.
EXPECTED = {
    # Not the seconds printed to 0.01 s: on tiny data they may round to 0.
    "augment_scale": [rf"aug\d+ generation: {NUMBER} s command", rf"per iteration median \S+ s \({NUMBER} ns/row\)"],
    "codecs": [rf"(?m)^lz4hc:5 +{NUMBER} +{NUMBER} +\S+ +\S+ +{NUMBER}$",  # MiB, ratio, read MB/s
               rf"(?m)^zstd:1:bitshuffle +{NUMBER} +{NUMBER} +\S+ +\S+ +{NUMBER}$"],
    # Not "/ sklearn": scikit-learn's per-iteration time is a difference of two fits, noise on tiny data.
    "compare": [rf"\| distkm out-of-core +\| +{NUMBER}s \| +{NUMBER} \|",
                rf"\| distkm cached +\| +{NUMBER}s \| +{NUMBER} \|",
                rf"\| distkm k-means\+\+ \(sample\) +\| +\S+s \| +{NUMBER} \| +{NUMBER} \|"],  # inertia, / sklearn's
    "kernel": [rf"\| distkm kernel \(partial_stats\) +\| +{NUMBER} \|",
               rf"distance GEMM: {NUMBER} flops a row, {NUMBER} GFLOP/s"],
    "mnist_fit": [rf"float32: per-iteration ratio distkm/sklearn = {NUMBER}, peak RSS ratio = {NUMBER}",
                  rf"with evaluation and pictures +{NUMBER} s"],
    "object_storage": [rf"s3 / disk: read {NUMBER}x, iteration {NUMBER}x; centers bit-identical: True"],
    "whole_fit": [r"algorithm='elkan' and 'lloyd' bit-identical: True",
                  rf"out of core: mean iteration {NUMBER} s, bare read pass {NUMBER} s: {NUMBER}x the read"],
}


def entries(*folders):
    """The names in each folder (``None`` for a missing one)."""
    return {folder.name: sorted(p.name for p in folder.iterdir()) if folder.exists() else None for folder in folders}


@pytest.mark.parametrize("name", [pytest.param(name, marks=[pytest.mark.s3] if name == "object_storage" else [])
                                  for name in EXPECTED])
def test_benchmark_smoke(name, tmp_path):
    # The real runs keep their stores in data/; a smoke run writes nothing into the repository.
    before = entries(ROOT / "benchmarks", ROOT / "data")
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), "--smoke"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    out = result.stdout
    assert result.returncode == 0, f"{name} --smoke exited {result.returncode}:\n{out}\n{result.stderr}"
    if out.startswith("skipped:"):  # an optional peer (object_storage: moto, s3fs) is not installed
        pytest.skip(out.strip())
    for pattern in EXPECTED[name]:
        match = re.search(pattern, out)
        assert match, f"{name} --smoke printed no line matching {pattern!r}:\n{out}"
        for value in match.groups():
            number = float(value.replace(",", ""))
            assert math.isfinite(number) and number > 0, f"{name}: {value!r} in {match.group(0)!r}\n{out}"
    assert entries(ROOT / "benchmarks", ROOT / "data") == before
