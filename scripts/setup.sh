#!/usr/bin/env bash
# Installs what gmkernels, its tests, training layer and benchmarks need, then builds and installs
# gmkernels itself (editable). Respects what is there: a torch or triton already importable is
# never reinstalled or upgraded, and nothing is fetched when everything is present (works
# offline). Only what is missing is installed:
#   torch   torch==2.13.0 (pinned: an unpinned torch would pull whatever is newest)
#   triton  the version the torch in place requires (its package metadata), else one tested with
#           that torch release; the triton backend needs triton >= 3.4 (gmkernels/_version.py)
# The extension build is incremental: an unchanged extension is not compiled again.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
say() { echo "setup: $*"; }

if ! "$PYTHON" -c "import torch" 2>/dev/null; then
  say "torch not found: installing torch==2.13.0"
  "$PYTHON" -m pip install "torch==2.13.0"
fi
# -W: torch warns at import that numpy is missing, which is what the next step installs.
say "$("$PYTHON" -W "ignore:Failed to initialize NumPy" - <<'EOF'
import runpy

import torch

versions = runpy.run_path("gmkernels/_version.py")
tested = [".".join(map(str, versions[name])) for name in ("TORCH_MINIMUM", "TORCH_NEWEST_TESTED")]
found = versions["release"](torch.__version__)
inside = versions["TORCH_MINIMUM"] <= found <= versions["TORCH_NEWEST_TESTED"]
print(f"torch {torch.__version__}" + ("" if inside else f" (outside the tested {tested[0]} to {tested[1]}: kept)"))
EOF
)"

# What to pip-install: the modules that do not import, by their package names. Triton's pin comes
# from the torch in place: a CUDA torch names the triton it was built with (Requires-Dist); a CPU
# torch names none, and gets the triton tested with it here.
MISSING=$("$PYTHON" -W "ignore:Failed to initialize NumPy" - <<'EOF'
import importlib.metadata
import importlib.util
import re
import shutil

import torch

needed = {"numpy": "numpy", "scipy": "scipy", "tqdm": "tqdm", "sklearn": "scikit-learn",
          "safetensors": "safetensors", "matplotlib": "matplotlib", "yaml": "pyyaml",
          "pytest": "pytest", "hypothesis": "hypothesis", "setuptools": "setuptools",
          "wheel": "wheel"}
missing = [package for module, package in needed.items() if importlib.util.find_spec(module) is None]
if shutil.which("ninja") is None and importlib.util.find_spec("ninja") is None:
    missing.append("ninja")
if importlib.util.find_spec("triton") is None:
    pin = None
    for requirement in importlib.metadata.requires("torch") or []:
        match = re.match(r"(?:pytorch-)?triton\s*(==\s*[\w.]+)", requirement)
        if match:
            pin = "triton" + match.group(1).replace(" ", "")
    tested_with_cpu_torch = {"2.13": "triton==3.9.0", "2.11": "triton==3.6.0"}
    minor = ".".join(torch.__version__.split("+")[0].split(".")[:2])
    missing.append(pin or tested_with_cpu_torch.get(minor, "triton>=3.4"))
print(" ".join(missing))
EOF
)
if [ -n "$MISSING" ]; then
  say "installing what is missing: $MISSING"
  # shellcheck disable=SC2086  # one word per package
  "$PYTHON" -m pip install $MISSING
else
  say "all dependencies present (nothing fetched)"
fi

# The extension: setup.py keeps its object files in build/, so ninja recompiles only the sources
# that changed (a no-change run relinks in seconds). -v shows the compile steps while they run.
mkdir -p build
LOG=build/setup-install.log
say "building and installing gmkernels (editable; incremental; full log in $LOG)"
START=$SECONDS
if ! PYTHONUNBUFFERED=1 "$PYTHON" -m pip install -v --no-build-isolation --no-deps --disable-pip-version-check -e . 2>&1 |
    tee "$LOG" | { grep --line-buffered -E '^ *\[[0-9]+/[0-9]+\]|gmkernels setup|error:|Successfully installed|no work to do' |
    awk '{ print substr($0, 1, 160); fflush() }'; true; }; then
  tail -n 40 "$LOG"
  say "the build failed: the whole log is in $LOG"
  exit 1
fi
say "gmkernels built in $((SECONDS - START)) s: $(cd / && env -u PYTHONPATH "$PYTHON" -c \
  'import gmkernels; print(gmkernels.__version__, "from", gmkernels.__file__, "backends", gmkernels.backends())')"
