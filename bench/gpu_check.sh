#!/usr/bin/env bash
# Issue 14's GPU figures in one run (about 8 minutes on an H100): run from the repository root
# on a CUDA machine with the project's environment (`make install`, or PYTHONPATH=. with torch,
# transformers and pydantic present). Writes the full log to ${OUT:-.}/gpu_check.log.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:-}:.
PY=${PYTHON:-python3}
LOG=${OUT:-.}/gpu_check.log
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  # Every case, the profile breakdown, evaluation throughput and the loader against the step.
  timeout 300 $PY bench/train_step.py --preset xlsr-300m --rounds 3 --steps 5 --profile --eval --loader
  # Packing: 2 and 4 trials on the one GPU against one trial alone.
  timeout 120 $PY bench/train_step.py --preset xlsr-300m --pack 2 --pack-seconds 20
  timeout 120 $PY bench/train_step.py --preset xlsr-300m --pack 4 --pack-seconds 20
  # The gpu-marked tests (auto probes, precision).
  timeout 120 $PY -m pytest -q -m gpu tests/trainer
} 2>&1 | tee "$LOG"
