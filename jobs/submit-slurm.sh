#!/usr/bin/env bash
# Submit a whole distkm job to SLURM: this script runs as a small SLURM job (the client and
# the Dask scheduler), and the slurm cluster config asks SLURM for the workers as further jobs.
#
#   sbatch jobs/submit-slurm.sh                       # jobs/mnist_k10.py
#   sbatch jobs/submit-slurm.sh jobs/sweep_k.py --k 2,10,64
#
# Watch it: `squeue -u $USER`; the dashboard link is in slurm-<jobid>.out (tunnel it with
# ssh -L 8787:<node>:8787 login-node); results and performance-report.html land in --out.
#SBATCH --job-name=distkm
#SBATCH --cpus-per-task=1
#SBATCH --mem=4G
#SBATCH --time=02:00:00
#SBATCH --output=slurm-%j.out
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
JOB=${1:-jobs/mnist_k10.py}
shift || true
exec .venv/bin/python "$JOB" --cluster-config "${DISTKM_CLUSTER_CONFIG:-cluster-configs/slurm.yaml}" "$@"
