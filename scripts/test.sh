#!/usr/bin/env bash
# Sets up (scripts/setup.sh: installs only what is missing, recompiles only what changed) and runs
# the test suite. Triton kernels run on CPU tensors through the interpreter (TRITON_INTERPRET=1,
# set by tests/conftest.py when no GPU is present).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PYTHON=${PYTHON:-python3}
exec "$PYTHON" -m pytest -q -m "not slow" tests "$@"
