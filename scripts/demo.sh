#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs the main job: a tour of the ops, a compare of GAN, DeLiGAN,
# GM-GAN and MD-GAN on grid25 (3 seeds each, a few minutes on 2 cores) and a quick benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PYTHON=${PYTHON:-python3}
"$PYTHON" examples/demo_ops.py
"$PYTHON" -m gmgan compare --preset quick --jobs 2
"$PYTHON" bench/run.py --quick --out "${BENCH_OUT:-runs/bench}"
