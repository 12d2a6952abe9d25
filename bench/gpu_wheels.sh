#!/usr/bin/env bash
# Run here, before bench/gpu_check.sh goes to the device machine: puts into .whl/ (git-ignored)
# the packages the benchmark imports that the device's image lacks or holds at other versions,
# as CPython 3.12 x86-64 wheels, at the versions installed in this project's .venv (22 MB; a
# device call carries 64 MiB). The image holds torch, numpy, scipy, PyYAML and tqdm, but
# transformers 5.17, below the project's >=5.24 (5.17 lacks the activation-checkpointing API
# trainer/model.py uses), and no pydantic or soundfile. gpu_check.sh installs them into /tmp/site.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
NAMES="pydantic pydantic_core annotated-types typing-inspection typing_extensions soundfile cffi pycparser
  transformers huggingface_hub kernels httpx2 httpcore2 truststore idna tomlkit regex"
PINS=$($PY - $NAMES <<'PYEOF'
import sys
from importlib.metadata import version

print(" ".join(f"{name}=={version(name)}" for name in sys.argv[1:]))
PYEOF
)
rm -rf .whl && mkdir .whl
PLATFORMS=""
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014 manylinux1; do
  PLATFORMS="$PLATFORMS --platform ${tag}_x86_64"
done
# shellcheck disable=SC2086  # the pins and platform flags are words on purpose
$PY -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp $PLATFORMS -d .whl $PINS
ls -1 .whl
du -sh .whl
