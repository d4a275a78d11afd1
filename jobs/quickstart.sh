#!/usr/bin/env bash
# The main job on its embedded default: install distkm into .venv, ingest the shipped
# MNIST (train 60k + test 10k, MD5-checked) into data/mnist.zarr, and fit k=10 on a
# LocalCluster into runs/mnist-k10. Extra arguments go to `distkm fit`
# (e.g. --scheduler tcp://host:8786, --dtype float64).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/distkm ]; then
  python3 -m venv .venv
  .venv/bin/pip install --quiet --upgrade pip
  .venv/bin/pip install --quiet -e ".[test]"
fi
[ -d data/mnist.zarr ] || .venv/bin/distkm ingest mnist --out data/mnist.zarr
.venv/bin/distkm fit data/mnist.zarr --split train --k 10 --seed 0 --out runs/mnist-k10 --overwrite "$@"
