#!/usr/bin/env bash
# Installs gmkernels and what its tests, training layer and benchmarks need, on a fresh machine.
# torch is pinned: an unpinned torch would pull a several-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] in ('2.13.0', '2.11.0') else 1)" 2>/dev/null; then
  "$PYTHON" -m pip install -q "torch==2.13.0"
fi
"$PYTHON" -m pip install -q "triton==3.9.0" numpy scipy tqdm scikit-learn safetensors matplotlib pyyaml \
  pytest hypothesis ninja setuptools wheel
"$PYTHON" -m pip install -q --no-build-isolation --no-deps -e .
