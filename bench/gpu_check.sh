#!/usr/bin/env bash
# Issue 14's GPU figures in one device call: every train-step case with the profile breakdown,
# evaluation and loader throughput, packing 2 and 4 trials on the GPU, and the gpu-marked tests.
# The stages' time limits add up to 540 s, inside one call's 600 (the machine's start-up is
# counted apart, against the session's 15 device minutes).
#
# Here first:   bash bench/gpu_wheels.sh          (the packages the device image lacks, in .whl/)
# On the device: the run tool with command "bash bench/gpu_check.sh", carry [".whl"], timeout 600
# On CPU:       bash bench/gpu_check.sh --cpu     (the same stages on the tiny preset: a check of
#                                                  this script, 2 minutes on 2 cores)
# The whole log goes to ${OUT:-runs}/gpu_check.log.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
mkdir -p "${OUT:-runs}"
LOG=${OUT:-runs}/gpu_check.log
if [[ ${1:-} == --cpu ]]; then
  PY=${PYTHON:-.venv/bin/python}
  PRESET=(--preset tiny --quick)
  PACK_SECONDS=5
else
  PY=${PYTHON:-python3}
  PRESET=(--preset xlsr-300m --rounds 3 --steps 5)
  PACK_SECONDS=15
  if compgen -G ".whl/*.whl" >/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
  fi
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}.
stage() {  # a time limit in seconds, then the command; a failed stage does not stop the others
  local limit=$1
  shift
  echo "=== $* (limit ${limit} s)"
  timeout "$limit" "$@"
  echo "=== exit $? after ${SECONDS} s in all"
}
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no GPU"
  $PY -c "import torch, transformers, pydantic; print('torch', torch.__version__, \
'transformers', transformers.__version__, 'pydantic', pydantic.VERSION)"
  stage 250 $PY bench/train_step.py "${PRESET[@]}" --profile --eval --loader
  stage 110 $PY bench/train_step.py "${PRESET[@]}" --pack 2 --pack-seconds $PACK_SECONDS
  stage 140 $PY bench/train_step.py "${PRESET[@]}" --pack 4 --pack-seconds $PACK_SECONDS
  stage 40 $PY -m pytest -q -p no:cacheprovider -m gpu tests/trainer/test_loss.py \
    tests/trainer/test_runtime.py tests/trainer/test_speed_options.py
} 2>&1 | tee "$LOG"
