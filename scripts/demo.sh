#!/usr/bin/env bash
# The main job: installs gmkernels (scripts/setup.sh), then a tour of the ops, a comparison of
# GAN, DeLiGAN, GM-GAN and MD-GAN on the grid25 toy data, and the quick benchmark, printing each
# stage's wall time and the total.
#
#   bash scripts/demo.sh          # a small comparison (4 variants x 2 seeds, 3,000 steps each)
#   bash scripts/demo.sh --full   # the README's comparison (3 seeds, 8,000 steps: several minutes more)
#
# GMKERNELS_DEMO_SETUP=0 skips scripts/setup.sh (use the Python environment as it is); PYTHON
# picks the interpreter; BENCH_OUT and COMPARE_OUT where results go (runs/bench, runs/).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

full=0
for argument in "$@"; do
  case "$argument" in
    --full) full=1 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "demo.sh: unknown argument $argument (see --help)" >&2; exit 2 ;;
  esac
done

demo_started=$SECONDS
timings=()

# Runs a command as one stage of the demo: stage NAME "what it does" command... prints the title
# before it and its wall time after. While it runs, a line every 15 s (every minute after the
# first) says it is still working: the build and the training runs are silent for minutes.
stage() {
  local name=$1 title=$2
  shift 2
  echo
  echo "=== $name: $title"
  local started=$SECONDS
  "$@" &
  local command=$!
  (
    interval=15
    while sleep "$interval"; do
      echo "    ... $name still running ($((SECONDS - started)) s)" >&2
      if [ $((SECONDS - started)) -ge 60 ]; then interval=60; fi
    done
  ) &
  local ticker=$!
  local status=0
  wait "$command" || status=$?
  kill "$ticker" 2>/dev/null || true
  wait "$ticker" 2>/dev/null || true
  local seconds=$((SECONDS - started))
  timings+=("$(printf '%-10s %5d s' "$name" "$seconds")")
  echo "=== $name: $seconds s"
  if [ "$status" -ne 0 ]; then
    echo "demo.sh: $name failed (exit status $status)" >&2
    exit "$status"
  fi
}

if [ "${GMKERNELS_DEMO_SETUP:-1}" != "0" ]; then
  stage setup "install gmkernels and build its extension (minutes the first time)" bash scripts/setup.sh
fi

stage tour "each op once, on every backend usable here" "$PYTHON" examples/demo_ops.py

if [ "$full" = 1 ]; then
  compare=(--preset quick --jobs 2)
  what="4 variants x 3 seeds, 8,000 steps each"
else
  # The quick preset's networks and batch with fewer seeds and steps: the same table, noisier.
  compare=(--preset quick --seeds 0,1 --steps 3000 --lr-halve-every 1000 --checkpoint-every 3000
           --jobs 2 --name compare-grid25-demo)
  what="4 variants x 2 seeds, 3,000 steps each; --full for the README's run"
fi
cat <<'EOF'
Each GAN variant learns grid25, 25 Gaussians on a 5 x 5 grid. In the table, "modes" counts the modes
that receive at least one good sample, "% hq" is the share of samples within 3 standard deviations of
a mode, and "reverse KL" how unevenly the good samples spread over the modes (0 = evenly): mean ± std
over seeds. With these networks even the plain GAN reaches (nearly) all 25 modes, so % hq and reverse
KL are what tell the variants apart; runs as short as the default leave % hq low, --full sharpens it.
Details: docs/protocols.md.
EOF
stage compare "GAN, DeLiGAN, GM-GAN and MD-GAN on grid25 ($what)" \
  "$PYTHON" -m gmgan compare "${compare[@]}" ${COMPARE_OUT:+--out-dir "$COMPARE_OUT"}

stage benchmark "each op against its PyTorch reference and torch.compile, small sizes" \
  "$PYTHON" bench/run.py --quick --out "${BENCH_OUT:-runs/bench}"

echo
echo "=== wall time per stage"
printf '    %s\n' "${timings[@]}"
echo "    total: $((SECONDS - demo_started)) s"
