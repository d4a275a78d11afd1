"""README.md's commands and Python snippet, run as written and in order, in a folder of their own.

The first command (./jobs/quickstart.sh) is stood in for by what it does after installing: ingest
MNIST and fit k=10 (the bare-clone tool runs the script itself); then every line of the README's
command block, then its Python block. Marked slow: the block augments a million rows and sweeps
ten values of k.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

BIN = Path(sys.executable).parent


def blocks(language):
    return re.findall(rf"^```{language}\n(.*?)^```", (ROOT / "README.md").read_text(), re.S | re.M)


def commands():
    """The lines of the README's command block (the third bash block: after the two commands)."""
    lines = [line.split("  #")[0].strip() for line in blocks("bash")[2].splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def test_the_readme_says_what_the_two_commands_are():
    first, second = (block.strip().splitlines()[0] for block in blocks("bash")[:2])
    assert (first, second) == ("./jobs/quickstart.sh", ".venv/bin/python -m pytest")
    assert all(line.startswith("distkm ") for line in commands())


@pytest.mark.slow
@pytest.mark.timeout(2700)  # its own commands: ~260 s on a quiet machine, ~1,330 s by hand on 2 busy cores
def test_every_readme_command_and_snippet_runs_as_written(tmp_path):
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}

    def run(line):
        result = subprocess.run(line, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, f"$ {line}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
        return result

    # what ./jobs/quickstart.sh leaves, once installed
    run("distkm ingest mnist --out data/mnist.zarr")
    run("distkm fit data/mnist.zarr --split train --k 10 --seed 0 --out runs/mnist-k10 --overwrite --quiet")
    for line in commands():
        run(line)
    assert (tmp_path / "runs" / "sweep" / "sweep.md").exists()
    assert (tmp_path / "runs" / "aug1m-k10" / "report.md").exists()
    snippet = tmp_path / "snippet.py"
    snippet.write_text(blocks("python")[0])
    out = run(f"{sys.executable} {snippet}").stdout
    assert "Initialization complete" in out and "(10, 784)" in out
