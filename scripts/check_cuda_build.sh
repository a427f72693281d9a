#!/usr/bin/env bash
# Proves the CUDA build on a machine without a GPU: installs the CUDA build of torch (2.13.0 by
# default, with the NVIDIA wheels it depends on) into a throwaway virtual environment, builds
# gmkernels there with GMKERNELS_CUDA=1 for one arch (9.0 = sm_90 by default) from a scratch copy
# of this tree, then imports gmkernels in a fresh process and checks that build_info() reports
# CUDA and that arch: `_C` links and loads (torch imports without a driver).
#
#   bash scripts/check_cuda_build.sh    # TORCH_SPEC=torch==2.13.0 CUDA_ARCH=9.0 MAX_JOBS=2
#                                       # CUDA_WHEELS=~/.cache/gmkernels/cuda-wheels
#
# Nothing here touches the Python environment the tests use, nor this tree's build/ or .so.
# The wheels (~3 GB) are kept in CUDA_WHEELS for the next run, which then needs no network. Needs
# nvcc (a CUDA toolkit) and, the first time, a package index (pip --isolated ignores local pip
# configuration, such as a folder of CPU-only torch wheels).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
CUDA_ARCH=${CUDA_ARCH:-9.0}
WHEELS=${CUDA_WHEELS:-$HOME/.cache/gmkernels/cuda-wheels}
export MAX_JOBS=${MAX_JOBS:-2}
export PYTHONUNBUFFERED=1   # pip's lines reach the log as they happen
START=$SECONDS
say() { printf '[check_cuda_build %4ds] %s\n' $((SECONDS - START)) "$*"; }
# run_logged LOG PATTERN command...: shows the output lines matching PATTERN as they come (cut to
# 200 characters), keeps all of it in LOG, and prints LOG's tail when the command fails.
run_logged() {
  local log=$1 pattern=$2
  shift 2
  if ! "$@" 2>&1 | tee "$log" | { grep --line-buffered -E "$pattern" | sed -u -E 's/^(.{200}).+/\1 .../'; true; }; then
    echo "---- the last lines of $log:"
    tail -n 60 "$log"
    return 1
  fi
}

if ! command -v nvcc >/dev/null; then
  echo "check_cuda_build: nvcc not found: no CUDA toolkit to build with" >&2
  exit 1
fi
SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/gmkernels-cuda-build.XXXXXX")
trap 'rm -rf "$SCRATCH"' EXIT

say "throwaway venv in $SCRATCH; installing $TORCH_SPEC (CUDA build) and the build tools"
"$PYTHON" -m venv "$SCRATCH/venv"
VENV_PYTHON=$SCRATCH/venv/bin/python
# The wheels are kept in a folder (not pip's HTTP cache, which does not persist on every machine):
# the ~3 GB are downloaded once, later runs install from the folder without the network.
REQUIREMENTS=("$TORCH_SPEC" setuptools wheel ninja numpy scipy tqdm)
mkdir -p "$WHEELS"
install_from_wheels() {
  "$VENV_PYTHON" -m pip --isolated install --no-index --find-links "$WHEELS" --progress-bar off \
    --disable-pip-version-check "${REQUIREMENTS[@]}"
}
if ! install_from_wheels > "$SCRATCH/pip-offline.log" 2>&1; then
  say "downloading the wheels into $WHEELS (once; pip lists each file)"
  run_logged "$SCRATCH/pip-download.log" '^(Collecting|Saved|File was already|ERROR)' \
    "$VENV_PYTHON" -m pip --isolated download --progress-bar off --disable-pip-version-check \
    -d "$WHEELS" "${REQUIREMENTS[@]}"
  run_logged "$SCRATCH/pip-install.log" '^(Successfully|ERROR)' install_from_wheels
fi
"$VENV_PYTHON" -c "import torch, sys; sys.exit(0 if torch.version.cuda else 'torch has no CUDA')"
say "$("$VENV_PYTHON" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda)")"

# A scratch copy of the tracked and unignored files: the repository's build/ and _C*.so stay as
# they are, and nothing built there leaks in.
mkdir "$SCRATCH/src"
git -C "$ROOT" ls-files -z --cached --others --exclude-standard |
  tar -C "$ROOT" --null -T - --ignore-failed-read -cf - 2>/dev/null | tar -xf - -C "$SCRATCH/src"

# No extra include path: the bindings include only c10/cuda headers, so the build needs none of
# the cuBLAS / cuSPARSE / cuSOLVER development headers (this machine's toolkit has none).

say "building gmkernels with GMKERNELS_CUDA=1 TORCH_CUDA_ARCH_LIST=$CUDA_ARCH (MAX_JOBS=$MAX_JOBS)"
# pip -v shows the compile steps as they run (ninja's [i/n] lines).
(cd "$SCRATCH/src" && run_logged "$SCRATCH/build.log" \
  '^ *\[[0-9]+/[0-9]+\]|gmkernels setup|error:|Successfully' \
  env GMKERNELS_CUDA=1 TORCH_CUDA_ARCH_LIST="$CUDA_ARCH" "$VENV_PYTHON" -m pip install -v --no-build-isolation --no-deps --disable-pip-version-check .)

say "importing the installed gmkernels in a fresh process"
cd "$SCRATCH"
"$VENV_PYTHON" - "$CUDA_ARCH" <<'EOF'
import sys

import torch

import gmkernels

arch = sys.argv[1]
info = gmkernels.build_info()
print(f"gmkernels {gmkernels.__version__} from {gmkernels.__file__}")
print(f"torch {torch.__version__}, torch.cuda.is_available() = {torch.cuda.is_available()}")
print("build_info():", info)
if not info.get("compiled") or not info.get("cuda"):
    sys.exit("FAIL: gmkernels._C was built without CUDA")
if arch not in str(info.get("cuda_archs", info.get("archs", ""))):
    sys.exit(f"FAIL: build_info() does not report arch {arch}")
print(f"OK: gmkernels._C built with CUDA for sm_{arch.replace('.', '')} links and loads")
EOF
say "done"
