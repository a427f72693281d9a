#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs the main job: a short demo of the ops and a quick benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PYTHON=${PYTHON:-python3}
"$PYTHON" examples/demo_ops.py
"$PYTHON" bench/run.py --quick
